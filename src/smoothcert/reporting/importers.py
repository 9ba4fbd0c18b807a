"""Certificate tables read from disk: checked tables, and tables in locuslab/smoothing's format.

locuslab's ``certify.py`` writes ``idx label predict radius correct time`` (ℓ2, Gaussian noise, ``time``
as ``H:MM:SS.ffffff``); :func:`fill_imported` completes such a table to the pipeline's columns so that
every report metric applies: the proxy radius is the radius, there is no volume and no optimization cost.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert.artifacts import read_table
from smoothcert.errors import SmoothcertError, require
from smoothcert.reporting.tables import Experiment

LOCUSLAB_COLUMNS = ["idx", "label", "predict", "radius", "correct"]
IMPORT_MODEL = "import"  # the model id of imported experiments
IMPORT_NORM = "l2"  # locuslab/smoothing certifies ℓ2 balls


def nonempty_table(path: str | Path, required: list[str], what: str) -> pd.DataFrame:
    """The table at ``path`` with ``required`` columns and at least one row (else a one-line error)."""
    df = read_table(path, required, what=what)
    require(len(df) > 0, f"{what} {path} has no rows")
    return df


def fill_imported(
    df: pd.DataFrame, name: str, columns: list[str], sigma: float = float("nan"), norm: str = IMPORT_NORM
) -> pd.DataFrame:
    """A locuslab/smoothing table (idx label predict radius correct time) completed to ``columns``.

    ``time`` may be a ``H:MM:SS.ffffff`` string (locuslab) or seconds; proxy radius = radius; no volume.
    Columns the table has are kept as they are.
    """
    missing = [c for c in LOCUSLAB_COLUMNS if c not in df]
    require(not missing, f"imported table {name!r} lacks columns {missing}")
    df = df.copy()
    if "time" in df and not pd.api.types.is_numeric_dtype(df["time"]):
        df["time"] = pd.to_timedelta(df["time"], errors="coerce").dt.total_seconds()
    fill = {
        "method": name,
        "norm": norm,
        "sigma": sigma,
        "proxy_radius": df["radius"],
        "log_volume": np.nan,
        "opt_time": 0.0,
        "opt_evals": 0,
    }
    for c in columns:
        if c not in df:
            df[c] = fill.get(c, np.nan)
    return df


def read_locuslab(path: str | Path, name: str, sigma: float, what: str) -> pd.DataFrame:
    """A table with at least locuslab's columns, completed to the pipeline's (:func:`fill_imported`)."""
    from smoothcert.pipeline.certify import COLUMNS

    return fill_imported(nonempty_table(path, LOCUSLAB_COLUMNS, what), name, COLUMNS, sigma=sigma)


def parse_import(text: str) -> tuple[str, float, Path]:
    """``NAME[@SIGMA]=PATH`` → (name, σ or NaN, path); σ defaults to a ``noise_<σ>``/``sigma_<σ>`` part of PATH."""
    name, sep, path = text.partition("=")
    require(sep == "=" and name and path, f"--import {text!r}: expected NAME=PATH or NAME@SIGMA=PATH")
    name, _, sig = name.partition("@")
    require(
        re.fullmatch(r"[A-Za-z0-9_.+-]+", name) is not None,
        f"--import {text!r}: NAME may use letters, digits, _.+- only",
    )
    sigma = float("nan")
    if sig:
        try:
            sigma = float(sig)
        except ValueError as exc:
            raise SmoothcertError(f"--import {text!r}: SIGMA {sig!r} is not a number") from exc
    else:
        found = re.findall(r"(?:noise|sigma)_([0-9]*\.?[0-9]+)", path)
        if found:
            sigma = float(found[-1])
    return name, sigma, Path(path)


def load_import(text: str) -> Experiment:
    """An imported locuslab-format table (``NAME[@SIGMA]=PATH``) as an experiment of model ``import``."""
    name, sigma, path = parse_import(text)
    df = read_locuslab(path, name, sigma, f"imported table {name}")
    return Experiment(IMPORT_MODEL, "imported", "fixed", name, sigma, IMPORT_NORM, df)
