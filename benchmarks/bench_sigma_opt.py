"""Benchmark: per-input σ / θ optimization, smoothcert.optimize vs the papers' PyPI packages.

Times DDRS (isotropic σ) and ANCER (anisotropic θ) on the same model, the same
inputs, iterations, samples and batch, in one run, for

* ours: ``smoothcert.optimize.ddrs_sigma`` / ``ancer_theta`` with per-input seeded generators;
* the papers': ``ddsmoothing.optimize_isotropic_dds`` (ddsmoothing-python) and
  ``ancer.optimize_ancer`` (ancer-python), which draw from torch's global RNG.

Both ANCER runs start from our DDRS σ. The optimized σ / θ of both are scored with
the same surrogate and the same fixed evaluation noise (:func:`smoothcert.optimize.surrogate`,
the proxy radius for θ). Writes ``benchmarks/results/sigma_opt_<device>.json``.

Install the reference packages with
``pip install --no-deps ddsmoothing-python ancer-python``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _import_reference():
    """The papers' optimizers; ``ddsmoothing.smooth`` needs the removed scipy.stats.binom_test."""
    import scipy.stats

    if not hasattr(scipy.stats, "binom_test"):  # only ddsmoothing.smooth uses it; we never call it
        scipy.stats.binom_test = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("binom_test is not available"))
    from ancer import optimize_ancer
    from ddsmoothing import optimize_isotropic_dds
    from ddsmoothing.certificate import L1Certificate, L2Certificate

    return optimize_isotropic_dds, optimize_ancer, L2Certificate, L1Certificate


def _digits(device):
    """Digits test inputs (prepared folder if present) and a Gaussian-augmented digits CNN."""
    from smoothcert import data as data_mod
    from smoothcert.models import build_model

    folder = ROOT / "data" / "digits"
    if (folder / "test.pt").is_file():
        xtr, ytr = data_mod.load_split(folder, "train", "digits")
        xte, _ = data_mod.load_split(folder, "test", "digits")
    else:
        xtr_np, xte_np, ytr_np, _ = data_mod._digits({"test_fraction": 0.3, "seed": 0})
        xtr, ytr, xte = torch.from_numpy(xtr_np), torch.from_numpy(ytr_np), torch.from_numpy(xte_np)
    meta = data_mod.info("digits")
    model = build_model("digits_cnn", meta.channels, meta.num_classes, meta.size, list(meta.mean), list(meta.std))
    ckpt = ROOT / "models" / "digits" / "gaussian-fixed-l2-0.25" / "model.pt"
    if ckpt.is_file():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
        source = str(ckpt.relative_to(ROOT))
    else:  # a few epochs of Gaussian augmentation, σ = 0.25
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(6):
            for i in range(0, len(xtr), 64):
                xb, yb = xtr[i:i + 64], ytr[i:i + 64]
                loss = nn.functional.cross_entropy(model(xb + 0.25 * torch.randn_like(xb)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        source = "trained in-script (6 epochs, Gaussian augmentation σ=0.25)"
    return xte, model.to(device).eval(), source


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=16, help="test inputs, optimized as one batch")
    ap.add_argument("--samples", type=int, default=32, help="noise draws per input and step")
    ap.add_argument("--ddrs-iterations", type=int, default=50)
    ap.add_argument("--ancer-iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; the median is reported")
    ap.add_argument("--lr", type=float, default=0.04, help="learning rate of both methods")
    ap.add_argument("--kappa", type=float, default=2.0)
    ap.add_argument("--sigma0", type=float, default=0.25)
    ap.add_argument("--norms", default="l2", help="comma-separated: l2, l1")
    ap.add_argument("--eval-samples", type=int, default=256, help="draws of the fixed noise the results are scored with")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/sigma_opt_<device>.json")
    args = ap.parse_args(argv)

    from smoothcert import optimize
    from smoothcert.noise import make_generator, stream_seed

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dds, ancer_opt, L2Certificate, L1Certificate = _import_reference()
    xte, model, source = _digits(device)
    x = xte[:args.inputs].to(device)
    b, d = x.shape[0], x[0].numel()
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()  # the packages expect probabilities
    idx = np.arange(b)

    def gens():
        return [make_generator(stream_seed(0, int(i), "optimize"), device) for i in idx]

    def score(scale, norm):
        with torch.no_grad():
            return float(optimize.surrogate(model, x, scale, norm, args.eval_samples, make_generator(12345, device)).mean())

    def freeze_back():  # the reference DDRS turns requires_grad on for every parameter when it returns
        for p in model.parameters():
            p.requires_grad_(False)

    def timed_pair(ours_fn, ref_fn):
        """Alternate ours / reference ``repeats`` times (ABBA...); first results, all wall times."""
        times = {"ours": [], "reference": []}
        first = {}
        for r in range(args.repeats):
            for name in (("ours", "reference") if r % 2 == 0 else ("reference", "ours")):
                torch.manual_seed(r)  # the reference draws from torch's global RNG
                out, sec = _timed(ours_fn if name == "ours" else ref_fn, device)
                freeze_back()
                times[name].append(sec)
                first.setdefault(name, out)
        return first["ours"], first["reference"], times

    def summary(times):
        med = {k: float(np.median(v)) for k, v in times.items()}
        return {"ours_seconds_per_input": med["ours"] / b, "reference_seconds_per_input": med["reference"] / b,
                "ratio_ours_over_reference": med["ours"] / med["reference"],
                "wall_seconds_ours": times["ours"], "wall_seconds_reference": times["reference"]}

    results = {}
    for norm in [n.strip() for n in args.norms.split(",") if n.strip()]:
        cert = L2Certificate(b, device=str(device)) if norm == "l2" else L1Certificate(device=str(device))
        sigma0 = torch.full((b,), args.sigma0, device=device)
        # warm-up (allocator, thread pool, kernels) for both, 2 steps each
        optimize.ddrs_sigma(model, x, sigma0, norm, iterations=2, lr=args.lr, samples=args.samples, sigma_min=0.01, generator=gens())
        dds(probs, x, cert, args.lr, sigma0.clone(), 2, args.samples, device=str(device))
        freeze_back()

        ours_sigma, ref_sigma, t_ddrs = timed_pair(
            lambda: optimize.ddrs_sigma(model, x, sigma0, norm, iterations=args.ddrs_iterations, lr=args.lr,
                                        samples=args.samples, sigma_min=0.01, generator=gens()),
            lambda: dds(probs, x, cert, args.lr, sigma0.clone(), args.ddrs_iterations, args.samples,
                        device=str(device)).detach())
        theta0 = ours_sigma.unsqueeze(1).expand(b, d).contiguous()
        ours_theta, ref_theta, t_ancer = timed_pair(
            lambda: optimize.ancer_theta(model, x, theta0, norm, iterations=args.ancer_iterations, lr=args.lr,
                                         samples=args.samples, kappa=args.kappa, generator=gens()),
            lambda: ancer_opt(probs, x, cert, args.lr, theta0.reshape(x.shape).clone(), args.ancer_iterations,
                              args.samples, args.kappa, device=str(device)).detach().reshape(b, d))
        results[norm] = {
            "ddrs": {
                **summary(t_ddrs),
                "mean_surrogate_start": score(sigma0, norm),
                "mean_surrogate_ours": score(ours_sigma, norm), "mean_surrogate_reference": score(ref_sigma, norm),
                "mean_sigma_ours": float(ours_sigma.mean()), "mean_sigma_reference": float(ref_sigma.mean()),
            },
            "ancer": {
                **summary(t_ancer),
                "mean_proxy_radius_start": score(theta0, norm),
                "mean_proxy_radius_ours": score(ours_theta, norm), "mean_proxy_radius_reference": score(ref_theta, norm),
                "theta_at_least_start_ours": bool((ours_theta >= theta0).all()),
                "theta_at_least_start_reference": bool((ref_theta >= theta0 - 1e-7).all()),
            },
        }
        print(f"{norm}: " + json.dumps(results[norm], indent=1), flush=True)

    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
        "model": "digits_cnn", "model_source": source, "inputs": b, "input_dim": d, "batch": b,
        "samples": args.samples, "ddrs_iterations": args.ddrs_iterations, "ancer_iterations": args.ancer_iterations,
        "lr": args.lr, "kappa": args.kappa, "sigma0": args.sigma0, "eval_samples": args.eval_samples,
        "reference_packages": {"ddsmoothing-python": _version("ddsmoothing-python"), "ancer-python": _version("ancer-python")},
        "repeats": args.repeats, "load_average_1min": _load(),
        "note": "seconds per input = median over alternating repeats of the batch's wall time / inputs; surrogates "
                "scored on one fixed noise draw (first run of each); both ANCER runs start from our DDRS sigma; "
                "model parameters frozen for both (the reference ANCER does not freeze them itself)",
        "results": results,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sigma_opt_{device.type}.json"
    from smoothcert.io import write_json

    write_json(out, report)
    print(f"wrote {out}")
    return report


def _load() -> float | None:
    try:
        import os

        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
