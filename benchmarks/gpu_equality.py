"""CPU vs CUDA certificates of the digits model under the same seeds (issue 27).

The model: the default pipeline's digits CNN, Gaussian-trained at σ = 0.25 (``harness.trained_workspace``);
certification at params.yaml's ``certify`` settings (n0, n, α, batch size, chunk) on the first ``--inputs``
held-out inputs, seeds ``stream_seed(0, idx, ...)`` as the pipeline derives them.

* ``same_noise`` — the noise is the same: the CPU engine draws the 64-bit keyed streams and certifies twice,
  once with the model evaluated on the CPU, once with each forward batch copied to the device and its logits
  copied back (float32, then autocast). Every draw's argmax is recorded on both sides, so the report gives
  the draws whose argmax float rounding flipped, and the inputs whose counts, predictions or radii differ;
  ``consistent`` checks that no count moved by more than the flipped draws allow.
* ``device_engine`` — the shipped CUDA path (noise drawn on the device by torch's Philox, keyed by the same
  seeds: other values than the CPU's streams, noise.py): agreement with the CPU certificates (same
  prediction, radius difference, two-sample KS test), repeatability (the same call twice) and the batch
  size's effect (the configured size vs 4×: inputs whose counts differ).

On a machine without CUDA the "device" is the CPU (a smoke test of the script: everything is equal).
Writes ``benchmarks/results/gpu_equality_<device>.json``, or ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from smoothcert import config as config_mod  # noqa: E402
from smoothcert import data as data_mod  # noqa: E402
from smoothcert.artifacts import sha256_file  # noqa: E402
from smoothcert.engine.certificates import certificate  # noqa: E402
from smoothcert.engine.certify import certify_batch  # noqa: E402
from smoothcert.engine.noise import stream_seed  # noqa: E402
from smoothcert.engine.sampling import Sampling  # noqa: E402
from smoothcert.training.models import load_model  # noqa: E402

SIGMA = 0.25


class Recorder(nn.Module):
    """The model evaluated on ``device`` (batches copied there, logits back in float32, autocast if ``amp``),
    keeping every draw's argmax in call order."""

    def __init__(self, model: nn.Module, device: torch.device, amp: bool = False):
        super().__init__()
        self.model, self.device, self.amp, self.argmax = model, device, amp, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.model(x.to(self.device)).float().cpu()
        self.argmax.append(logits.argmax(1).to(torch.int8))
        return logits

    def draws(self) -> torch.Tensor:
        return torch.cat(self.argmax)


def certify(model, x, idx, cc: dict, sampling: Sampling) -> dict:
    seeds = ([stream_seed(0, int(i), "select") for i in idx], [stream_seed(0, int(i), "estimate") for i in idx])
    t0 = time.perf_counter()
    out = certify_batch(model, x, SIGMA, 10, cc["n0"], cc["n"], cc["alpha"], "l2", *seeds, sampling)
    harness.sync(sampling.device)
    out["seconds"] = time.perf_counter() - t0
    theta = np.full((len(x), x[0].numel()), SIGMA)
    out["radius"] = certificate(out["predict"], out["gap"], theta, 1.0, "l2")["radius"]
    return out


def differences(a: dict, b: dict) -> dict:
    """How certificates ``b`` differ from ``a`` (same inputs)."""
    dr = np.abs(a["radius"] - b["radius"])
    return {
        "inputs_count_differs": int((a["count"] != b["count"]).sum()),
        "inputs_prediction_differs": int((a["predict"] != b["predict"]).sum()),
        "inputs_radius_differs": int((dr > 0).sum()),
        "max_abs_radius_difference": float(dr.max()) if len(dr) else 0.0,
    }


def per_input(draws: torch.Tensor, b: int, n0: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(selection argmaxes (b, n0), estimation argmaxes (b, n), guesses) from the recorded stream of draws:
    the selection call's b·n0 rows, input after input, then the estimation call's b·n rows."""
    d = draws.numpy().astype(np.int64)
    sel, est = d[: b * n0].reshape(b, n0), d[b * n0 :].reshape(b, n)
    guess = np.array([np.bincount(row, minlength=10).argmax() for row in sel])
    return sel, est, guess


def rounding_only(ref: dict, got: dict, ref_draws, got_draws, b: int, n0: int, n: int) -> dict:
    """Flipped draws and whether every difference of the certificates is explained by them: a guess changes
    only where a selection draw flipped, and nA moves by at most the input's flipped estimation draws."""
    s0, e0, g0 = per_input(ref_draws, b, n0, n)
    s1, e1, g1 = per_input(got_draws, b, n0, n)
    flips_sel, flips_est = (s0 != s1).sum(1), (e0 != e1).sum(1)
    same = g0 == g1
    moved = np.abs(ref["count"] - got["count"])
    return {
        "draws": int(b * (n0 + n)),
        "flipped_argmax_draws": int(flips_sel.sum() + flips_est.sum()),
        "flipped_selection_draws": int(flips_sel.sum()),
        "inputs_with_flips": int(((flips_sel + flips_est) > 0).sum()),
        "inputs_guess_differs": int((~same).sum()),
        "consistent": bool((flips_sel[~same] > 0).all() and (moved[same] <= flips_est[same]).all()),
        # the engine's nA is the count of its guess among the recorded estimation draws
        "engine_counts_match_draws": bool(
            (ref["count"] == (e0 == g0[:, None]).sum(1)).all() and (got["count"] == (e1 == g1[:, None]).sum(1)).all()
        ),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--inputs", type=int, default=100, help="first K held-out digits inputs")
    ap.add_argument("--n", type=int, default=None, help="estimation draws (default: params.yaml's certify.n)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of the digits model")
    ap.add_argument("--work", default=str(harness.REPO / "benchmarks" / "work" / "gpu_equality"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = harness.pick_device(args.device)
    use_cuda = dev.type == "cuda"
    cpu = torch.device("cpu")

    cfg, data = harness.trained_workspace(Path(args.work), "digits", "digits_cnn", args.epochs, [SIGMA], args.inputs)
    cc = {k: cfg["certify"][k] for k in ("n0", "n", "alpha", "batch_size", "chunk")}
    if args.n:
        cc["n"] = args.n
    spec = config_mod.model_specs(cfg)[0]
    path = Path(args.work) / "models" / spec.id / "model.pt"
    x_all, y_all = data_mod.load_split(data, "test", "digits")
    idx = data_mod.test_indices(len(x_all), 0, 1, args.inputs)
    x = x_all[idx]
    model_cpu = load_model(cfg, path, cpu).eval()
    model_dev = load_model(cfg, path, dev).eval()
    on_cpu = Sampling(batch_size=cc["batch_size"], chunk=cc["chunk"], device=cpu)

    ref_model = Recorder(model_cpu, cpu)
    ref = certify(ref_model, x, idx, cc, on_cpu)
    ref_draws = ref_model.draws()
    same_noise = []
    for amp in (False, True):
        rec = Recorder(model_dev, dev, amp)
        got = certify(rec, x, idx, cc, on_cpu)
        row = {
            "evaluated_on": str(dev),
            "autocast": amp,
            **rounding_only(ref, got, ref_draws, rec.draws(), len(idx), cc["n0"], cc["n"]),
            **differences(ref, got),
        }
        harness.emit({"same_noise": True, **row})
        same_noise.append(row)

    on_dev = Sampling(batch_size=cc["batch_size"], chunk=cc["chunk"], device=dev)
    plain = certify(model_cpu, x, idx, cc, on_cpu)
    first = certify(model_dev, x, idx, cc, on_dev)
    again = certify(model_dev, x, idx, cc, on_dev)
    wide = certify(model_dev, x, idx, cc, Sampling(batch_size=4 * cc["batch_size"], chunk=cc["chunk"], device=dev))
    ks = sps.ks_2samp(plain["radius"], first["radius"]) if len(idx) > 1 else None
    device_engine = {
        "device": str(dev),
        "vs_cpu": {
            **differences(plain, first),
            "same_prediction_fraction": float((plain["predict"] == first["predict"]).mean()),
            "mean_radius_cpu": float(plain["radius"].mean()),
            "mean_radius_device": float(first["radius"].mean()),
            "ks_pvalue": float(ks.pvalue) if ks is not None else None,
        },
        "repeat_identical": bool(all(np.array_equal(first[k], again[k]) for k in ("predict", "count", "gap"))),
        "batch_size_4x": {"batch_size": 4 * cc["batch_size"], **differences(first, wide)},
        "seconds": {"cpu": round(plain["seconds"], 3), "device": round(first["seconds"], 3)},
    }
    harness.emit({"device_engine": device_engine})
    record = {
        "machine": harness.machine(),
        "commit": harness.commit(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if use_cuda else "cpu (no CUDA: smoke test, all equal)",
        "model": {"arch": "digits_cnn", "sigma": SIGMA, "epochs": args.epochs, "checkpoint_sha256": sha256_file(path)},
        "certify": cc,
        "inputs": len(idx),
        "same_noise": same_noise,
        "device_engine": device_engine,
        "ok": all(r["consistent"] and r["engine_counts_match_draws"] for r in same_noise)
        and device_engine["repeat_identical"],
    }
    harness.write_result(args.out or harness.results_path(f"gpu_equality_{dev.type}.json"), record)
    return record


if __name__ == "__main__":
    record = main()
    sys.exit(0 if record["ok"] else 1)
