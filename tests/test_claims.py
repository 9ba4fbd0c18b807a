"""The claims table: exact and permutation tests, Holm across a page, verdict rules, family-wise error by simulation."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from smoothcert.reporting import claims as cl
from smoothcert.reporting.tables import Experiment

LEVEL, MIN_INPUTS = 0.05, 20


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    d = np.array([1] * 12 + [-1] * 3 + [0] * 30, dtype=float)
    assert cl.mcnemar(d) == pytest.approx(sps.binomtest(12, 15, 0.5).pvalue)
    # closed form: P(X ≥ 12 or X ≤ 3), X ~ Bin(15, ½)
    tail = sum(sps.binom.pmf(k, 15, 0.5) for k in (*range(0, 4), *range(12, 16)))
    assert cl.mcnemar(d) == pytest.approx(tail)
    assert cl.mcnemar(np.zeros(25)) == 1.0


def test_sign_flip_exact_on_small_samples():
    """All 2^n sign flips enumerated when fewer than the resamples: identical positive differences give 2/2^n."""
    d = np.full(8, 0.3)
    assert cl.sign_flip(d, 9999, 0) == pytest.approx(2 / 2**8)
    assert cl.sign_flip(np.zeros(30), 9999, 0) == 1.0


def test_holm_matches_the_step_down_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    order = np.argsort(p[:4])
    m, adj, running = 4, np.empty(4), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    out = cl.holm(p)
    np.testing.assert_allclose(out[:4], adj)
    assert np.isnan(out[4])


def _exp(name: str, radius, correct=None, before=None) -> Experiment:
    n = len(radius)
    correct = np.ones(n, dtype=int) if correct is None else np.asarray(correct)
    t = pd.DataFrame({"idx": np.arange(n), "label": 0, "predict": 0, "radius": radius, "correct": correct})
    return Experiment("gaussian-fixed-l2-0.25", "gaussian", "fixed", name, 0.25, "l2", t, before)


def test_verdicts_reproduced_not_reproduced_and_too_few_inputs():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 0.6, 60)
    cohen = _exp("cohen", base)
    better = _exp("ddrs", base + 0.3)  # every input gains 0.3: ACR and certified@0.5 both rise
    rows = cl.claims([cohen, better], LEVEL, MIN_INPUTS, 999, 0).set_index("metric")
    assert rows.loc["acr", "verdict"] == "reproduced" and rows.loc["acr", "difference"] == pytest.approx(0.3)
    assert rows.loc["certified@0.5", "verdict"] == "reproduced"
    assert rows.loc["certified@0.5", "test"].startswith("McNemar")
    assert rows.loc["acr", "ci_low"] == pytest.approx(0.3) and rows.loc["acr", "ci_high"] == pytest.approx(0.3)
    worse = _exp("ddrs", np.clip(base - 0.3, 0, None))
    rows = cl.claims([cohen, worse], LEVEL, MIN_INPUTS, 999, 0).set_index("metric")
    assert rows.loc["acr", "verdict"] == "not reproduced"
    # one shared input, identical differences: never "reproduced" (the old t-interval read [mean, mean] as such)
    rows = cl.claims([_exp("cohen", [0.1]), _exp("ddrs", [0.5])], LEVEL, MIN_INPUTS, 999, 0)
    assert set(rows["verdict"]) == {"too few inputs"} and rows["p"].isna().all()
    assert rows["inputs"].tolist() == [1, 1]


def test_memory_loss_beyond_its_bound_is_not_reproduced():
    n = 100
    before = _exp("x", np.full(n, 0.4)).table
    after = np.full(n, 0.4)
    after[:3] = 0.0  # 3 % of inputs lost
    lost = _exp("ddrs", after, correct=np.r_[np.zeros(3, int), np.ones(n - 3, int)], before=before)
    row = cl.claims([lost], LEVEL, MIN_INPUTS, 999, 0).iloc[0]
    assert row["metric"] == cl.LOST and row["difference"] == pytest.approx(0.03)
    assert row["verdict"] == "not reproduced"
    kept = _exp("ddrs", np.full(1000, 0.4), before=_exp("x", np.full(1000, 0.4)).table)
    row = cl.claims([kept], LEVEL, MIN_INPUTS, 999, 0).iloc[0]  # 0 of 1,000 lost: p = 0.99^1000 ≈ 4e-5
    assert row["verdict"] == "reproduced" and row["p"] == pytest.approx(0.99**1000)


def test_imported_tables_get_claims_paired_by_sigma_and_norm():
    """Imports of the same σ and norm pair up, the method told from the NAME."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0.0, 0.6, 40)
    a, b = _exp("cohen_pub", base), _exp("ddrs_pub", base + 0.2)
    for e in (a, b):
        e.model_id, e.objective = "import-l2-0.25", "imported"
    other = _exp("ddrs_pub", base + 0.2)
    other.model_id, other.objective, other.sigma = "import-l2-0.5", "imported", 0.5
    rows = cl.claims([a, b, other], LEVEL, MIN_INPUTS, 999, 0)
    assert len(rows) == 2 and set(rows["setting"]) == {"l2 σ=0.25 ddrs_pub vs cohen_pub"}
    assert (rows["verdict"] == "reproduced").all()


def _null_pages(pages: int, rows: int, inputs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw and Holm verdicts of ``pages`` pages of ``rows`` claim rows, each pairing two methods whose radii come
    from the same pA distribution on the same inputs (no true effect anywhere). Every third row is ACR
    (permutation test), the others certified@r (McNemar)."""
    rng = np.random.default_rng(seed)
    false_holm, false_raw = np.zeros(pages, bool), np.zeros(pages, bool)
    for page in range(pages):
        p_input = rng.beta(4.0, 1.0, size=(rows, inputs))  # the inputs' difficulty, shared by both methods
        lower = rng.binomial(20, p_input[None].repeat(2, 0)) / 20 - 0.1  # each method's own (few) draws
        radius = np.where(lower > 0.5, 0.25 * sps.norm.ppf(np.clip(lower, 0.5, 0.999)), 0.0)
        metrics, diffs, ps = [], [], []
        for r in range(rows):
            if r % 3:
                metric, d = "certified@0.25", (radius[0, r] >= 0.25).astype(float) - (radius[1, r] >= 0.25)
            else:
                metric, d = "acr", radius[0, r] - radius[1, r]
            metrics.append(metric)
            diffs.append(d.mean())
            ps.append(cl.row_test(metric, d, 399, page * rows + r)[1])
        page_rows = cl.decide(pd.DataFrame({"metric": metrics, "difference": diffs, "p": ps}), LEVEL)
        false_holm[page] = (page_rows["verdict"] == "reproduced").any()
        false_raw[page] = ((np.array(ps) < LEVEL) & (np.array(diffs) > 0)).any()
    return false_holm, false_raw


def test_null_simulation_family_wise_error():
    """No true effect: a page shows a false "reproduced" on at most 5 % of pages (± two binomial standard errors);
    without Holm's adjustment the same pages do so far more often (the test can fail)."""
    pages = 200
    gc.freeze()  # statsmodels' multipletests runs gc.collect() on every call: keep it to the simulation's objects
    try:
        holm, raw = _null_pages(pages, rows=9, inputs=2 * MIN_INPUTS, seed=0)
    finally:
        gc.unfreeze()
    bound = LEVEL + 2 * np.sqrt(LEVEL * (1 - LEVEL) / pages)
    assert holm.mean() <= bound, holm.mean()
    assert raw.mean() > bound, raw.mean()
