"""The certificate columns have one home: engine/certificates.py, checked against closed forms and tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm as normal

from smoothcert.config import ModelSpec
from smoothcert.engine import stats
from smoothcert.engine.certificates import ABSTAIN, CERTIFICATE, COLUMNS, MEMORY_COLUMNS, certificate
from smoothcert.errors import SmoothcertError

REPO = Path(__file__).resolve().parents[1]


def test_certificate_matches_closed_forms():
    predict = np.array([3, ABSTAIN, 1])
    gap = np.array([0.8, 0.0, 1.5])  # CERTIFY sets an abstention's gap to 0; another is refused
    theta = np.array([[0.25, 0.25], [0.5, 0.5], [0.2, 0.8]])
    cert = certificate(predict, gap, theta, 0.5, "l2")
    np.testing.assert_allclose(cert["gap"], [0.8, 0.0, 1.5])
    np.testing.assert_allclose(cert["radius"], [0.25 * 0.8 * 0.5, 0.0, 0.2 * 1.5 * 0.5])
    np.testing.assert_allclose(cert["proxy_radius"], [0.25 * 0.8 * 0.5, 0.0, 0.4 * 1.5 * 0.5])
    # an ellipse with semi-axes θᵢ·factor·gap: π·a·b
    ellipse = [math.pi * (0.125 * 0.8) ** 2, -np.inf, math.pi * (0.1 * 1.5) * (0.4 * 1.5)]
    np.testing.assert_allclose(cert["log_volume"][[0, 2]], np.log(np.array(ellipse)[[0, 2]]), rtol=1e-12)
    assert cert["log_volume"][1] == -np.inf
    np.testing.assert_allclose(cert["sigma_min"], [0.25, 0.5, 0.2])
    np.testing.assert_allclose(cert["sigma_gmean"], [0.25, 0.5, 0.4])
    np.testing.assert_allclose(cert["sigma_max"], [0.25, 0.5, 0.8])
    with pytest.raises(SmoothcertError, match="abstention"):
        certificate(predict, np.array([0.8, 0.5, 1.5]), theta, 0.5, "l2")
    cross = certificate(np.array([0]), np.array([1.0]), np.array([[0.5, 1.0]]), 1.0, "l1")
    assert cross["log_volume"][0] == pytest.approx(math.log(2 * 0.5 * 1.0))  # a rhombus: 2·a·b
    assert set(CERTIFICATE) <= set(COLUMNS) and not set(MEMORY_COLUMNS) & set(COLUMNS)


def _check_table(table, theta: np.ndarray, factor: float, norm: str) -> None:
    """Every certificate column of ``table`` is :func:`certificate` of its predict, gap and θ."""
    cert = certificate(table["predict"].to_numpy(), table["gap"].to_numpy(), theta, factor, norm)
    for col in CERTIFICATE:
        np.testing.assert_allclose(table[col].to_numpy(dtype=float), cert[col], rtol=1e-6, err_msg=col)


@pytest.mark.parametrize("norm,method", [("l2", "cohen"), ("l1", "cohen"), ("l2", "ancer")])
def test_every_certificate_column_of_a_table_comes_from_the_one_function(norm, method, params, tmp_path):
    """A certified shard (and, for a per-input θ method, the memory step's final table): each row's gap is
    the gap of its p̲A, the radius is Cohen's (σ Φ⁻¹(p̲A)) where σ is one number, and every certificate
    column is the certificate function's."""
    from smoothcert.pipeline.certify import certify_shard
    from smoothcert.pipeline.memory import final_table

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    with torch.no_grad():  # class 0 for bright inputs, 1 for dark ones, a tie (abstain) in between
        model[1].weight.zero_()
        model[1].weight[0], model[1].weight[1] = 1.0, -1.0
        model[1].bias.zero_()
    cfg = {**params, "certify": {**params["certify"], "n0": 20, "n": 200, "batch_size": 200, "chunk": 100}}
    spec = ModelSpec("gaussian", "fixed", norm, 0.25, (method,))
    n = 6
    level = torch.tensor([0.1, 0.05, 0.0, -0.02, -0.05, -0.1])
    x, y, idx = level.reshape(n, 1, 1, 1).expand(n, 1, 8, 8), torch.zeros(n, dtype=torch.long), np.arange(10, 10 + n)
    theta = np.full((n, 64), 0.25)
    triple = None
    if method == "ancer":
        theta = 0.25 * np.exp(np.random.default_rng(0).uniform(0, 0.5, (n, 64)))
        triple = (theta, np.zeros(n), np.zeros(n, int))
    table = certify_shard(cfg, spec, method, model, x, y, idx, tmp_path / "c.tsv", "cpu", theta=triple, progress=False)
    assert list(table.columns) == COLUMNS
    ok = table["predict"].to_numpy() != ABSTAIN
    assert 2 <= ok.sum() < n, "the test model must certify some inputs and abstain on some"
    np.testing.assert_allclose(table["gap"][ok], stats.gap(table["pA_lower"][ok].to_numpy(), norm), rtol=1e-6)
    if method == "cohen" and norm == "l2":
        np.testing.assert_allclose(table["radius"][ok], 0.25 * normal.ppf(table["pA_lower"][ok]), rtol=1e-6)
    _check_table(table, theta, 1.0, norm)
    if method == "ancer":
        centers = x.reshape(n, -1).double().numpy()
        final, _ = final_table(table, centers, theta, norm)
        assert set(COLUMNS + MEMORY_COLUMNS) <= set(final.columns)
        rows = (final["memory"] != "inside").to_numpy()  # an inside row answers with an earlier region's θ
        _check_table(final[rows], theta[rows], 1.0, norm)


def test_certificate_columns_have_one_home():
    """Only engine/certificates.py computes a region's log-volume, and nothing outside the engine spells out
    the certificate columns or the gap of p̲A: they call the certificate module and engine.stats."""
    callers = [
        str(p.relative_to(REPO))
        for folder in ("src", "benchmarks")
        for p in sorted((REPO / folder).rglob("*.py"))
        if "region_log_volume(" in p.read_text() and p.name not in ("certificates.py", "stats.py")
    ]
    assert not callers, f"region log-volumes computed outside engine/certificates.py: {callers}"
    for path in sorted((REPO / "src" / "smoothcert").rglob("*.py")):
        if path.name != "certificates.py":
            assert '"proxy_radius",\n' not in path.read_text(), f"{path} lists the certificate columns"
