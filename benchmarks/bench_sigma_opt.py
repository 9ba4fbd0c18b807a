"""Benchmark: per-input σ / θ optimization, smoothcert.optimize vs the papers' PyPI packages.

Times DDRS (isotropic σ) and ANCER (anisotropic θ) on the same model, the same inputs,
iterations, samples and batch, each run in a fresh process (so that per-process settings count
as they do in practice), alternating variants in a rotating order over repeats:

* ``ours``: ``smoothcert.engine.surrogate.ddrs_sigma`` / ``smoothcert.methods.ancer.ancer_theta`` as the pipeline runs them
  (``smoothcert`` CLI: allocator tuned by :func:`smoothcert.runtime.tune_allocator`; model as
  ``load_model`` prepares it, channels-last; ``precision: auto``);
* ``ours_float32`` (precision float32: DDRS then takes dR/dσ by central differences, two forward passes
  and no backward, :data:`smoothcert.engine.surrogate.GRADIENT`), ``ours_float32_autograd`` (float32 with the exact
  autograd gradient), ``ours_default_malloc`` (glibc's default allocator) and ``ours_plain`` (contiguous model,
  float32, autograd, default allocator), to attribute the gain;
* ``reference``: ``ddsmoothing.optimize_isotropic_dds`` (ddsmoothing-python) and
  ``ancer.optimize_ancer`` (ancer-python) on the model as loaded, in a plain Python process: the ratio
  ``speedup_vs_reference`` is each as it runs by default;
* ``reference_tuned``: the same with our per-process setting (glibc allocator tuned) applied to it:
  ``speedup_vs_reference_tuned`` is the ratio with per-process settings equal (the code's own share).

Every process warms up (2 iterations), then times ``--runs`` full runs (their median counts). All ANCER runs start from the
same DDRS σ (``ours_plain``'s). The results are scored in this process with the same float32
surrogate and one fixed evaluation noise (:func:`smoothcert.engine.surrogate.surrogate`; the proxy
radius for θ). Writes ``benchmarks/results/sigma_opt_<device>.json``.

``--early-stop`` instead compares the early stop (params.yaml's ``ddrs`` / ``ancer`` rule) against the full
search at the papers' settings (DDRS 900 × 100, ANCER 100 × 100, see ``--paper-ddrs`` / ``--paper-ancer``) in
this one process, the pipeline's way (``methods.ddrs.optimize`` / ``methods.ancer.optimize``, per-input
generators, ANCER started from the same arm's DDRS σ), then certifies every arm at fixed N with the same
certification draws per input: evaluations per input, certified accuracy at ``--radii``, ACR, seconds per
input. Writes ``benchmarks/results/sigma_opt_early_stop_<device>.json``.

Install the reference packages with ``pip install --no-deps ddsmoothing-python ancer-python``.
``--emulate-avx2`` runs every worker with :data:`AVX2_ENV` (a CPU without AVX-512, where precision auto means
float32, emulated); the CPU's flags and the overrides in force are recorded beside every figure (``cpu``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "ours",
    "ours_float32",
    "ours_float32_autograd",
    "ours_default_malloc",
    "ours_plain",
    "reference",
    "reference_tuned",
)
# A CPU without AVX-512 emulated on one that has it: torch's ATen kernels, oneDNN's and numpy's dispatch capped at AVX2.
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}


def cpu_info() -> dict:
    """What the figures were taken on: the CPU's AVX-512 / bfloat16 / AMX flags, torch's kernel dispatch level,
    whether precision auto runs bfloat16 here, and the dispatch overrides (an emulation) in the environment."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from smoothcert.engine import surrogate as sg

    env = {k: os.environ[k] for k in AVX2_ENV if k in os.environ}
    return {
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile")},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision_auto": str(sg.resolve_precision("auto", "cpu")),
        "dispatch_env": env,
        "emulated_no_avx512": env == AVX2_ENV,
    }


def _import_reference():
    """The papers' optimizers; ``ddsmoothing.smooth`` needs the removed scipy.stats.binom_test."""
    import scipy.stats

    if not hasattr(scipy.stats, "binom_test"):  # only ddsmoothing.smooth uses it; we never call it
        scipy.stats.binom_test = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("binom_test is not available"))
    from ancer import optimize_ancer
    from ddsmoothing import optimize_isotropic_dds
    from ddsmoothing.certificate import L1Certificate, L2Certificate

    return optimize_isotropic_dds, optimize_ancer, L2Certificate, L1Certificate


def _digits(device, labels: bool = False):
    """Digits test inputs (prepared folder if present) and a Gaussian-augmented digits CNN (and the test labels
    last, when ``labels``)."""
    from smoothcert import data as data_mod
    from smoothcert.training.models import build_model

    folder = ROOT / "data" / "digits"
    if (folder / "test.pt").is_file():
        xtr, ytr = data_mod.load_split(folder, "train", "digits")
        xte, yte = data_mod.load_split(folder, "test", "digits")
    else:
        xtr_np, xte_np, ytr_np, yte_np = data_mod.LOADERS["digits"]({"test_fraction": 0.3, "seed": 0})
        xtr, ytr, xte, yte = (torch.from_numpy(a) for a in (xtr_np, ytr_np, xte_np, yte_np))
    meta = data_mod.info("digits")
    torch.manual_seed(0)  # the initial weights too: every worker process must train (or load) the same model
    model = build_model("digits_cnn", meta.channels, meta.num_classes, meta.size, list(meta.mean), list(meta.std))
    ckpt = ROOT / "models" / "digits" / "gaussian-fixed-l2-0.25" / "model.pt"
    if ckpt.is_file():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
        source = str(ckpt.relative_to(ROOT))
    else:  # a few epochs of Gaussian augmentation, σ = 0.25 (seeded: every worker trains the same model)
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(6):
            for i in range(0, len(xtr), 64):
                xb, yb = xtr[i : i + 64], ytr[i : i + 64]
                loss = nn.functional.cross_entropy(model(xb + 0.25 * torch.randn_like(xb)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        source = "trained in-script (6 epochs, Gaussian augmentation σ=0.25)"
    if labels:
        return xte, model.to(device).eval(), source, yte
    return xte, model.to(device).eval(), source


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args) -> None:
    """One variant, one method, one norm in this fresh process: warm up, time one run, save θ and seconds."""
    from smoothcert.engine import surrogate as sg
    from smoothcert.engine.noise import make_generator, stream_seed
    from smoothcert.methods import ancer
    from smoothcert.runtime import tune_allocator
    from smoothcert.training.models import prepare_for_inference

    variant = args.worker
    tuned = (
        tune_allocator() if variant in ("ours", "ours_float32", "ours_float32_autograd", "reference_tuned") else False
    )
    sg.GRADIENT = "central" if variant in ("ours", "ours_float32", "ours_default_malloc") else "autograd"
    torch.set_num_threads(args.threads)
    device = _device(args.device)
    xte, model, _ = _digits(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = xte[: args.inputs].to(device)
    b, d = x.shape[0], x[0].numel()
    sigma0 = torch.full((b,), args.sigma0, device=device)
    theta0 = torch.load(args.theta0, weights_only=True).to(device) if args.theta0 else None
    if variant.startswith("reference"):
        dds, ancer_opt, L2Certificate, L1Certificate = _import_reference()
        probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()  # the packages expect probabilities
        cert = L2Certificate(b, device=str(device)) if args.norm == "l2" else L1Certificate(device=str(device))

        def run(iterations):
            if args.method == "ddrs":
                return dds(
                    probs, x, cert, args.lr, sigma0.clone(), iterations, args.samples, device=str(device)
                ).detach()
            return (
                ancer_opt(
                    probs,
                    x,
                    cert,
                    args.lr,
                    theta0.reshape(x.shape).clone(),
                    iterations,
                    args.samples,
                    args.kappa,
                    device=str(device),
                )
                .detach()
                .reshape(b, d)
            )
    else:
        m = model if variant == "ours_plain" else prepare_for_inference(copy.deepcopy(model))
        amp = sg.resolve_precision("auto" if variant in ("ours", "ours_default_malloc") else "float32", device)

        def run(iterations):
            gens = [make_generator(stream_seed(0, i, "optimize"), device) for i in range(b)]
            if args.method == "ddrs":
                return sg.ddrs_sigma(
                    m,
                    x,
                    sigma0,
                    args.norm,
                    iterations=iterations,
                    lr=args.lr,
                    samples=args.samples,
                    sigma_min=0.01,
                    generator=gens,
                    amp=amp,
                )
            return ancer.ancer_theta(
                m,
                x,
                theta0,
                args.norm,
                iterations=iterations,
                lr=args.lr,
                samples=args.samples,
                kappa=args.kappa,
                generator=gens,
                amp=amp,
            )

    run(2)  # warm-up: allocator, thread pool, kernels
    for p in model.parameters():  # the reference DDRS turns requires_grad back on when it returns
        p.requires_grad_(False)
    times, out = [], None
    for k in range(args.runs):
        torch.manual_seed(args.repeat * args.runs + k)  # the reference draws from torch's global RNG
        _sync(device)
        t0 = time.perf_counter()
        got = run(args.ddrs_iterations if args.method == "ddrs" else args.ancer_iterations)
        _sync(device)
        times.append(time.perf_counter() - t0)
        out = got if out is None else out
    torch.save(
        {
            "result": out.detach().float().cpu(),
            "seconds": float(np.median(times)),
            "runs": times,
            "allocator_tuned": tuned,
        },
        args.result,
    )


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _spawn(args, variant: str, method: str, norm: str, repeat: int, theta0: str | None, tmp: Path) -> dict:
    out = tmp / f"{variant}-{method}-{norm}-{repeat}.pt"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--method",
        method,
        "--norm",
        norm,
        "--repeat",
        str(repeat),
        "--result",
        str(out),
        "--inputs",
        str(args.inputs),
        "--samples",
        str(args.samples),
        "--ddrs-iterations",
        str(args.ddrs_iterations),
        "--ancer-iterations",
        str(args.ancer_iterations),
        "--lr",
        str(args.lr),
        "--kappa",
        str(args.kappa),
        "--sigma0",
        str(args.sigma0),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--runs",
        str(args.runs),
    ]
    if theta0:
        cmd += ["--theta0", theta0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if args.emulate_avx2:
        env.update(AVX2_ENV)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"worker {variant} {method} {norm} failed:\n{proc.stderr[-3000:]}")
    return torch.load(out, weights_only=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--inputs", type=int, default=50, help="test inputs, optimized as one batch (params.yaml's batch_size)"
    )
    ap.add_argument("--samples", type=int, default=32, help="noise draws per input and step")
    ap.add_argument("--ddrs-iterations", type=int, default=50)
    ap.add_argument("--ancer-iterations", type=int, default=50)
    ap.add_argument(
        "--runs", type=int, default=3, help="timed runs per process (after the warm-up); their median counts"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed processes per variant, in a rotating order")
    ap.add_argument("--lr", type=float, default=0.04, help="learning rate of both methods")
    ap.add_argument("--kappa", type=float, default=2.0)
    ap.add_argument("--sigma0", type=float, default=0.25)
    ap.add_argument("--norms", default="l2,l1", help="comma-separated: l2, l1")
    ap.add_argument(
        "--eval-samples", type=int, default=256, help="draws of the fixed noise the results are scored with"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/sigma_opt_<device>.json")
    ap.add_argument(
        "--emulate-avx2",
        action="store_true",
        help="run the workers as on a CPU without AVX-512 (ATen, oneDNN and numpy capped at AVX2)",
    )
    for hidden in ("--worker", "--method", "--norm", "--result", "--theta0"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--early-stop", action="store_true", help="compare the early stop with the full search instead")
    ap.add_argument("--paper-ddrs", default="900,100", help="--early-stop: DDRS iterations,samples")
    ap.add_argument("--paper-ancer", default="100,100", help="--early-stop: ANCER iterations,samples")
    ap.add_argument("--certify-n", type=int, default=10_000, help="--early-stop: fixed N of certification")
    ap.add_argument("--variance", action="store_true", help="the search-noise modes' variances instead")
    ap.add_argument("--replicates", type=int, default=16, help="--variance: independent noise streams")
    ap.add_argument("--paper-n", type=int, default=100_000, help="--early-stop: the papers' pipeline's fixed N")
    ap.add_argument("--datasets", default="digits,mnist5k", help="--early-stop: in this order")
    ap.add_argument("--sigmas", default="0.25,0.5", help="--early-stop: training σ and search start, in this order")
    ap.add_argument(
        "--draws", default="iid,common_antithetic,antithetic", help="--early-stop: search noise modes to run"
    )
    ap.add_argument("--mnist-epochs", type=int, default=10, help="--early-stop: training epochs of the MNIST-5k model")
    ap.add_argument(
        "--work", default=str(ROOT / "benchmarks" / "work" / "sigma_opt"), help="--early-stop: resumable cache"
    )
    ap.add_argument("--radii", default="0.25,0.5,0.75,1.0", help="--early-stop: radii of certified accuracy")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.early_stop:
        return early_stop_main(args)
    if args.variance:
        return variance_main(args)
    if not {"ours", "ours_plain", "reference"} <= set(args.variants.split(",")):
        raise SystemExit("--variants must include ours, ours_plain and reference")

    from smoothcert.artifacts import write_json
    from smoothcert.engine import surrogate as sg
    from smoothcert.engine.noise import make_generator

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    xte, model, source = _digits(device)
    x = xte[: args.inputs].to(device)
    b, d = x.shape[0], x[0].numel()
    started, load_start = time.perf_counter(), _load()

    def per_input(scale, norm):
        """Per-input float32 surrogate (proxy radius for θ) on one fixed evaluation noise."""
        with torch.no_grad():
            return (
                sg.surrogate(model, x, scale.to(device), norm, args.eval_samples, make_generator(12345, device))
                .double()
                .cpu()
                .numpy()
            )

    def score(scale, norm):
        return float(per_input(scale, norm).mean())

    def quality(outs, norm):
        """Mean score per variant (averaged over repeats: the reference's noise differs per repeat) and the
        paired per-input difference of each variant from the reference, with its standard error."""
        scores = {v: np.mean([per_input(o, norm) for o in runs], axis=0) for v, runs in outs.items()}
        diff = {v: scores[v] - scores["reference"] for v in scores}
        return {
            "mean": {v: float(sc.mean()) for v, sc in scores.items()},
            "difference_vs_reference": {v: float(dv.mean()) for v, dv in diff.items()},
            "difference_se": {v: float(dv.std(ddof=1) / np.sqrt(len(dv))) for v, dv in diff.items()},
        }

    def measure(method, norm, theta0, tmp):
        """All variants × repeats in a rotating order: every result and every time per variant."""
        variants = [v for v in VARIANTS if v in args.variants.split(",")]
        outs, seconds = {v: [] for v in variants}, {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                got = _spawn(args, v, method, norm, r, theta0, tmp)
                seconds[v].append(got["seconds"])
                outs[v].append(got["result"])
                print(
                    json.dumps(
                        {"norm": norm, "method": method, "variant": v, "repeat": r, "seconds": round(got["seconds"], 4)}
                    ),
                    flush=True,
                )
        ref = np.asarray(seconds["reference"])
        timing = {
            "seconds_per_input": {v: float(np.median(s)) / b for v, s in seconds.items()},
            # median over repeats of reference / variant time (paired by repeat)
            "speedup_vs_reference": {v: float(np.median(ref / np.asarray(s))) for v, s in seconds.items()},
            # the same with the papers' code under our per-process settings (glibc allocator tuned): per-process
            # settings equal, so the ratio is the code's alone
            "speedup_vs_reference_tuned": {
                v: float(np.median(np.asarray(seconds["reference_tuned"]) / np.asarray(s))) for v, s in seconds.items()
            }
            if "reference_tuned" in seconds
            else None,
            "speedup_range": {
                v: [float(np.min(ref / np.asarray(s))), float(np.max(ref / np.asarray(s)))] for v, s in seconds.items()
            },
            "wall_seconds": seconds,
        }
        return outs, timing

    results = {}
    if args.emulate_avx2:  # how the workers see the CPU (the scoring here runs at the machine's own level)
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_sigma_opt as b; "
                "print(json.dumps(b.cpu_info()))",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **AVX2_ENV},
            cwd=ROOT,
        )
        cpu = json.loads(probe.stdout.strip().splitlines()[-1])
    else:
        cpu = cpu_info()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for norm in [n.strip() for n in args.norms.split(",") if n.strip()]:
            sigma0 = torch.full((b,), args.sigma0)
            sig, t_ddrs = measure("ddrs", norm, None, tmp)
            theta0 = sig["ours_plain"][0].unsqueeze(1).expand(b, d).contiguous()
            torch.save(theta0, tmp / f"theta0-{norm}.pt")
            th, t_ancer = measure("ancer", norm, str(tmp / f"theta0-{norm}.pt"), tmp)
            results[norm] = {
                "ddrs": {
                    **t_ddrs,
                    "cpu": cpu,
                    "mean_surrogate_start": score(sigma0, norm),
                    "surrogate": quality(sig, norm),
                    "mean_sigma": {k: float(torch.stack(v).mean()) for k, v in sig.items()},
                },
                "ancer": {
                    **t_ancer,
                    "cpu": cpu,
                    "mean_proxy_radius_start": score(theta0, norm),
                    "proxy_radius": quality(th, norm),
                    "theta_at_least_start": {
                        k: all(bool((r >= theta0 - 1e-7).all()) for r in v) for k, v in th.items()
                    },
                },
            }
            print(
                f"{norm}: " + json.dumps({k: results[norm][k]["speedup_vs_reference"] for k in ("ddrs", "ancer")}),
                flush=True,
            )

    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": "digits_cnn",
        "model_source": source,
        "precision_auto": cpu["precision_auto"],
        "cpu": cpu,
        "inputs": b,
        "input_dim": d,
        "batch": b,
        "samples": args.samples,
        "ddrs_iterations": args.ddrs_iterations,
        "ancer_iterations": args.ancer_iterations,
        "runs_per_process": args.runs,
        "lr": args.lr,
        "kappa": args.kappa,
        "sigma0": args.sigma0,
        "eval_samples": args.eval_samples,
        "reference_packages": {
            "ddsmoothing-python": _version("ddsmoothing-python"),
            "ancer-python": _version("ancer-python"),
        },
        "repeats": args.repeats,
        "load_avg_start": load_start,
        "load_avg_end": _load(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "note": "one fresh process per variant and repeat, rotating order; seconds = the median of runs_per_process timed "
        "runs after a 2-iteration warm-up; seconds per input = median / inputs; speedup = median over repeats of reference / variant "
        "seconds; surrogates scored in float32 on one fixed noise draw, per input averaged over a variant's "
        "repeats (ours is identical in every repeat; the reference draws other noise each time), "
        "difference_vs_reference = mean paired per-input difference with its standard error; every "
        "ANCER run starts from ours_plain's DDRS sigma; model parameters frozen for all (the reference "
        "ANCER does not freeze them itself)",
        "results": results,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sigma_opt_{device.type}.json"
    write_json(out, report)
    print(f"wrote {out}")
    return report


def _cached(path: Path, compute):
    """``compute()`` (a dict of tensors / numbers), saved to ``path`` once; later runs load it (resumable)."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    got = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(got, path.with_suffix(".part"))
    path.with_suffix(".part").replace(path)
    return got


def _bench_model(dataset: str, sigma: float, work: Path, mnist_epochs: int, device):
    """Test inputs, labels, config and the Gaussian-augmented base model at ``sigma``, trained (once, cached under
    ``work``) by the package's own training: digits with params.yaml, MNIST-5k with config/mnist5k.yaml (its
    mnist_cnn_small) and ``mnist_epochs`` epochs."""
    from smoothcert import config
    from smoothcert import data as data_mod
    from smoothcert.config import ModelSpec
    from smoothcert.training.loop import train
    from smoothcert.training.models import load_model

    overrides = () if dataset == "digits" else (str(ROOT / "config" / "mnist5k.yaml"),)
    cfg = config.load(ROOT / "params.yaml", overrides)
    if dataset != "digits":
        cfg["train"]["epochs"] = mnist_epochs
    folder, out = work / dataset / "data", work / dataset / f"gaussian-{sigma}"
    if not (folder / "test.pt").is_file():
        data_mod.prepare({**cfg["data"], "seed": cfg["seed"]}, folder)
    if not (out / "model.pt").is_file():
        train(cfg, ModelSpec("gaussian", "fixed", "l2", sigma, ("ddrs",)), folder, out, "cpu", progress=False)
    xte, yte = data_mod.load_split(folder, "test", dataset)
    model = load_model(cfg, out / "model.pt", device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return xte, yte, cfg, model


def _search_arm(method, model, x, settings, sigma0, init, idx, device, cache: Path) -> dict:
    """One search arm over ``x`` the pipeline's way (params.yaml's batch size, per-input generators), batch by
    batch, each batch cached: θ, base-classifier evaluations and seconds per input."""
    from smoothcert import methods
    from smoothcert.engine.noise import make_generator, stream_seed

    search = methods.function(methods.get(method).optimize)
    bs = int(settings["batch_size"])
    parts = []
    for b0 in range(0, len(x), bs):

        def one(b0=b0):
            xb = x[b0 : b0 + bs]
            gens = [make_generator(stream_seed(0, int(i), "optimize"), device) for i in idx[b0 : b0 + bs]]
            t0 = time.perf_counter()
            start = None if init is None else init[b0 : b0 + bs]
            theta, spent = search(model, xb, sigma0, start, "l2", settings, gens, None)
            _sync(device)
            cpu = time.perf_counter() - t0
            return {
                "theta": theta.float().cpu(),
                "evals": spent.cpu(),
                "seconds": torch.full((len(xb),), cpu / len(xb)),
            }

        parts.append(_cached(cache / f"b{b0}.pt", one))
    return {k: torch.cat([p[k] for p in parts]) for k in ("theta", "evals", "seconds")}


def _certify_arm(model, x, theta, cfg, device, cache: Path, n: int | None, part: int = 25) -> dict:
    """CERTIFY every input at ``theta``, ``part`` inputs at a time (cached): fixed ``n`` estimation draws, or
    params.yaml's sequential decide when ``n`` is None. Same selection / estimation streams per input in every arm."""
    from smoothcert.engine.certify import certify_batch, certify_sequential_batch
    from smoothcert.engine.noise import stream_seed
    from smoothcert.engine.sampling import Sampling
    from smoothcert.pipeline.certify import sequential_plan

    cc = cfg["certify"]
    sampling = Sampling("gaussian", batch_size=int(cc["batch_size"]), chunk=int(cc["chunk"]), device=device)
    classes = int(model(x[:1].to(device)).shape[1])
    parts = []
    for b0 in range(0, len(x), part):

        def one(b0=b0):
            xb, th = x[b0 : b0 + part].to(device), theta[b0 : b0 + part].to(device)
            rows = range(b0, b0 + len(xb))
            sel, est = [stream_seed(0, i, "select") for i in rows], [stream_seed(0, i, "estimate") for i in rows]
            t0 = time.perf_counter()
            if n is None:
                scale = th.reshape(len(xb), *x.shape[1:])
                got = certify_sequential_batch(
                    model, xb, scale, classes, int(cc["n0"]), float(cc["alpha"]), "l2", sel, est, sampling,
                    sequential_plan(cc), th.min(1).values.double().cpu().numpy(),
                )  # fmt: skip
                used = got["n"]
            else:
                scale = th.reshape(len(xb), *x.shape[1:])
                got = certify_batch(
                    model, xb, scale, classes, int(cc["n0"]), n, float(cc["alpha"]), "l2", sel, est, sampling
                )
                used = np.full(len(xb), n)
            _sync(device)
            return {
                "predict": torch.as_tensor(got["predict"]),
                "gap": torch.as_tensor(got["gap"]),
                "evals": torch.as_tensor(used + int(cc["n0"])),
                "seconds": torch.full((len(xb),), (time.perf_counter() - t0) / len(xb)),
            }

        parts.append(_cached(cache / f"b{b0}.pt", one))
    return {k: torch.cat([p[k] for p in parts]) for k in ("predict", "gap", "evals", "seconds")}


def _scores(cert: dict, theta: torch.Tensor, y: np.ndarray, radii) -> dict:
    """Certified accuracy at ``radii`` and ACR of the ball certificate min θ·gap (σ·gap for DDRS); 0 when wrong."""
    correct = cert["predict"].numpy() == y
    radius = np.where(correct, theta.double().numpy().min(1) * cert["gap"].numpy(), 0.0)
    return {
        "certified_accuracy": {str(r): float((radius >= r).mean()) for r in radii},
        "acr": float(radius.mean()),
        "clean_accuracy": float(correct.mean()),
    }


def variance_main(args) -> dict:
    """``--variance``: what each search-noise mode (:class:`smoothcert.engine.surrogate.SearchNoise`) does to the
    estimates a step of the search reads, on the first ``--inputs`` digits test inputs at σ = the first of
    ``--sigmas`` (the ``--early-stop`` model), ``--replicates`` independent noise streams each: per input, the
    variance over streams of DDRS's dR/dσ (central difference) and R, of R(1.02σ) − R(σ) on two consecutive steps'
    draws (what the early stop compares), and of ANCER's gradient in θ (summed over dimensions); the mean over
    inputs of each, and its ratio to iid's."""
    from smoothcert.artifacts import write_json
    from smoothcert.engine import surrogate as sg
    from smoothcert.engine.noise import make_generator, stream_seed
    from smoothcert.methods.ancer import ancer_terms

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    sigma = float(args.sigmas.split(",")[0])
    xte, _, cfg, model = _bench_model("digits", sigma, Path(args.work), args.mnist_epochs, device)
    x = xte[: args.inputs].to(device)
    b, d = x.shape[0], x[0].numel()
    samples = int(args.paper_ancer.split(",")[1])
    stats = {}
    for mode in sg.DRAWS:
        per = {"ddrs_gradient": [], "ddrs_value": [], "ddrs_step_difference": [], "ancer_gradient": []}
        for rep in range(args.replicates):
            gens = [make_generator(stream_seed(rep, i, "optimize"), device) for i in range(b)]
            active = sg.Active(x, gens)
            noise = sg.SearchNoise(x, samples, "gaussian", gens, mode)
            s0 = torch.full((b,), sigma, device=device)
            with torch.no_grad():
                eps = noise.draw(active)
                g, r = sg._central_gradient(model, x, s0, "l2", eps)
                r_next = sg._central_gradient(model, x, s0 * 1.02, "l2", noise.draw(active))[1]
            theta = torch.full((b, d), sigma, device=device, requires_grad=True)
            with torch.enable_grad():
                gap = sg.proxy_gap(sg.top2_of_noise(model, x, theta, noise.draw(active)), "l2")
                (gt,) = torch.autograd.grad(ancer_terms(theta, gap, float(cfg["ancer"]["kappa"])).sum(), theta)
            for k, v in (("ddrs_gradient", g), ("ddrs_value", r), ("ddrs_step_difference", r_next - r)):
                per[k].append(v.detach().double().cpu())
            per["ancer_gradient"].append(gt.detach().double().cpu())
        stats[mode] = {
            k: float(torch.stack(v).var(0, correction=1).reshape(b, -1).sum(1).mean()) for k, v in per.items()
        }
        print(mode, json.dumps(stats[mode]), flush=True)
    report = {
        "device": str(device),
        "cpu": cpu_info(),
        "threads": args.threads,
        "inputs": b,
        "sigma": sigma,
        "samples": samples,
        "replicates": args.replicates,
        "variance": stats,
        "relative_to_iid": {m: {k: v / stats["iid"][k] for k, v in st.items()} for m, st in stats.items()},
        "note": "per input, the variance over independent noise streams (ANCER: summed over θ's dimensions), "
        "averaged over inputs; ddrs_step_difference: R at 1.02σ on the next step's draws minus R at σ (common "
        "modes reuse the draws, so it is the change of the objective alone); evaluation counts are load-free",
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sigma_opt_variance_{device.type}.json"
    write_json(out, report)
    print(json.dumps(report["relative_to_iid"], indent=1))
    return report


def early_stop_main(args) -> dict:
    """``--early-stop``: the early stop (and the search's noise draws) against the full search at the papers'
    settings, and whole pipelines against the papers' (see the module docstring). Resumable: every search batch
    and certification part is cached under ``--work``; the JSON is rewritten after each."""
    from smoothcert.artifacts import write_json

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    work = Path(args.work)
    radii = [float(r) for r in args.radii.split(",")]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sigma_opt_early_stop_{device.type}.json"
    paper = {
        "ddrs": [int(v) for v in args.paper_ddrs.split(",")],
        "ancer": [int(v) for v in args.paper_ancer.split(",")],
    }
    draws = [d.strip() for d in args.draws.split(",") if d.strip()]
    report = {
        "device": str(device),
        "cpu": cpu_info(),
        "threads": args.threads,
        "torch": torch.__version__,
        "inputs": args.inputs,
        "paper_ddrs": args.paper_ddrs,
        "paper_ancer": args.paper_ancer,
        "search_precision": "float32",
        "certify_n": args.certify_n,
        "paper_certify_n": args.paper_n,
        "load_avg_start": _load(),
        "note": "evals = every base-classifier forward per input (DDRS's float32 central difference forwards each "
        "draw twice; ANCER one forward per draw, plus its backward); radius = min θ·gap (σ·gap for DDRS), 0 when "
        "wrong or abstaining; certification draws are the same per input in every arm; no memory step; "
        "seconds are wall time on a shared, loaded machine (noisy; evaluation counts are load-independent). "
        "pipelines: ours = early-stopped searches (each draws mode) + params.yaml's sequential decide; papers = "
        "their search's forwards (900 × 100 DDRS, + 100 × 100 ANCER, autograd: one forward per draw), n0, then "
        "fixed N; the papers' certified accuracy is that of our full search at their settings certified at fixed N",
        "runs": {},
    }
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    sigmas = [float(v) for v in args.sigmas.split(",")]
    # in order of importance: per dataset, the searches and our pipeline at each σ, then the papers' pipeline
    order = [(phase, sigma) for sigma in sigmas for phase in ("arms", "ours")] + [("papers", v) for v in sigmas]
    jobs = [(dataset, phase, sigma) for dataset in datasets for phase, sigma in order]
    # arms (name, DDRS early stop, ANCER early stop, draws), in order of importance: the first draws mode's early
    # stop, the full ANCER search from that DDRS σ, the other modes, then the full search (DDRS 900 steps)
    arms = [(f"early_stop_{d}", True, True, d) for d in draws]
    arms.insert(1, ("full_from_ddrs_early_stop", True, False, draws[0]))
    arms.append(("full", False, False, "iid"))
    for dataset, phase, sigma in jobs:
        key = f"{dataset}@{sigma}"
        xte, yte, cfg, model = _bench_model(dataset, sigma, work, args.mnist_epochs, device)
        x, y = xte[: args.inputs].to(device), np.asarray(yte[: args.inputs])
        idx = np.arange(len(x))
        run = report["runs"].setdefault(
            key,
            {
                "inputs": len(x),
                "model": cfg["model"]["arch"],
                "rules": {m: {k: cfg[m][k] for k in ("patience", "tolerance", "smoothing")} for m in paper},
                "arms": {},
                "pipelines": {},
            },
        )
        tags, settings = {}, {}
        for name, ddrs_stop, ancer_stop, mode in arms:  # settings and cache folder (ANCER's keyed by its start)
            tag = ""
            for method, stop in (("ddrs", ddrs_stop), ("ancer", ancer_stop)):
                iterations, samples = paper[method]
                st = {**cfg[method], "iterations": iterations, "samples": samples, "early_stop": stop}
                st.update(precision="float32", draws=mode if stop else "iid")  # the full search: the papers' draws
                digest = hashlib.sha256(json.dumps([st, str(tag), len(x)], sort_keys=True).encode()).hexdigest()
                tag = tags[method, name] = work / "arms" / key / f"{method}_{digest[:12]}"
                settings[method, name] = st
        if phase == "arms":
            done = set()
            for name, *_ in arms:
                init = None
                for method in ("ddrs", "ancer"):
                    tag = tags[method, name]
                    if tag in done:  # the same search as an earlier arm's (the DDRS start of an ANCER-only arm)
                        init = _search_arm(
                            method, model, x, settings[method, name], sigma, None, idx, device, tag / "search"
                        )["theta"]
                        continue
                    done.add(tag)
                    arm = _search_arm(
                        method, model, x, settings[method, name], sigma, init, idx, device, tag / "search"
                    )
                    init = arm["theta"]
                    cert = _certify_arm(model, x, arm["theta"], cfg, device, tag / "certify", args.certify_n)
                    evals = arm["evals"].double().numpy()
                    run["arms"][f"{method}_{name}"] = {
                        "mean_evals_per_input": float(evals.mean()),
                        "max_evals_per_input": float(evals.max()),
                        "search_seconds_per_input": float(arm["seconds"].mean()),
                        **_scores(cert, arm["theta"], y, radii),
                    }
                    report["load_avg_end"] = _load()
                    write_json(out, _compare(report))
                    print(f"{key} {method}_{name}: {json.dumps(run['arms'][f'{method}_{name}'])}", flush=True)
        else:
            for name, _, _, mode in arms:  # whole pipelines: search + certification per input
                if name == "full_from_ddrs_early_stop" or (phase == "papers") != (name == "full"):
                    continue  # ours: early-stopped arms; the papers': their full search
                if name != "full" and mode != cfg["ddrs"]["draws"]:
                    continue  # ours: the default draws only
                spent = 0.0
                for method in ("ddrs", "ancer"):
                    tag = tags[method, name]
                    parts = sorted((tag / "search").glob("b*.pt"), key=lambda p: int(p.stem[1:]))
                    got = [torch.load(p, weights_only=True) for p in parts]
                    theta = torch.cat([g["theta"] for g in got])
                    spent = spent + torch.cat([g["evals"] for g in got]).double().numpy()
                    if name == "full":  # the papers' pipeline: their search's forwards, then fixed N
                        cert = _certify_arm(model, x, theta, cfg, device, tag / "certify_paper", args.paper_n)
                        # their search's forwards: autograd, one per draw (DDRS, then ANCER from its σ)
                        search_evals = sum(np.prod(paper[m]) for m in ("ddrs", "ancer")[: 1 + (method == "ancer")])
                        total = search_evals + cert["evals"].double().numpy()
                        label = f"{method}_papers"
                    else:
                        cert = _certify_arm(model, x, theta, cfg, device, tag / "certify_sequential", None)
                        total = spent + cert["evals"].double().numpy()
                        label = f"{method}_ours_{name}"
                    run["pipelines"][label] = {
                        "mean_evals_per_input": float(total.mean()),
                        "certification_evals_per_input": float(cert["evals"].double().mean()),
                        "certification_seconds_per_input": float(cert["seconds"].mean()),
                        **_scores(cert, theta, y, radii),
                    }
                    report["load_avg_end"] = _load()
                    write_json(out, _compare(report))
                    print(f"{key} pipeline {label}: {json.dumps(run['pipelines'][label])}", flush=True)
    print(f"wrote {out}")
    return report


def _compare(report: dict) -> dict:
    """Adds, per run, each early-stop arm's and each of our pipelines' ratios to the full search / the papers'."""
    for run in report["runs"].values():
        comp = run["comparison"] = {}
        for name, arm in run["arms"].items():
            method, _, rest = name.partition("_")
            full = run["arms"].get(f"{method}_full")
            if rest.startswith("full"):
                continue
            if full is not None:
                comp[name] = _ratio(full, arm, "vs the full search")
            same_start = run["arms"].get("ancer_full_from_ddrs_early_stop")
            if method == "ancer" and same_start is not None:
                comp[f"{name}_vs_full_ancer_from_ddrs_early_stop"] = _ratio(
                    same_start, arm, "vs the full ANCER search from the first draws mode's early-stopped DDRS σ"
                )
        for name, pipe in run["pipelines"].items():
            method = name.split("_")[0]
            papers = run["pipelines"].get(f"{method}_papers")
            if name.endswith("_papers") or papers is None:
                continue
            comp[f"pipeline_{name}"] = _ratio(papers, pipe, "vs the papers' pipeline")
    return report


def _ratio(base: dict, arm: dict, what: str) -> dict:
    return {
        "against": what,
        "evals_reduction": base["mean_evals_per_input"] / arm["mean_evals_per_input"],
        "certified_accuracy_points": {
            r: 100 * (arm["certified_accuracy"][r] - base["certified_accuracy"][r]) for r in base["certified_accuracy"]
        },
        "acr_relative": arm["acr"] / base["acr"] - 1 if base["acr"] > 0 else None,
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
