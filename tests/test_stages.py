"""The stage map (smoothcert.pipeline.stages) against dvc.yaml, the code, DVC and Snakemake.

Fast: dvc.yaml is what the map generates; every leaf of params.yaml is read by a stage, names which jobs
exist, or is listed as read by none; the map agrees with the fingerprints the code stamps on training
checkpoints and certificate shards; importing the map loads no torch.

Slow (one tiny pipeline in a fresh copy, built by ``dvc repro`` as the README says, with
PYTHONDONTWRITEBYTECODE unset so bytecode lands next to the sources as on a user's machine):
``dvc status`` is clean after it and after importing the package; ``dvc repro`` on outputs Snakemake
already made runs no job and rewrites no file; editing one leaf of each section marks exactly the DVC
stages and makes Snakemake plan exactly the jobs that read it (the rest of the plan only downstream of
them); editing a source file reruns the jobs that import it (the edit matrix: every file against the stage
map's closures, a sample of them against `snakemake -n` and `dvc status`); ``dvc exp run -S certify.n=… -S certify.alpha=…``
reruns certification, never σ/θ optimization or training.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from smoothcert import config as config_mod
from smoothcert.pipeline import stages

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _leaves(obj, path=()):
    """(dotted key, value) of every leaf of a config; lists are leaves."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, str(k)))
    else:
        yield ".".join(path), obj


def _covers(key, leaf: str) -> bool:
    if isinstance(key, stages.Part):
        return (leaf == key.section or leaf.startswith(key.section + ".")) and not any(
            leaf == f"{key.section}.{b}" or leaf.startswith(f"{key.section}.{b}.") for b in key.but
        )
    return leaf == key or leaf.startswith(key + ".")


# ---------------------------------------------------------------- fast


def test_dvc_yaml_is_generated_from_the_map():
    assert stages.DVC_YAML.read_text() == stages.dvc_yaml(), "run `smoothcert stages --write`"
    dvc = yaml.safe_load(stages.DVC_YAML.read_text())["stages"]
    for d in stages.DVC_STAGES:
        assert all(next(iter(o.values())).get("persist") for o in dvc[d.name]["outs"]), "DVC must not delete outputs"
        assert all((REPO / p).exists() for p in dvc[d.name]["deps"] if not p.startswith(d.deps)), d.name


def test_every_leaf_of_params_is_placed(params):
    """Each leaf is read by some stage, says which jobs exist, or is named in NOT_READ; each key the map
    names exists in params.yaml (DVC refuses params a file lacks)."""
    keys = [k for s in stages.STAGES for k in (*stages.reads(s), *stages.stage(s).grid)]
    for leaf, _ in _leaves(params):
        placed = any(_covers(k, leaf) for k in keys) or leaf in stages.NOT_READ
        assert placed, f"params.yaml leaf {leaf} is in no stage of the map and not in NOT_READ"
        assert not (leaf in stages.NOT_READ and any(_covers(k, leaf) for k in keys)), leaf
    present = {leaf for leaf, _ in _leaves(params)}
    for d in stages.DVC_STAGES:
        for key in stages.dvc_params(d):
            assert any(p == key or p.startswith(key + ".") for p in present), f"{d.name}: {key} not in params.yaml"


def test_importing_the_map_loads_no_torch():
    code = "import sys, smoothcert.pipeline.stages as s; s.dvc_yaml(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_code_follows_imports():
    every = set(stages.code_files("certify"))
    for name in stages.STAGES:
        files = stages.code_files(name)
        assert all((REPO / f).is_file() for f in files)
        assert f"src/smoothcert/commands/{stages.stage(name).command}.py" in files
    gather = stages.code_files("gather")
    assert not any("/training/" in f for f in gather), "gather imports no training code"
    for method in stages.methods_mod.names():
        own = set(stages.code_files("certify", method=method))
        assert own <= every
        for module in stages._method_modules(stages.methods_mod.get(method)):
            assert str(stages._module_file(module).relative_to(REPO)) in own, (method, module)


def _job_kinds() -> dict[tuple[str, str | None], set[str]]:
    """(stage, method) → the source files one job of it runs, for every job kind a workflow rule triggers on:
    per method where the rule has a method wildcard, else one for the stage (every method it may run)."""
    per_method = {"optimize", "certify", "memory_check"}
    kinds = {}
    for name, s in stages.STAGES.items():
        chosen = [m.name for m in stages._methods(s.methods)] if name in per_method else [None]
        for method in chosen:
            kinds[(name, method)] = set(stages.code_files(name, method=method))
    return kinds


def _readers(kinds: dict, path: str) -> set[tuple[str, str | None]]:
    return {kind for kind, files in kinds.items() if path in files}


SOURCES = sorted(str(p.relative_to(REPO)) for p in (REPO / "src" / "smoothcert").rglob("*.py"))
NEVER_RETRAIN = (  # an edit of these reruns neither prepare_data nor train
    "src/smoothcert/pipeline/",
    "src/smoothcert/reporting/",
    "src/smoothcert/commands/certify.py",
    "src/smoothcert/commands/report.py",
    "src/smoothcert/engine/regions.py",
)


def _own_jobs(path: str) -> set[str]:
    """The methods whose jobs an edit of method module ``path`` may rerun: those it implements, and those
    whose search starts from one of them (``init_from``: their θ input is its output, so they rerun anyway)."""
    registry = stages.methods_mod
    own = {
        n
        for n in registry.names()
        for m in stages._method_modules(registry.get(n))
        if str(stages._module_file(m).relative_to(REPO)) == path
    }
    return own | {n for n in registry.names() if registry.get(n).init_from in own}


def test_edit_matrix():
    """Every source file, edited once: the jobs whose rerun trigger it changes (the stage map's closures,
    which dvc.yaml's deps are made of too). Certification, reporting and the memory step never retrain;
    reporting reruns the report alone; a method module reruns its own jobs (and the report, which lists
    every method) alone. The slow test below checks a sample against `snakemake -n` and `dvc status`."""
    kinds = _job_kinds()
    for path in SOURCES:
        readers = _readers(kinds, path)
        stages_hit = {name for name, _ in readers}
        if path.startswith(NEVER_RETRAIN):
            assert not stages_hit & {"prepare_data", "train"}, f"editing {path} retrains: {sorted(readers)}"
        if path.startswith("src/smoothcert/reporting/"):
            assert stages_hit <= {"report"}, f"editing {path} reruns {sorted(readers)}"
        module = path.removeprefix("src/smoothcert/methods/")
        if module != path and module != "__init__.py":
            own = _own_jobs(path)
            assert own, f"{path} implements no registered method"
            for name, method in readers:
                clips = {m.name for m in stages._methods(stages.stage(name).methods)} & own
                assert name == "report" or method in own or (method is None and clips), (path, name, method)
    # and the matrix is not vacuous: what the issue measured on the old layout now reruns little
    assert {n for n, _ in _readers(kinds, "src/smoothcert/pipeline/certify.py")} >= {"certify", "optimize"}
    assert {n for n, _ in _readers(kinds, "src/smoothcert/engine/noise.py")} >= {"train", "certify"}
    assert {n for n, _ in _readers(kinds, "src/smoothcert/data/__init__.py")} >= set(stages.STAGES) - {"gather"}


def test_shared_cli_helpers_import_no_stage_code():
    """commands/_common is imported by every command: what it imports is code every stage runs."""
    assert not [m for m in stages._imports("smoothcert.commands._common") if m.startswith("smoothcert.pipeline")]
    assert not [m for m in stages._closure(["smoothcert.commands.train"]) if m.startswith("smoothcert.pipeline")]


def test_stage_code_digest_is_the_trigger(params):
    """The one code fingerprint of a stage: the rule's trigger holds it, and it follows the files hashed."""
    for name in stages.STAGES:
        assert stages.trigger_params(params, name)["code"] == stages.stage_code_digest(name, params)
    assert stages.stage_code_digest("certify", method="cohen") != stages.stage_code_digest("certify", method="ancer")


def _schema_node(schema: dict, leaf: str) -> dict:
    node = schema
    for part in leaf.split("."):
        node = node.get("properties", {}).get(part, {})
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _mutated(value, node: dict):
    """Another valid value for a leaf: the next enum value, a flipped bool, a larger number, a longer list."""
    enum = node.get("enum") or next((o["enum"] for o in node.get("oneOf", []) if "enum" in o), None)
    if enum:
        return enum[(enum.index(value) + 1) % len(enum)] if value in enum else enum[0]
    if isinstance(value, bool):
        return not value
    if value is None:
        return 0.5
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2
    if isinstance(value, list):
        return value + value[-1:]
    return f"{value}-edited"


def _set(cfg: dict, leaf: str, value) -> dict:
    out = copy.deepcopy(cfg)
    *path, last = leaf.split(".")
    node = out
    for part in path:
        node = node[part]
    node[last] = value
    return out


def _fingerprint_leaves(params, fingerprint, reads, upstream):
    """Leaves whose edit changes ``fingerprint(cfg)`` must be read (or reach the job through ``upstream``
    input files); leaves read must change it. Returns the read leaves that do not (for the caller's exceptions)."""
    schema = yaml.safe_load(config_mod.SCHEMA.read_text())
    base = fingerprint(params)
    silent = set()
    for leaf, value in _leaves(params):
        if leaf == "models":
            continue  # the job's model is its id (a wildcard), not the list
        edited = fingerprint(_set(params, leaf, _mutated(value, _schema_node(schema, leaf))))
        read = any(_covers(k, leaf) for k in reads)
        if edited != base:
            assert read or leaf.startswith(upstream), f"{leaf} changes the job's fingerprint but the map omits it"
        elif read:
            silent.add(leaf)
    return silent


def test_map_agrees_with_the_training_fingerprint(params):
    torch = pytest.importorskip("torch")
    from smoothcert.training.loop import training_fingerprint

    split = (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    for spec in config_mod.model_specs(params):

        def fp(cfg, spec=spec):
            return training_fingerprint(cfg, spec, split, split)

        silent = _fingerprint_leaves(params, fp, stages.reads("train", params, model=spec.id), "data.")
        # the fingerprint decides resumption: a longer run resumes a shorter one, so epochs is left out of it
        assert silent <= {"train.epochs"}, (spec.id, silent)


def test_map_agrees_with_the_certificate_fingerprint(params):
    torch = pytest.importorskip("torch")
    import numpy as np

    from smoothcert.pipeline.certify import shard_fingerprint

    spec = config_mod.model_specs(params)[0]
    x, y, idx = torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), np.zeros(1, dtype=np.int64)
    model = torch.nn.Linear(1, 1)
    for method in spec.methods:

        def fp(cfg, method=method):
            return shard_fingerprint(cfg, spec, method, x, y, idx, model=model)

        silent = _fingerprint_leaves(params, fp, stages.reads("certify", params, method=method), "data.")
        # batch_size groups draws, the noise is fixed per chunk: rows are the same (the time column aside)
        assert silent <= {"certify.batch_size", "model.arch"}, (method, silent)


def test_map_agrees_with_the_clip_model_fingerprint(params):
    torch = pytest.importorskip("torch")
    from smoothcert.methods.smooth_reduce import clip_geometry
    from smoothcert.training import clips
    from smoothcert.training import loop as train_mod

    sigma = params["video"]["sigmas"][0]
    split = (torch.zeros(2, 1, 1, 8, 8), torch.zeros(2, dtype=torch.long))

    def fp(cfg):
        v = cfg["video"]
        settings = clips.training_settings(cfg, clip_geometry(cfg, v["frames"], v["canvas"], v["canvas"]))
        return train_mod._stamp(cfg, clips.spec(cfg, sigma), settings, split, split, None)

    silent = _fingerprint_leaves(params, fp, stages.reads("video", params), "nothing")
    # the clip model is one part of the job; certify.*, test.* and video.methods act on its certification; a
    # longer run resumes a shorter one, so video.train.epochs is left out
    assert all(
        leaf.startswith(("certify.", "test.", "smooth_reduce.")) or leaf in ("video.methods", "video.train.epochs")
        for leaf in silent
    ), silent


def test_clip_model_is_stamped_with_its_training_code_alone():
    """The video job certifies too, but its clip model's checkpoint holds the training code's digest only: an edit
    of certification, method or reporting code recertifies the clips without retraining their model."""
    modules = stages._closure(["smoothcert.training.clips"])
    assert {"smoothcert.training.loop", "smoothcert.training.models", "smoothcert.engine.noise"} <= modules
    stage_code = ("smoothcert.pipeline", "smoothcert.reporting", "smoothcert.commands", "smoothcert.methods.")
    assert not any(m.startswith(stage_code) for m in modules), sorted(modules)
    assert not {"smoothcert.engine.certify", "smoothcert.engine.certificates", "smoothcert.engine.regions"} & modules
    assert "src/smoothcert/pipeline/certify.py" in stages.code_files("video")
    assert stages.module_fingerprint("smoothcert.training.clips") != stages.code_fingerprint("video")


# ---------------------------------------------------------------- slow: a pipeline in a fresh copy

TINY = {  # merged over params.yaml: three models covering every objective, σ mode and method kind, and clips
    "test": {"start": 0, "step": 1, "limit": 4, "shards": 1},
    "train": {"epochs": 1},
    "models": [
        {
            "objective": "gaussian",
            "sigma_mode": "fixed",
            "norm": "l2",
            "sigmas": [0.25],
            "methods": ["cohen", "ddrs", "ancer", "smooth_reduce_max"],
        },
        {"objective": "macer", "sigma_mode": "fixed", "norm": "l1", "sigmas": [0.5], "methods": ["cohen"]},
        {"objective": "smoothadv", "sigma_mode": "dd", "norm": "l2", "sigmas": [0.25], "methods": ["cohen"]},
    ],
    "ddrs": {"iterations": 2, "samples": 4},
    "ancer": {"iterations": 2, "samples": 4},
    "video": {
        "enabled": True,
        "frames": 4,
        "canvas": 8,
        "sigmas": [0.25],
        "window": 2,
        "methods": ["cohen", "smooth_reduce_max"],
        "train": {"epochs": 1},
    },
    "certify": {"n0": 20, "n": 100, "chunk": 100},
}
G, M, S = "gaussian-fixed-l2-0.25", "macer-fixed-l1-0.5", "smoothadv-dd-l2-0.25"
ALL = None  # every job of a rule
# leaf → (new value, DVC stages marked, {rule: the jobs (model or model/method) planned for changed params})
EDITS = {
    "seed": (
        1,
        {"prepare_data", "train", "certify"},
        {"prepare_data": ALL, "train": ALL, "optimize": ALL, "certify": ALL, "video": ALL},
    ),
    "device": ("cpu", set(), {}),
    "channels_last": (False, {"certify"}, {"optimize": ALL, "certify": ALL}),
    "data.root": ("data/elsewhere", {"prepare_data"}, {"prepare_data": ALL}),
    "data.test_fraction": (0.4, {"prepare_data", "certify"}, {"prepare_data": ALL, "video": ALL}),
    "test.limit": (3, {"certify"}, {"optimize": ALL, "certify": ALL, "video": ALL}),
    "test.shards": (2, {"certify"}, {}),
    "model.arch": ("mnist_cnn", {"train", "certify"}, {"train": ALL, "optimize": ALL, "certify": ALL}),
    "train.lr": (0.02, {"train"}, {"train": ALL}),
    "train.batch_size": (32, {"train"}, {"train": ALL}),
    "train.workers": (1, {"train"}, {}),
    "models": ("add a σ", {"train", "certify", "report"}, {"report": ALL}),
    "ddrs.lr": (0.02, {"certify"}, {"optimize": {f"{G}/ddrs"}}),
    "ddrs.sigma_min": (0.02, {"certify"}, {"optimize": {f"{G}/ddrs"}}),
    "ancer.kappa": (1.0, {"certify"}, {"optimize": {f"{G}/ancer"}}),
    "smooth_reduce.stride": (2, {"certify"}, {"certify": {f"{G}/smooth_reduce_max"}, "video": ALL}),
    "video.train.epochs": (2, {"certify"}, {"video": ALL}),
    "video.sigmas": ([0.25, 0.5], {"certify", "report"}, {}),
    "macer.lbd": (2.0, {"train"}, {"train": {M}}),
    "smoothadv.epsilon": (0.25, {"train"}, {"train": {S}}),
    "data_dependent.lr": (0.02, {"train"}, {"train": {S}}),
    "data_dependent.sigma_min": (0.02, {"train"}, {"train": {S}}),
    "certify.mode": ("sequential", {"certify"}, {"certify": ALL, "video": ALL}),
    "certify.alpha": (0.002, {"certify", "report"}, {"certify": ALL, "video": ALL, "report": ALL}),
    "certify.batch_size": (1000, {"certify"}, {"certify": ALL, "video": ALL}),
    "report.rho": (0.01, {"report"}, {"report": ALL}),
    "report.radii.l2": ([0.0, 0.5], {"report"}, {"report": ALL}),
}
HEAVY = {"prepare_data", "train", "optimize", "certify", "gather", "memory_check", "video"}
PARAMS = "Params have changed"
DOWNSTREAM = ("Input files updated by another job",)
GRID = ("Missing output files", "Set of input files has changed")


def _env(root: Path) -> dict:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": str(root / "src"),
    }  # the copy's code runs (and is what its dvc.yaml hashes)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a user's machine: bytecode lands in src/**/__pycache__
    return env


def _run(root: Path, *cmd: str, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _jobs(log: str) -> list[dict]:
    """Jobs Snakemake ran or plans, from its log: {rule, wildcards, reason}."""
    jobs, job = [], None
    for line in log.splitlines():
        head = line.split()
        if len(head) == 2 and head[0] in ("rule", "localrule") and head[1].endswith(":"):
            job = {"rule": head[1][:-1], "wildcards": {}, "reason": ""}
            jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, _, value = line.strip().partition(": ")
            if key == "wildcards":
                job["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
            elif key == "reason":
                job["reason"] = value
        elif not line.startswith(" "):
            job = None
    return jobs


def _ran(log: str) -> set[str]:
    return {j["rule"] for j in _jobs(log)}


def _dvc_changed(root: Path) -> set[str]:
    return set(json.loads(_run(root, str(BIN / "dvc"), "status", "--json")))


def _files(root: Path, *folders: str) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino)
        for f in folders
        for p in sorted((root / f).rglob("*"))
        if p.is_file()
    }


def _edited(cfg: dict, leaf: str, value) -> dict:
    if leaf == "models":
        value = copy.deepcopy(cfg["models"])
        value[1]["sigmas"] = [0.5, 0.75]
    return _set(cfg, leaf, value)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A fresh copy of the repository (git + DVC), the tiny config in params.yaml, built by ``dvc repro``."""
    from snakemake.utils import update_config  # TINY merged as --configfile merges it

    from test_workflow import copy_repo

    root = copy_repo(tmp_path_factory.mktemp("stages"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    update_config(params, copy.deepcopy(TINY))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run(root, "git", "init", "-q")
    _run(root, *git, "add", "-A")
    _run(root, *git, "commit", "-qm", "fresh clone")
    log = _run(root, str(BIN / "dvc"), "repro", timeout=900)
    assert all(f"Running stage '{d.name}'" in log for d in stages.DVC_STAGES)
    assert HEAVY <= _ran(log), f"the first dvc repro runs the pipeline: {sorted(_ran(log))}"
    assert list((root / "results").rglob("final.tsv")) and (root / "report" / "summary.csv").is_file()
    return root


@pytest.mark.slow
def test_status_is_clean_after_repro_and_after_importing(pipeline):
    assert list((pipeline / "src").rglob("__pycache__")), "the run was meant to write bytecode"
    assert _dvc_changed(pipeline) == set(), "dvc status right after dvc repro"
    imports = "import smoothcert.cli, smoothcert.pipeline.certify, smoothcert.training.loop, smoothcert.pipeline.stages"
    _run(pipeline, sys.executable, "-c", imports)
    assert _dvc_changed(pipeline) == set(), "importing the package changed what DVC tracks"


@pytest.mark.slow
def test_repro_on_snakemake_outputs_runs_no_job(pipeline):
    """Outputs made by Snakemake that DVC has not seen (as after `make run`): dvc repro runs every stage,
    Snakemake finds nothing to do, and no file is deleted or rewritten."""
    before = _files(pipeline, "data/prepared", "models", "results", "report")
    (pipeline / "dvc.lock").unlink()
    log = _run(pipeline, str(BIN / "dvc"), "repro")
    assert all(f"Running stage '{d.name}'" in log for d in stages.DVC_STAGES)
    assert not _ran(log), f"dvc repro ran Snakemake jobs: {sorted(_ran(log))}"
    assert _files(pipeline, "data/prepared", "models", "results", "report") == before
    assert _dvc_changed(pipeline) == set()


def _planned(root: Path, cfg: dict, name: str) -> list[dict]:
    override = root / ".smoothcert" / f"edit-{name}.yaml"
    override.parent.mkdir(exist_ok=True)
    override.write_text(yaml.safe_dump(cfg))
    return _jobs(_run(root, str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", str(override)))


def _job_key(job: dict) -> str:
    w = job["wildcards"]
    return "/".join(w[k] for k in ("model", "method") if k in w) or job["rule"]


@pytest.mark.slow
def test_each_edit_reruns_exactly_its_readers(pipeline):
    base_text = (pipeline / "params.yaml").read_text()
    base = yaml.safe_load(base_text)
    edited = {leaf: _edited(base, leaf, value) for leaf, (value, _, _) in EDITS.items()}
    try:
        for leaf, (_, marked, _) in EDITS.items():  # DVC reads params.yaml: one edit at a time
            (pipeline / "params.yaml").write_text(yaml.safe_dump(edited[leaf], sort_keys=False))
            assert _dvc_changed(pipeline) == marked, f"dvc status after editing {leaf}"
    finally:
        (pipeline / "params.yaml").write_text(base_text)
    with ThreadPoolExecutor(2) as pool:  # Snakemake takes the edit as an override: dry runs side by side
        plans = dict(zip(EDITS, pool.map(lambda leaf: _planned(pipeline, edited[leaf], leaf.replace(".", "-")), EDITS)))
    for leaf, (_, _, expected) in EDITS.items():
        changed = {}
        allowed = (PARAMS, *DOWNSTREAM, *(GRID if leaf in ("models", "test.shards", "video.sigmas") else ()))
        for job in plans[leaf]:
            reasons = job["reason"].split("; ")
            if any(r.startswith(PARAMS) for r in reasons):
                changed.setdefault(job["rule"], set()).add(_job_key(job))
            assert job["rule"] not in HEAVY or all(r.startswith(allowed) for r in reasons), (leaf, job)
        every, planned = {}, {}
        for job in _planned_all(plans):
            every.setdefault(job["rule"], set()).add(_job_key(job))
        for job in plans[leaf]:
            planned.setdefault(job["rule"], set()).add(_job_key(job))
        want = {rule: every.get(rule, set()) if jobs is ALL else jobs for rule, jobs in expected.items()}
        # Snakemake names one reason per job: a job whose input another planned job rewrites says so, and is not
        # checked for params. So: every job that reads the edit is planned, and only those say "params changed"
        # (the rest of the plan is downstream of them, checked above).
        for rule, jobs in want.items():
            assert jobs <= planned.get(rule, set()), (
                f"editing {leaf}: {rule} jobs {jobs - planned.get(rule, set())} not planned"
            )
        for rule, jobs in changed.items():
            assert jobs <= want.get(rule, set()), (
                f"editing {leaf}: {rule} jobs {jobs - want.get(rule, set())} rerun for params they do not read"
            )


def _planned_all(plans: dict) -> list[dict]:
    return plans["seed"]  # seed is read by every computing stage: its plan lists every job


@pytest.mark.slow
def test_editing_code_reruns_the_jobs_importing_it(pipeline):
    source = pipeline / "src" / "smoothcert" / "commands" / "gather.py"
    text = source.read_text()
    try:
        source.write_text(text + "\n# edited\n")
        assert _dvc_changed(pipeline) == {"certify"}
        plan = _jobs(_run(pipeline, str(BIN / "snakemake"), "-n", "--cores", "1"))
        assert {j["rule"] for j in plan if PARAMS in j["reason"]} == {"gather"}
    finally:
        source.write_text(text)
    assert _dvc_changed(pipeline) == set()


SPOT = (  # a sample of the edit matrix, one per kind of rule it states
    "src/smoothcert/pipeline/certify.py",
    "src/smoothcert/engine/regions.py",
    "src/smoothcert/reporting/plots.py",
    "src/smoothcert/methods/ancer.py",
    "src/smoothcert/engine/noise.py",
)


@pytest.mark.slow
def test_edit_matrix_agrees_with_snakemake_and_dvc(pipeline):
    """Each sampled file edited in the built copy (bytecode written): `dvc status` marks the DVC stages of the
    jobs the matrix names, `snakemake -n` plans every one of them and says "params changed" (the code digest is
    a param) of no other; a file that must not retrain plans no prepare_data or train job at all."""
    kinds = _job_kinds()
    for path in SPOT:
        source, readers = pipeline / path, _readers(kinds, path)
        text = source.read_text()
        try:
            source.write_text(text + "\n# edited\n")
            assert _dvc_changed(pipeline) == {stages.dvc_stage_of(n).name for n, _ in readers}, path
            plan = _jobs(_run(pipeline, str(BIN / "snakemake"), "-n", "--cores", "1"))
        finally:
            source.write_text(text)
        planned = {j["rule"] for j in plan}
        changed = {(j["rule"], j["wildcards"].get("method")) for j in plan if PARAMS in j["reason"]}
        assert {n for n, _ in readers} <= planned, (path, sorted(planned))
        assert all((rule, method) in readers or (rule, None) in readers for rule, method in changed), (path, changed)
        if path.startswith(NEVER_RETRAIN):
            assert not planned & {"prepare_data", "train"}, (path, sorted(planned))
    assert _dvc_changed(pipeline) == set()


@pytest.mark.slow
def test_exp_run_recertifies_without_optimizing_or_training(pipeline):
    """README: `dvc exp run -S certify.n=…`. An edit of certify reruns certification (and what reads it),
    never the σ/θ search or training, and deletes no θ file or model."""
    kept = _files(pipeline, "data/prepared", "models") | {
        k: v for k, v in _files(pipeline, "results").items() if "/theta/" in k
    }
    log = _run(pipeline, str(BIN / "dvc"), "exp", "run", "-S", "certify.n=150", "-S", "certify.alpha=0.002")
    ran = _ran(log)
    assert {"certify", "gather", "memory_check", "video", "report"} <= ran
    assert not ran & {"prepare_data", "train", "optimize"}, sorted(ran)
    after = _files(pipeline, "data/prepared", "models", "results")
    assert {k: after.get(k) for k in kept} == kept, "θ files, models or data were rewritten"
    import pandas as pd

    for table in (pipeline / "results").rglob("certify.tsv"):
        rows = pd.read_csv(table, sep="\t")
        assert set(rows["n"]) == {150} and set(rows["alpha"]) == {0.002}, table
    assert _dvc_changed(pipeline) == set()
