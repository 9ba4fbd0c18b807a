"""The stage map: for every pipeline stage, the params.yaml keys and the package code it reads.

One table, three readers: the rerun triggers of each Snakemake rule (:func:`trigger_params`), the ``params``/``deps``
of dvc.yaml (:func:`dvc_yaml`, written by ``smoothcert stages --write``) and tests/test_stages.py, which edits leaves
of params.yaml and checks that DVC marks, and Snakemake plans, exactly the stages and jobs this map names.

What a job reads (:func:`reads`) is what its result is a function of, besides its input files:

- ``reads`` of its :class:`Stage`, plus what its model or method adds: a training objective's section
  (:data:`OBJECTIVE_READS`, :data:`SIGMA_MODE_READS`), a method's section (``Method.section``: read by
  ``optimize`` for per-input-σ methods, by ``certify`` and ``video`` for the others);
- the code of its command: the import closure of ``smoothcert.commands.<stage>`` and ``smoothcert.cli``
  (found from the source, never imported), plus the modules of the methods it runs (:func:`code_files`, hashed
  by :func:`stage_code_digest`): an edit reruns the jobs importing it (tests/test_stages.py: the edit matrix).

A stage's ``grid`` keys say which jobs exist (models, shards, clips). They are DVC params of its DVC stage, not
Snakemake triggers: Snakemake sees a grid edit as outputs to make or a changed list of inputs. :data:`NOT_READ` names
the keys no result depends on. Every leaf of params.yaml is read, in a grid, or in :data:`NOT_READ` (tested).
Importing this module imports neither torch nor a method's implementation.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

import yaml

from smoothcert import config as config_mod
from smoothcert import methods as methods_mod
from smoothcert.errors import SmoothcertError, require

PACKAGE = Path(__file__).resolve().parents[1]  # src/smoothcert
ROOT = config_mod.ROOT  # the repository: dvc.yaml, Snakefile, workflow/
DVC_YAML = ROOT / "dvc.yaml"
REGISTRY = methods_mod.__name__
CLI = "smoothcert.cli"


@dataclass(frozen=True)
class Part:
    """The section ``section`` of params.yaml but its keys ``but``."""

    section: str
    but: tuple[str, ...] = ()


TEST_INPUTS = Part("test", but=("shards",))  # which test inputs; the number of shards only splits the work
DATASET = "data.dataset"
SHARDED_GRID = ("models", "test.shards")
VIDEO_GRID = ("video.enabled", "video.sigmas", "video.methods")

# A training objective's own section, and what a σ mode adds (dd: σ per training sample, refined by the
# DDRS ascent of the data_dependent section, kept above ddrs.sigma_min).
OBJECTIVE_READS = config_mod.OBJECTIVE_SECTIONS
SIGMA_MODE_READS = config_mod.SIGMA_MODE_SECTIONS

# Keys no stage's result depends on, and why.
NOT_READ = {
    "device": "where jobs run, not what they compute (auto resolves per machine)",
    "gpu_locks": "which GPU a job takes, not what it computes",
    "train.workers": "how batches are fed; no number depends on it",
}


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: one Snakemake rule (``rules/<rules>.smk``) running ``smoothcert <command>``.

    ``methods``: which methods a job adds the code of, and of which the section: ``"optimize"`` (its per-input-σ
    method; section read), ``"certify"`` (its method; section read unless per-input σ: its search reads it),
    ``"clips"`` (every clip method; same), ``"memory"`` (its method, code only), ``"all"`` (every method, code only).
    """

    name: str
    command: str
    rules: str
    reads: tuple = ()
    grid: tuple[str, ...] = ()
    methods: str | None = None


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("prepare_data", "prepare_data", "data", reads=("seed", "data")),
        Stage(
            "train",
            "train",
            "train",
            reads=("seed", DATASET, "model", Part("train", but=("workers",))),
            grid=("models",),
        ),
        Stage(
            "optimize",
            "optimize_sigma",
            "optimize",
            reads=("seed", DATASET, "model", "channels_last", TEST_INPUTS),
            grid=SHARDED_GRID,
            methods="optimize",
        ),
        Stage(
            "certify",
            "certify",
            "certify",
            reads=("seed", DATASET, "model", "channels_last", TEST_INPUTS, "certify"),
            grid=SHARDED_GRID,
            methods="certify",
        ),
        Stage("gather", "gather", "certify", grid=SHARDED_GRID),
        Stage("memory_check", "memory_check", "memory", reads=(DATASET,), grid=SHARDED_GRID, methods="memory"),
        Stage(
            "video",
            "video",
            "video",
            reads=(
                "seed",
                "data.test_fraction",
                TEST_INPUTS,
                "certify",
                Part("video", but=("enabled", "sigmas")),
            ),
            grid=VIDEO_GRID,
            methods="clips",
        ),
        Stage(
            "report",
            "report",
            "report",
            reads=(DATASET, "models", "certify.alpha", "report"),
            grid=("models", *VIDEO_GRID),
            methods="all",
        ),
    )
}


def stage(name: str) -> Stage:
    """The :class:`Stage` called ``name`` (one-line error if unknown)."""
    require(name in STAGES, f"unknown stage {name!r}; known: {list(STAGES)}")
    return STAGES[name]


# ---------------------------------------------------------------- methods


def _methods(kind: str | None, cfg: dict | None = None, method: str | None = None) -> list:
    """The registered methods a job of a stage with ``methods=kind`` runs (all candidates if unknown)."""
    if kind is None:
        return []
    if method is not None:
        return [methods_mod.get(method)]
    every = [methods_mod.get(n) for n in methods_mod.names()]
    if kind == "optimize":
        return [m for m in every if m.per_input_sigma]
    if kind == "memory":
        return [m for m in every if m.memory]
    if kind == "clips":  # all of them, whatever video.methods: the clip model is trained for their patch geometry
        return [m for m in every if m.clips]
    return every


def _method_reads(kind: str | None, chosen: list) -> tuple[str, ...]:
    """The sections a job reads for ``chosen`` methods: the σ/θ search's in optimize, the others' elsewhere."""
    if kind not in ("optimize", "certify", "clips"):
        return ()
    wanted = [m for m in chosen if m.section and (m.per_input_sigma == (kind == "optimize"))]
    return tuple(dict.fromkeys(m.section for m in wanted))


def _method_modules(method) -> tuple[str, ...]:
    """The smoothcert modules that implement ``method``: those of its callables and "module:attr" strings."""
    found = []
    for f in fields(method):
        value = getattr(method, f.name)
        name = getattr(value, "__module__", None) if callable(value) else None
        if isinstance(value, str) and re.fullmatch(r"smoothcert(\.\w+)+(:\w+)?", value):
            name = value.split(":")[0]
        if name and name.startswith("smoothcert.") and name != REGISTRY:
            found.append(name)
    return tuple(dict.fromkeys(found))


# ---------------------------------------------------------------- params


def reads(name: str, cfg: dict | None = None, *, model: str | None = None, method: str | None = None) -> tuple:
    """The keys (dotted strings and :class:`Part` s) one job of stage ``name`` reads.

    ``model`` (a model id) and ``method`` narrow it to that job; without them, and without ``cfg``, the
    union over every model and method a config may ask for (what DVC tracks for the stage).
    """
    s = stage(name)
    keys = list(s.reads)
    if name == "train":
        if model is not None:
            spec = config_mod.model_spec(cfg, model)
            objectives, modes = [spec.objective], [spec.sigma_mode]
        else:
            objectives, modes = list(OBJECTIVE_READS), list(SIGMA_MODE_READS)
        for objective in objectives:
            keys += OBJECTIVE_READS.get(objective, (objective,))  # an unknown objective: its own section
        for mode in modes:
            keys += SIGMA_MODE_READS[mode]
    keys += _method_reads(s.methods, _methods(s.methods, cfg, method))
    return tuple(dict.fromkeys(keys))


def _label(key) -> str:
    return key if isinstance(key, str) else f"{key.section} but {', '.join(key.but)}"


def _value(cfg: dict, key):
    """The value of ``key`` in ``cfg`` (None where absent; a :class:`Part` as a dict)."""
    path = key.split(".") if isinstance(key, str) else [key.section]
    value = cfg
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(key, Part) and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in key.but}
    return value


# Stages whose jobs read a model file: for a checkpoint entry, the file is their input and how it is read
# (models[].format, arch, kwargs, normalize, outputs) is among their rerun triggers; the DVC stage running them
# depends on the files params.yaml names.
MODEL_FILE_STAGES = ("optimize", "certify")


def trigger_params(cfg: dict, name: str, *, model: str | None = None, method: str | None = None) -> dict:
    """A Snakemake ``params`` value holding everything one job of stage ``name`` reads.

    ``{"params": {key: value}, "code": digest}``: the values of :func:`reads` in ``cfg`` (keys sorted) and a sha256 of
    the content of :func:`code_files`, so an edit of either reruns the job (``--rerun-triggers params``).
    """
    values = {_label(k): _value(cfg, k) for k in reads(name, cfg, model=model, method=method)}
    spec = next((s for s in config_mod.model_specs(cfg) if s.id == model), None) if model is not None else None
    if spec is not None and spec.pretrained and name in MODEL_FILE_STAGES:  # how its file is read
        values["model_file"] = {"checkpoint": spec.checkpoint, **spec.loading}
    return {"params": _canonical(values), "code": stage_code_digest(name, cfg, method=method)}


def stage_code_digest(name: str, cfg: dict | None = None, *, method: str | None = None) -> str:
    """sha256 of the source of every file one job of stage ``name`` runs (:func:`code_files`; ``method``: that
    method's job). The one code fingerprint of a stage: the rerun trigger and resumable stamps hold it."""
    return _digest(code_files(name, cfg, method=method, package_paths=True))


def code_fingerprint(name: str, cfg: dict | None = None, *, method: str | None = None) -> str:
    """:func:`stage_code_digest` as a fingerprint part (``"sha256:<hex>"``): resumable work (a certify ``.part``, a
    training checkpoint) stamped with it is resumed only by the same code, so rows or epochs of two versions
    of the code never mix."""
    return "sha256:" + stage_code_digest(name, cfg, method=method)


def module_fingerprint(module: str) -> str:
    """:func:`code_fingerprint` of ``module``'s import closure alone (the clip model: its training code)."""
    files = sorted(str(_module_file(m).relative_to(PACKAGE.parent)) for m in _closure([module]))
    return "sha256:" + _digest(tuple(files))


def _canonical(value):
    """``value`` with every mapping's keys in sorted order: Snakemake compares params by their text, so the
    order keys happen to have in a YAML file (params.yaml vs a --configfile override) must not matter."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


@cache
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(paths: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for rel in paths:
        h.update(f"{rel}\0{_sha256(PACKAGE.parent / rel)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- code


def _module_file(module: str) -> Path | None:
    """The source file of ``smoothcert[.x.y]`` (None if it is no module of the package)."""
    parts = module.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _imports(module: str) -> tuple[str, ...]:
    """smoothcert modules ``module`` imports, at module level or inside functions.

    Imports inside a module-level ``__getattr__`` (a lazy re-export) are not followed: they run only for
    the attribute named, and code importing that attribute names its module.
    """
    path = _module_file(module)
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = {
        id(n) for fn in tree.body if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__" for n in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
    return tuple(m for m in dict.fromkeys(found) if m != module and _module_file(m) is not None)


# The stage map computes no result: jobs import it only to stamp their resumable work (:func:`code_fingerprint`),
# so it is no stage's code (else every edit of the map would rerun every job).
NOT_CODE = (__name__,)


def _closure(modules) -> set[str]:
    """``modules``, their parent packages and everything they import, transitively (not :data:`NOT_CODE`).

    The registry's own imports of its method modules are not followed (importing the registry loads
    every method): a stage gets the modules of the methods it runs from :func:`code_files`.
    """
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen or module in NOT_CODE or _module_file(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [m for m in _imports(module) if not (module == REGISTRY and m.startswith(REGISTRY + "."))]
    return seen


def code_files(
    name: str, cfg: dict | None = None, *, method: str | None = None, package_paths: bool = False
) -> tuple[str, ...]:
    """The source files one job of stage ``name`` runs, sorted; relative to the repository root.

    With ``package_paths``, relative to the folder holding the package (``smoothcert/...``), which is where
    the code that runs lives, wherever it is installed.
    """
    s = stage(name)
    require(
        _module_file(f"smoothcert.commands.{s.command}") is not None,
        f"stage {name}: no module smoothcert.commands.{s.command}",
    )
    entry = [CLI, f"smoothcert.commands.{s.command}"]
    for m in _methods(s.methods, cfg, method):
        entry += _method_modules(m)
    files = sorted(_module_file(m).relative_to(PACKAGE.parent) for m in _closure(entry))
    base = Path() if package_paths else PACKAGE.parent.relative_to(ROOT)
    return tuple(str(base / f) for f in files)


# ---------------------------------------------------------------- DVC


@dataclass(frozen=True)
class DvcStage:
    """A stage of dvc.yaml: the map stages one Snakemake command runs, with the folders they write."""

    name: str
    stages: tuple[str, ...]
    target: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


# Output folders (the Snakefile's DATA, MODELS, RESULTS, REPORT, METRICS without the dataset).
DATA, MODELS, RESULTS, REPORT, METRICS = "data/prepared", "models", "results", "report", "metrics"
SNAKEMAKE = "snakemake --profile workflow/profiles/local"
HTML_REPORT, PLOT_TEMPLATE = "report.html", "workflow/dvc/certified_accuracy.json"  # snakemake --report, dvc plots
# Every DVC stage reads these: the DAG, and the schema that validates the config (and holds its defaults).
WORKFLOW = ("Snakefile", "workflow/schemas/config.schema.yaml")

DVC_STAGES = (
    DvcStage("prepare_data", ("prepare_data",), "data_all", deps=(), outs=(DATA,)),
    DvcStage("train", ("train",), "train_all", deps=(DATA,), outs=(MODELS,)),
    # everything the report reads but the report: σ/θ, certificates, memory step, clips
    DvcStage(
        "certify",
        ("optimize", "certify", "gather", "memory_check", "video"),
        "--omit-from report",
        deps=(DATA, MODELS),
        outs=(RESULTS,),
    ),
    DvcStage("report", ("report",), "report_all", deps=(DATA, MODELS, RESULTS), outs=(REPORT, HTML_REPORT)),
)


def dvc_stage_of(name: str) -> DvcStage:
    """The DVC stage that runs map stage ``name``."""
    return next(d for d in DVC_STAGES if name in d.stages)


def _minimal(keys) -> list[str]:
    """Dotted DVC params covering ``keys``, in order: a :class:`Part` as its whole section (a superset: DVC
    stages are coarser than jobs), and no key under a section already listed."""
    keys = [k if isinstance(k, str) else k.section for k in keys]
    keys = list(dict.fromkeys(keys))
    return [k for k in keys if not any(k.startswith(other + ".") for other in keys if other != k)]


def dvc_params(dvc: DvcStage) -> list[str]:
    """Every params.yaml key a job of one of ``dvc``'s stages may read, or that says which jobs exist."""
    keys: list = []
    for name in dvc.stages:
        keys += [*reads(name), *stage(name).grid]
    return _minimal(keys)


def dvc_deps(dvc: DvcStage) -> list[str]:
    """``dvc``'s input folders, then the rule files, the workflow and every source file its stages run."""
    rules = [f"workflow/rules/{stage(n).rules}.smk" for n in dvc.stages]
    code = sorted({f for n in dvc.stages for f in code_files(n)})
    files = params_checkpoints() if any(n in MODEL_FILE_STAGES for n in dvc.stages) else []
    return list(dict.fromkeys([*dvc.deps, *files, *rules, *WORKFLOW, *code]))


def params_checkpoints(path: Path | None = None) -> list[str]:
    """The model files of params.yaml's checkpoint entries (DVC tracks them by content), in config order."""
    cfg = yaml.safe_load((path or ROOT / "params.yaml").read_text()) or {}
    return [str(e["checkpoint"]) for e in cfg.get("models") or [] if isinstance(e, dict) and "checkpoint" in e]


HEADER = """\
# Generated from the stage map (src/smoothcert/pipeline/stages.py) by `smoothcert stages --write`;
# `smoothcert stages --check` (and tests/test_stages.py) fail when it differs. Do not edit by hand.
# Each stage runs one Snakemake command, so the DAG lives in the Snakefile only. Outputs persist: DVC
# never deletes them before a stage runs, and Snakemake redoes only the jobs whose inputs, params or
# code changed (the same stage map sets each rule's rerun triggers).
"""


def dvc_yaml() -> str:
    """The text of dvc.yaml."""
    persist = {"persist": True}
    stages = {}
    for d in DVC_STAGES:
        entry = {
            "cmd": f"{SNAKEMAKE} {d.target}",
            "deps": dvc_deps(d),
            "params": dvc_params(d),
            "outs": [{out: dict(persist)} for out in d.outs],
        }
        if d.name == "report":  # report.html from the same run (never older than the tables); metrics DVC outputs
            entry["cmd"] = [entry["cmd"], f"{SNAKEMAKE} --report {HTML_REPORT}"]
            entry["deps"].append(PLOT_TEMPLATE)
            entry["metrics"] = [{f"{METRICS}/metrics.json": dict(persist)}]
            plot = dict(x="radius", y="certified_accuracy", template=PLOT_TEMPLATE, title="certified accuracy")
            entry["plots"] = [{f"{METRICS}/curves.csv": {**plot, **persist}}]
        stages[d.name] = entry
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


def check_dvc_yaml(path: Path = DVC_YAML) -> None:
    """Raise a one-line :class:`SmoothcertError` unless ``path`` is what :func:`dvc_yaml` generates."""
    require(path.is_file(), f"{path} does not exist; run `smoothcert stages --write`")
    if path.read_text() != dvc_yaml():
        raise SmoothcertError(f"{path} differs from the stage map; run `smoothcert stages --write`")


def table() -> str:
    """The stage map as a markdown table (params read per job, grid keys, DVC stage)."""
    lines = ["| stage | DVC stage | reads (every job) | per model / method | grid |", "|---|---|---|---|---|"]
    for s in STAGES.values():
        extra = [k for k in reads(s.name) if k not in s.reads]
        cells = [", ".join(_label(k) for k in keys) or "–" for keys in (s.reads, extra, s.grid)]
        lines.append(f"| {s.name} | {dvc_stage_of(s.name).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_dvc_yaml(path: Path = DVC_YAML) -> Path:
    """Write :func:`dvc_yaml` to ``path`` (atomically); return the path."""
    from smoothcert.artifacts import write_text

    write_text(path, dvc_yaml())
    return path
