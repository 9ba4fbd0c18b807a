"""Certificate tables read from disk: the pipeline's own, and the certify outputs of the seed papers' public code.

``--import NAME[:NORM][:FORMAT][@SIGMA]=PATH`` reads a tab-separated certify table. Every value is checked
before anything is written: a table is read right or refused with one line naming the file, the row (data row
and file line) and the column. Refused: a ragged row, a duplicate ``idx``, non-integer ``idx``/``label``/
``predict``, ``correct`` other than 0/1 or not equal to ``predict == label``, a radius that is NaN, infinite or
negative, an abstention (``predict`` −1) with a radius > 0, a time that is neither seconds nor
``str(datetime.timedelta)``, and a σ that cannot be known. One trailing tab per row (an empty last field) is
dropped instead of shifting the columns.

Layouts, told from the header (:func:`detect_format`) and, for ANCER's ℓ1 tables, from the values; ``:FORMAT``
forces one. Where each was read (the writing script's ``print`` of its header):

* ``smoothcert`` — this pipeline's ``certify.tsv``/``final.tsv`` (:data:`smoothcert.engine.certificates.COLUMNS`):
  σ and norm from its own ``sigma`` and ``norm`` columns (one value each; ``@SIGMA``/``:NORM`` must agree).
* ``locuslab`` ``idx label predict radius correct time`` — locuslab/smoothing ``code/certify.py`` (ℓ2,
  Gaussian). MotasemAlfarra/Data_Dependent_Randomized_Smoothing ``ddsmoothing/scripts/certify_dataset.py`` writes
  the same layout for ℓ1 or ℓ2 (``--norm``, not in the table: give ``:l1``) and for ``--method fixed`` or
  ``isotropic_dd``; the table does not say which, so an import whose NAME is a per-input-σ method (``ddrs…``) is
  labelled per-input σ (values unknown), any other fixed σ.
* ``ddrs`` ``idx label predict radius correct sigma time`` (extra columns allowed and kept) —
  MotasemAlfarra/Data_Dependent_Randomized_Smoothing ``certify_ds.py`` (locuslab's Gaussian ``Smooth``: ℓ2 only).
  ``sigma`` is the input's own σ, kept per row (``sigma_min`` = ``sigma_gmean`` = ``sigma_max``), never the
  experiment's σ. The repository's older ``CIFAR10/smoothing_code/certify_data_dependent_sigma.py`` heads its table
  ``… correct time sigma`` but writes σ before the time; the values tell the two apart.
* ``ancer`` ``idx label predict radius radius_proxy correct min_sigma time`` — MotasemAlfarra/ANCER
  ``scripts/certify_dataset.py`` (ddsmoothing's ``Smooth``): ``radius`` = min θ · gap, ``radius_proxy`` =
  geometric-mean θ · gap, ``min_sigma`` = min θ; ℓ1 or ℓ2 (``:l1``).
* ``ancer_root`` — the same header from MotasemAlfarra/ANCER's repository-root ``certify.py``, which for ℓ1
  multiplies ``radius`` and ``radius_proxy`` by √3 ("with respect to sigma instead of lambda"). Both scripts draw
  ℓ1 noise 2(U − ½)·θ, i.e. U[−θ, θ] (``smooth.py``, ``ddsmoothing/certificate.py``), and the ℓ1 gap 2(p̲A − ½)
  is ≤ 1, so a sound ℓ1 radius is ≤ ``min_sigma``: an ℓ1 table with a radius above ``min_sigma`` (beyond the
  three-digit rounding) is this layout; its radii and proxy radii are divided by √3.

Conventions (smoothcert's): ℓ1 σ is the uniform noise's half-width. The seed scripts' ℓ1 ``--sigma`` is not: all
three multiply it by 3^−½ before drawing (``args.sigma *= (3**-0.5)``), so the σ of an ℓ1 seed table (``@SIGMA``
or the path: the script's ``--sigma``) becomes σ/√3. Each conversion is said in one log line on stderr.

σ from the path: a ``noise_<σ>``/``sigma_<σ>`` part (``noise_1e-1`` = 0.1); two different values are refused
(give ``@SIGMA``). Imports of one NAME at several σ and norms are separate experiments (model ``import-<norm>-<σ>``).
All three seed scripts write ``time`` as ``str(datetime.timedelta)`` (``H:MM:SS.ffffff``; ``D day(s), H:MM:SS``
past a day), converted to seconds, and radii with three significant digits (``{:.3}``). ``log_volume`` is NaN for
the seed layouts (no table holds all of θ); their σ search is not timed, so ``opt_time``/``opt_evals`` are NaN.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert.artifacts import read_table
from smoothcert.engine.certificates import COLUMNS
from smoothcert.errors import SmoothcertError, require
from smoothcert.reporting.tables import Experiment

LOCUSLAB_COLUMNS = ["idx", "label", "predict", "radius", "correct"]
IMPORT_MODEL = "import"  # the model id prefix of imported experiments (import-<norm>-<σ>)
IMPORTED = "imported"  # the objective of imported experiments
IMPORT_NORM = "l2"  # the norm of a seed table that does not say otherwise
NORMS = ("l2", "l1")
ROUNDING = (1 + 5e-3) / (1 - 5e-3)  # largest ratio of two {:.3}-rounded values whose true ratio is ≤ 1
SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class Format:
    """A certify table layout: the columns its header has (at least), the norms its code certifies, the σ mode of
    its experiments and its per-row σ column (if any)."""

    name: str
    header: tuple[str, ...]
    norms: tuple[str, ...]
    sigma_mode: str
    row_sigma: str | None = None

    def matches(self, columns) -> bool:
        return set(self.header) <= set(columns)


ANCER_HEADER = ("idx", "label", "predict", "radius", "radius_proxy", "correct", "min_sigma", "time")
# detection order: the pipeline's own tables (sigma and norm columns), then ANCER (columns no other has), then
# DDRS (locuslab's + a per-input sigma), then locuslab; ancer_root is told from the values (or forced)
FORMATS = (
    Format("smoothcert", (*LOCUSLAB_COLUMNS, "norm", "sigma"), NORMS, "fixed"),
    Format("ancer", ANCER_HEADER, NORMS, "dd", "min_sigma"),
    Format("ddrs", ("idx", "label", "predict", "radius", "correct", "sigma", "time"), ("l2",), "dd", "sigma"),
    Format("locuslab", tuple(LOCUSLAB_COLUMNS), NORMS, "fixed"),
    Format("ancer_root", ANCER_HEADER, NORMS, "dd", "min_sigma"),
)
BY_NAME = {f.name: f for f in FORMATS}


@dataclass(frozen=True)
class ImportSpec:
    """``NAME[:NORM][:FORMAT][@SIGMA]=PATH``, parsed."""

    name: str
    norm: str | None
    format: str | None
    sigma: float  # NaN: not given, not in the path
    path: Path


def nonempty_table(path: str | Path, required: list[str], what: str) -> pd.DataFrame:
    """The table at ``path`` with ``required`` columns and at least one row (else a one-line error)."""
    df = read_table(path, required, what=what)
    require(len(df) > 0, f"{what} {path} has no rows")
    return df


def detect_format(columns, what: str = "imported table") -> Format:
    """The first :data:`FORMATS` entry whose header the ``columns`` contain (``ancer_root`` only when forced)."""
    for fmt in FORMATS[:-1]:
        if fmt.matches(columns):
            return fmt
    known = "; ".join(f"{f.name} ({' '.join(f.header)})" for f in FORMATS[:-1])
    raise SmoothcertError(
        f"{what} lacks columns of every known format: found {list(columns)} (tab-separated); known: {known}"
    )


def method_family(name: str) -> str | None:
    """The registered method an import NAME names (``cohen``, ``ddrs_pub`` → ``ddrs``), or None."""
    from smoothcert.methods import names

    for m in sorted(names(), key=len, reverse=True):
        if name == m or (name.startswith(m) and name[len(m)] in "_.+-"):
            return m
    return None


# ---------------------------------------------------------------- reading, strictly
def _where(path, row: int, col: str) -> str:
    return f"{path}: row {row + 1} (line {row + 2}), column {col!r}"


def _bad(path, raw: pd.DataFrame, mask: np.ndarray, col: str, why: str) -> None:
    """Refuse with the first row where ``mask`` holds."""
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        raise SmoothcertError(f"{_where(path, i, col)}: {raw[col].iloc[i]!r} {why}")


def read_raw(path: str | Path, what: str) -> pd.DataFrame:
    """The table's fields as text (header → columns); ragged rows refused, one trailing empty field dropped."""
    path = Path(path)
    require(not path.is_dir(), f"{what} {path} is a folder, not a table file")
    require(path.is_file(), f"{what} not found: {path}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SmoothcertError(f"cannot read {what} {path}: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    require(len(lines) > 0, f"{what} {path} is empty")
    header = [h.strip() for h in lines[0].split("\t")]
    if len(header) > 1 and header[-1] == "":
        header.pop()
    dup = sorted({h for h in header if header.count(h) > 1})
    require(not dup, f"{what} {path}: header repeats columns {dup}")
    rows = []
    for i, line in enumerate(lines[1:]):
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) == len(header) + 1 and fields[-1] == "":
            fields.pop()  # a row ending in a tab
        require(
            len(fields) == len(header),
            f"{path}: row {i + 1} (line {i + 2}) has {len(fields)} fields, the header {len(header)} columns",
        )
        rows.append(fields)
    require(len(rows) > 0, f"{what} {path} has no rows")
    return pd.DataFrame(rows, columns=header, dtype=str)


def _floats(raw: pd.DataFrame, col: str, path, finite: bool = True, minimum: float | None = None) -> np.ndarray:
    v = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)
    text = raw[col].str.lower().isin(["nan", "-nan", ""]).to_numpy()
    _bad(path, raw, np.isnan(v) & ~text, col, "is not a number")
    if finite:
        _bad(path, raw, ~np.isfinite(v), col, "is not a finite number")
    if minimum is not None:
        _bad(path, raw, np.isfinite(v) & (v < minimum), col, f"is below {minimum:g}")
    return v


def _ints(raw: pd.DataFrame, col: str, path, minimum: int | None = None) -> np.ndarray:
    v = _floats(raw, col, path)
    _bad(path, raw, v != np.round(v), col, "is not an integer")
    if minimum is not None:
        _bad(path, raw, v < minimum, col, f"is below {minimum}")
    return v.astype(np.int64)


def seconds(values: pd.Series) -> pd.Series:
    """A time column in seconds: numbers as they are, ``str(datetime.timedelta)`` text parsed (else NaN)."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    text = values.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    parsed = pd.to_timedelta(text.where(num.isna()), errors="coerce").dt.total_seconds()
    return num.astype(float).where(num.notna(), parsed)


def _times(raw: pd.DataFrame, path) -> np.ndarray:
    v = seconds(raw["time"]).to_numpy(dtype=float)
    _bad(path, raw, ~np.isfinite(v) | (v < 0), "time", "is neither seconds nor H:MM:SS[.ffffff]")
    return v


def check_rows(raw: pd.DataFrame, fmt: Format, path) -> pd.DataFrame:
    """Typed columns of a raw table in layout ``fmt``, every rule of the module docstring checked."""
    df = raw.copy()
    idx = _ints(raw, "idx", path, minimum=0)
    dup = pd.Series(idx).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(idx == idx[i])[0])
        raise SmoothcertError(f"{_where(path, i, 'idx')}: idx {idx[i]} already on row {first + 1}")
    label = _ints(raw, "label", path)
    predict = _ints(raw, "predict", path, minimum=-1)
    correct = _ints(raw, "correct", path)
    _bad(path, raw, (correct != 0) & (correct != 1), "correct", "is not 0 or 1")
    _bad(path, raw, correct != (predict == label), "correct", "disagrees with predict == label")
    radius = _floats(raw, "radius", path, minimum=0.0)
    _bad(path, raw, (predict == -1) & (radius > 0), "radius", "is > 0 on an abstention (predict -1)")
    df["idx"], df["label"], df["predict"], df["correct"], df["radius"] = idx, label, predict, correct, radius
    if "time" in raw:
        df["time"] = _times(raw, path)
    if fmt.row_sigma is not None:
        df[fmt.row_sigma] = _floats(raw, fmt.row_sigma, path, minimum=0.0)
        _bad(path, raw, df[fmt.row_sigma].to_numpy() == 0, fmt.row_sigma, "is not a positive σ")
    if "radius_proxy" in raw:
        proxy = _floats(raw, "radius_proxy", path, minimum=0.0)
        _bad(path, raw, (predict == -1) & (proxy > 0), "radius_proxy", "is > 0 on an abstention (predict -1)")
        df["radius_proxy"] = proxy
    if fmt.name == "smoothcert":
        _bad(path, raw, ~raw["norm"].isin(NORMS).to_numpy(), "norm", f"is not one of {', '.join(NORMS)}")
        df["sigma"] = sigma = _floats(raw, "sigma", path, minimum=0.0)
        _bad(path, raw, sigma == 0, "sigma", "is not a positive σ")
        for c, differs in (("norm", (raw["norm"] != raw["norm"].iloc[0]).to_numpy()), ("sigma", sigma != sigma[0])):
            _bad(path, raw, differs, c, f"differs from row 1's {raw[c].iloc[0]!r}")
        for c in COLUMNS:
            if c in raw and c not in ("method", "norm") and not pd.api.types.is_numeric_dtype(df[c]):
                df[c] = _floats(raw, c, path, finite=False)
    return df


# ---------------------------------------------------------------- mapping onto the pipeline's columns
def fill_imported(
    df: pd.DataFrame, name: str, columns: list[str], sigma: float = float("nan"), norm: str = IMPORT_NORM
) -> pd.DataFrame:
    """A table with locuslab/smoothing's columns completed to ``columns``: proxy radius = radius, no volume, no
    optimization cost; ``time`` in seconds. Columns the table has are kept as they are."""
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


def _log(text: str) -> None:
    print(f"smoothcert report: {text}", file=sys.stderr)


def _ancer_layout(df: pd.DataFrame, forced: str | None, norm: str, path) -> str:
    """``ancer`` or ``ancer_root`` for an ANCER table: ℓ1 radii above min_sigma are the √3 layout."""
    if norm != "l1":
        require(forced != "ancer_root", f"{path}: ancer_root is an ℓ1 layout (give :l1)")
        return "ancer"
    ratio = df["radius"].to_numpy() / df["min_sigma"].to_numpy()
    over = ratio > ROUNDING
    if forced == "ancer" and over.any():
        i = int(np.flatnonzero(over)[0])
        raise SmoothcertError(
            f"{_where(path, i, 'radius')}: {df['radius'].iloc[i]:g} exceeds min_sigma {df['min_sigma'].iloc[i]:g}, "
            "impossible for an ℓ1 certificate (gap ≤ 1): the table is ANCER's root certify.py (√3) layout, "
            "give :ancer_root"
        )
    impossible = ratio > SQRT3 * ROUNDING
    if impossible.any():
        i = int(np.flatnonzero(impossible)[0])
        raise SmoothcertError(
            f"{_where(path, i, 'radius')}: {df['radius'].iloc[i]:g} exceeds √3 × min_sigma "
            f"{df['min_sigma'].iloc[i]:g}: no ℓ1 layout of ANCER's allows it"
        )
    return "ancer_root" if forced == "ancer_root" or over.any() else "ancer"


def _sigma_of(spec: ImportSpec, fmt: Format, df: pd.DataFrame, norm: str, notes: list[str]) -> float:
    """The experiment's σ in smoothcert's convention (module docstring), or a one-line refusal."""
    path = spec.path
    if fmt.name == "smoothcert":
        own = float(df["sigma"].iloc[0])
        require(
            math.isnan(spec.sigma) or math.isclose(spec.sigma, own, rel_tol=1e-9),
            f"--import {spec.name}: σ {spec.sigma:g} given, but {path}'s sigma column says {own:g}",
        )
        return own
    require(
        not math.isnan(spec.sigma),
        f"--import {spec.name}: σ of {path} unknown ({fmt.name} tables do not record it and the path names none): "
        f"give {spec.name}@SIGMA",
    )
    if norm == "l1":
        notes.append(f"ℓ1 --sigma {spec.sigma:g} of the seed scripts → half-width {spec.sigma / SQRT3:.4g} (÷√3)")
        return spec.sigma / SQRT3
    return spec.sigma


def read_spec(spec: ImportSpec) -> tuple[Format, pd.DataFrame, str, float, list[str]]:
    """(format, rows mapped onto the pipeline's columns, norm, σ, conversions said) of one import."""
    what = f"imported table {spec.name}"
    raw = read_raw(spec.path, what)
    found = detect_format(raw.columns, f"{what} {spec.path}")
    fmt = found
    if spec.format is not None:
        fmt = BY_NAME[spec.format]
        require(
            fmt.matches(raw.columns),
            f"{what} {spec.path}: a {fmt.name} table needs columns {list(fmt.header)}, found {list(raw.columns)}",
        )
    if fmt.name == "ddrs" and _looks_swapped(raw):
        raw = raw.assign(sigma=raw["time"], time=raw["sigma"])  # the older script's header (module docstring)
    df = check_rows(raw, fmt, spec.path)
    notes: list[str] = []
    if fmt.name == "smoothcert":
        norm = str(raw["norm"].iloc[0])
        require(
            spec.norm in (None, norm), f"--import {spec.name}: :{spec.norm} given, but {spec.path} says norm {norm}"
        )
    else:
        norm = spec.norm or IMPORT_NORM
    require(
        norm in fmt.norms,
        f"{what} {spec.path}: {fmt.name} tables certify {', '.join(fmt.norms)} only, not {norm} (drop :{norm})",
    )
    if fmt.name in ("ancer", "ancer_root"):
        fmt = BY_NAME[_ancer_layout(df, spec.format, norm, spec.path)]
        if fmt.name == "ancer_root":
            df["radius"] = df["radius"] / SQRT3
            df["radius_proxy"] = df["radius_proxy"] / SQRT3
            notes.append("radius and radius_proxy ÷√3 (ANCER's root certify.py ℓ1 layout: radius > min_sigma)")
    sigma = _sigma_of(spec, fmt, df, norm, notes)
    extra = {"opt_time": np.nan, "opt_evals": np.nan}
    if fmt.name == "ddrs":
        df = df.assign(sigma_min=df["sigma"], sigma_gmean=df["sigma"], sigma_max=df["sigma"], **extra)
        df = df.drop(columns=["sigma"])
    elif fmt.name in ("ancer", "ancer_root"):
        df = df.rename(columns={"radius_proxy": "proxy_radius", "min_sigma": "sigma_min"}).assign(**extra)
    elif fmt.name == "locuslab" and _per_input(spec.name):
        df = df.assign(**extra)
    if fmt.name != "smoothcert":
        df = df.assign(method=spec.name, norm=norm, sigma=sigma)
    df = fill_imported(df, spec.name, COLUMNS, sigma=sigma, norm=norm)
    df["method"] = spec.name
    return fmt, df, norm, sigma, notes


def _looks_swapped(raw: pd.DataFrame) -> bool:
    """A DDRS table whose ``sigma`` column holds times and ``time`` column numbers (the older script)."""
    return bool(pd.to_numeric(raw["sigma"], errors="coerce").isna().all()) and bool(
        pd.to_numeric(raw["time"], errors="coerce").notna().all()
    )


def _per_input(name: str) -> bool:
    from smoothcert.methods import get

    family = method_family(name)
    return family is not None and get(family).per_input_sigma


def read_locuslab(path: str | Path, name: str, sigma: float, what: str) -> pd.DataFrame:
    """A table with at least locuslab's columns, completed to the pipeline's (:func:`fill_imported`)."""
    return fill_imported(nonempty_table(path, LOCUSLAB_COLUMNS, what), name, COLUMNS, sigma=sigma)


# ---------------------------------------------------------------- the NAME[:NORM][:FORMAT][@SIGMA]=PATH syntax
SIGMA_IN_PATH = re.compile(r"(?:noise|sigma)_((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)")


def sigma_from_path(path: str, spec: str = "") -> float:
    """σ named by ``noise_<σ>``/``sigma_<σ>`` parts of ``path`` (NaN if none); two different values refused."""
    found = {float(v) for v in SIGMA_IN_PATH.findall(path)}
    require(
        len(found) <= 1,
        f"--import {spec or path}: the path names σ = {' and '.join(f'{v:g}' for v in sorted(found))}; give NAME@SIGMA",
    )
    return found.pop() if found else float("nan")


def parse(text: str) -> ImportSpec:
    """``NAME[:NORM][:FORMAT][@SIGMA]=PATH`` → :class:`ImportSpec` (σ from @SIGMA, else the path, else NaN)."""
    head, sep, path = text.partition("=")
    require(sep == "=" and head and path, f"--import {text!r}: expected NAME=PATH or NAME[:NORM][:FORMAT][@SIGMA]=PATH")
    head, at, sig = head.partition("@")
    name, *tokens = head.split(":")
    require(
        re.fullmatch(r"[A-Za-z0-9_.+-]+", name) is not None,
        f"--import {text!r}: NAME may use letters, digits, _.+- only",
    )
    norm = fmt = None
    for tok in tokens:
        if tok in NORMS and norm is None:
            norm = tok
        elif tok in BY_NAME and fmt is None:
            fmt = tok
        else:
            raise SmoothcertError(
                f"--import {text!r}: {tok!r} is not a NORM ({', '.join(NORMS)}) or a FORMAT ({', '.join(BY_NAME)})"
            )
    if at:
        try:
            sigma = float(sig)
        except ValueError as exc:
            raise SmoothcertError(f"--import {text!r}: SIGMA {sig!r} is not a number") from exc
        require(math.isfinite(sigma) and sigma > 0, f"--import {text!r}: SIGMA must be a positive number")
    else:
        sigma = sigma_from_path(path, text)
    return ImportSpec(name, norm, fmt, sigma, Path(path))


def parse_import_spec(text: str) -> tuple[str, str | None, float, Path]:
    """(name, norm or None, σ or NaN, path) of ``NAME[:NORM][:FORMAT][@SIGMA]=PATH`` (:func:`parse`)."""
    s = parse(text)
    return s.name, s.norm, s.sigma, s.path


def parse_import(text: str) -> tuple[str, float, Path]:
    """(name, σ or NaN, path) of an import spec (:func:`parse`)."""
    s = parse(text)
    return s.name, s.sigma, s.path


def import_model(norm: str, sigma: float) -> str:
    """The model id of imports at one norm and σ (paired in claims)."""
    return f"{IMPORT_MODEL}-{norm}-{sigma:g}"


def load(text: str) -> tuple[Experiment, str]:
    """One import as an experiment, and a line describing it (format, file, rows, σ, norm, conversions)."""
    spec = parse(text)
    fmt, df, norm, sigma, notes = read_spec(spec)
    mode = "dd" if fmt.row_sigma is not None or _per_input(spec.name) else fmt.sigma_mode
    for n in notes:
        _log(f"{spec.name} ({spec.path}): {n}")
    e = Experiment(import_model(norm, sigma), IMPORTED, mode, spec.name, sigma, norm, df)
    said = f"; {'; '.join(notes)}" if notes else ""
    return e, f"`{spec.name}`: {fmt.name} table `{spec.path}`, {len(df)} inputs, {norm} σ = {sigma:g}{said}"


def load_import(text: str) -> Experiment:
    """An imported table (``NAME[:NORM][:FORMAT][@SIGMA]=PATH``) as an experiment of model ``import-<norm>-<σ>``."""
    return load(text)[0]


def read_import(path: str | Path, name: str, sigma: float, norm: str | None = None) -> tuple[Format, pd.DataFrame]:
    """The table at ``path``: its format and its rows mapped onto the pipeline's columns."""
    fmt, df, *_ = read_spec(ImportSpec(name, norm, None, sigma, Path(path)))
    return fmt, df
