"""Artifacts: atomic file writes, safe reading of tensors, arrays and tables, and fingerprints of resumable state.

Guarantee: every file this package writes appears complete or not at all
(written to a temporary file in the same folder, flushed, then renamed), so a
job killed at any point leaves no half-written output behind.

Resumable state (a shard's ``.part`` rows, training's ``checkpoint.pt``) carries a
:func:`fingerprint` of everything its content depends on; a job resumes from it only
when the fingerprint is the one it would write itself, else it starts over and says
why in one line on stderr (:func:`resume_conflict`). What one shard job writes — the
one-writer lock, rows appended resumably, the whole-table check, θ files — is in
:mod:`smoothcert.shards`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothcert.errors import SmoothcertError, require


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


HOST = socket.gethostname()


def _tmp_prefix(path: Path) -> str:
    """Temporary files of ``path`` are ``.<name>.<pid>@<host>.<random>.tmp``: the owner can be told."""
    return f".{path.name}.{os.getpid()}@{HOST}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


_OWNER = re.compile(r"\.(\d+)@(.+)\.[^.]+\.tmp$")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` (from :func:`atomic_path`) left by a killed writer; return them.

    A temporary is stale when its writer process is gone: one named by a process of this host that no
    longer runs, or one without an owner in its name (an older version's). A temporary of a live process,
    or of another host, is left alone. Each removal is said in one line.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = _OWNER.search(tmp.name[len(path.name) + 1 :])
        if owner is not None and (owner.group(2) != HOST or pid_alive(int(owner.group(1)))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
            log(f"removed {tmp}, a temporary file left by a killed writer")
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Any write error in the body (``OSError``: a full disk, a read-only folder) becomes one line naming
    ``path``, and the temporary file is removed. Stale temporaries of ``path`` are removed first
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
        os.close(fd)
    except OSError as exc:
        raise SmoothcertError(f"cannot write {path}: {why_not_written(path, exc)}") from exc
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


def why_not_written(path: Path, exc: OSError) -> str:
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


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` as bytes, the same for the same ``obj``: saved into memory, so the zip
    archive's records are named ``archive/...`` rather than after a (random) temporary file name."""
    import torch  # lazily: table-only commands (gather) start without torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj``: byte-identical for identical ``obj`` (:func:`torch_bytes`), and a
    write error (a full disk) is one line naming ``path``, as for every other write."""
    write_bytes(path, torch_bytes(obj))


def load_npz(path: str | os.PathLike, what: str = "npz file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickles (``allow_pickle=False``); one line if unreadable."""
    path = Path(path)
    require(path.is_file(), f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as blob:
            return {k: blob[k] for k in blob.files}
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        raise SmoothcertError(f"cannot read {what} {path}: {detail[0] if detail else type(exc).__name__}") from exc


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
            reason = (
                f"it names {found.group(1)}, which would run code or build objects other than tensors; "
                f"refused (loaded with weights_only=True)"
            )
        elif path.stat().st_size == 0:
            reason = "the file is empty"
        elif _all_zero(path):
            reason = "the file holds only zero bytes (its data never reached the disk: a crash or full disk?)"
        else:
            boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
            lines = [
                line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)
            ]
            detail = lines[0] if lines else type(exc).__name__
            reason = f"truncated, corrupt or not a torch file ({detail[:160]})"
        raise SmoothcertError(f"cannot load {what} {path}: {reason}") from exc


def _all_zero(path: Path) -> bool:
    with open(path, "rb") as fh:
        return not any(block.strip(b"\0") for block in iter(lambda: fh.read(1 << 20), b""))


def read_table(
    path: str | os.PathLike, required: list[str] | tuple[str, ...] = (), what: str = "table"
) -> pd.DataFrame:
    """Read a TSV and check that ``required`` columns are present."""
    path = Path(path)
    require(not path.is_dir(), f"{what} {path} is a folder, not a table file")
    require(path.is_file(), f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise SmoothcertError(f"cannot read {what} {path}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    require(not missing, f"{what} {path} lacks columns {missing}")
    return df


# ------------------------------------------------------------------ fingerprints of resumable state

FINGERPRINT_VERSION = 1
_HASH = "sha256:"
# How a changed content hash is named in the resume message (other hashed parts: "another <name>").
_HASH_LABELS = {
    "checkpoint": "another checkpoint",
    "weights": "another model",
    "theta": "another θ file",
    "inputs": "other test inputs",
    "train_data": "other training data",
    "test_data": "other test data",
    "code": "other code",
}


def _plain(obj: Any) -> Any:
    """``obj`` as JSON builtins: dicts with str keys, lists, str, int, float, bool, None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_plain(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (str, bool, type(None))):
        return obj
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch scalars and arrays
        return _plain(obj.tolist())
    if isinstance(obj, (int, float)):
        return obj
    raise TypeError(f"fingerprint: cannot record a {type(obj).__name__}")


def fingerprint(**parts: Any) -> dict:
    """The canonical fingerprint of resumable state: ``parts`` as plain JSON (keys sorted, tuples as lists).

    Every resumable artifact is stamped with the fingerprint of what its content depends on
    (config sections, seeds, content hashes from :func:`sha256_file` / :func:`sha256_tensors`)
    and resumed only when the fingerprint it would write now is equal. Name the parts after the
    config sections they come from (``certify``, ``train``, ...), so :func:`resume_conflict`
    can name the changed key as ``certify.alpha``; hashes are strings ``"sha256:<hex>"``.
    """
    return json.loads(json.dumps(_plain({"version": FINGERPRINT_VERSION, **parts}), sort_keys=True))


def sha256_file(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the bytes of ``path``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise SmoothcertError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _HASH + digest.hexdigest()


def sha256_tensors(*items: Any) -> str:
    """``"sha256:<hex>"`` of tensors / arrays (dtype, shape and values), a dict of them (a state dict, by
    name) or a module's state dict; memory layout and device do not matter."""
    import numpy as np
    import torch

    digest = hashlib.sha256()

    def add(item: Any) -> None:
        if isinstance(item, torch.nn.Module):
            item = item.state_dict()
        if isinstance(item, dict):
            for name in sorted(item):
                digest.update(f"<{name}>".encode())
                add(item[name])
            return
        if isinstance(item, (list, tuple)):
            digest.update(f"[{len(item)}]".encode())
            for v in item:
                add(v)
            return
        t = torch.as_tensor(np.asarray(item)) if not isinstance(item, torch.Tensor) else item
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of big inputs

    for item in items:
        add(item)
    return _HASH + digest.hexdigest()


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def describe_changes(old: dict, new: dict) -> str:
    """What differs between two fingerprints, in words: ``another checkpoint``, ``other settings
    (certify.alpha: 0.001 → 0.01)``, ...; empty if they are equal."""
    hashes, settings = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if any(isinstance(v, str) and v.startswith(_HASH) for v in (a, b)):
            hashes.append(_HASH_LABELS.get(key, f"another {key.replace('_', ' ')}"))
            continue
        fa, fb = _flat(a, key), _flat(b, key)
        for name in sorted(set(fa) | set(fb)):
            if fa.get(name, "(unset)") != fb.get(name, "(unset)"):
                settings.append(
                    f"{name}: {json.dumps(fa.get(name, '(unset)'), ensure_ascii=False)} → "
                    f"{json.dumps(fb.get(name, '(unset)'), ensure_ascii=False)}"
                )
    words = hashes
    if settings:
        more = f", and {len(settings) - 3} more" if len(settings) > 3 else ""
        words = words + [f"other settings ({', '.join(settings[:3])}{more})"]
    return " and ".join(words)


def resume_conflict(
    path: str | os.PathLike, stored: Any, wanted: dict, verb: str = "written", action: str = "starting over"
) -> str | None:
    """None if state ``path`` stamped with fingerprint ``stored`` may be resumed by a job whose
    fingerprint is ``wanted``; else the one-line reason, e.g. ``resume: x.tsv.part was certified
    with another checkpoint; starting over``. A missing or unreadable ``stored`` never matches."""
    if not isinstance(stored, dict):
        return f"resume: {path} has no fingerprint (written by an older version, or damaged); {action}"
    if stored == wanted:
        return None
    return f"resume: {path} was {verb} with {describe_changes(stored, wanted) or 'other settings'}; {action}"


def log(message: str) -> None:
    """One line on stderr (a stage's log under Snakemake)."""
    print(message, file=sys.stderr, flush=True)
