"""GPU slots for local jobs (runtime.take_gpu): concurrent processes take distinct devices, a surplus job
waits for one, a killed holder frees its device, CUDA_VISIBLE_DEVICES limits the choice, and slots held
by running jobs survive a restart of Snakemake. Devices are faked with SMOOTHCERT_FAKE_GPUS (no CUDA)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoothcert import runtime
from smoothcert.errors import SmoothcertError

REPO = Path(__file__).resolve().parents[1]
# takes a slot, prints "index ident", holds it until the file argv[2] exists
HOLD = """
import pathlib, sys, time
from smoothcert import runtime
slot = runtime.take_gpu(sys.argv[1])
print(slot.index, slot.ident, flush=True)
release = pathlib.Path(sys.argv[2])
while not release.exists():
    time.sleep(0.02)
"""


def _env(gpus: int | None, visible: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (runtime.FAKE_GPUS, "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if gpus is not None:
        env[runtime.FAKE_GPUS] = str(gpus)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


class Holder:
    """A process that takes a GPU slot under ``locks`` and holds it until :meth:`release`."""

    def __init__(self, tmp: Path, name: str, gpus: int, visible: str | None = None):
        self.go = tmp / f"release-{name}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp / "locks"), str(self.go)],
            env=_env(gpus, visible),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def slot(self, timeout: float) -> tuple[int, str] | None:
        """(index, ident) once taken, or None if not taken within ``timeout`` seconds."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline().split()
        assert line, f"holder exited without a slot: {self.proc.stderr.read()}"
        return int(line[0]), line[1]

    def release(self) -> None:
        self.go.touch()
        assert self.proc.wait(timeout=30) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holders(tmp_path):
    made: list[Holder] = []

    def start(name: str, gpus: int, visible: str | None = None) -> Holder:
        made.append(Holder(tmp_path, name, gpus, visible))
        return made[-1]

    yield start
    for h in made:
        h.stop()


def test_k_processes_take_k_distinct_slots_and_the_next_waits_for_one(holders, tmp_path):
    first = [holders(f"h{i}", 3) for i in range(3)]
    slots = [h.slot(60) for h in first]
    assert sorted(slots) == [(0, "fake0"), (1, "fake1"), (2, "fake2")]
    late = holders("late", 3)
    assert late.slot(2.0) is None  # every slot is held: it waits
    freed = slots[1]
    first[1].release()
    assert late.slot(30) == freed
    late.release()
    err = late.proc.stderr.read()
    assert err.count("waiting for one") == 1, err  # one log line for the wait
    assert f"GPU slot {freed[0] + 1} of 3 ({freed[1]}) taken after waiting" in err
    assert "computing on cpu (faked GPU" in err
    lock = tmp_path / "locks"
    assert len(list(lock.glob("*-fake*.lock"))) == 3  # one lock file per device, kept for the next job


def test_a_killed_holders_slot_is_free_again(holders):
    holder = holders("killed", 1)
    assert holder.slot(60) == (0, "fake0")
    waiter = holders("waiter", 1)
    assert waiter.slot(2.0) is None
    holder.proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops the lock
    holder.proc.wait()
    assert waiter.slot(30) == (0, "fake0")


def test_slots_are_taken_among_visible_devices_only(holders, tmp_path):
    a, b = holders("a", 4, "3,1"), holders("b", 4, "3,1")
    assert sorted([a.slot(60), b.slot(60)]) == [(0, "fake3"), (1, "fake1")]  # cuda:i counts visible devices
    other = holders("other", 4, "1")  # another numbering of device 1: the same lock, so it waits
    assert other.slot(2.0) is None
    for h in (a, b):
        h.release()
    assert other.slot(30) == (0, "fake1")
    none = subprocess.run(
        [sys.executable, "-c", HOLD, str(tmp_path / "locks"), str(tmp_path / "x")],
        env=_env(4, ""),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert none.returncode != 0 and "no CUDA device is visible" in none.stderr


def test_fake_gpu_count_is_checked(monkeypatch):
    monkeypatch.setenv(runtime.FAKE_GPUS, "two")
    with pytest.raises(SmoothcertError, match="SMOOTHCERT_FAKE_GPUS = 'two' is not allowed"):
        runtime.fake_gpus()
    monkeypatch.delenv(runtime.FAKE_GPUS)
    assert runtime.fake_gpus() is None


SETUP = """
import argparse, os, pathlib, sys
from smoothcert import config, runtime
from smoothcert.commands import _common
locks = pathlib.Path(".smoothcert/gpu-locks")  # params.yaml's gpu_locks, relative to the job's folder
args = argparse.Namespace(config=sys.argv[1])
cfg, device = _common.setup(args)
print("plain", device, locks.exists())
os.environ[runtime.FAKE_GPUS] = "2"
cfg, device = _common.setup(args, device=False)
print("no-device", device, locks.exists())
cfg, device = _common.setup(argparse.Namespace(config=sys.argv[2]))
print("cpu", device, locks.exists())
device = config.resolve_device({"device": "auto"})  # a checkpoint's older config: params.yaml's gpu_locks
print("fake", device, runtime._held[1].ident, sorted(p.name.split("-")[-1] for p in locks.iterdir()))
print("again", _common.setup(args)[1], runtime._held[1].ident)
"""


def test_stage_setup_takes_a_slot_only_for_gpu_work(tmp_path):
    """Stages computing on the device (train, optimize, certify, video) take a slot through
    ``_common.setup``; on a CPU machine nothing is locked (the default run is untouched)."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU default; CUDA machines take real slots (test_gpu_cuda.py)")
    cpu_cfg = tmp_path / "cpu.yaml"
    cpu_cfg.write_text((REPO / "params.yaml").read_text().replace("device: auto", "device: cpu", 1))
    out = subprocess.run(
        [sys.executable, "-c", SETUP, str(REPO / "params.yaml"), str(cpu_cfg)],
        cwd=tmp_path,
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["plain cpu False", "no-device None False", "cpu cpu False"]
    assert lines[3] == "fake cpu fake0 ['fake0.lock']"
    assert lines[4] == "again cpu fake0"
    assert out.stderr.count("GPU slot 1 of 2 (fake0) taken") == 1


SNAKEFILE = """
rule job:
    output: "out/{j}.done"
    log: "logs/{j}.log"
    resources: gpu=1
    shell: "{PY} hold.py locks go-{wildcards.j} > {log} 2>&1 && touch {output}"
""".replace("{PY}", sys.executable)


def _wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _slot_of(log: Path) -> tuple[str, str] | None:
    """The "index ident" line a job printed once it took its slot (its log also holds stderr)."""
    lines = (log.read_text() if log.exists() else "").split("\n")[:-1]  # complete lines only
    return next((tuple(p) for p in map(str.split, lines) if len(p) == 2 and p[0].isdigit()), None)


def test_a_slot_survives_a_snakemake_restart(tmp_path):
    """Snakemake with --resources gpu=2 on 2 (faked) GPUs: its two jobs take both slots. Snakemake is then
    killed (its jobs run on, orphaned, holding their GPUs) and restarted for a third job: that job waits
    until a held GPU is released and takes exactly that one."""
    pytest.importorskip("snakemake")
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "hold.py").write_text(HOLD)
    env = _env(2)
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2"]
    first = subprocess.Popen(
        [snakemake[0], *snakemake[1:3], "out/a.done", "out/b.done", *snakemake[3:]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    orphans: list[int] = []
    try:
        slots = _wait_for(
            lambda: (
                all(_slot_of(tmp_path / f"logs/{j}.log") for j in "ab")
                and {j: _slot_of(tmp_path / f"logs/{j}.log") for j in "ab"}
            ),
            120,
            "both jobs to take a slot",
        )
        assert sorted(s[1] for s in slots.values()) == ["fake0", "fake1"]
        orphans = [int(p.read_text().split()[1]) for p in (tmp_path / "locks").iterdir()]
        first.send_signal(signal.SIGKILL)  # Snakemake alone: the jobs keep running and keep their GPUs
        first.wait()
        subprocess.run([*snakemake, "--unlock"], cwd=tmp_path, env=env, check=True, capture_output=True)
        second = subprocess.Popen(
            [snakemake[0], *snakemake[1:3], "out/c.done", *snakemake[3:]],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        log_c = tmp_path / "logs/c.log"
        _wait_for(lambda: log_c.exists() and "waiting for one" in log_c.read_text(), 120, "the third job to wait")
        assert _slot_of(log_c) is None
        (tmp_path / "go-a").touch()  # the first run's job a finishes and frees its GPU
        assert _wait_for(lambda: _slot_of(log_c), 60, "the third job's slot") == slots["a"]
        (tmp_path / "go-c").touch()
        assert second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        for name in ("go-a", "go-b", "go-c"):
            (tmp_path / name).touch()
        if first.poll() is None:
            first.kill()
        for pid in orphans:  # the killed run's jobs (they exit on their release files)
            end = time.monotonic() + 30
            while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)
