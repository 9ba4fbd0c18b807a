"""Atomic file writes, safe checkpoint loading and incremental TSV shards.

Guarantee: every file this package writes appears complete or not at all
(written to a temporary file in the same folder, flushed, then renamed), so a
job killed at any point leaves no half-written output behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from smoothcert.errors import SmoothcertError, require


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
        os.close(fd)
    except OSError as exc:
        raise SmoothcertError(f"cannot write {path}: {_why(path, exc)}") from exc
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SmoothcertError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Fail now, with one line, if ``path`` (a file, or with ``folder`` a folder) could not be written later.

    Writes and removes a probe file next to it; folders it had to create for that are removed again, so
    nothing is left behind either way. Long stages call it before their work, so a bad output path costs
    seconds, not the whole run.
    """
    target = Path(path) if folder else Path(path).parent
    missing = [p for p in (target, *target.parents) if not p.exists()]
    probe = target / f".{Path(path).name}.probe"
    try:
        with atomic_path(probe):
            pass
        probe.unlink(missing_ok=True)
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def _why(path: Path, exc: OSError) -> str:
    """The reason a write under ``path`` failed, naming a parent that is a file rather than a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    return exc.strerror or str(exc)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_table(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Atomically write a tab-separated table (full float precision)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj``."""
    import torch  # lazily: table-only commands (gather) start without torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "file") -> Any:
    """Load a tensor file with ``weights_only=True``; refuse code-running pickles."""
    import torch

    path = Path(path)
    require(path.is_file(), f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. pickle-protocol notes: the error below is the one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / unsafe files
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # a pickle that names a callable or class: it would run code when unpickled
            reason = (f"it names {found.group(1)}, which would run code or build objects other than tensors; "
                      f"refused (loaded with weights_only=True)")
        elif path.stat().st_size == 0:
            reason = "the file is empty"
        else:
            boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
            lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
            detail = lines[0] if lines else type(exc).__name__
            reason = f"truncated, corrupt or not a torch file ({detail[:160]})"
        raise SmoothcertError(f"cannot load {what} {path}: {reason}") from exc


def read_table(path: str | os.PathLike, required: list[str] | tuple[str, ...] = (), what: str = "table") -> pd.DataFrame:
    """Read a TSV and check that ``required`` columns are present."""
    path = Path(path)
    require(path.is_file(), f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise SmoothcertError(f"cannot read {what} {path}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    require(not missing, f"{what} {path} lacks columns {missing}")
    return df


class ShardWriter:
    """Append rows to a shard TSV incrementally, resumably and without duplicates.

    Rows are appended to ``<path>.part`` (header first, each row flushed and
    fsynced); a torn last line from a killed job is dropped on reopen. ``done``
    holds the indices already written, so a restarted job skips them.
    ``finish`` sorts by ``key`` and atomically renames onto ``path``.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str], key: str = "idx"):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.columns = list(columns)
        self.key = key
        self.done: set[int] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.part.exists():
                self._recover()
            else:
                self._write_lines(["\t".join(self.columns)], mode="w")
        except OSError as exc:
            raise SmoothcertError(f"cannot write {self.part}: {_why(self.part, exc)}") from exc
        except UnicodeDecodeError as exc:
            raise SmoothcertError(f"cannot resume from {self.part}: not a text table; delete it to start over") from exc

    def _recover(self) -> None:
        text = self.part.read_text()
        lines = text.split("\n")
        complete = lines[:-1] if not text.endswith("\n") else lines[:-1]
        if not complete or complete[0].split("\t") != self.columns:
            self._write_lines(["\t".join(self.columns)], mode="w")
            return
        good = [complete[0]]
        for line in complete[1:]:
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
        self._write_lines(good, mode="w")

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
            raise SmoothcertError(f"cannot write {self.part}: {_why(self.part, exc)}") from exc
        self.done.update(int(r[self.key]) for r in fresh)

    def finish(self) -> pd.DataFrame:
        """Sort the rows by key, write ``path`` atomically and remove the part file."""
        df = pd.read_csv(self.part, sep="\t")
        df = df.sort_values(self.key, kind="stable").reset_index(drop=True)
        write_table(self.path, df)
        self.part.unlink(missing_ok=True)
        return df


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)
