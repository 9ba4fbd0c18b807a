"""Soundness audit at full size: :func:`smoothcert.audit.run_all` → ``benchmarks/results/audit.json``.

The checks (what each certifies, how a failure is counted, the binomial bound) are described in
:mod:`smoothcert.audit`; tests/test_audit.py runs the same functions with fewer trials.
Exit status 0 iff every sound check passes and every deliberately broken certifier is flagged.

Usage: python benchmarks/audit.py [--trials 20000] [--sr-trials 10000] [--n 500] [--alpha 0.1]
                                  [--attack-inputs 200] [--epochs 8] [--threads 1] [--out benchmarks/results/audit.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import harness
from smoothcert import audit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20_000)
    p.add_argument(
        "--sr-trials",
        type=int,
        default=10_000,
        help="trials of each Smooth-Reduce check (9 patches or 8 sub-clips per draw)",
    )
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--attack-inputs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--out", default=str(harness.results_path("audit.json")))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result, seconds, _ = harness.timed(
        lambda: audit.run_all(args.trials, args.n, args.alpha, args.attack_inputs, args.epochs, args.sr_trials)
    )
    result["seconds"]["total"] = round(seconds, 1)
    result["machine"] = harness.machine()
    harness.write_result(args.out, result)
    print(json.dumps(result["summary"]), f"in {result['seconds']['total']} s", file=sys.stderr)
    return 0 if result["summary"]["all_sound_checks_pass"] and result["summary"]["broken_certifier_detected"] else 1


if __name__ == "__main__":
    sys.exit(main())
