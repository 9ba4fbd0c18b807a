"""Process-level settings that change no result: the allocator, and which GPU a job runs on.

``tune_allocator``: PyTorch's CPU tensors come straight from malloc. With glibc's defaults,
buffers of a few MB (activations and their gradients) are handed back to the operating
system when freed and faulted in again, page by page, on the next forward pass. Raising
glibc's mmap and trim thresholds keeps them in the process: measured 1.3–1.5× on CPU for
certification and σ optimization (benchmarks/README.md). Only speed and resident memory
(which stays near its peak, bounded by the batch size) change; computed values do not.

``take_gpu``: a job that runs on CUDA takes a free GPU of its host itself — one exclusive lock per device
(``fcntl.flock`` on a file named by host and device UUID) — and holds it until the process ends; the
kernel drops the lock at exit or death (also SIGKILL). Snakemake sets no ``CUDA_VISIBLE_DEVICES`` for
local jobs, so with ``--resources gpu=N`` this is what spreads N jobs over N GPUs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from smoothcert.errors import SmoothcertError, require

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: tensors below it stay in the heap once allocated
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "SMOOTHCERT_DEFAULT_MALLOC")


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if both were set.

    Does nothing (False) off Linux/glibc, or when the environment already sets
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (the user's choice wins) or
    ``SMOOTHCERT_DEFAULT_MALLOC`` (keep glibc's defaults, e.g. to benchmark them).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, THRESHOLD) == 1


# ------------------------------------------------------------------------------------------ GPU slots
FAKE_GPUS = "SMOOTHCERT_FAKE_GPUS"  # tests only: pretend this many GPUs exist (jobs then compute on the CPU)
POLL_SECONDS = 0.5  # how often a job waiting for a GPU tries the locks again


@dataclass(frozen=True)
class GpuSlot:
    """The GPU this process holds: ``index`` among the visible devices (``cuda:index``), its identity
    ``ident`` (UUID, or ``fakeK``), the lock file, and whether the device is faked (:data:`FAKE_GPUS`)."""

    index: int
    ident: str
    lock: Path
    fake: bool


_held: tuple[int, GpuSlot] | None = None  # (open lock fd, slot): kept open for the life of the process


def fake_gpus() -> int | None:
    """The device count :data:`FAKE_GPUS` fakes (None when unset). For tests of the slot logic only."""
    text = os.environ.get(FAKE_GPUS)
    if text is None:
        return None
    require(text.isdigit(), f"{FAKE_GPUS} = {text!r} is not allowed; expected a number of GPUs >= 0")
    return int(text)


def _visible(count: int) -> list[int]:
    """Which of ``count`` faked devices ``CUDA_VISIBLE_DEVICES`` shows, in its order (CUDA's rule: the list
    ends at the first entry that names no device; unset: all)."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return list(range(count))
    out: list[int] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry.isdigit() or int(entry) >= count or int(entry) in out:
            break
        out.append(int(entry))
    return out


def gpu_idents() -> list[str]:
    """One identity per device this process sees, in ``cuda:i`` order: the device's UUID (the same
    whichever ``CUDA_VISIBLE_DEVICES`` numbering a job got), else its visible-devices entry or index."""
    fake = fake_gpus()
    if fake is not None:
        return [f"fake{k}" for k in _visible(fake)]
    import torch

    if not torch.cuda.is_available():
        return []
    entries = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    out = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        if uuid is not None:
            out.append(str(uuid) if str(uuid).startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        else:
            out.append(entries[i].strip() if i < len(entries) and entries[i].strip() else str(i))
    return out


def _try_lock(path: Path) -> int | None:
    """An fd holding ``path``'s exclusive lock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise SmoothcertError(f"GPU lock {path}: cannot lock it ({exc.strerror})") from exc
    return fd


def take_gpu(lock_dir: str | Path, log=None) -> GpuSlot:
    """Take a free GPU of this host and hold it until the process ends; wait while every one is taken.

    Guarantee: while this process lives, no other process that takes its GPU here (same host, same
    ``lock_dir``) holds the same device; the lock is the kernel's (``flock``), released when the process
    exits or dies, so a killed job frees its GPU. Only devices ``CUDA_VISIBLE_DEVICES`` shows are taken.
    Logs the slot taken (and, once, that it waits) to ``log`` (default: stderr). Calling it again in the
    same process returns the slot already held.
    """
    global _held
    if _held is not None:
        return _held[1]
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    idents = gpu_idents()
    require(bool(idents), "a GPU slot was asked for but no CUDA device is visible")
    folder = Path(lock_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SmoothcertError(f"gpu_locks = {str(lock_dir)!r}: cannot create the folder ({exc.strerror})") from exc
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    paths = [folder / f"{host}-{re.sub(r'[^A-Za-z0-9._-]', '_', ident)}.lock" for ident in idents]
    waiting_since = None
    while True:
        for index, (ident, path) in enumerate(zip(idents, paths)):
            fd = _try_lock(path)
            if fd is None:
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%FT%T%z')}\n".encode())
            slot = GpuSlot(index, ident, path, fake_gpus() is not None)
            _held = (fd, slot)
            waited = f" after waiting {time.monotonic() - waiting_since:.0f} s" if waiting_since is not None else ""
            device = "cpu (faked GPU: tests only)" if slot.fake else f"cuda:{index}"
            say(f"GPU slot {index + 1} of {len(idents)} ({ident}) taken{waited}: computing on {device}; lock {path}")
            return slot
        if waiting_since is None:
            waiting_since = time.monotonic()
            say(f"all {len(idents)} GPU slot(s) under {folder} are taken; waiting for one to be released")
        time.sleep(POLL_SECONDS)
