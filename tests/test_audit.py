"""Soundness audit (:mod:`smoothcert.audit`, small; full size: benchmarks/audit.py), and determinism across
shards and batch sizes.

* Classifiers with an exact answer: 1,000 certification trials per certificate type the config accepts
  (Cohen ℓ2 on images and clips, DDRS σ in ℓ2 and ℓ1, ANCER θ in ℓ2 and ℓ1, uniform ℓ1 isotropic, Smooth-Reduce
  correlated in ℓ2 / ℓ1, uncorrelated in ℓ2 / ℓ1, on images and on clips) must fail at most as often as alpha
  allows (scipy's binomial bound at δ = 1e-3); a certifier using the point estimate instead of the
  Clopper-Pearson bound must be caught, and so must the uncorrelated ℓ1 Smooth-Reduce radius divided by the
  ℓ2 factor (the old bug), on images and clips.
* PREDICT at pA = 0.51 / 0.55 returns a wrong class at rate <= alpha.
* PGD on the smoothed soft classifier of a digits CNN trained here does not flip certified inputs
  inside their radius (beyond alpha); at 1.5× the radius it usually does (reported, not asserted).
* The certify CLI writes the same table, byte for byte apart from the wall-clock ``time`` column,
  for 1 or 3 shards and batch_size 500 or 4000.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from smoothcert import audit
from smoothcert.cli import main

TRIALS = 1000
ALPHA = 0.1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy 2-core machine two threads contend and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_sound(result: dict) -> None:
    assert result["trials"] >= TRIALS or result["check"].startswith("attack")
    assert result["pass"], (
        f"{result['check']}: {result['failures']} failures in {result['trials']} trials, "
        f"at most {result['allowed']} allowed at alpha = {result['alpha']}"
    )


CHECKS = {  # check name → (audit function, keyword arguments)
    "cohen_l2": ("cohen_l2", {}),
    "cohen_clip_l2": ("cohen_l2", {"shape": (3, 1, 4, 4)}),
    "ddrs_l2": ("ddrs_l2", {}),
    "ancer_l2": ("ancer_l2", {}),
    "cohen_l1": ("cohen_l1", {}),
    "ddrs_l1": ("ddrs_l1", {}),
    "ancer_l1": ("ancer_l1", {}),
    "smooth_reduce_mean": ("smooth_reduce_mean", {}),
    "smooth_reduce_mean_l1": ("smooth_reduce_mean_l1", {}),
    "smooth_reduce_uncorrelated_l2": ("smooth_reduce_uncorrelated_l2", {}),
    "smooth_reduce_uncorrelated_l1": ("smooth_reduce_uncorrelated_l1", {}),
    "smooth_reduce_clip_mean": ("smooth_reduce_mean", {"clip": True}),
    "smooth_reduce_clip_uncorrelated_l2": ("smooth_reduce_uncorrelated_l2", {"clip": True}),
    "smooth_reduce_clip_uncorrelated_l1": ("smooth_reduce_uncorrelated_l1", {"clip": True}),
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_failure_rate_within_alpha(check):
    fn, kw = CHECKS[check]
    result = getattr(audit, fn)(trials=TRIALS, n=500, n0=50, alpha=ALPHA, **kw)
    if isinstance(result, list):  # the uncorrelated ℓ1 checks also return the old-factor mutant
        result = result[0]
    assert result["check"] == check
    _assert_sound(result)
    # failures must be observable at this alpha, or the check has no power
    assert result["certified"] > 0.9 * TRIALS
    assert result["failures"] > 0.02 * TRIALS


def test_audit_catches_a_broken_certifier():
    broken = audit.cohen_l2(trials=TRIALS, n=500, n0=50, alpha=ALPHA, broken=True)
    assert not broken["pass"] and broken["failures"] > 3 * broken["allowed"]


@pytest.mark.parametrize("clip", [False, True])
def test_audit_catches_the_l2_factor_on_l1_smooth_reduce(clip):
    """The same uncorrelated ℓ1 certificates, divided by √maxcov·‖S‖₂ instead of ‖A‖₁→₁: flips inside the radius."""
    sound, broken = audit.smooth_reduce_uncorrelated_l1(trials=TRIALS, n=500, n0=50, alpha=ALPHA, clip=clip)
    assert broken["check"] == "broken_" + sound["check"] and broken["radius_factor"] > 3 * sound["radius_factor"]
    assert sound["pass"] and sound["region_failures"] == 0
    assert not broken["pass"] and broken["region_failures"] > 0.1 * TRIALS


def test_exact_uniform_probability_matches_monte_carlo():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.05, 1.0, 4)
    u = rng.uniform(-1, 1, (400_000, 4)) @ a
    for s in (-1.0, -0.3, 0.0, 0.2, 0.9):
        assert abs(audit.uniform_sum_cdf(s, a) - (u <= s).mean()) < 4e-3


@pytest.mark.parametrize("pa", [0.51, 0.55])
def test_predict_wrong_class_rate_within_alpha(pa):
    result = audit.predict(trials=TRIALS, n=500, alpha=ALPHA, pa=pa)
    _assert_sound(result)
    assert result["abstained"] < TRIALS  # it answers sometimes, so errors are possible


# ---------------------------------------------------------------------------------------- trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    cfg, model, x, y = audit.train_digits(folder, epochs=3)
    return folder, cfg, model, x, y


def test_attack_does_not_flip_inside_certified_radius(trained):
    _, _, model, x, y = trained
    inside, outside = audit.attack(
        model, x[:60], y[:60], n0=100, n=1000, alpha=0.01, max_inputs=16, steps=15, draws=32, eval_n=2000
    )
    assert inside["trials"] >= 10, "too few certified inputs to attack"
    assert inside["delta_norm_max_over_radius"] <= 1.0 + 1e-5
    _assert_sound(inside)
    assert outside["factor"] == 1.5 and outside["pass"] is None  # reported only
    # the attack is not toothless: it lowers pA at the attacked points
    assert inside["mean_pA_at_attack"] < 0.9 and outside["mean_pA_at_attack"] < inside["mean_pA_at_attack"]


def _cli(*argv) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    assert rc == 0, err.getvalue()


def _without_time(path: Path) -> bytes:
    """The table's bytes with the ``time`` column (wall-clock seconds) cut out; every other byte kept."""
    lines = path.read_bytes().split(b"\n")
    drop = lines[0].split(b"\t").index(b"time")
    return b"\n".join(
        b"\t".join(f for i, f in enumerate(line.split(b"\t")) if i != drop) if line else line for line in lines
    )


def test_certify_tables_identical_across_shards_and_batch_sizes(trained, tmp_path):
    folder, cfg, _, _, _ = trained
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["models"][0]["methods"] = ["cohen", "smooth_reduce_mean"]
    # n not a multiple of chunk, batches that split one input's draws and batches that hold several inputs
    cfg["certify"].update(n0=50, n=700, chunk=300, alpha=0.01)
    cfg["test"].update(start=0, step=3, limit=10)
    model_id = f"gaussian-fixed-l2-{cfg['models'][0]['sigmas'][0]:g}"
    tables = {}
    for shards in (1, 3):
        for batch in (500, 4000):
            cfg["test"]["shards"], cfg["certify"]["batch_size"] = shards, batch
            conf = tmp_path / f"cfg-{shards}-{batch}.yaml"
            conf.write_text(yaml.safe_dump(cfg))
            for method in cfg["models"][0]["methods"]:
                parts = []
                for i in range(shards):
                    part = tmp_path / f"{method}-{shards}-{batch}" / f"{i}-of-{shards}.tsv"
                    _cli(
                        "--config",
                        conf,
                        "certify",
                        "--no-progress",
                        "--model",
                        model_id,
                        "--checkpoint",
                        folder / "model" / "model.pt",
                        "--data",
                        folder / "data",
                        "--method",
                        method,
                        "--shard",
                        f"{i}-of-{shards}",
                        "--out",
                        part,
                    )
                    parts.append(part)
                merged = tmp_path / f"{method}-{shards}-{batch}.tsv"
                _cli("gather", *parts, "--out", merged)
                tables[(method, shards, batch)] = merged
    for method in cfg["models"][0]["methods"]:
        reference = _without_time(tables[(method, 1, 500)])
        assert reference.count(b"\n") == 11  # header + 10 inputs
        for key, path in tables.items():
            if key[0] == method:
                assert _without_time(path) == reference, f"{key} differs from 1 shard / batch 500"
