"""A run's certificate and training tables read from disk for the report, each checked whole: every configured
experiment's final table (and the table before the memory step), the video tables, the training metrics, and which
test inputs the config certifies. A table with a cut, damaged, repeated, missing or extra row is refused in one line
(:func:`smoothcert.shards.check_rows`), so a report is never written on fewer inputs than the config asks for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert import config as config_mod
from smoothcert.engine.certificates import COLUMNS, MEMORY_COLUMNS
from smoothcert.errors import require
from smoothcert.methods import get as get_method
from smoothcert.reporting import tables as rep
from smoothcert.reporting import theta_methods
from smoothcert.reporting.importers import nonempty_table, read_locuslab
from smoothcert.shards import check_rows

TRAINING_COLUMNS = ["epoch", "train_loss", "train_acc", "test_clean_acc", "test_noisy_acc", "time"]


def configured_inputs(cfg: dict, data: str | Path | None) -> np.ndarray | None:
    """The test indices the config certifies, counted on the prepared test split of ``data`` (None without)."""
    if data is None:
        return None
    from smoothcert import data as data_mod
    from smoothcert.inputs import configured_indices

    return configured_indices(cfg, len(data_mod.load_split(data, "test", cfg["data"]["dataset"])[1]))


def load_experiments(cfg: dict, results: str | Path, expected: np.ndarray | None = None) -> list[rep.Experiment]:
    """Every configured experiment's final table (and, for memory methods, the table before memory).

    Every table must be whole (:func:`smoothcert.shards.check_rows`) and hold exactly the ``expected``
    test inputs; without ``expected``, every input any of them holds (every experiment certifies the same
    inputs). A report on fewer inputs than the config asks for is refused, not written.
    """
    results = Path(results)
    specs = {s.id: s for s in config_mod.model_specs(cfg)}
    with_theta = set(theta_methods())
    out, read = [], []
    for model_id, method in config_mod.experiments(cfg):
        base, memory = results / model_id / method, get_method(method).memory
        what = f"certificate table of {model_id}/{method}"
        tables = [(base / "certify.tsv", nonempty_table(base / "certify.tsv", COLUMNS, what), what)]
        if memory:
            what = f"final (after memory) {what}"
            tables.append(
                (base / "final.tsv", nonempty_table(base / "final.tsv", COLUMNS + MEMORY_COLUMNS, what), what)
            )
        read.append((model_id, method, tables))
    if expected is None:
        found = [pd.to_numeric(t["idx"], errors="coerce") for _, _, tables in read for _, t, _ in tables]
        expected = np.unique(pd.concat(found).dropna().to_numpy()) if found else None
    for model_id, method, tables in read:
        for path, table, what in tables:
            check_rows(path, table, expected, what=what)
        spec, base, memory = specs[model_id], results / model_id / method, get_method(method).memory
        before, table = tables[0][1], tables[-1][1]
        theta_files = sorted((base / "theta").glob("*-of-*.pt")) if method in with_theta else []
        out.append(
            rep.Experiment(
                model_id,
                spec.objective,
                spec.sigma_mode,
                method,
                spec.sigma,
                spec.norm,
                table,
                before if memory else None,
                {"files": theta_files},
            )
        )
    return out


def load_video(folder: str | Path) -> list[rep.Experiment]:
    """Video certificate tables ``sigma-<σ>/<method>/certify.tsv`` as experiments of model ``video-<σ>``."""
    folder = Path(folder)
    require(folder.is_dir(), f"video results folder not found: {folder}")
    out = []
    for path in sorted(folder.glob("sigma-*/*/certify.tsv")):
        sigma, method = float(path.parent.parent.name[len("sigma-") :]), path.parent.name
        df = read_locuslab(path, method, sigma, f"video certificate table {method}")
        norms = sorted(set(df["norm"].astype(str)))
        require(len(norms) == 1, f"video certificate table {path} mixes norms {norms}")
        out.append(rep.Experiment(f"video-{sigma:g}", "video", "fixed", method, sigma, norms[0], df))
    require(len(out) > 0, f"no video certificate tables under {folder} (expected sigma-<σ>/<method>/certify.tsv)")
    raw = {path: pd.read_csv(path, sep="\t") for path in sorted(folder.glob("sigma-*/*/certify.tsv"))}
    clips = np.unique(np.concatenate([pd.to_numeric(t["idx"], errors="coerce").dropna() for t in raw.values()]))
    for path, table in raw.items():  # whole rows, and every method certified the same clips
        core = [c for c in table.columns if c in ("idx", "label", "predict", "radius", "correct")]  # any format
        check_rows(path, table[core], clips, what="video certificate table")
    return out


def load_training(cfg: dict, models: str | Path) -> dict[str, pd.DataFrame]:
    """models/<dataset>/<model_id>/metrics.tsv for every model the pipeline trained (checkpoint entries have none)."""
    return {
        s.id: nonempty_table(Path(models) / s.id / "metrics.tsv", TRAINING_COLUMNS, f"training metrics of {s.id}")
        for s in config_mod.trained_specs(cfg)
    }
