"""Load and validate ``params.yaml``; enumerate models, experiments and shards.

The Snakefile imports this module, so the experiment grid is defined once, here.
Validation uses ``jsonschema`` against ``workflow/schemas/config.schema.yaml``;
an error names the key, the bad value and what is allowed, in one line.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smoothcert.errors import SmoothcertError, require

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
NOISE_OF_NORM = {"l2": "gaussian", "l1": "uniform"}
VIDEO_NORM = "l2"  # clips are certified with Gaussian noise only (the video stage, pipeline.clips)
# Sections read only when something configured uses them (then every key of theirs is required):
# a training objective's own section, and what a σ mode adds (dd: the per-sample σ ascent's section).
OBJECTIVE_SECTIONS = {"gaussian": (), "macer": ("macer",), "smoothadv": ("smoothadv",)}
SIGMA_MODE_SECTIONS = {"fixed": (), "dd": ("data_dependent",)}


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice (plain YAML lets the last one win
    silently, so ``certify.n: 300`` written twice would drop one value unseen)."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: the base class says so
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (lines {first[key]} and {line})"
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The content of YAML file ``path``, read safely (no tags that build objects) and refusing duplicate keys;
    a one-line :class:`SmoothcertError` naming the file otherwise."""
    path = Path(path)
    require(path.is_file(), f"config file not found: {path}")
    text = path.read_text()
    try:
        return yaml.load(text, Loader=UniqueKeySafeLoader)  # a SafeLoader subclass: builds only plain data
    except yaml.constructor.ConstructorError as exc:
        if exc.problem and "appears twice" in exc.problem:
            raise SmoothcertError(f"{path}: {exc.problem}; keep one") from exc
        raise SmoothcertError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except yaml.YAMLError as exc:
        raise SmoothcertError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc


def schema() -> dict:
    """The JSON schema of params.yaml: workflow/schemas/config.schema.yaml, with the method enum and each
    method's section taken from the registry (:mod:`smoothcert.methods`)."""
    from smoothcert import methods

    out = yaml.safe_load(SCHEMA.read_text())
    registry = methods.registry()
    out["definitions"]["method"] = {"enum": list(registry)}
    out["definitions"]["clip_method"] = {"enum": [m.name for m in registry.values() if m.clips]}
    for section, fragment in methods.sections().items():
        out["properties"][section] = fragment
    return out


def _describe(error) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "enum" in schema:
        allowed = f"one of {schema['enum']}"
    elif error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        ops = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        allowed = "a number " + " and ".join(f"{ops[k]} {schema[k]}" for k in ops if k in schema)
    elif error.validator == "additionalProperties":
        known = schema.get("properties", {})
        extra = sorted(str(k) for k in error.instance if k not in known) if isinstance(error.instance, dict) else []
        return f"{key}: unknown key(s) {extra}; allowed keys: {sorted(known)}"
    elif error.validator == "required":
        return f"{key}: {error.message}"
    elif error.validator == "pattern" and "description" in schema:
        allowed = schema["description"]
    elif error.validator == "type":
        if error.instance is None and not error.absolute_path:
            return "the file is empty; expected a mapping of settings (see params.yaml)"
        allowed = f"type {schema['type']}"
    else:
        return f"{key}: {error.message}"
    return f"{key} = {error.instance!r} is not allowed; expected {allowed}"


TRAINING_KEYS = ("objective", "sigma_mode", "sigmas")  # what a trained entry has and a checkpoint entry must not


def _check_checkpoint_entries(cfg: Any, source: str) -> None:
    """A checkpoint entry names a model that exists: training settings beside it are refused."""
    entries = cfg.get("models") if isinstance(cfg, dict) else None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and "checkpoint" in entry:
            extra = [k for k in TRAINING_KEYS if k in entry]
            require(
                not extra,
                f"{source}: models.{i} has checkpoint {entry['checkpoint']!r} and the training settings {extra}: a "
                f"checkpoint entry is trained already (give one sigma, no objective / sigma_mode / sigmas)",
            )


def validate(cfg: Any, source: str = "params.yaml", *, semantics: bool = True) -> dict:
    """Validate ``cfg`` against the JSON schema; raise a one-line :class:`SmoothcertError`.

    ``semantics=False`` skips the checks beyond the schema (proven certificates, the dataset registry): a
    table-only command (``gather``) checks the values it reads without importing torch."""
    import jsonschema

    _check_checkpoint_entries(cfg, source)

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        if best.validator == "oneOf" and best.context:
            best = sorted(best.context, key=lambda e: e.validator == "type")[0]
        raise SmoothcertError(f"{source}: {_describe(best)}")
    if semantics:
        _check_semantics(cfg, source)
    return cfg


MAX_INT = 2**63 - 1  # every integer must fit int64 (torch, numpy)
MAX_SEED = 2**32 - 1  # seeds are mixed into per-epoch torch seeds (seed * 1000 + epoch)
MAX_DRAWS = 10**9  # certify.n0 / certify.n: more draws per input than any run can make


def _numbers(obj, path: str = ""):
    """(dotted key, value) for every number in a nested config."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}.{i}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _check_root(cfg: dict, source: str) -> None:
    """data.root may be written to (download: true) only as a relative path inside the project."""
    root = str(cfg["data"]["root"])
    if not cfg["data"]["download"]:
        return  # read only: an absolute path to an existing copy (e.g. /datasets/imagenet) is fine
    parts = Path(root).parts
    require(
        not Path(root).is_absolute() and not root.startswith("~") and ".." not in parts and "\\" not in root,
        f"{source}: data.root = {root!r} is not allowed with download: true; downloads go to a relative "
        f"path inside the project (no leading / or ~, no ..), or set download: false to read an existing copy",
    )


def _check_certificates(cfg: dict, source: str) -> None:
    """Every method × norm (× the method's variant key) the config runs has a proven certificate
    (``Method.certified_norms``), and every section a configured method or model reads is present."""
    from smoothcert import methods

    runs = [
        (f"models.{i}", method, entry["norm"]) for i, entry in enumerate(cfg["models"]) for method in entry["methods"]
    ]
    if cfg.get("video") is not None:
        runs += [("video", method, VIDEO_NORM) for method in cfg["video"]["methods"]]
    for where, name, norm in runs:
        method = methods.get(name)
        section = cfg.get(method.section) if method.section else None
        require(
            method.section is None or section is not None,
            f"{source}: {where}.methods has {name}, which needs the {method.section} section",
        )
        allowed = method.certified_norms(section)
        keys = (
            f"{where}.methods has {name} with {where}.norm = {norm}"
            if where != "video"
            else f"video.methods has {name}, certified in {norm}"
        )
        variant = f" and {method.section}.{method.variant} = {section[method.variant]}" if method.variant else ""
        require(
            norm in allowed,
            f"{source}: {keys}{variant}: no proven certificate for this combination "
            f"(docs/soundness.md); proven norms: {list(allowed)}",
        )
    for i, entry in enumerate(cfg["models"]):
        if "checkpoint" in entry:
            continue  # trained already: reads no training section
        needs = OBJECTIVE_SECTIONS[entry["objective"]] + SIGMA_MODE_SECTIONS[entry["sigma_mode"]]
        for name in needs:
            require(
                cfg.get(name) is not None,
                f"{source}: models.{i} (objective {entry['objective']}, sigma_mode "
                f"{entry['sigma_mode']}) needs the {name} section",
            )


def _check_sigma_caps(cfg: dict, source: str) -> None:
    """A method section's ``sigma_max``, when set, exceeds the σ floor of its search: its own ``sigma_min``, or that
    of the method it starts from (``init_from``)."""
    from smoothcert import methods

    for m in methods.registry().values():
        section = cfg.get(m.section) if m.section else None
        if not section or section.get("sigma_max") is None:
            continue
        floor_name = (
            m.section if "sigma_min" in section else (methods.get(m.init_from).section if m.init_from else None)
        )
        floor = (cfg.get(floor_name) or {}).get("sigma_min") if floor_name else None
        require(
            floor is None or section["sigma_max"] > floor,
            f"{source}: {m.section}.sigma_max = {section['sigma_max']} must exceed {floor_name}.sigma_min = {floor}",
        )


def _check_semantics(cfg: dict, source: str) -> None:
    for key, value in _numbers(cfg):
        require(math.isfinite(value), f"{source}: {key} = {value!r} is not allowed; numbers must be finite")
        require(abs(value) <= MAX_INT or isinstance(value, float), f"{source}: {key} = {value} does not fit in 64 bits")
    require(cfg["seed"] <= MAX_SEED, f"{source}: seed = {cfg['seed']} is not allowed; expected 0 <= seed <= {MAX_SEED}")
    for key in ("n0", "n"):
        require(
            cfg["certify"][key] <= MAX_DRAWS,
            f"{source}: certify.{key} = {cfg['certify'][key]} is not allowed; expected at most {MAX_DRAWS:.0e} draws",
        )
    cc = cfg["certify"]
    if cc["mode"] == "sequential":
        sq = cc["sequential"]
        require(
            sq["n_min"] <= sq["n_max"] <= MAX_DRAWS,
            f"{source}: certify.sequential.n_min = {sq['n_min']} and n_max = {sq['n_max']} are not allowed; "
            f"expected n_min <= n_max <= {MAX_DRAWS:.0e} draws",
        )
    _check_root(cfg, source)
    video = cfg.get("video")
    require(
        not (video and video["enabled"] and not video["methods"]),
        f"{source}: video.enabled is true but video.methods is empty; name a method or set enabled: false",
    )
    if video:
        require(
            video["window"] <= video["frames"],
            f"{source}: video.window = {video['window']} must be <= video.frames = {video['frames']}",
        )
    _check_certificates(cfg, source)
    _check_sigma_caps(cfg, source)
    ids = [m.id for m in model_specs(cfg)]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    require(
        not twice,
        f"{source}: models lists the same model twice: {twice} (same objective, sigma_mode, norm and sigma; "
        f"for checkpoint entries, same file name: give each a distinct name)",
    )
    from smoothcert.data import FILE_DATASETS, info

    require(cfg["model"]["arch"] is not None, f"{source}: model.arch must be set")
    if cfg["data"]["dataset"] == "imagenet":
        root = Path(cfg["data"]["root"])
        require(
            root.is_dir(), f"{source}: data.root = {str(root)!r} does not exist; imagenet needs train/ and val/ there"
        )
    if cfg["data"]["dataset"] not in FILE_DATASETS:
        info(cfg["data"]["dataset"])


def load(path: str | Path = "params.yaml", overrides: tuple[str | Path, ...] = (), *, semantics: bool = True) -> dict:
    """Read a YAML config file, merge ``overrides`` over it in order, and validate the result (:func:`validate`).

    The merge is Snakemake's own (``snakemake.utils.update_config``, what ``--configfile`` does): mappings
    merge key by key, any other value (a list included) replaces the one before it.
    """
    path = Path(path)
    cfg = read_yaml(path)
    if not overrides:
        return validate(cfg, str(path), semantics=semantics)
    from snakemake.utils import update_config

    for override in map(Path, overrides):
        extra = read_yaml(override)
        require(isinstance(extra, dict), f"{override}: an override must be a mapping of params.yaml keys")
        require(isinstance(cfg, dict), f"{path}: the config must be a mapping")
        update_config(cfg, extra)
    return validate(cfg, " + ".join(map(str, (path, *overrides))), semantics=semantics)


def freeze(cfg: dict, folder: str | Path) -> str:
    """Write ``cfg`` to ``folder/config-<hash>.yaml`` (atomically, once) and return the path.

    The name is a hash of the content, so concurrent workflows never overwrite each other's copy.
    """
    import hashlib

    from smoothcert.artifacts import write_text

    text = yaml.safe_dump(cfg, sort_keys=True)
    path = Path(folder) / f"config-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.exists():
        write_text(path, text)
    return str(path)


PRETRAINED = "pretrained"  # the objective of a checkpoint entry (a model trained elsewhere)
# A checkpoint entry's optional keys that say how its file is read (defaults: the schema's pretrained_model).
LOADING_KEYS = ("format", "arch", "kwargs", "normalize", "outputs")


@dataclass(frozen=True)
class ModelSpec:
    """One base model: training objective, fixed/data-dependent σ, norm (noise) and σ.

    A checkpoint entry (``objective`` = ``"pretrained"``, one σ) has ``checkpoint`` (the file), ``name``
    (the id's middle part) and ``loading`` (format, arch, kwargs, normalize, outputs; defaults filled in).
    """

    objective: str
    sigma_mode: str
    norm: str
    sigma: float
    methods: tuple[str, ...]
    checkpoint: str | None = None
    name: str | None = None
    loading: dict | None = field(default=None, compare=False, hash=False)

    @property
    def id(self) -> str:
        middle = self.name if self.pretrained else self.sigma_mode
        return f"{self.objective}-{middle}-{self.norm}-{self.sigma:g}"

    @property
    def pretrained(self) -> bool:
        return self.checkpoint is not None

    @property
    def noise(self) -> str:
        return NOISE_OF_NORM[self.norm]


def file_stem(path: str) -> str:
    """A model id part from a file name: lower case, without its suffixes, other characters as ``_``."""
    name = Path(path).name.lower()
    for suffix in (".tar", ".pth", ".pt", ".ckpt", ".onnx", ".ts", ".jit", ".bin", ".zip"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "model"


@functools.cache
def _schema_file() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def schema_default(*path: str):
    """The default the schema states for the optional key at ``path`` (e.g. ``"report", "compare_paper"``)."""
    node = _schema_file()
    for part in path:
        node = node["definitions"][part] if part in node.get("definitions", {}) else node["properties"][part]
    return node["default"]


def loading_defaults() -> dict:
    """The defaults of a checkpoint entry's loading keys, as the schema states them."""
    return {k: copy.deepcopy(schema_default("pretrained_model", k)) for k in LOADING_KEYS}


def _spec(entry: dict) -> list[ModelSpec]:
    if "checkpoint" not in entry:
        return [
            ModelSpec(entry["objective"], entry["sigma_mode"], entry["norm"], float(s), tuple(entry["methods"]))
            for s in entry["sigmas"]
        ]
    loading = {**loading_defaults(), **{k: entry[k] for k in LOADING_KEYS if k in entry}}
    return [
        ModelSpec(
            PRETRAINED,
            "fixed",
            entry["norm"],
            float(entry["sigma"]),
            tuple(entry["methods"]),
            checkpoint=str(entry["checkpoint"]),
            name=entry.get("name") or file_stem(entry["checkpoint"]),
            loading=loading,
        )
    ]


def model_specs(cfg: dict) -> list[ModelSpec]:
    """Every base model the config asks for, in config order."""
    return [spec for e in cfg["models"] for spec in _spec(e)]


def trained_specs(cfg: dict) -> list[ModelSpec]:
    """The models the pipeline trains (every entry but the checkpoint entries)."""
    return [s for s in model_specs(cfg) if not s.pretrained]


def model_spec(cfg: dict, model_id: str) -> ModelSpec:
    """The :class:`ModelSpec` whose id is ``model_id``."""
    for spec in model_specs(cfg):
        if spec.id == model_id:
            return spec
    raise SmoothcertError(f"model {model_id!r} is not in the config; known: {[m.id for m in model_specs(cfg)]}")


def experiments(cfg: dict) -> list[tuple[str, str]]:
    """(model id, method) pairs, in config order."""
    return [(m.id, method) for m in model_specs(cfg) for method in m.methods]


def shard_names(cfg: dict) -> list[str]:
    """Shard labels ``"i-of-n"`` for the configured number of shards."""
    n = cfg["test"]["shards"]
    return [f"{i}-of-{n}" for i in range(n)]


def parse_shard(label: str) -> tuple[int, int]:
    """``"i-of-n"`` → (i, n), checked."""
    try:
        i, n = (int(p) for p in label.split("-of-"))
    except ValueError as exc:
        raise SmoothcertError(f"shard {label!r} is not of the form i-of-n") from exc
    require(0 <= i < n, f"shard {label!r}: need 0 <= i < n")
    return i, n


def resolve_device(cfg: dict):
    """The torch device named by ``cfg['device']`` (auto: CUDA when present).

    CUDA means one GPU of this host taken for the life of the process (:func:`runtime.take_gpu`, under
    ``cfg['gpu_locks']``): ``cuda:i`` of a free device, made the current one; while every device is taken,
    the call waits. With ``SMOOTHCERT_FAKE_GPUS`` (tests only) the slot is taken and the job computes on the CPU.
    """
    import torch

    from smoothcert import runtime

    want = cfg.get("device", "auto")
    if want == "cpu":
        return torch.device("cpu")
    gpus = runtime.fake_gpus() is not None or torch.cuda.is_available()
    if want == "auto" and not gpus:
        return torch.device("cpu")
    require(gpus, "device = 'cuda' but no CUDA device is visible")
    # a config stored in an older checkpoint has no gpu_locks: the project's params.yaml says where they are
    locks = cfg["gpu_locks"] if "gpu_locks" in cfg else yaml.safe_load((ROOT / "params.yaml").read_text())["gpu_locks"]
    slot = runtime.take_gpu(locks)
    if slot.fake:
        return torch.device("cpu")
    torch.cuda.set_device(slot.index)
    return torch.device("cuda", slot.index)
