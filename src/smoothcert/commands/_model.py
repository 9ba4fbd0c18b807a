"""The base classifier a per-shard stage certifies (certify, optimize-sigma): trained here or read from a file."""

from __future__ import annotations

import torch

from smoothcert import data as data_mod


def load_base_model(cfg: dict, spec, checkpoint: str, x: torch.Tensor, data_dir: str, device, gradients: bool = True):
    """The base classifier of ``spec``: a trained ``model.pt``, or a checkpoint entry's file in any format,
    checked against the data's images (shape of ``x``) and classes before any certificate is made.
    ``gradients``: whether the stage differentiates it (the σ / θ search does, certification does not)."""
    if not spec.pretrained:
        from smoothcert.training.models import load_model

        return load_model(cfg, checkpoint, device)
    from smoothcert.training.model_check import load_spec_model

    return load_spec_model(cfg, spec, checkpoint, tuple(x.shape[1:]), num_classes(cfg, data_dir), device, gradients)


def num_classes(cfg: dict, data_dir: str) -> int:
    """The data's number of classes: what a prepared folder / npz dataset stores, else the built-in dataset's."""
    name = cfg["data"]["dataset"]
    classes = data_mod.class_names(data_dir, name)
    return len(classes) if classes is not None else data_mod.info(name).num_classes
