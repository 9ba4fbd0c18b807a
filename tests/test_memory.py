"""Memory-based certification: soundness checked by independent solvers and by sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize

from conftest import REPO
from smoothcert import cli
from smoothcert.engine.regions import (
    Memory,
    candidate_pairs,
    distance_lower_bound,
    inscribed_gap,
    may_intersect,
    region_gauge,
)
from smoothcert.pipeline.memory import final_table, load_memory, save_memory

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------
# Independent checks (different formulations and solvers from the module's)
# ----------------------------------------------------------------------------------------------------------


def ellipsoids_disjoint_margin(c1, a1, c2, a2) -> float:
    """min over s ∈ (0, 1) of K(s) = 1 − Σ Δ² s(1−s) / (s a1² + (1−s) a2²) (axis-aligned semi-axes a1, a2).

    The two closed ellipsoids are disjoint iff this is < 0 (the one-dimensional separation condition of two
    ellipsoids, from their support functions); solved with scipy's bounded scalar minimizer.
    """
    d2 = (np.asarray(c1) - np.asarray(c2)) ** 2

    def k(s):
        return 1.0 - np.sum(d2 * s * (1 - s) / (s * a1**2 + (1 - s) * a2**2))

    res = optimize.minimize_scalar(k, bounds=(1e-12, 1 - 1e-12), method="bounded", options={"xatol": 1e-12})
    return float(res.fun)


def polytopes_overlap_level(c1, a1, c2, a2) -> float:
    """min t with a point z in both {Σ|z−c_i|/a_i ≤ t}: the cross-polytopes meet iff this is ≤ 1 (linprog)."""
    d = len(c1)
    eye, zero = np.eye(d), np.zeros((d, d))
    # variables z (d), u (d) ≥ |z − c1| / a1, v (d) ≥ |z − c2| / a2, t
    rows, rhs = [], []
    for c, a, block in ((c1, a1, 0), (c2, a2, 1)):
        slack = [zero, zero]
        slack[block] = -np.diag(a)
        for sign in (1, -1):
            rows.append(np.hstack([sign * eye, *slack, np.zeros((d, 1))]))
            rhs.append(sign * np.asarray(c))
    for block in (0, 1):
        sums = [np.zeros(d), np.zeros(d)]
        sums[block] = np.ones(d)
        rows.append(np.concatenate([np.zeros(d), *sums, [-1.0]])[None])
        rhs.append([0.0])
    res = optimize.linprog(
        np.concatenate([np.zeros(3 * d), [1.0]]),
        A_ub=np.vstack(rows),
        b_ub=np.concatenate(rhs),
        bounds=[(None, None)] * d + [(0, None)] * (2 * d + 1),
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


def regions_clearly_disjoint(norm, c1, t1, g1, c2, t2, g2) -> bool:
    """True unless the regions overlap by more than rounding (checked independently)."""
    if norm == "l2":
        return ellipsoids_disjoint_margin(c1, t1 * g1, c2, t2 * g2) < 1e-7
    return polytopes_overlap_level(c1, t1 * g1, c2, t2 * g2) > 1 - 1e-7


def brute_distance(x, theta_x, c, theta, g, norm, k=200_000):
    """min ‖(z − x) ⊘ θₓ‖_p over dense boundary samples of the 2-D region (x outside it)."""
    phi = np.linspace(0, 2 * np.pi, k, endpoint=False)
    if norm == "l2":
        unit = np.stack([np.cos(phi), np.sin(phi)], 1)
    else:
        unit = np.stack([np.cos(phi), np.sin(phi)], 1)
        unit /= np.abs(unit).sum(1, keepdims=True)
    z = c + unit * theta * g
    return float(region_gauge(z, x, theta_x, norm).min())


def brute_intersect(c1, t1, g1, c2, t2, g2, norm, k=4000) -> bool:
    """2-D: a boundary sample of one region lies in the other, or one contains the other's centre."""
    phi = np.linspace(0, 2 * np.pi, k, endpoint=False)
    unit = np.stack([np.cos(phi), np.sin(phi)], 1)
    if norm == "l1":
        unit /= np.abs(unit).sum(1, keepdims=True)
    for (ca, ta, ga), (cb, tb, gb) in (((c1, t1, g1), (c2, t2, g2)), ((c2, t2, g2), (c1, t1, g1))):
        pts = np.vstack([ca + unit * ta * ga, ca[None]])
        if (region_gauge(pts, cb, tb, norm) <= gb).any():
            return True
    return False


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------

vec = st.lists(st.floats(-2, 2), min_size=2, max_size=2).map(np.array)
scales = st.lists(st.floats(0.05, 2.0), min_size=2, max_size=2).map(np.array)


@SETTINGS
@given(norm=st.sampled_from(["l2", "l1"]), x=vec, tx=scales, c=vec, tk=scales, g=st.floats(0.05, 2.0))
def test_distance_bound_is_exact_and_never_above_sampling_2d(norm, x, tx, c, tk, g):
    bound = distance_lower_bound(x, tx, c[None], tk[None], [g], norm)[0]
    if region_gauge(x, c, tk, norm) <= g:
        assert bound == 0.0
        return
    brute = brute_distance(x, tx, c, tk, g, norm)
    assert bound <= brute * (1 + 1e-12)  # sound: never above a point actually in the region
    # tight: agrees with dense sampling, up to the sampler's resolution (with θ ratios of ~30–40 its grid misses the
    # optimum by up to ~0.7 %: x=(1.75,1.75), θx=(0.0625,2), c=(−1.5,2) in ℓ1 has exact distance 0.0625, sampled
    # 0.0629); exactness is checked against an LP / SLSQP solver in the next test
    assert bound >= brute * (1 - 1e-2) - 1e-4


@SETTINGS
@given(
    norm=st.sampled_from(["l2", "l1"]),
    c1=vec,
    t1=scales,
    g1=st.floats(0.05, 2.0),
    c2=vec,
    t2=scales,
    g2=st.floats(0.05, 2.0),
)
def test_intersection_test_agrees_with_sampling_2d(norm, c1, t1, g1, c2, t2, g2):
    verdict = may_intersect(c1, t1, g1, c2, t2, g2, norm)
    if brute_intersect(c1, t1, g1, c2, t2, g2, norm):
        assert verdict  # never "disjoint" for intersecting shapes
    if verdict:  # exact: a slightly larger copy visibly intersects
        assert brute_intersect(c1, t1, g1 * 1.002, c2, t2, g2 * 1.002, norm)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 10_000), norm=st.sampled_from(["l2", "l1"]))
def test_distance_bound_matches_an_independent_solver(d, seed, norm):
    rng = np.random.default_rng(seed)
    x, c = rng.normal(size=d), rng.normal(size=d) * 3
    tx, tk, g = np.exp(rng.uniform(-2, 1, d)), np.exp(rng.uniform(-2, 1, d)), rng.uniform(0.1, 1.0)
    bound = distance_lower_bound(x, tx, c[None], tk[None], [g], norm)[0]
    if norm == "l2":
        res = optimize.minimize(
            lambda z: np.sum(((z - x) / tx) ** 2),
            c,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda z: g**2 - np.sum(((z - c) / tk) ** 2)}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        value = np.sqrt(res.fun)
    else:  # LP over (z, u ≥ |z − x|/θₓ, v ≥ |z − c|/θ_k), Σ v ≤ g
        eye, zero = np.eye(d), np.zeros((d, d))
        a_ub = np.block(
            [
                [eye, -np.diag(tx), zero],
                [-eye, -np.diag(tx), zero],
                [eye, zero, -np.diag(tk)],
                [-eye, zero, -np.diag(tk)],
            ]
        )
        a_ub = np.vstack([a_ub, np.concatenate([np.zeros(2 * d), np.ones(d)])])
        b_ub = np.concatenate([x, -x, c, -c, [g]])
        res = optimize.linprog(
            np.concatenate([np.zeros(d), np.ones(d), np.zeros(d)]),
            A_ub=a_ub,
            b_ub=b_ub,
            bounds=[(None, None)] * d + [(0, None)] * (2 * d),
            method="highs",
        )
        value = res.fun
    assert bound <= value * (1 + 1e-7) + 1e-9
    assert bound >= value * (1 - 1e-6) - 1e-7  # SLSQP's ftol leaves ~1e-9 on points inside


def test_cheap_l2_bound_is_a_lower_bound():
    rng = np.random.default_rng(3)
    x, tx = rng.uniform(0, 1, 64), 0.5 * np.exp(rng.normal(0, 1, 64))
    c, tk = rng.uniform(0, 1, (200, 64)), 0.5 * np.exp(rng.normal(0, 1, (200, 64)))
    g = rng.uniform(0.2, 3, 200)
    exact = distance_lower_bound(x, tx, c, tk, g, "l2")
    cheap = distance_lower_bound(x, tx, c, tk, g, "l2", exact=False)
    assert (cheap <= exact * (1 + 1e-12)).all() and (exact > 0).any()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_inscribed_copy_fits(norm):
    rng = np.random.default_rng(0)
    c, theta, g = np.zeros(2), np.array([1.0, 0.25]), 1.0
    x = np.array([0.3, 0.1])
    gi = inscribed_gap(x, c, theta, g, norm)
    assert 0 < gi < g - region_gauge(x, c, theta, norm) + 1e-12
    phi = rng.uniform(0, 2 * np.pi, 5000)
    unit = np.stack([np.cos(phi), np.sin(phi)], 1)
    if norm == "l1":
        unit /= np.abs(unit).sum(1, keepdims=True)
    assert (region_gauge(x + unit * theta * gi, c, theta, norm) <= g).all()


# ----------------------------------------------------------------------------------------------------------
# The memory
# ----------------------------------------------------------------------------------------------------------


def test_two_balls_known_shrink():
    """Ball of radius 1 (θ = 0.5, gap 2) at the origin; a ball of radius 2.5 at distance 3 must shrink to 2."""
    mem = Memory("l2", 2)
    assert mem.process(0, [0.0, 0.0], 0, [0.5, 0.5], 2.0) == (0, 2.0, "none")
    label, gap, action = mem.process(1, [3.0, 0.0], 1, [0.5, 0.5], 5.0)
    assert (label, action) == (1, "shrunk") and gap < 4.0 and gap == pytest.approx(4.0, rel=1e-8)
    # ℓ1: diamond of ℓ1-radius 1 at the origin, centre at ℓ1-distance 3 → gap 2 (θ = 1)
    mem = Memory("l1", 2)
    mem.process(0, [0.0, 0.0], 0, [1.0, 1.0], 1.0)
    label, gap, action = mem.process(1, [1.5, 1.5], 1, [1.0, 1.0], 2.5)
    assert action == "shrunk" and gap < 2.0 and gap == pytest.approx(2.0, rel=1e-8)
    # overlapping a region of the same class is allowed (ℓ1 distance to the class-1 region is 0.8)
    assert mem.process(2, [0.2, 0.0], 0, [1.0, 1.0], 0.5) == (0, 0.5, "none")


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_input_inside_a_region_gets_its_class(norm):
    mem = Memory(norm, 2)
    mem.process(0, [0.0, 0.0], 0, [1.0, 0.5], 2.0)
    label, gap, action = mem.process(1, [0.5, 0.0], 1, [0.1, 0.1], 3.0)
    assert (label, action) == (0, "inside")
    assert gap == pytest.approx(2.0 - 0.5, rel=1e-8) and gap < 1.5
    assert np.array_equal(mem.last_theta, [1.0, 0.5])
    # an abstained input is passed through and not recorded
    assert mem.process(2, [5.0, 5.0], -1, [1.0, 1.0], 0.0) == (-1, 0.0, "none") and len(mem) == 2


def test_abstains_on_the_boundary():
    mem = Memory("l2", 1)
    mem.process(0, [0.0], 0, [1.0], 1.0)
    label, gap, action = mem.process(1, [1.0], 1, [1.0], 1.0)  # centre on the other region's boundary
    assert (label, gap, action) == (-1, 0.0, "abstained") and len(mem) == 1


@st.composite
def scenarios(draw):
    norm = draw(st.sampled_from(["l2", "l1"]))
    d = draw(st.integers(1, 3))
    n = draw(st.integers(2, 14))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 1, (n, d))
    thetas = np.exp(rng.uniform(np.log(0.05), np.log(0.6), (n, d)))
    if draw(st.booleans()):  # isotropic (DDRS)
        thetas = np.repeat(thetas[:, :1], d, 1)
    predict = rng.integers(-1, 3, n)
    gaps = np.where(predict >= 0, rng.uniform(0.05, 2.5, n), 0.0)
    table = pd.DataFrame(
        {
            "idx": rng.permutation(n) * 3 + 1,
            "label": rng.integers(0, 3, n),
            "predict": predict,
            "gap": gaps,
            "norm": norm,
        }
    )
    return table, centers, thetas, norm


@SETTINGS
@given(scenarios())
def test_memory_invariants(case):
    table, centers, thetas, norm = case
    final, arrays = final_table(table, centers, thetas, norm)
    again, arrays2 = final_table(table, centers, thetas, norm)
    pd.testing.assert_frame_equal(final, again)  # deterministic
    for key in ("idx", "center", "label", "theta", "gap"):
        assert np.array_equal(arrays[key], arrays2[key])
    assert list(final["idx"]) == sorted(table["idx"])

    # recorded regions of different classes never intersect (independent solver)
    c, t, g, lab = arrays["center"], arrays["theta"], arrays["gap"], arrays["label"]
    assert (g > 0).all() and (lab >= 0).all()
    for i in range(len(g)):
        for j in range(i):
            if lab[i] != lab[j]:
                assert regions_clearly_disjoint(norm, c[i], t[i], g[i], c[j], t[j], g[j]), (i, j)

    # an input inside an earlier recorded region of another class gets that class; table columns agree
    order = np.argsort(table["idx"].to_numpy())
    centers_sorted = centers[order]
    rec_pos = {int(i): k for k, i in enumerate(arrays["idx"])}
    for row, x in zip(final.itertuples(), centers_sorted):
        if row.predict >= 0:
            k = rec_pos[row.idx]
            earlier = np.arange(k)
            assert region_gauge(x, c[k], t[k], norm) == 0.0
            assert row.radius == pytest.approx(t[k].min() * row.gap)
            assert row.gap <= row.gap_original or row.memory == "inside"
        else:
            earlier = np.array([rec_pos[i] for i in arrays["idx"] if i < row.idx], dtype=int)
        if row.predict_original < 0:
            assert row.memory == "none" and row.predict == -1
            continue
        holds = [
            e
            for e in earlier
            if region_gauge(x, c[e], t[e], norm) < g[e] * (1 - 1e-6) and lab[e] != row.predict_original
        ]
        if holds:
            assert row.memory == "inside" and row.predict == lab[holds[0]]
        assert row.correct == int(row.predict == row.label)
        assert (row.memory == "abstained") == (row.predict == -1)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_many_inputs_high_dimension_stay_disjoint(norm):
    rng = np.random.default_rng(1)
    n, d = 120, 16
    centers = rng.uniform(0, 1, (n, d))
    thetas = 0.3 * np.exp(rng.normal(0, 0.5, (n, d)))
    predict = rng.integers(0, 4, n)
    gaps = rng.uniform(0.5, 3.0, n) * (4.0 if norm == "l1" else 1.0)
    table = pd.DataFrame({"idx": np.arange(n), "label": predict, "predict": predict, "gap": gaps, "norm": norm})
    final, arrays = final_table(table, centers, thetas, norm)
    assert set(final["memory"]) >= {"shrunk"}
    c, t, g, lab = arrays["center"], arrays["theta"], arrays["gap"], arrays["label"]
    for i in range(len(g)):
        for j in range(i):
            if lab[i] != lab[j]:
                assert not may_intersect(c[i], t[i], g[i], c[j], t[j], g[j], norm)
                if norm == "l1" and (i + j) % 7 == 0:
                    assert polytopes_overlap_level(c[i], t[i] * g[i], c[j], t[j] * g[j]) > 1 - 1e-7
                if norm == "l2":
                    assert ellipsoids_disjoint_margin(c[i], t[i] * g[i], c[j], t[j] * g[j]) < 1e-7


def test_memory_file_roundtrip(tmp_path):
    mem = Memory("l1", 3)
    mem.process(4, [0, 0, 0], 1, [1, 2, 3], 0.5)
    save_memory(tmp_path / "m.npz", mem.arrays())
    back = load_memory(tmp_path / "m.npz")
    assert back["norm"] == "l1" and back["idx"].tolist() == [4] and back["theta"].shape == (1, 3)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def memory_inputs(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    data = tmp_path / "data"
    data.mkdir()
    x = torch.from_numpy(rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, n))
    torch.save({"x": x, "y": y}, data / "test.pt")
    idx = np.arange(0, n, 1)
    theta = torch.from_numpy(rng.uniform(0.3, 0.6, (n, 64)).astype(np.float32))
    for s, part in enumerate(np.array_split(idx, 2)):
        torch.save(
            {
                "idx": torch.from_numpy(part),
                "theta": theta[part],
                "time": torch.zeros(len(part)),
                "evals": torch.zeros(len(part), dtype=torch.long),
            },
            tmp_path / f"t{s}.pt",
        )
    th = theta.double().numpy()
    predict = np.where(rng.random(n) < 0.2, -1, y.numpy())
    table = pd.DataFrame(
        {
            "idx": idx,
            "label": y.numpy(),
            "predict": predict,
            "radius": 0.0,
            "correct": 0,
            "norm": "l2",
            "gap": np.where(predict >= 0, 3.5, 0.0),
            "sigma_min": th.min(1),
            "sigma_gmean": np.exp(np.log(th).mean(1)),
            "sigma_max": th.max(1),
        }
    )
    table.to_csv(tmp_path / "certify.tsv", sep="\t", index=False)
    return tmp_path


def _argv(root, *theta):
    return [
        "memory-check",
        "--config",
        str(REPO / "params.yaml"),
        "--certified",
        str(root / "certify.tsv"),
        "--theta",
        *[str(root / t) for t in (theta or ("t0.pt", "t1.pt"))],
        "--data",
        str(root / "data"),
        "--out-table",
        str(root / "out" / "final.tsv"),
        "--out-memory",
        str(root / "out" / "memory.npz"),
    ]


def test_cli_memory_check(memory_inputs, capsys):
    root = memory_inputs
    assert cli.main(_argv(root)) == 0
    final = pd.read_csv(root / "out" / "final.tsv", sep="\t")
    mem = load_memory(root / "out" / "memory.npz")
    assert {"memory", "gap_original", "predict_original", "proxy_radius", "log_volume"} <= set(final.columns)
    assert len(mem["idx"]) == int((final["predict"] >= 0).sum()) and mem["center"].shape[1] == 64
    first = (root / "out" / "final.tsv").read_bytes()
    assert cli.main(_argv(root)) == 0  # rerun: identical outputs
    assert (root / "out" / "final.tsv").read_bytes() == first


def test_cli_memory_check_errors(memory_inputs, capsys):
    root = memory_inputs
    assert cli.main(_argv(root, "t0.pt")) == 2  # a shard missing
    err = capsys.readouterr().err.strip()
    assert "lack rows" in err and "\n" not in err
    torch.save({"idx": torch.arange(6), "theta": torch.full((6, 64), float("nan"))}, root / "bad.pt")
    assert cli.main(_argv(root, "bad.pt", "t1.pt")) == 2
    assert "NaN" in capsys.readouterr().err
    torch.save({"idx": torch.arange(6), "theta": torch.ones(6, 10)}, root / "short.pt")
    assert cli.main(_argv(root, "short.pt", "t1.pt")) == 2
    assert "shape" in capsys.readouterr().err
    assert not (root / "out").exists()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_first_pass_keeps_every_close_pair_and_only_few_others(norm):
    rng = np.random.default_rng(7)
    n, d = 300, 12
    centers = rng.uniform(0, 1, (n, d)) * rng.uniform(0.5, 4, (n, 1))
    thetas = 0.2 * np.exp(rng.normal(0, 0.4, (n, d)))
    labels = rng.integers(-1, 4, n)
    gaps = np.where(labels >= 0, rng.uniform(0, 2.0 if norm == "l2" else 8.0, n), 0.0)
    indptr, earlier = candidate_pairs(centers, thetas, gaps, labels, norm)
    got = {(i, int(j)) for i in range(n) for j in earlier[indptr[i] : indptr[i + 1]]}
    ext = gaps * thetas.max(1)
    diff = np.abs(centers[:, None] - centers[None])
    dist = np.sqrt((diff**2).sum(-1)) if norm == "l2" else diff.sum(-1)
    want = {
        (i, j)
        for i in range(n)
        for j in range(i)
        if labels[j] >= 0 and labels[j] != labels[i] and dist[i, j] <= ext[i] + ext[j]
    }
    assert want <= got  # sound: no close pair is missed
    assert want, "the case needs close pairs of different classes"
    near_miss = {(i, j) for i, j in got - want if dist[i, j] > (ext[i] + ext[j]) * (1 + 1e-6)}
    assert not near_miss  # and it is tight: far pairs are dropped
    all_pairs = sum(1 for i in range(n) for j in range(i) if labels[j] >= 0 and labels[j] != labels[i])
    assert len(got) < all_pairs / 2, (len(got), all_pairs)
    for i in range(n):  # CSR rows ascending
        assert np.all(np.diff(earlier[indptr[i] : indptr[i + 1]]) > 0)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_first_pass_answers_as_scanning_the_whole_memory(norm):
    rng = np.random.default_rng(11)
    n, d = 250, 8
    base = rng.uniform(0, 1, (25, d))
    centers = base[rng.integers(0, 25, n)] + rng.normal(0, 0.05, (n, d))  # near-duplicates: many overlaps
    thetas = 0.15 * np.exp(rng.normal(0, 0.3, (n, d)))
    predict = rng.integers(-1, 3, n)
    gaps = np.where(predict >= 0, rng.uniform(0.1, 3.0, n), 0.0)
    table = pd.DataFrame({"idx": np.arange(n), "label": predict, "predict": predict, "gap": gaps, "norm": norm})
    final, arrays = final_table(table, centers, thetas, norm)
    mem = Memory(norm, d)
    full = [mem.process(i, centers[i], int(predict[i]), thetas[i], gaps[i]) for i in range(n)]
    assert {"shrunk", "inside"} <= set(final["memory"])
    assert list(final["memory"]) == [a for _, _, a in full]
    assert list(final["predict"]) == [p for p, _, _ in full]
    np.testing.assert_allclose(final["gap"], [g for _, g, _ in full], rtol=1e-9, atol=0)
    np.testing.assert_allclose(arrays["gap"], mem.gap, rtol=1e-9, atol=0)
