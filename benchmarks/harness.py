"""What every benchmark shares: timing, the machine a figure was taken on, and the JSON results file.

Scripts in ``benchmarks/`` use it as ``import harness`` (Python puts a script's own folder first on
``sys.path``); nothing here is part of the package. Conventions:

* :func:`interleaved` times several variants per repeat in a rotating order, so that load from other
  processes on a shared machine hits them alike; :func:`ratio` and :func:`best` compare them (median of
  per-repeat ratios with range; ratio of the fastest runs, since interference only ever adds time).
* :func:`machine` records the CPU (model, cores, the AVX-512 / bfloat16 / AMX flags that decide how
  fast forward passes and noise run), torch and the GPU beside every result.
* :func:`emit` prints one JSON line per measurement as it goes; :func:`write_result` writes the
  results file atomically at the end (``benchmarks/results/<name>.json`` by default).
* :func:`trained_workspace` makes (once) the prepared data and Gaussian-trained models a benchmark
  certifies, with the pipeline's own commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
# environment variables that change which kernels torch, oneDNN and numpy dispatch to (or how noise is drawn)
DISPATCH_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES", "SMOOTHCERT_NOISE_THREADS")


# --------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """lscpu's "Model name" (else platform.processor())."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    return name


def cpu_flags() -> dict:
    """The CPU's AVX-512 / bfloat16 / AMX flags (/proc/cpuinfo), torch's kernel dispatch level, and the
    dispatch overrides set in the environment."""
    import torch

    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "dispatch_env": {k: os.environ[k] for k in DISPATCH_ENV if k in os.environ},
    }


def load_avg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def memory_gb() -> float | None:
    """Physical memory in GiB (None if unknown)."""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return None


def machine(**extra: Any) -> dict:
    """What a figure was taken on: CPU model, cores, memory, CPU flags, torch, threads, GPU, load average."""
    import torch

    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "load_avg": load_avg(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info.update(cpu_flags())
    info.update(extra)
    return info


def commit() -> dict:
    """The repository's commit and whether the working tree differs from it (None for a copy without
    git or .git, as a GPU machine may get)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if head else None
    return {"commit": head, "worktree_dirty": None if status is None else bool(status)}


def copy_repo(dest: str | Path) -> Path:
    """Copy the repository's tracked and unignored files (what a fresh clone plus local edits holds) into ``dest``."""
    dest = Path(dest)
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def pick_device(name: str):
    """``--device auto|cpu|cuda`` as a torch device (auto: CUDA when torch sees a GPU); exits if cuda is
    asked for and there is none."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


# ---------------------------------------------------------------------------------------------- timing
def sync(device=None) -> None:
    """Wait for queued CUDA work, so that a timer around it measures it (no-op on the CPU)."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)


@contextlib.contextmanager
def threads(k: int | None):
    """Run the block with ``k`` torch CPU threads (unchanged if ``k`` is falsy), then restore."""
    import torch

    old = torch.get_num_threads()
    if k:
        torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def timed(fn: Callable[[], Any], device=None) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds of this process)``, CUDA work included."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0, time.process_time() - c0


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device=None, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, every repeat timing all of them once in a rotating order.

    ``times[name]`` is wall time; ``times[name + "@cpu"]`` the CPU time of this process (all its threads),
    which other tenants of a shared machine disturb far less than wall time.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {key: [] for name in names for key in (name, name + "@cpu")}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _, wall, cpu = timed(fns[name], device)
            times[name].append(wall)
            times[name + "@cpu"].append(cpu)
    return times


def ratio(times: dict, num: str, den: str) -> dict:
    """Median and range of the per-repeat ratio t[den] / t[num] (= speed of ``num`` relative to ``den``)."""
    import numpy as np

    r = np.array(times[den]) / np.array(times[num])
    return {"median": round(float(np.median(r)), 4), "min": round(float(r.min()), 4), "max": round(float(r.max()), 4)}


def best(times: dict, num: str, den: str) -> float:
    """Ratio of the fastest runs, min t[den] / min t[num]: interference from other load only ever adds time."""
    return round(min(times[den]) / min(times[num]), 4)


def rate(count: float, seconds: list[float]) -> float:
    """``count`` per second at the median of ``seconds``."""
    import numpy as np

    return round(count / float(np.median(seconds)), 1)


# ------------------------------------------------------------------------------------------ workspace
def trained_workspace(
    work: Path, dataset: str, arch: str, epochs: int, sigmas: list[float], inputs: int | None
) -> tuple[dict, Path]:
    """(config, prepared data folder) in ``work``: params.yaml with ``dataset``/``arch``/``epochs``, one
    Gaussian-trained Cohen ℓ2 model per σ of ``sigmas``, the first ``inputs`` test inputs in one shard;
    data and models are made by ``smoothcert prepare-data`` / ``train`` the first time and reused after."""
    import yaml

    from smoothcert import cli
    from smoothcert import config as config_mod

    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["data"]["dataset"] = dataset
    cfg["model"]["arch"] = arch
    cfg["train"]["epochs"] = epochs
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": list(sigmas), "methods": ["cohen"]}
    ]
    cfg["test"].update(start=0, step=1, limit=inputs, shards=1)
    cfg["video"]["enabled"] = False
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = config_mod.load(path)
    data = work / "data"
    steps = [] if (data / "test.pt").exists() else [["prepare-data", "--out", str(data)]]
    for spec in config_mod.model_specs(cfg):
        out = work / "models" / spec.id
        if not _trained_with(out / "model.pt", cfg):
            shutil.rmtree(out, ignore_errors=True)  # absent, or trained with other settings: train it anew
            steps.append(["train", "--model", spec.id, "--data", str(data), "--out", str(out), "--no-progress"])
    for step in steps:
        if cli.main(["--config", str(path), *step]) != 0:
            raise RuntimeError(f"smoothcert {' '.join(step)} failed")
    return cfg, data


def _trained_with(ckpt: Path, cfg: dict) -> bool:
    """Whether ``ckpt`` exists and was trained with ``cfg``'s dataset, architecture, training settings and seed
    (the config the train command stamps into the checkpoint)."""
    import torch

    if not ckpt.is_file():
        return False
    saved = torch.load(ckpt, map_location="cpu", weights_only=True).get("config") or {}
    same = all(saved.get(k) == cfg.get(k) for k in ("train", "model", "seed"))
    return same and (saved.get("data") or {}).get("dataset") == cfg["data"]["dataset"]


# ------------------------------------------------------------------------------------------------ JSON
def emit(row: dict) -> None:
    """Print one measurement as a JSON line, at once."""
    print(json.dumps(row, default=str), flush=True)


def results_path(name: str) -> Path:
    """``benchmarks/results/<name>``, the default place of a results file."""
    return RESULTS / name


def write_result(path: str | Path, record: dict) -> Path:
    """Write ``record`` as indented JSON, atomically (a killed run leaves the previous file); return the path."""
    from smoothcert.artifacts import write_json

    path = Path(path)
    write_json(path, record)
    print(f"wrote {path}", flush=True)
    return path
