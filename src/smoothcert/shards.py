"""What one shard job writes, and the checks its readers make: one writer per file, rows appended resumably, the
whole-table check of a finished table, and the θ file of a σ / θ search (its one writer and its one reader).

Guarantees: a second writer of a file is refused in one line naming the first (:class:`WriterLock`); a shard's
rows survive a kill and are resumed only under the same fingerprint (:class:`ShardWriter`); a table with a cut,
empty, invalid, repeated, missing or extra row is refused in one line (:func:`check_rows`); a θ file is read
only when it holds exactly the inputs asked for, with finite positive θ (:func:`read_theta`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothcert.artifacts import (
    HOST,
    UMASK,
    atomic_path,
    load_torch,
    log,
    resume_conflict,
    save_torch,
    why_not_written,
    write_table,
)
from smoothcert.errors import SmoothcertError, require

FINGERPRINT_PREFIX = "# fingerprint "


class WriterLock:
    """One writer per file: an exclusive ``fcntl`` lock on ``<path>.lock``, which names its holder (pid@host).

    A second process asking for the lock while the holder lives is refused with one line naming the holder
    (:class:`SmoothcertError`): it neither waits nor writes. The kernel drops the lock when its holder dies
    (a kill, a node crash), so a lock file left behind is taken over, said in one line. POSIX locks work
    across the hosts of a shared (NFS) file system, so a Slurm requeue that starts while the first job still
    runs is refused too. :meth:`release` removes the lock file.
    """

    def __init__(self, path: str | os.PathLike, what: str = "file"):
        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")
        self.key = os.path.abspath(self.lock)
        self.me = f"pid {os.getpid()} on {HOST}"
        self.fd: int | None = None
        mine = _HELD.pop(self.key, None)
        if mine is not None and mine.fd is not None:  # this process's own earlier writer (failed half-way)
            self.fd, mine.fd = mine.fd, None  # hand its lock over: closing its fd would drop ours (POSIX locks)
            _HELD[self.key] = self
            return
        try:
            self.lock.parent.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    holder = _read_fd(fd) or "another process"
                    os.close(fd)
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                    raise SmoothcertError(
                        f"{self.path} is being written by {holder} (lock {self.lock}); refusing to write it twice "
                        f"at once: wait for that job, or stop it"
                    ) from None
                try:  # the holder before us may have removed the file after we opened it: lock the current one
                    same = os.stat(self.lock).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                before = _read_fd(fd)
                if before and before != self.me:
                    log(f"lock: {self.lock} names {before}, which no longer holds it (killed?); taking it over")
                os.ftruncate(fd, 0)
                os.pwrite(fd, self.me.encode(), 0)
                os.fsync(fd)
                self.fd = fd
                _HELD[self.key] = self
        except OSError as exc:
            raise SmoothcertError(f"cannot write {self.lock}: {why_not_written(self.lock, exc)}") from exc

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        _HELD.pop(self.key, None)
        with contextlib.suppress(OSError):
            self.lock.unlink()
        os.close(self.fd)
        self.fd = None


_HELD: dict[str, WriterLock] = {}  # the locks this process holds, by lock file


def _read_fd(fd: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return os.pread(fd, 400, 0).decode().strip()
    return ""


class ShardWriter:
    """Append rows to a shard TSV incrementally, resumably and without duplicates.

    Rows are appended to ``<path>.part``: its first line is ``# fingerprint {json}``
    (:func:`fingerprint` of everything a row depends on), its second the header; each
    row is flushed and fsynced. The part file is created, and rewritten, atomically, so
    it never exists without its fingerprint and header. On reopen a torn last line from
    a killed job is dropped and ``done`` holds the keys already written, so a restarted
    job skips them — but only if the stored fingerprint equals ``fingerprint``: a part
    file with another (or no readable) fingerprint or other columns is started over,
    with one line on stderr saying why (``verb``: "certified" → "was certified with ...").
    ``finish`` sorts by ``key`` and atomically renames onto ``path``.

    One writer per shard: a :class:`WriterLock` on ``path`` is held from before the part file is read
    until :meth:`finish` (or :meth:`close`); a second writer is refused in one line naming the first.
    """

    def __init__(
        self, path: str | os.PathLike, columns: list[str], key: str = "idx", *, fingerprint: dict, verb: str = "written"
    ):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.columns = list(columns)
        self.key = key
        self.fingerprint = fingerprint
        self.verb = verb
        self.done: set[int] = set()
        self.lock = WriterLock(self.path)
        try:
            if self.part.exists():
                self._recover()
            else:
                self._start()
        except OSError as exc:
            self.close()
            raise SmoothcertError(f"cannot write {self.part}: {why_not_written(self.part, exc)}") from exc
        except UnicodeDecodeError as exc:
            self.close()
            raise SmoothcertError(f"cannot resume from {self.part}: not a text table; delete it to start over") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give up the lock (the part file stays, for a later run to resume)."""
        self.lock.release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a job that failed half-way gives the shard up when its writer goes
        with contextlib.suppress(Exception):
            self.close()

    def _head(self) -> list[str]:
        return [
            FINGERPRINT_PREFIX + json.dumps(self.fingerprint, sort_keys=True, ensure_ascii=True),
            "\t".join(self.columns),
        ]

    def _start(self) -> None:
        self._rewrite(self._head())

    def _rewrite(self, lines: list[str]) -> None:
        """Replace the part file by ``lines`` atomically (a kill leaves the old file or the new one)."""
        with atomic_path(self.part) as tmp:
            with open(tmp, "w") as fh:
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())

    def _recover(self) -> None:
        text = self.part.read_bytes().decode("utf-8")
        complete = text.split("\n")[:-1]  # the last piece is "" or a torn line
        stored = None
        if complete and complete[0].startswith(FINGERPRINT_PREFIX):
            with contextlib.suppress(ValueError):
                stored = json.loads(complete[0][len(FINGERPRINT_PREFIX) :])
        why = resume_conflict(self.part, stored, self.fingerprint, self.verb)
        if why is None and (len(complete) < 2 or complete[1].split("\t") != self.columns):
            why = f"resume: {self.part} has other columns; starting over"
        if why is not None:
            log(why)
            self._start()
            return
        good = self._head()
        for line in complete[2:]:
            fields = line.split("\t")
            if len(fields) != len(self.columns):
                continue
            try:
                idx = int(fields[self.columns.index(self.key)])
            except ValueError:  # not a row this writer wrote
                continue
            if idx not in self.done:
                self.done.add(idx)
                good.append(line)
        if good != complete or not text.endswith("\n"):
            self._rewrite(good)

    def _write_lines(self, lines: list[str], mode: str) -> None:
        with open(self.part, mode) as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, rows: list[dict]) -> None:
        """Append complete rows (dicts keyed by column) and mark their keys done."""
        fresh = [r for r in rows if int(r[self.key]) not in self.done]
        if not fresh:
            return
        lines = ["\t".join(_fmt(r[c]) for c in self.columns) for r in fresh]
        try:
            self._write_lines(lines, mode="a")
        except OSError as exc:
            raise SmoothcertError(f"cannot write {self.part}: {why_not_written(self.part, exc)}") from exc
        self.done.update(int(r[self.key]) for r in fresh)

    def finish(self) -> pd.DataFrame:
        """Sort the rows by key, write ``path`` atomically and remove the part file."""
        try:
            df = pd.read_csv(self.part, sep="\t", skiprows=1)  # line 1: the fingerprint
            df = df.sort_values(self.key, kind="stable").reset_index(drop=True)
            write_table(self.path, df)
            self.part.unlink(missing_ok=True)
        finally:
            self.close()
        return df


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ------------------------------------------------------------------ whole tables


def _integer(v: np.ndarray, low: int) -> np.ndarray:
    return np.isfinite(v) & (np.mod(v, 1) == 0) & (v >= low)


def _between(low: float, high: float, closed: bool = True):
    if closed:
        return lambda v: np.isfinite(v) & (v >= low) & (v <= high)
    return lambda v: np.isfinite(v) & (v > low) & (v < high)


# What a cell of a certificate table may hold (pipeline.certify.COLUMNS and the memory step's columns):
# column -> (in words, test on the column as float64). Any other column only has to be non-empty.
CELL_RULES = {
    **{c: ("an integer >= 0", lambda v: _integer(v, 0)) for c in ("idx", "label", "count", "n0", "n", "evals")},
    "opt_evals": ("an integer >= 0", lambda v: _integer(v, 0)),
    **{c: ("an integer >= -1", lambda v: _integer(v, -1)) for c in ("predict", "predict_original")},
    "correct": ("0 or 1", lambda v: (v == 0) | (v == 1)),
    **{c: ("a number >= 0", _between(0, np.inf)) for c in ("radius", "proxy_radius", "gap", "gap_original")},
    **{c: ("a number >= 0", _between(0, np.inf)) for c in ("time", "opt_time")},
    "pA_lower": ("a number in [0, 1]", _between(0, 1)),
    "alpha": ("a number in (0, 1)", _between(0, 1, closed=False)),
    **{
        c: ("a number > 0", lambda v: np.isfinite(v) & (v > 0))
        for c in ("sigma", "sigma_min", "sigma_gmean", "sigma_max")
    },
    "log_volume": ("a number (or -inf)", lambda v: ~np.isnan(v) & (v != np.inf)),
}


def check_rows(path: str | os.PathLike, df: pd.DataFrame, expected=None, key: str = "idx", what: str = "table") -> None:
    """Refuse, in one line naming ``path`` and the first bad ``key``, a table that is not whole.

    Whole means: the file ends with a line end (a cut last row has none), every cell is filled and valid
    (:data:`CELL_RULES`), every ``key`` appears once, and — given ``expected``, the keys the table must hold —
    none is missing and none is extra. Problems are named in ``key`` order, the first one in words, then
    how many of each kind; the advice is to delete the file so that the stage that writes it runs again (under
    Snakemake with ``--forcerun report``: a missing intermediate file is not remade while the report is newer).
    """
    path = Path(path)
    problems: list[tuple[float, str]] = []  # (key or position, words)
    keys = (
        pd.to_numeric(df[key], errors="coerce").to_numpy(dtype=float) if key in df.columns else np.full(len(df), np.nan)
    )
    counts = {"damaged": 0, "twice": 0, "missing": 0, "extra": 0}

    def name(row: int) -> tuple[float, str]:
        k = keys[row]
        return (k, f"{key} {int(k)}") if np.isfinite(k) and k == int(k) else (np.inf, f"row {row + 1}")

    bad = np.zeros(len(df), dtype=bool)
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        cut = False
        if size > 0:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
    if cut and len(df):
        order, label = name(len(df) - 1)
        problems.append((order, f"{label} is cut short (the file ends inside its row: truncated?)"))
        bad[-1] = True
    for col in df.columns:
        words, rule = CELL_RULES.get(col, ("filled", None))
        if rule is not None:
            ok = rule(pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float))
        else:
            ok = df[col].notna().to_numpy()
        for row in np.flatnonzero(~ok & ~bad):
            order, label = name(row)
            value = df[col].iloc[row]
            shown = "is empty" if pd.isna(value) else f"= {value.item() if hasattr(value, 'item') else value!r}"
            problems.append((order, f"{label} is damaged ({col} {shown}, expected {words})"))
        bad |= ~ok
    counts["damaged"] = int(bad.sum())
    good = keys[np.isfinite(keys)]
    uniq, times = np.unique(good, return_counts=True)
    for k in uniq[times > 1]:
        problems.append((k, f"{key} {int(k)} appears {int(times[uniq == k][0])} times"))
    counts["twice"] = int((times > 1).sum())
    if expected is not None:
        expected = np.asarray(expected, dtype=float)
        missing, extra = np.setdiff1d(expected, good), np.setdiff1d(good, expected)
        problems += [(k, f"{key} {int(k)} is missing") for k in missing[:1]]
        problems += [(k, f"{key} {int(k)} is not one of its inputs (another shard, run or config?)") for k in extra[:1]]
        counts["missing"], counts["extra"] = len(missing), len(extra)
    if not problems:
        return
    first = min(problems, key=lambda p: p[0])[1]
    total = f"; {len(expected)} expected" if expected is not None else ""
    tally = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    raise SmoothcertError(
        f"{what} {path} is incomplete or damaged: {first} ({tally}{total}); delete it and rerun to recompute it "
        f"(Snakemake: --forcerun report)"
    )


# ------------------------------------------------------------------------------------------------ θ files
THETA_KEYS = ("idx", "theta", "time", "evals")


def write_theta(path: str | os.PathLike, idx, theta, time, evals) -> None:
    """Write a θ file (one shard of a σ / θ search): ``idx`` int64 (n,), ``theta`` float32 (n, d), ``time``
    float64 (n,) seconds and ``evals`` int64 (n,) base-classifier evaluations per input; atomically."""
    import torch

    save_torch(
        path,
        {
            "idx": torch.as_tensor(idx, dtype=torch.int64),
            "theta": torch.as_tensor(theta, dtype=torch.float32),
            "time": torch.as_tensor(time, dtype=torch.float64),
            "evals": torch.as_tensor(evals, dtype=torch.int64),
        },
    )


def read_theta(paths, idx, dim: int) -> tuple:
    """θ (len(idx), dim) float64, seconds and evals per input, for the inputs ``idx`` (in that order), from one
    or more θ files (:func:`write_theta`).

    Refuses (one-line error) a file without tensors ``idx`` / ``theta``, θ not of shape (rows of idx, dim),
    NaN / inf / non-positive θ, ``time`` / ``evals`` of another length, an input listed twice, and any input
    missing from or extra to ``idx`` (a single file for as many other inputs: "is for test inputs ..."). Files
    without ``time`` / ``evals`` count zero cost.
    """
    import torch

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    idx = np.asarray(idx, dtype=np.int64)
    parts = []
    for path in paths:
        blob = load_torch(path, what="theta file")
        require(isinstance(blob, dict) and {"idx", "theta"} <= set(blob), f"theta file {path} needs idx and theta")
        for key in THETA_KEYS:
            require(key not in blob or isinstance(blob[key], torch.Tensor), f"theta file {path}: {key} is not a tensor")
        t_idx, theta = blob["idx"].reshape(-1).long().numpy(), blob["theta"].double().numpy()
        n = len(t_idx)
        require(
            theta.ndim == 2 and theta.shape == (n, dim),
            f"theta file {path} has θ of shape {tuple(theta.shape)}, expected ({n}, {dim})",
        )
        require(
            np.isfinite(theta).all() and (theta > 0).all(), f"theta file {path} holds NaN, inf or non-positive values"
        )
        cost = []
        for key, dtype in (("time", np.float64), ("evals", np.int64)):
            value = blob[key].numpy().astype(dtype) if key in blob else np.zeros(n, dtype)
            require(value.shape == (n,), f"theta file {path}: {key} has shape {value.shape}, expected ({n},)")
            cost.append(value)
        parts.append((t_idx, theta, *cost))
    if len(parts) == 1 and len(parts[0][0]) == len(idx):  # one shard's file, for as many other inputs
        t_idx = parts[0][0]
        require(
            np.array_equal(np.sort(t_idx), np.sort(idx)),
            f"theta file {paths[0]} is for test inputs {t_idx[:3].tolist()}..., this shard certifies "
            f"{idx[:3].tolist()}... (another shard or config?)",
        )
    all_idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    uniq, counts = np.unique(all_idx, return_counts=True)
    require((counts == 1).all(), f"θ files list inputs {uniq[counts > 1][:5].tolist()} more than once")
    missing, extra = np.setdiff1d(idx, all_idx), np.setdiff1d(all_idx, idx)
    require(len(missing) == 0, f"θ files lack rows for {len(missing)} inputs, e.g. idx {missing[:5].tolist()}")
    require(len(extra) == 0, f"θ files hold {len(extra)} inputs not asked for, e.g. idx {extra[:5].tolist()}")
    pos = {int(i): k for k, i in enumerate(all_idx)}
    order = [pos[int(i)] for i in idx]
    theta, time, evals = (np.concatenate([p[k] for p in parts])[order] for k in (1, 2, 3))
    return theta, time, evals
