"""Models someone already has: read a model file into the ``nn.Module`` smoothcert certifies.

:func:`load_model_file` reads five formats: smoothcert's own ``model.pt``; the **locuslab layout** of Cohen et
al.'s released models and the papers built on their code (``{arch, state_dict, ...}``, the state dict of
``Sequential(normalize, net)`` whose normalize layer holds no tensors: CIFAR ResNet-20/110 keys ``1.conv1``,
``1.bn1``, ``1.layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``, ``1.fc`` with AvgPool2d(8)
before ``fc``; torchvision's resnet50 keys under ``1.module.``), loaded into our own
:class:`~smoothcert.training.models.CifarResNet` / torchvision resnet50 by renaming keys; a plain **state dict**
for a built-in arch, ``torchvision:NAME`` or ``python:package.module:factory``; **TorchScript**; **ONNX**
(through onnx2torch, an ``nn.Module`` the engine batches on CPU or GPU and differentiates; onnxruntime is
available for comparison, without gradients). Every ``torch.load`` is ``weights_only=True``; every failure
is one line (:class:`~smoothcert.errors.SmoothcertError`).

Guarantee: the module returned computes the file's function of pixels in [0, 1] — its normalization as the
first layer (from ``normalize``, else what the file or its layout says, else none) — and returns one score per
class (log-probabilities where ``outputs="probabilities"``: same argmax). Certificates are of this module.
"""

from __future__ import annotations

import importlib
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smoothcert import data as data_mod
from smoothcert.artifacts import load_torch
from smoothcert.errors import SmoothcertError, one_line, require
from smoothcert.training.models import ARCHS, CifarResNet, Normalize

FORMATS = ("smoothcert", "locuslab", "state_dict", "torchscript", "onnx")
ONNX_ROUTES = ("onnx2torch", "onnxruntime")
# locuslab/smoothing's architectures and the normalization their layout implies (their datasets' constants,
# which are smoothcert's cifar10 / imagenet ones).
LOCUSLAB_ARCHS = {"cifar_resnet20": "cifar10", "cifar_resnet110": "cifar10", "resnet50": "imagenet"}
LOCUSLAB_POOL = 8  # their CIFAR ResNet averages an 8×8 map (AvgPool2d(8)): 32×32 inputs only
SHOWN_KEYS = 3  # keys named in a mismatch message


@dataclass
class LoadedModel:
    """A loaded model and what the file said about it."""

    module: nn.Module
    format: str
    arch: str | None
    normalize: tuple[list[float], list[float]] | None
    sigma: float | None = None

    @property
    def parameters(self) -> int:
        return sum(int(p.numel()) for p in self.module.parameters())


class LogOf(nn.Module):
    """log(p) of a model that outputs probabilities: the same argmax, and softmax(log p) = p."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.net(x).clamp_min(torch.finfo(torch.float32).tiny))


class OnnxRuntimeModule(nn.Module):
    """An ONNX file run by onnxruntime on the CPU (no gradients: for counting, not for DDRS / ANCER searches)."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the job's threads, as torch has them
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip file with the ``code/`` folder torch.jit.save writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())


def detect_format(path: str | Path, blob=None) -> str:
    """The format of ``path``: ``onnx`` by suffix, ``torchscript`` by its archive's ``code/`` folder, else from the
    keys of the (weights-only) loaded dict ``blob``."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if _is_torchscript(path):
        return "torchscript"
    blob = load_torch(path, what="model file") if blob is None else blob
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if isinstance(state, dict):
        keys = [str(k) for k in state]
        if blob.get("arch") in LOCUSLAB_ARCHS and keys and all(k.startswith("1.") for k in keys):
            return "locuslab"
        if "0.mean" in keys and "0.std" in keys and blob.get("arch") in ARCHS:
            return "smoothcert"
        return "state_dict"
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return "state_dict"
    raise SmoothcertError(
        f"{path} is not a model: expected a state dict, a dict with state_dict (smoothcert or locuslab layout), "
        f"TorchScript or ONNX; it holds {type(blob).__name__}"
        + (f" with keys {sorted(map(str, blob))[:SHOWN_KEYS]}" if isinstance(blob, dict) else "")
    )


def load_state(model: nn.Module, state: dict, path, arch: str, rename=None) -> None:
    """Load ``state`` into ``model`` exactly: one line naming the first missing and unexpected keys (in the
    file's own names: ``rename`` maps the model's names back) or the first shape that differs; no NaN / inf."""
    require(
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
        f"{path}: the state dict is not a mapping of names to tensors",
    )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        size = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        line = size[0] if size else one_line(exc)
        if rename is not None:  # name the key as the file does
            line = re.sub(r"size mismatch for (\S+):", lambda m: f"size mismatch for {rename(m.group(1))}:", line)
        raise SmoothcertError(f"{path} does not fit {arch}: {line[:240]}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        name = rename or (lambda k: k)
        parts = [
            f"{what} keys {[name(k) for k in keys[:SHOWN_KEYS]]}{' ...' if len(keys) > SHOWN_KEYS else ''} "
            f"({len(keys)} in all)"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise SmoothcertError(f"{path}: keys do not fit {arch}: " + "; ".join(parts))
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    require(not bad, f"{path} holds NaN or inf values in {bad[:SHOWN_KEYS]}; refusing to certify with it")


def _normalized(net: nn.Module, normalize) -> nn.Module:
    return nn.Sequential(Normalize(*normalize), net) if normalize else net


# ---------------------------------------------------------------- locuslab layout


def _locuslab_name(key: str, blocks: int) -> str:
    """The locuslab name of one of our CIFAR ResNet's keys under ``1.`` (blocks: residual blocks per stage)."""
    key = re.sub(r"^1\.stem\.0\.", "1.conv1.", key)
    key = re.sub(r"^1\.stem\.1\.", "1.bn1.", key)
    key = re.sub(r"^1\.head\.2\.", "1.fc.", key)
    found = re.match(r"^1\.layers\.(\d+)\.(.*)$", key)
    if found:
        j, rest = int(found.group(1)), found.group(2).replace("short.", "downsample.", 1)
        key = f"1.layer{j // blocks + 1}.{j % blocks}.{rest}"
    return key


def _locuslab(blob: dict, path: Path, normalize, size: int | None, num_classes: int | None):
    arch = blob["arch"]
    require(arch in LOCUSLAB_ARCHS, f"{path}: locuslab arch {arch!r} is not one of {list(LOCUSLAB_ARCHS)}")
    meta = data_mod.info(LOCUSLAB_ARCHS[arch])
    normalize = normalize or (list(meta.mean), list(meta.std))
    state = {str(k): v for k, v in blob["state_dict"].items()}
    if arch == "resnet50":
        from torchvision.models import resnet50

        k = _classes_of(state, "1.module.fc.weight", num_classes or meta.num_classes)
        model = nn.Sequential(Normalize(*normalize), resnet50(weights=None, num_classes=k))
        theirs = {f"1.{key}": f"1.module.{key}" for key in model[1].state_dict()}
    else:
        require(
            size in (None, LOCUSLAB_POOL * 4),
            f"{path}: locuslab's {arch} pools an {LOCUSLAB_POOL}×{LOCUSLAB_POOL} map (AvgPool2d({LOCUSLAB_POOL})): "
            f"it takes {LOCUSLAB_POOL * 4}×{LOCUSLAB_POOL * 4} images, the data's are {size}×{size}",
        )
        depth = int(arch.removeprefix("cifar_resnet"))
        k = _classes_of(state, "1.fc.weight", num_classes or meta.num_classes)
        model = nn.Sequential(Normalize(*normalize), CifarResNet(depth, k, 3))
        theirs = {key: _locuslab_name(key, (depth - 2) // 6) for key in model.state_dict() if key.startswith("1.")}
    ours = {v: k for k, v in theirs.items()}
    renamed = {ours.get(k, k): v for k, v in state.items()}
    renamed.update({k: v for k, v in model.state_dict().items() if k.startswith("0.")})  # the layout's constants
    load_state(model, renamed, path, f"locuslab {arch}", rename=lambda k: theirs.get(k, k))
    return model, arch, normalize


def _classes_of(state: dict, key: str, default: int) -> int:
    """The class count a classifier weight says (the layout's default when the key is missing)."""
    w = state.get(key)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 2 else default


# ---------------------------------------------------------------- state dicts and archs


def build_arch(arch: str, kwargs: dict, in_channels: int, num_classes: int, size: int) -> nn.Module:
    """The network (no normalization) named by ``arch``: a built-in name, ``torchvision:NAME`` (weights=None,
    ``kwargs``) or ``python:package.module:factory`` (called with ``kwargs``)."""
    try:
        if arch.startswith("torchvision:"):
            import torchvision

            return torchvision.models.get_model(arch.split(":", 1)[1], weights=None, **kwargs)
        if arch.startswith("python:"):
            _, module, factory = arch.split(":")
            return getattr(importlib.import_module(module), factory)(**kwargs)
    except Exception as exc:
        raise SmoothcertError(f"cannot build arch {arch!r} with kwargs {kwargs}: {one_line(exc)}") from exc
    require(arch in ARCHS, f"unknown arch {arch!r}; allowed: {sorted(ARCHS)}, torchvision:NAME, python:module:factory")
    return ARCHS[arch](in_channels, num_classes, size)


def _state_dict(blob, path: Path, arch, kwargs, normalize, in_channels, num_classes, size):
    state = blob["state_dict"] if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict) else blob
    state = {str(k): v for k, v in state.items()}
    arch = arch or (blob.get("arch") if isinstance(blob.get("arch"), str) else None)
    require(
        arch,
        f"{path} is a plain state dict: say which network it is for with arch: (built-in, torchvision:NAME or python:module:factory)",
    )
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    require(
        arch.startswith(("torchvision:", "python:")) or (in_channels and num_classes and size),
        f"{path}: building {arch} needs the data's channels, classes and size",
    )
    net = build_arch(arch, dict(kwargs or {}), in_channels, num_classes, size)
    if "0.mean" in state and "0.std" in state:  # a whole smoothcert model: normalization first
        model = nn.Sequential(Normalize(state["0.mean"].flatten().tolist(), state["0.std"].flatten().tolist()), net)
        load_state(model, state, path, arch)
        stored = (state["0.mean"].flatten().tolist(), state["0.std"].flatten().tolist())
        if normalize:
            model[0] = Normalize(*normalize)
        return model, arch, normalize or stored
    load_state(net, state, path, arch)
    return _normalized(net, normalize), arch, normalize


def _smoothcert(blob: dict, path: Path, normalize, in_channels, num_classes, size):
    state = blob["state_dict"]
    arch = blob["arch"]
    k = int(blob.get("num_classes") or num_classes)
    model, arch, normalize = _state_dict(
        {"state_dict": state, "arch": arch}, path, arch, {}, normalize, in_channels, k, size
    )
    spec = str(blob.get("spec") or "")
    sigma = float(spec.rsplit("-", 1)[1]) if re.fullmatch(r".+-l[12]-[0-9.e+-]+", spec) else None
    return model, arch, normalize, sigma


# ---------------------------------------------------------------- exports


def _torchscript(path: Path, normalize):
    try:
        with warnings.catch_warnings():  # deprecation notes: a model file's load says nothing else
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SmoothcertError(f"{path} is not a loadable TorchScript file: {one_line(exc)}") from exc
    return _normalized(net, normalize)


def _onnx(path: Path, normalize, route: str):
    require(route in ONNX_ROUTES, f"unknown ONNX route {route!r}; allowed: {list(ONNX_ROUTES)}")
    import onnx

    try:
        graph = onnx.load(str(path))
    except Exception as exc:
        raise SmoothcertError(f"{path} is not an ONNX model: {one_line(exc)}") from exc
    require(len(graph.graph.node) > 0, f"{path} is not an ONNX model: its graph has no nodes")
    if route == "onnxruntime":
        try:
            return _normalized(OnnxRuntimeModule(path), normalize)
        except Exception as exc:
            raise SmoothcertError(f"onnxruntime cannot run {path}: {one_line(exc)}") from exc
    from onnx2torch import convert

    try:
        net = convert(graph)
    except NotImplementedError as exc:
        op = re.search(r"operation_type='([^']*)'.*?version=(\d+)", str(exc))
        what = f"operator {op.group(1)} (opset {op.group(2)})" if op else one_line(exc)
        raise SmoothcertError(f"ONNX graph {path} uses {what}, which onnx2torch cannot convert") from exc
    except Exception as exc:
        raise SmoothcertError(f"ONNX graph {path} cannot be converted: {one_line(exc)}") from exc
    return _normalized(net, normalize)


# ---------------------------------------------------------------- entry points


def load_model_file(
    path: str | Path,
    *,
    format: str = "auto",
    arch: str | None = None,
    kwargs: dict | None = None,
    normalize: dict | None = None,
    outputs: str = "logits",
    in_channels: int | None = None,
    num_classes: int | None = None,
    size: int | None = None,
    device="cpu",
    onnx_route: str = "onnx2torch",
) -> LoadedModel:
    """Read the model file ``path`` (any of :data:`FORMATS`, or ``auto``) into a :class:`LoadedModel` in eval
    mode on ``device``.

    ``arch`` / ``kwargs``: the network of a plain state dict. ``normalize`` ({mean, std}): used instead of what
    the file or its layout says. ``in_channels``, ``num_classes``, ``size``: the data's, to build a built-in
    arch for a plain state dict and to check the locuslab CIFAR ResNet's input size (the output size is checked
    by :func:`smoothcert.training.model_check.check_model`). ``outputs="probabilities"``: the scores become log-probabilities.
    """
    path = Path(path)
    require(path.is_file(), f"model file not found: {path}")
    norm = (list(normalize["mean"]), list(normalize["std"])) if normalize else None
    if norm:
        require(len(norm[0]) == len(norm[1]), f"{path}: normalize has {len(norm[0])} means and {len(norm[1])} stds")
    archive = format == "auto" and (path.suffix.lower() == ".onnx" or _is_torchscript(path))
    blob = None if archive or format in ("torchscript", "onnx") else load_torch(path, what="model file")
    fmt = detect_format(path, blob) if format == "auto" else format
    require(fmt in FORMATS, f"unknown model format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    sigma = None
    if fmt in ("smoothcert", "locuslab"):
        require(
            isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict) and isinstance(blob.get("arch"), str),
            f"{path} is not in the {fmt} layout (a dict with arch and state_dict)",
        )
    if fmt == "smoothcert":
        module, arch, norm, sigma = _smoothcert(blob, path, norm, in_channels, num_classes, size)
    elif fmt == "locuslab":
        module, arch, norm = _locuslab(blob, path, norm, size, num_classes)
    elif fmt == "state_dict":
        require(isinstance(blob, dict), f"{path} is not a state dict")
        module, arch, norm = _state_dict(blob, path, arch, kwargs, norm, in_channels, num_classes, size)
    elif fmt == "torchscript":
        module = _torchscript(path, norm)
    else:
        module = _onnx(path, norm, onnx_route)
    if outputs == "probabilities":
        module = LogOf(module)
    else:
        require(outputs == "logits", f"outputs = {outputs!r}; allowed: logits, probabilities")
    module = module.to(device).eval()
    return LoadedModel(module, fmt, arch, norm, sigma)
