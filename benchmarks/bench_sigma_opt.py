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
  ``ancer.optimize_ancer`` (ancer-python) on the model as loaded, in a plain Python process.

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
VARIANTS = ("ours", "ours_float32", "ours_float32_autograd", "ours_default_malloc", "ours_plain", "reference")
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
        xtr_np, xte_np, ytr_np, yte_np = data_mod._digits({"test_fraction": 0.3, "seed": 0})
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
    tuned = tune_allocator() if variant in ("ours", "ours_float32", "ours_float32_autograd") else False
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
    if variant == "reference":
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
    ap.add_argument("--radii", default="0.25,0.5,0.75,1.0", help="--early-stop: radii of certified accuracy")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.early_stop:
        return early_stop_main(args)

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
        outs, seconds = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            for v in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
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


def _search_arm(method: str, model, x, settings: dict, sigma0: float, init, idx, device) -> dict:
    """One search arm over ``x`` the pipeline's way, batch by batch: θ, base-classifier evaluations and seconds
    per input."""
    from smoothcert import methods
    from smoothcert.engine.noise import make_generator, stream_seed

    search = methods.function(methods.get(method).optimize)
    thetas, evals, seconds = [], [], []
    bs = int(settings["batch_size"])
    for b0 in range(0, len(x), bs):
        xb = x[b0 : b0 + bs]
        gens = [make_generator(stream_seed(0, int(i), "optimize"), device) for i in idx[b0 : b0 + bs]]
        t0 = time.perf_counter()
        theta, spent = search(
            model, xb, sigma0, None if init is None else init[b0 : b0 + bs], "l2", settings, gens, None
        )
        _sync(device)
        seconds += [(time.perf_counter() - t0) / len(xb)] * len(xb)
        thetas.append(theta.float())
        evals.append(spent)
    return {"theta": torch.cat(thetas), "evals": torch.cat(evals).numpy(), "seconds": np.array(seconds)}


def early_stop_main(args) -> dict:
    """``--early-stop``: the early stop against the full search at the papers' settings (see the docstring)."""
    import yaml

    from smoothcert.artifacts import write_json
    from smoothcert.engine.certify import certify_batch
    from smoothcert.engine.noise import stream_seed
    from smoothcert.engine.sampling import Sampling

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    xte, model, source, yte = _digits(device, labels=True)
    x, y = xte[: args.inputs].to(device), np.asarray(yte[: args.inputs])
    idx = np.arange(len(x))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    radii = [float(r) for r in args.radii.split(",")]
    started, load_start = time.perf_counter(), _load()
    arms = {}
    for stop in (False, True):
        init = None
        for method, paper in (("ddrs", args.paper_ddrs), ("ancer", args.paper_ancer)):
            iterations, samples = (int(v) for v in paper.split(","))
            settings = {**params[method], "iterations": iterations, "samples": samples, "early_stop": stop}
            settings["precision"] = "float32"
            arm = _search_arm(method, model, x, settings, args.sigma0, init, idx, device)
            init = arm["theta"]
            arm["steps"] = arm["evals"] / (samples * (2 if method == "ddrs" else 1))  # float32: central difference
            arms[f"{method}_{'early_stop' if stop else 'full'}"] = arm
            print(f"{method} early_stop={stop}: mean steps {arm['steps'].mean():.1f} / {iterations}", flush=True)
    sampling = Sampling("gaussian", batch_size=1000, chunk=1000, device=device)
    results = {}
    for name, arm in arms.items():
        theta = arm["theta"].to(device)
        cert = certify_batch(
            model, x, theta, 10, 100, args.certify_n, 0.001, "l2",
            [stream_seed(0, int(i), "select") for i in idx], [stream_seed(0, int(i), "estimate") for i in idx],
            sampling,
        )  # fmt: skip
        correct = cert["predict"] == y
        theta_np = arm["theta"].double().numpy()
        radius = np.where(correct, theta_np.min(1) * cert["gap"], 0.0)
        proxy = np.where(correct, np.exp(np.log(theta_np).mean(1)) * cert["gap"], 0.0)
        results[name] = {
            "mean_evals_per_input": float(arm["evals"].mean()),
            "max_evals_per_input": int(arm["evals"].max()),
            "mean_steps": float(arm["steps"].mean()),
            "seconds_per_input": float(arm["seconds"].mean()),
            "certified_accuracy": {str(r): float((radius >= r).mean()) for r in radii},
            "acr": float(radius.mean()),
            "proxy_acr": float(proxy.mean()),
            "clean_accuracy": float(correct.mean()),
        }
    for method in ("ddrs", "ancer"):
        full, es = results[f"{method}_full"], results[f"{method}_early_stop"]
        results[f"{method}_comparison"] = {
            "evals_reduction": full["mean_evals_per_input"] / es["mean_evals_per_input"],
            "time_reduction": full["seconds_per_input"] / es["seconds_per_input"],
            "certified_accuracy_points": {
                r: 100 * (es["certified_accuracy"][r] - full["certified_accuracy"][r])
                for r in full["certified_accuracy"]
            },
            "acr_relative": es["acr"] / full["acr"] - 1 if full["acr"] > 0 else None,
        }
    report = {
        "device": str(device),
        "cpu": cpu_info(),
        "threads": args.threads,
        "torch": torch.__version__,
        "model": "digits_cnn",
        "model_source": source,
        "inputs": len(x),
        "sigma0": args.sigma0,
        "paper_ddrs": args.paper_ddrs,
        "paper_ancer": args.paper_ancer,
        "rules": {m: {k: params[m][k] for k in ("patience", "tolerance", "smoothing")} for m in ("ddrs", "ancer")},
        "search_precision": "float32",
        "certify": {"n0": 100, "n": args.certify_n, "alpha": 0.001, "memory_step": False},
        "load_avg_start": load_start,
        "load_avg_end": _load(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "note": "evals = steps × samples per input (DDRS's central difference forwards each draw twice); radius = "
        "min θ·gap (the ball certificate; σ·gap for DDRS), 0 when wrong or abstaining; proxy_acr uses the "
        "volume-equivalent radius; certification draws are the same per input in every arm; no memory step",
        "results": results,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sigma_opt_early_stop_{device.type}.json"
    write_json(out, report)
    print(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return report


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
