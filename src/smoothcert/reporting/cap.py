"""The σ cap's effect: experiments rerun with ``<method>.sigma_max`` set, beside this run's uncapped ones.

A *capped run* is a run folder (``workflow/scripts/experiment.sh`` with ``CAP=``) whose config is this run's with
two differences only: ``models`` narrowed to the experiments it reruns, and ``sigma_max`` of method sections
(``ddrs.sigma_max``, ``ancer.sigma_max``). It certifies with this run's prepared data and trained models, so a capped
experiment differs from its uncapped twin in the cap alone. :func:`check` refuses any other difference, and an
experiment the cap does not change (its method reads no capped section, directly or through the θ it starts
from); :func:`section` writes the results page's side-by-side comparison.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert import config as config_mod
from smoothcert.errors import require
from smoothcert.reporting import tables as rep

CAP_KEY = "sigma_max"  # the key of a method section that bounds its σ / θ entries during the search
CAP_FIGURE = "sigma_cap.png"
CAPPED = "capped"  # the model id suffix of a capped experiment in the comparison figure's curves


def _diff(a, b, path: str = ""):
    """Dotted keys whose values differ between two configs (mappings compared key by key)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            yield from _diff(a.get(key), b.get(key), f"{path}{key}.")
    elif a != b:
        yield path[:-1], a, b


def _sections() -> dict[str, str]:
    """params.yaml section → the method that owns it."""
    from smoothcert.methods import registry

    return {m.section: m.name for m in registry().values() if m.section}


def affected(method: str, capped_sections: set[str]) -> bool:
    """Whether a cap on ``capped_sections`` changes ``method``'s results: it reads one of them, or starts its
    search from the θ of a method that is changed."""
    from smoothcert.methods import get

    m = get(method)
    return m.section in capped_sections or (m.init_from is not None and affected(m.init_from, capped_sections))


def check(base: dict, capped: dict, source: str) -> list[tuple[str, object, object]]:
    """The caps of ``capped`` over ``base`` as (dotted key, uncapped value, capped value); refused in one line when
    the configs differ in anything but ``models`` and method sections' ``sigma_max``, when no cap changes, when
    ``capped`` runs an experiment ``base`` does not, or one the cap does not change."""
    diffs = [d for d in _diff(base, capped) if d[0] != "models"]
    sections = _sections()
    others = [k for k, *_ in diffs if k.split(".")[0] not in sections or k.split(".", 1)[-1] != CAP_KEY]
    require(
        not others,
        f"{source}: a capped run may differ from the uncapped run only in models and <method>.{CAP_KEY}; "
        f"it also differs in {', '.join(others)}",
    )
    require(diffs, f"{source}: sets no {CAP_KEY} other than the uncapped run's")
    capped_sections = {k.split(".")[0] for k, *_ in diffs}
    runs = set(config_mod.experiments(base))
    for model_id, method in config_mod.experiments(capped):
        require((model_id, method) in runs, f"{source}: {model_id}/{method} is not an experiment of the uncapped run")
        require(
            affected(method, capped_sections),
            f"{source}: the cap ({', '.join(sorted(capped_sections))}) does not change {model_id}/{method}: "
            "leave it out of the capped run's models",
        )
    return diffs


STAGES = {"optimize": "theta/{shard}.pt", "certify": "shards/{shard}.tsv", "memory_check": "final.tsv"}
RECORDED_CODE = re.compile(r"'code': '([0-9a-f]{64})'")  # the code digest in a job's trigger params


def recorded_code(run: Path, output: str) -> str | None:
    """The code digest (:func:`smoothcert.pipeline.stages.stage_code_digest`) Snakemake recorded in ``run`` for the job
    that wrote ``output`` (a path relative to ``run``), from the trigger params in its metadata; None if none."""
    import base64
    import json

    b64 = base64.urlsafe_b64encode(output.encode()).decode()  # Snakemake's file name for the record (chunked)
    chunks = [b64[i : i + 254] for i in range(0, len(b64), 254)]
    path = run / ".snakemake" / "metadata" / Path(*["@" + c for c in chunks[:-1]], chunks[-1])
    try:
        found = RECORDED_CODE.findall(str(json.loads(path.read_text()).get("params")))
    except (OSError, ValueError):
        return None
    return found[0] if len(set(found)) == 1 else None


def code_changes(base_run: Path | None, folder: Path, cfg: dict) -> dict[str, list[str]]:
    """Per capped experiment's stage, whether the code that ran it equals the uncapped run's, from both runs'
    Snakemake records: {"same": [...], "changed": [...], "unrecorded": [...]} of ``<experiment> <stage>``."""
    out: dict[str, list[str]] = {"same": [], "changed": [], "unrecorded": []}
    results = f"results/{cfg['data']['dataset']}"
    from smoothcert.methods import get

    for model_id, method in config_mod.experiments(cfg):
        for stage, name in STAGES.items():
            if stage == "memory_check" and not get(method).memory:
                continue
            shards = [name.format(shard=s) for s in config_mod.shard_names(cfg)] if "{" in name else [name]
            pairs = [
                (recorded_code(base_run, rel) if base_run else None, recorded_code(folder, rel))
                for rel in (f"{results}/{model_id}/{method}/{n}" for n in shards)
            ]
            key = "unrecorded" if any(a is None or b is None for a, b in pairs) else "same"
            key = "changed" if any(a != b for a, b in pairs if a and b) else key
            out[key].append(f"{model_id}/{method} {stage}")
    return out


def load(
    base: dict, folder: str | Path, expected: np.ndarray | None, base_experiments, base_run: Path | None = None
) -> tuple[dict, list]:
    """(the capped run's config and code comparison, [(uncapped, capped) experiment pairs]) of the capped run
    ``folder`` (its params.yaml and results/<dataset>/), every table checked to hold the ``expected`` test inputs;
    ``base_run``: the uncapped run's folder, whose Snakemake records say what code ran (:func:`code_changes`)."""
    from smoothcert.reporting.runs import load_experiments

    folder = Path(folder)
    require(folder.is_dir(), f"capped run folder not found: {folder}")
    cfg = config_mod.load(folder / "params.yaml")
    diffs = check(base, cfg, str(folder / "params.yaml"))
    if expected is None:
        expected = np.unique(np.concatenate([e.table["idx"].to_numpy() for e in base_experiments]))
    capped = load_experiments(cfg, folder / "results" / cfg["data"]["dataset"], expected)
    twins = {e.key: e for e in base_experiments}
    code = code_changes(base_run, folder, cfg)
    return {"config": cfg, "caps": diffs, "code": code}, [(twins[e.key], e) for e in capped]


def _cap_value(cfg: dict, method: str):
    """The cap bounding ``method``'s search: its own section's, else that of the method whose θ it starts from."""
    from smoothcert.methods import get

    m = get(method)
    own = cfg.get(m.section, {}).get(CAP_KEY) if m.section else None
    return own if own is not None or m.init_from is None else _cap_value(cfg, m.init_from)


def _source(method: str, capped_sections: set[str]) -> str:
    """The method along ``method``'s chain of starting θ (itself first) whose section is capped."""
    from smoothcert.methods import get

    m = get(method)
    return method if m.section in capped_sections else _source(m.init_from, capped_sections)


def _above(e: rep.Experiment, cap, strictly: bool = False) -> int | None:
    """Inputs whose largest σ / θ entry reaches ``cap`` (``strictly``: exceeds it); None without a cap or a
    recorded σ."""
    if cap is None or "sigma_max" not in e.table or not e.table["sigma_max"].notna().any():
        return None
    high = e.table["sigma_max"]
    return int((high > cap).sum() if strictly else (high >= cap * (1 - 1e-6)).sum())


def curve_pairs(pairs) -> tuple[list[rep.Experiment], list[tuple[str, list[tuple[str, str]]]]]:
    """Experiments and figure panels of the comparison: one panel per capped experiment, uncapped vs capped."""
    out, panels = [], []
    for before, after in pairs:
        after = dataclasses.replace(after, model_id=f"{after.model_id}+{CAPPED}")
        out += [before, after]
        title = f"{before.objective}/{before.sigma_mode} {before.norm} σ={before.sigma:g} {before.method}"
        panels.append((title, [(before.key, "uncapped"), (after.key, CAPPED)]))
    return out, panels


def section(
    base: dict, capped: dict, pairs, base_experiments, columns: dict, stats: pd.DataFrame, figure: str | None
) -> str:
    """The results page's section on the cap: which cap, why, what was rerun, and each rerun experiment uncapped
    and capped side by side. ``columns``: norm → the certified-accuracy columns shown; ``stats``: per (model_id,
    method, cap) the summary and σ-spread columns (``cap`` = the cap's value, "none" uncapped)."""
    caps = capped["caps"]
    largest = max((s.sigma for s in config_mod.trained_specs(base)), default=None)
    said = "; ".join(f"`{k}` = {v:g} (uncapped: {'none' if u is None else f'{u:g}'})" for k, u, v in caps)
    why = ""
    if largest:
        ratio = ", ".join(sorted({f"{v / largest:g}" for _, _, v in caps}))
        why = f" That is {ratio}× the largest σ a base model of this run is trained at ({largest:g})."
        if all(v >= largest for _, _, v in caps):
            why += (
                " Beyond that σ the base classifier meets noise heavier than any it was trained on, and an unbounded σ "
                "grows on inputs whose class the model gives to heavy noise, certifying large radii there that say "
                "more about that label than about the method (the ACR note above)."
            )
    rerun = ", ".join(f"{b.key}" for b, _ in pairs)
    sections = {k.split(".")[0] for k, *_ in caps}
    done = {b.key for b, _ in pairs}
    skipped = []
    runs = {e.key: e for e in base_experiments}
    for e in base_experiments:
        if e.key in done or e.objective == "imported" or not affected(e.method, sections):
            continue
        src = _source(e.method, sections)  # the search the cap bounds: its own, or the one it starts from
        twin, cap = runs.get(f"{e.model_id}/{src}"), _cap_value(capped["config"], src)
        n = _above(twin, cap, strictly=True) if twin is not None else None
        skipped.append(
            e.key + (f" ({n} of {len(twin.table)} inputs with {src} σ above {cap:g})" if n is not None else "")
        )
    out = [
        "## The σ cap: capped vs uncapped\n",
        f"The σ cap: {said}.{why} Only these experiments were rerun with it (σ search, certification and the memory "
        f"step, on this run's data and trained models): {rerun}. Every other row on this page is uncapped"
        + (f"; the cap would also change {', '.join(skipped)}, not rerun." if skipped else ".")
        + " Column *at cap*: inputs whose largest σ / θ entry is at the cap (capped rows) or above it (uncapped "
        "rows).\n",
    ]
    code = capped.get("code", {})
    if code.get("changed"):
        out.append(
            "**Not the cap alone**: the code of "
            + ", ".join(code["changed"])
            + " differs from what ran the uncapped experiment (Snakemake's records of both runs), so these rows "
            "compare the cap together with that change.\n"
        )
    elif code.get("unrecorded"):
        out.append(
            "Whether the same code ran both is not recorded for "
            + ", ".join(code["unrecorded"])
            + " (no Snakemake record of the job in one of the runs).\n"
        )
    elif code.get("same"):
        out.append("The same code ran the capped and the uncapped experiments (Snakemake's records of both runs).\n")
    if figure:
        out.append(f"![σ cap]({figure})\n")
    shown = ["objective", "sigma_mode", "method", "sigma", "cap"]
    for norm, cols in columns.items():
        part = stats[stats["norm"] == norm]
        if len(part):
            out.append(rep.markdown(part[[c for c in (*shown, *cols) if c in part]].reset_index(drop=True)))
    return "\n".join(out)


def rows(pairs, capped_cfg: dict, summarize) -> pd.DataFrame:
    """One row per experiment of each pair (uncapped first): ``summarize`` (a list of experiments → their summary
    and σ-spread rows) with the cap and the inputs at it."""
    out = []
    for before, after in pairs:
        cap = _cap_value(capped_cfg, after.method)
        both = summarize([before, after]).reset_index(drop=True)
        both["cap"] = ["none", f"{cap:g}"]
        both["at cap"] = [_above(before, cap, strictly=True), _above(after, cap)]
        out.append(both)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def prepare(params: str, config: str, cap: str, base: str, folder: str, *overrides: str) -> None:
    """Set up the capped run ``folder`` beside the finished uncapped run ``base`` (``experiment.sh`` with ``CAP=``).

    Refuses (one line) unless ``base``'s params.yaml, with ``overrides`` merged, is ``params`` + ``config`` +
    ``overrides`` now (the uncapped run ran this config) and ``cap`` passes :func:`check`. Writes ``folder``'s
    params.yaml (``cap`` merged over all of them) and uncapped.yaml (without it), and copies the prepared data and the
    trained models its experiments read, modification times kept, so that Snakemake retrains nothing there (the
    copies have no Snakemake record; a file already there and equal in size and time is kept). ``base`` is read only.
    """
    import shutil

    import yaml

    from smoothcert.artifacts import write_text

    base_dir, folder = Path(base), Path(folder)
    uncapped = config_mod.load(params, (config, *overrides))
    ran = config_mod.load(base_dir / "params.yaml", overrides)
    changed = [k for k, *_ in _diff(ran, uncapped)]
    require(
        not changed,
        f"{base_dir} ran another config than {Path(config).name} over params.yaml now (differs in "
        f"{', '.join(changed[:5])}): rerun it first (the same command without CAP)",
    )
    capped = config_mod.load(params, (config, *overrides, cap))
    check(uncapped, capped, cap)
    names = " + ".join(Path(p).name for p in (config, *overrides, cap))
    for name, cfg, what in (("params.yaml", capped, names), ("uncapped.yaml", uncapped, names.rsplit(" + ", 1)[0])):
        text = yaml.safe_dump(cfg, sort_keys=False)
        write_text(folder / name, f"# params.yaml + {what}, merged (written by experiment.sh)\n{text}")
    dataset = capped["data"]["dataset"]
    data = Path("data") / "prepared" / dataset
    files = [data / "train.pt", data / "test.pt"]
    for spec in config_mod.trained_specs(capped):
        files += [Path("models") / dataset / spec.id / name for name in ("model.pt", "metrics.tsv")]
    for rel in files:
        src, dst = base_dir / rel, folder / rel
        require(src.is_file(), f"{src} not found: finish the uncapped run in {base_dir} first")
        if dst.is_file() and _stamp(dst) == _stamp(src):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".copy")
        shutil.copy2(src, tmp)  # content and modification time
        tmp.replace(dst)
