"""A config's models trained elsewhere, checked against its data: :func:`check_model` (a module takes the data's
images and returns one score per class), :func:`check_config` (every checkpoint entry, before any job),
:func:`load_spec_model` (an entry's file as a stage certifies it) and :func:`inspect_file` (what a model file
holds and how it does on the first test inputs). Files are read by :func:`smoothcert.training.pretrained.load_model_file`.
Every failure is one line (:class:`~smoothcert.errors.SmoothcertError`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from smoothcert import data as data_mod
from smoothcert.errors import SmoothcertError, one_line, require
from smoothcert.training.models import prepare_for_inference
from smoothcert.training.pretrained import load_model_file


def check_model(module: nn.Module, shape: tuple[int, ...], num_classes: int, where: str, device="cpu") -> None:
    """One line unless ``module`` takes images of ``shape`` (C, H, W) and returns ``num_classes`` scores each."""
    x = torch.zeros((2, *shape), device=device)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise SmoothcertError(
            f"{where} does not take the data's images of shape {tuple(shape)} (channels, height, width): "
            f"{one_line(exc)}"
        ) from exc
    require(
        isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 2,
        f"{where} returns {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__} for 2 images; "
        f"expected one score per class for each image",
    )
    require(
        out.shape[1] == num_classes,
        f"{where} outputs {out.shape[1]} scores per image; the data has {num_classes} classes",
    )


def onnx_route(device, gradients: bool) -> str:
    """How an ONNX file runs: onnxruntime where it is the faster of the two and no gradient is needed (counting
    on the CPU: ≈ 2× onnx2torch's evaluations per second in channels-last, with identical class counts,
    benchmarks/bench_pretrained.py), else onnx2torch (a torch module: GPU batches, gradients for the DDRS / ANCER search)."""
    return "onnx2torch" if gradients or torch.device(device).type != "cpu" else "onnxruntime"


def load_spec_model(
    cfg: dict, spec, path: str | Path, shape: tuple[int, ...], num_classes: int, device, gradients: bool = True
):
    """The model of checkpoint entry ``spec`` read from ``path``, checked against the data (images of ``shape``,
    ``num_classes`` classes), prepared for inference as the config says (channels-last). ``gradients``: whether
    the caller differentiates it (an ONNX file's route, :func:`onnx_route`)."""
    loaded = load_model_file(
        path,
        **spec.loading,
        in_channels=shape[0],
        num_classes=num_classes,
        size=shape[-1],
        device=device,
        onnx_route=onnx_route(device, gradients),
    )
    check_model(loaded.module, shape, num_classes, f"model {spec.id} ({path})", device)
    module = loaded.module
    if cfg["channels_last"] and not isinstance(module, torch.jit.ScriptModule) and loaded.format != "torchscript":
        module = prepare_for_inference(module)
    return module


def check_config(cfg: dict, cache: str | Path | None = None) -> None:
    """Before any job: every checkpoint entry's file loads, takes the data's images and returns one score per
    class; a folder / npz dataset without a train split has only checkpoint entries. One line otherwise.

    ``cache``: a folder where a pass is remembered, keyed by the config's data and models sections and each
    model file's size and modification time, so that re-reading the Snakefile does not load the files again.
    """
    import hashlib
    import json

    from smoothcert import config as config_mod

    specs = config_mod.model_specs(cfg)
    files = sorted({s.checkpoint for s in specs if s.pretrained})
    for f in files:
        require(
            Path(f).is_file(), f"model file not found: {f} (models[].checkpoint; see README, Certify your own model)"
        )
    stamp = [cfg["data"], cfg["models"], cfg["channels_last"]]
    stamp += [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files]
    root = Path(cfg["data"]["root"])
    if root.exists():
        stamp.append(root.stat().st_mtime_ns)
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True, default=str).encode()).hexdigest()[:16]
    done = Path(cache) / f"models-checked-{key}" if cache is not None else None
    if done is not None and done.exists():
        return
    meta, classes = data_mod.source_info({**cfg["data"], "seed": cfg["seed"]})
    name = cfg["data"]["dataset"]
    trained = [s.id for s in specs if not s.pretrained]
    require(
        not trained or name not in data_mod.FILE_DATASETS,
        f"models {trained} would be trained on data.dataset = {name}; smoothcert trains on its built-in datasets "
        f"only: certify models trained elsewhere with checkpoint entries",
    )
    shape = (meta.channels, meta.size, meta.size)
    for spec in specs:
        if spec.pretrained:
            loaded = load_model_file(
                spec.checkpoint, **spec.loading, in_channels=shape[0], num_classes=meta.num_classes, size=shape[-1]
            )
            check_model(loaded.module, shape, meta.num_classes, f"model {spec.id} ({spec.checkpoint})")
    if done is not None:
        from smoothcert.artifacts import write_text

        write_text(done, f"{len(files)} model files fit {name} images {shape}, {meta.num_classes} classes\n")


def _first_test_inputs(cfg: dict, data_dir: str | Path | None, count: int):
    """The first ``count`` test images and labels: from a prepared folder, else read from the data's source."""
    name = cfg["data"]["dataset"]
    if data_dir is not None:
        x, y = data_mod.load_split(data_dir, "test", name)
        return x[:count], y[:count]
    read = data_mod.LOADERS[name]({**cfg["data"], "seed": cfg["seed"]})  # (x_train, x_test, y_train, y_test, ...)
    xte, yte = read[1], read[3]
    x = torch.from_numpy(xte[:count])
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x, torch.from_numpy(yte[:count]).long()


def inspect_file(path: str | Path, cfg: dict, data_dir: str | Path | None = None, count: int = 100, **loading) -> dict:
    """What a model file holds and how it does on the first ``count`` test inputs of the configured data: format,
    arch, parameter count, input shape, classes, normalization, σ where recorded, clean top-1 accuracy and mean
    logit margin (label's score minus the best other; negative when wrong). ``loading``: a checkpoint entry's
    keys (format, arch, ...); without them, those of the config's entry for ``path`` if any, else the defaults."""
    from smoothcert import config as config_mod

    entry = next(
        (
            s
            for s in config_mod.model_specs(cfg)
            if s.pretrained and Path(s.checkpoint).resolve() == Path(path).resolve()
        ),
        None,
    )
    settings = {**config_mod.loading_defaults(), **(entry.loading if entry else {}), **loading}
    if data_dir is not None:
        x0, _ = data_mod.load_split(data_dir, "test", cfg["data"]["dataset"])
        names = data_mod.class_names(data_dir, cfg["data"]["dataset"])
        shape = tuple(x0.shape[1:])
        k = len(names) if names is not None else data_mod.info(cfg["data"]["dataset"]).num_classes
    else:
        meta, names = data_mod.source_info({**cfg["data"], "seed": cfg["seed"]})
        shape, k = (meta.channels, meta.size, meta.size), meta.num_classes
    loaded = load_model_file(path, **settings, in_channels=shape[0], num_classes=k, size=shape[-1])
    check_model(loaded.module, shape, k, str(path))
    x, y = _first_test_inputs(cfg, data_dir, count)
    with torch.no_grad():
        logits = loaded.module(x)
    own = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return {
        "file": str(path),
        "format": loaded.format,
        "arch": loaded.arch or "(in the file)",
        "parameters": loaded.parameters,
        "input_shape": shape,
        "classes": k,
        "class_names": names,
        "normalization": loaded.normalize,
        "outputs": settings["outputs"],
        "sigma": loaded.sigma,
        "config_entry": entry.id if entry else None,
        "inputs": len(x),
        "clean_top1": float((logits.argmax(1) == y).float().mean()),
        "mean_margin": float((own - other).mean()),
        "chance": 1.0 / k,
    }
