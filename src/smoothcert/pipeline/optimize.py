"""The σ / θ search stage: run a per-input-σ method's search over one shard of the test set.

What the search is comes from the method (its registry entry's ``optimize`` function and its params.yaml
section); this module only batches inputs, seeds their noise and records cost. Input i's noise comes from its
own generator keyed by ``stream_seed(cfg['seed'], idx[i], 'optimize')``, so the result does not depend on
sharding or batching. Only σ / θ receive gradients; the model is frozen and never stepped.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smoothcert import methods
from smoothcert.engine import noise as noise_mod
from smoothcert.engine.surrogate import resolve_precision
from smoothcert.errors import require
from smoothcert.methods import Method


def optimize_shard(
    cfg: dict,
    spec,
    method: Method | str,
    model: nn.Module,
    x: torch.Tensor,
    idx: np.ndarray,
    device,
    init=None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Search σ / θ with ``method`` (a registered :class:`Method`, or its name) for inputs ``x`` with test indices
    ``idx``.

    Batches of ``cfg[section]['batch_size']`` inputs; the search starts at ``spec.sigma`` or, for a method with
    ``init_from``, at ``init`` (n, d), the θ of that method for the same inputs (required then).
    Returns ``idx`` int64 (n,), ``theta`` float32 (n, d), ``time`` float64 (n,) seconds per input (its batch's
    wall time / batch size) and ``evals`` int64 (n,) base-classifier evaluations per input: every row it sent
    through the model (the method's search counts them; DDRS's float32 central difference forwards each draw twice).
    """
    method = methods.get(method)
    method_name = method.name
    require(method.per_input_sigma, f"optimize: method {method_name!r} has no per-input σ to search")
    search = methods.function(method.optimize)
    settings = cfg[method.section]
    device = torch.device(device)
    idx = np.asarray(idx, dtype=np.int64)
    n, d = len(idx), int(np.prod(x.shape[1:]))
    require(len(x) == n, f"optimize: {len(x)} inputs but {n} indices")
    if method.init_from is not None:
        require(
            init is not None, f"{method_name} needs the {method.init_from} θ of the same inputs as its start (init)"
        )
        init = torch.as_tensor(np.asarray(init), dtype=torch.float32)
        require(init.shape == (n, d), f"{method_name} init has shape {tuple(init.shape)}, expected ({n}, {d})")
        require(
            bool(torch.isfinite(init).all() and (init > 0).all()),
            f"{method_name} init holds NaN, inf or non-positive values",
        )
    theta = torch.empty((n, d), dtype=torch.float32)
    seconds = torch.zeros(n, dtype=torch.float64)
    evals = torch.zeros(n, dtype=torch.int64)
    bs = int(settings["batch_size"])
    amp = resolve_precision(settings["precision"], device)
    model.eval()
    bar = tqdm(total=n, desc=f"optimize {spec.id} {method_name}", disable=not progress)
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        xb = x[b0:b1].to(device, torch.float32)
        gens = [
            noise_mod.make_generator(noise_mod.stream_seed(cfg["seed"], int(i), "optimize"), device) for i in idx[b0:b1]
        ]
        t0 = time.perf_counter()
        start = None if init is None else init[b0:b1].to(device)
        out, spent = search(model, xb, float(spec.sigma), start, spec.norm, settings, gens, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[b0:b1] = (time.perf_counter() - t0) / (b1 - b0)
        theta[b0:b1] = out.float().cpu()
        evals[b0:b1] = spent.cpu()
        bar.update(b1 - b0)
    bar.close()
    return {"idx": torch.from_numpy(idx.copy()), "theta": theta, "time": seconds, "evals": evals}
