"""Arguments and setup shared by the subcommands.

It imports nothing from ``smoothcert.pipeline``: every command imports it, so whatever it imports is code
every stage runs, and an edit there reruns every job (the stage map hashes each stage's import closure).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from smoothcert import config as config_mod

if TYPE_CHECKING:  # torch is imported by the commands that compute, not by table-only ones (gather)
    import torch


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="the pipeline configuration, validated before use (default: params.yaml; may also precede the command)",
    )


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (Snakemake passes its 'threads')")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_shard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", default="0-of-1", help="which part of the test set, as i-of-n")


def add_model_inputs(p: argparse.ArgumentParser) -> None:
    """--model, --checkpoint and --data, shared by the per-shard stages."""
    p.add_argument("--model", required=True, help="model id from the config, e.g. gaussian-fixed-l2-0.25")
    p.add_argument("--checkpoint", required=True, help="trained model.pt")
    p.add_argument("--data", required=True, help="prepared data folder")


def add_shard_job(p: argparse.ArgumentParser) -> None:
    """The arguments of a per-shard stage: --config, --threads, --no-progress, --shard and the model inputs."""
    for add in (add_config, add_threads, add_progress, add_shard, add_model_inputs):
        add(p)


def shard_inputs(cfg: dict, args: argparse.Namespace):
    """The test inputs of ``args.shard``: (x, y, idx), selected by the config's ``test`` section."""
    from smoothcert import data as data_mod

    shard, shards = config_mod.parse_shard(args.shard)
    x, y = data_mod.load_split(args.data, "test", cfg["data"]["dataset"])
    t = cfg["test"]
    idx = data_mod.shard_indices(data_mod.test_indices(len(x), t["start"], t["step"], t["limit"]), shard, shards)
    return x, y, idx


def setup(args: argparse.Namespace, device: bool = True) -> tuple[dict, torch.device | None]:
    """Load + validate the config, set torch threads, pick the device (with ``device``: a job that
    computes on it; on CUDA that takes one GPU of the host for the process's life, see
    :func:`config.resolve_device`; without: None, no GPU taken)."""
    cfg = config_mod.load(args.config)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return cfg, config_mod.resolve_device(cfg) if device else None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value
