"""Inspect a model file before a long run: what was loaded, and how it does on the first test inputs."""

from smoothcert import config as config_mod
from smoothcert.commands._common import add_config

HELP = "print a model file's format, arch, size, input shape, classes, normalization, σ, clean accuracy and margin"


def add_arguments(p):
    add_config(p)
    p.add_argument("path", help="the model file (model.pt, locuslab checkpoint, state dict, TorchScript, ONNX)")
    p.add_argument("--data", default=None, help="a prepared data folder (default: read the config's data source)")
    p.add_argument("--count", type=int, default=100, help="test inputs the accuracy and margin are measured on")
    p.add_argument(
        "--format", default=None, help="as models[].format (default: the config's entry for PATH, else auto)"
    )
    p.add_argument("--arch", default=None, help="as models[].arch, for a plain state dict")
    p.add_argument("--outputs", default=None, choices=["logits", "probabilities"], help="as models[].outputs")


def run(args):
    from smoothcert.training.model_check import inspect_file

    cfg = config_mod.load(args.config)
    given = {k: getattr(args, k) for k in ("format", "arch", "outputs") if getattr(args, k) is not None}
    info = inspect_file(args.path, cfg, args.data, args.count, **given)
    norm = info["normalization"]
    names = info["class_names"]
    lines = [
        f"file            {info['file']}" + (f" (config entry {info['config_entry']})" if info["config_entry"] else ""),
        f"format          {info['format']}",
        f"architecture    {info['arch']}",
        f"parameters      {info['parameters']:,}",
        f"input shape     {info['input_shape']} (channels, height, width), pixels in [0, 1]",
        f"classes         {info['classes']}" + (f": {', '.join(names)}" if names else ""),
        "normalization   "
        + (f"mean {[round(v, 4) for v in norm[0]]}, std {[round(v, 4) for v in norm[1]]}" if norm else "none"),
        f"outputs         {info['outputs']}",
        f"sigma           {info['sigma'] if info['sigma'] is not None else 'not recorded in the file'}",
        f"clean top-1     {info['clean_top1']:.1%} on the first {info['inputs']} test inputs "
        f"(chance {info['chance']:.1%})",
        f"mean margin     {info['mean_margin']:.3f} (label's score minus the best other; < 0 when wrong)",
    ]
    print("\n".join(lines))
