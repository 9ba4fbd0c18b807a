"""Certificate tables read from disk: checked tables, and the certify outputs of the seed papers' public code.

``--import NAME[:NORM][@SIGMA]=PATH`` reads a tab-separated certify table and tells its format from the header
(:func:`detect_format`); :func:`complete` maps it onto the pipeline's columns
(:data:`smoothcert.pipeline.certify.COLUMNS`) so that every report metric applies. All three write ``time`` as
``str(datetime.timedelta)`` (``H:MM:SS.ffffff``; ``D day(s), H:MM:SS`` past a day), converted to seconds, and
radii with three significant digits (``{:.3}``). Where each layout was read (the writing script's header line):

* ``locuslab`` ``idx label predict radius correct time`` — locuslab/smoothing ``code/certify.py`` (ℓ2,
  Gaussian). MotasemAlfarra/Data_Dependent_Randomized_Smoothing ``ddsmoothing/scripts/certify_dataset.py`` writes
  the same layout for ℓ1 or ℓ2 (its ``--norm``, not in the table: give ``:l1``). Proxy radius = radius, no
  optimization cost; a table with more columns (the pipeline's own) keeps them.
* ``ddrs`` ``idx label predict radius correct sigma time`` — MotasemAlfarra/Data_Dependent_Randomized_Smoothing
  ``certify_ds.py`` (the README's certify script, run with locuslab's Gaussian ``Smooth``: ℓ2 only). ``sigma``
  is the input's own σ. The repository's older ``CIFAR10/smoothing_code/certify_data_dependent_sigma.py`` heads
  its table ``… correct time sigma`` but writes each row's σ before its time; the values tell the two apart.
* ``ancer`` ``idx label predict radius radius_proxy correct min_sigma time`` — MotasemAlfarra/ANCER ``certify.py``
  and ``scripts/certify_dataset.py`` (the ``ancer-python`` package's scripts; the README documents the header).
  ℓ1 or ℓ2 by ``--norm``, not in the table (give ``:l1``). ``radius`` = min σ · gap (the ball inside the
  anisotropic region), ``radius_proxy`` = geometric-mean σ · gap, ``min_sigma`` = min σ. For ℓ1 the
  repository-root ``certify.py`` multiplies radius and proxy by √3 ("with respect to sigma instead of lambda")
  and ``scripts/certify_dataset.py`` does not; the table cannot say which wrote it, so both are read as written.

Mapped columns: ``radius`` stays the certified radius; ``proxy_radius`` is ANCER's ``radius_proxy`` (else the
radius); a per-input σ goes to the pipeline's per-input σ columns (``ddrs``: ``sigma_min`` = ``sigma_gmean`` =
``sigma_max`` = σ; ``ancer``: ``sigma_min`` only) while ``sigma`` stays the experiment's σ (from ``@SIGMA`` or the
path), as in the pipeline's own rows. ``log_volume`` is NaN for every format: no table holds the input's
dimension or all of θ, which the region's volume needs. DDRS and ANCER tables time certification only, not the σ
search, so their ``opt_time``/``opt_evals`` are NaN (unknown), not 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert.artifacts import read_table
from smoothcert.errors import SmoothcertError, require
from smoothcert.reporting.tables import Experiment

LOCUSLAB_COLUMNS = ["idx", "label", "predict", "radius", "correct"]
IMPORT_MODEL = "import"  # the model id of imported experiments
IMPORT_NORM = "l2"  # the norm of an imported table that does not say otherwise
NORMS = ("l2", "l1")


@dataclass(frozen=True)
class Format:
    """A certify table layout: its header (``exact``: these columns and no others, in any order; else at least
    these), the norms its code certifies and the σ mode of its experiments."""

    name: str
    header: tuple[str, ...]
    exact: bool
    norms: tuple[str, ...]
    sigma_mode: str

    def matches(self, columns) -> bool:
        cols, need = set(columns), set(self.header)
        return cols == need if self.exact else need <= cols


# tried in this order: ANCER's header has columns no other has; DDRS's only adds ``sigma`` to locuslab's, so it
# must be exactly that (the pipeline's own tables, with ``sigma`` and much more, are locuslab-compatible)
FORMATS = (
    Format(
        "ancer",
        ("idx", "label", "predict", "radius", "radius_proxy", "correct", "min_sigma", "time"),
        False,
        NORMS,
        "dd",
    ),
    Format("ddrs", ("idx", "label", "predict", "radius", "correct", "sigma", "time"), True, ("l2",), "dd"),
    Format("locuslab", (*LOCUSLAB_COLUMNS, "time"), False, NORMS, "fixed"),
)


def nonempty_table(path: str | Path, required: list[str], what: str) -> pd.DataFrame:
    """The table at ``path`` with ``required`` columns and at least one row (else a one-line error)."""
    df = read_table(path, required, what=what)
    require(len(df) > 0, f"{what} {path} has no rows")
    return df


def detect_format(columns, what: str = "imported table") -> Format:
    """The :data:`FORMATS` entry whose header ``columns`` match; a locuslab table may lack ``time``."""
    for fmt in FORMATS:
        if fmt.matches(columns) or (fmt.name == "locuslab" and set(LOCUSLAB_COLUMNS) <= set(columns)):
            return fmt
    known = "; ".join(f"{f.name} ({' '.join(f.header)})" for f in FORMATS)
    raise SmoothcertError(
        f"{what} lacks columns of every known format: found {list(columns)} (tab-separated); known: {known}"
    )


def seconds(values: pd.Series) -> pd.Series:
    """A time column in seconds: numbers as they are, ``str(datetime.timedelta)`` text parsed (else NaN)."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    return pd.to_timedelta(values.astype(str).str.strip(), errors="coerce").dt.total_seconds()


def _numeric(df: pd.DataFrame, columns, what: str) -> None:
    for c in columns:
        require(pd.api.types.is_numeric_dtype(df[c]), f"{what}: column {c!r} is not numeric")


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
    if "time" in df:
        df["time"] = seconds(df["time"])
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


def _ddrs(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """DDRS's per-input σ into the per-input σ columns (undoing the older script's swapped header)."""
    df = df.copy()
    if not pd.api.types.is_numeric_dtype(df["sigma"]) and pd.api.types.is_numeric_dtype(df["time"]):
        df["sigma"], df["time"] = df["time"].copy(), df["sigma"].copy()
    _numeric(df, ["sigma"], what)
    for c in ("sigma_min", "sigma_gmean", "sigma_max"):
        df[c] = df["sigma"].astype(float)
    return df.drop(columns=["sigma"]).assign(opt_time=np.nan, opt_evals=np.nan)


def _ancer(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """ANCER's proxy radius and min σ under the pipeline's names."""
    _numeric(df, ["radius_proxy", "min_sigma"], what)
    df = df.rename(columns={"radius_proxy": "proxy_radius", "min_sigma": "sigma_min"})
    return df.assign(opt_time=np.nan, opt_evals=np.nan)


def complete(
    df: pd.DataFrame, fmt: Format, name: str, sigma: float, norm: str | None, what: str = "imported table"
) -> pd.DataFrame:
    """A table in format ``fmt`` mapped onto the pipeline's columns (module docstring); ``norm`` None: ℓ2."""
    from smoothcert.pipeline.certify import COLUMNS

    norm = norm or IMPORT_NORM
    require(
        norm in fmt.norms,
        f"{what}: {fmt.name} tables certify {', '.join(fmt.norms)} only, not {norm} (drop the :{norm} of NAME)",
    )
    _numeric(df, ["radius"], what)
    if fmt.name == "ddrs":
        df = _ddrs(df, what)
    elif fmt.name == "ancer":
        df = _ancer(df, what)
    return fill_imported(df, name, COLUMNS, sigma=sigma, norm=norm)


def read_locuslab(path: str | Path, name: str, sigma: float, what: str) -> pd.DataFrame:
    """A table with at least locuslab's columns, completed to the pipeline's (:func:`fill_imported`)."""
    from smoothcert.pipeline.certify import COLUMNS

    return fill_imported(nonempty_table(path, LOCUSLAB_COLUMNS, what), name, COLUMNS, sigma=sigma)


def parse_import_spec(text: str) -> tuple[str, str | None, float, Path]:
    """``NAME[:NORM][@SIGMA]=PATH`` → (name, norm or None, σ or NaN, path).

    σ defaults to a ``noise_<σ>``/``sigma_<σ>`` part of PATH; NORM is ``l1`` or ``l2``.
    """
    head, sep, path = text.partition("=")
    require(sep == "=" and head and path, f"--import {text!r}: expected NAME=PATH or NAME[:NORM][@SIGMA]=PATH")
    head, _, sig = head.partition("@")
    name, colon, norm = head.partition(":")
    require(
        re.fullmatch(r"[A-Za-z0-9_.+-]+", name) is not None,
        f"--import {text!r}: NAME may use letters, digits, _.+- only",
    )
    require(not colon or norm in NORMS, f"--import {text!r}: NORM {norm!r} is not one of {', '.join(NORMS)}")
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
    return name, (norm if colon else None), sigma, Path(path)


def parse_import(text: str) -> tuple[str, float, Path]:
    """``NAME[:NORM][@SIGMA]=PATH`` → (name, σ or NaN, path) (:func:`parse_import_spec` without the norm)."""
    name, _, sigma, path = parse_import_spec(text)
    return name, sigma, path


def read_import(path: str | Path, name: str, sigma: float, norm: str | None = None) -> tuple[Format, pd.DataFrame]:
    """The table at ``path``: its format (from the header) and its rows mapped onto the pipeline's columns."""
    what = f"imported table {name}"
    df = nonempty_table(path, [], what)
    fmt = detect_format(df.columns, f"{what} {path}")
    return fmt, complete(df, fmt, name, sigma, norm, f"{what} {path}")


def load_import(text: str) -> Experiment:
    """An imported table (``NAME[:NORM][@SIGMA]=PATH``, any of :data:`FORMATS`) as an experiment of model ``import``."""
    name, norm, sigma, path = parse_import_spec(text)
    fmt, df = read_import(path, name, sigma, norm)
    return Experiment(IMPORT_MODEL, "imported", fmt.sigma_mode, name, sigma, str(df["norm"].iloc[0]), df)
