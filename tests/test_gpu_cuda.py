"""Checks that need a real GPU (marked ``cuda``; skipped without one; benchmarks/gpu_check.sh runs them):
a CUDA job takes a real device through its slot, and the device engine counts exactly the draws of each
input's keyed CUDA stream, whatever the batch size."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothcert.engine.noise import chunk_sizes, fill_standard, make_generator, stream_seed
from smoothcert.engine.sampling import Sampling, count_classes

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
REPO = Path(__file__).resolve().parents[1]

TAKE = """
import sys, torch
from smoothcert import config
device = config.resolve_device({"device": "auto", "gpu_locks": sys.argv[1]})
x = torch.ones(4, device=device)
print(device, torch.cuda.current_device(), x.device, flush=True)
sys.stdin.readline()
"""


def test_a_cuda_job_takes_a_real_gpu_and_the_next_waits(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SMOOTHCERT_FAKE_GPUS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    count = torch.cuda.device_count()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TAKE, str(tmp_path)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count + 1)
    ]
    try:
        taken: dict[int, list[str]] = {}  # which processes got a GPU (any `count` of them)
        while len(taken) < count:
            ready, _, _ = select.select([p.stdout for p in procs], [], [], 120)
            assert ready, "no process took a GPU within 120 s"
            for i, p in enumerate(procs):
                if p.stdout in ready and i not in taken:
                    taken[i] = p.stdout.readline().split()
        assert sorted(line[0] for line in taken.values()) == [f"cuda:{i}" for i in range(count)]
        for dev, current, where in taken.values():
            assert dev == where and current == dev.split(":")[1]  # made the current device too
        locks = sorted(p.name for p in tmp_path.iterdir())
        assert len(locks) == count and all("-GPU-" in name or "-MIG-" in name for name in locks), locks
        waiter = next(i for i in range(len(procs)) if i not in taken)
        assert not select.select([procs[waiter].stdout], [], [], 1.0)[0]  # every GPU is held: it waits
        first = next(iter(taken))
        procs[first].communicate("\n", timeout=60)
        assert procs[waiter].stdout.readline().split()[0] == taken[first][0]  # it gets the freed GPU
        _, err = procs[waiter].communicate("\n", timeout=60)
        assert "waiting for one" in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


class Linear2(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w, requires_grad=False)

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(s), s, -s - 0.5], 1)


def test_device_engine_counts_each_inputs_own_stream_at_any_batch_size():
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, generator=gen)
    model = Linear2(w).to(dev)
    x = torch.rand(3, 1, 3, 4, generator=gen) - 0.5
    sigma, num, chunk = 0.7, 2500, 400
    seeds = [stream_seed(4, i, "estimate") for i in range(len(x))]
    want = np.zeros((len(x), 3), dtype=np.int64)  # each input's chunks drawn one by one from its own stream
    for i, seed in enumerate(seeds):
        g = make_generator(seed, dev)
        for c in chunk_sizes(num, chunk):
            eps = fill_standard(torch.empty((c, 1, 3, 4), device=dev), "gaussian", g)
            rows = eps.mul_(sigma).add_(x[i].to(dev))
            want[i] += np.bincount(model(rows).argmax(1).cpu().numpy(), minlength=3)
    assert want.sum() == len(x) * num and (want > 0).sum() >= 6
    for batch in (7, 1000, 2500, 100_000):  # passes that split chunks and inputs, and one pass for all
        sampling = Sampling(batch_size=batch, chunk=chunk, device=dev)
        got = count_classes(model, x, sigma, num, 3, seeds, sampling)
        assert np.array_equal(got, want), batch
    # a continued stream (sequential mode) sees the same draws as one call
    first = count_classes(model, x, sigma, 1200, 3, seeds, Sampling(batch_size=1000, chunk=chunk, device=dev))
    rest = count_classes(
        model, x, sigma, num - 1200, 3, seeds, Sampling(batch_size=1000, chunk=chunk, device=dev), first_chunk=3
    )
    assert np.array_equal(first + rest, want)
