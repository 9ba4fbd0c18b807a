"""The certificate row: the columns of a certificate table and the one function that fills its certificate.

Every table the pipeline writes (``certify.tsv``, ``final.tsv`` after the memory step), every table the report
reads and every importer's output has the columns :data:`COLUMNS` (``final.tsv`` adds :data:`MEMORY_COLUMNS`).
A row's certificate — radius, proxy radius, log-volume and the θ summaries — is a function of the smoothed
prediction, the certified gap, the noise scale θ (a σ is θ = σ·1), the radius factor of the space it was
certified in and the norm, computed by :func:`certificate` alone. Imports no torch.
"""

from __future__ import annotations

import numpy as np

from smoothcert.engine import stats
from smoothcert.errors import require

ABSTAIN = -1  # the prediction of an input the smoothed classifier abstains on

COLUMNS = [
    "idx",
    "label",
    "predict",
    "radius",
    "correct",
    "time",
    "method",
    "norm",
    "sigma",
    "pA_lower",
    "count",
    "n0",
    "n",
    "alpha",
    "gap",
    "proxy_radius",
    "log_volume",
    "sigma_min",
    "sigma_gmean",
    "sigma_max",
    "evals",
    "opt_time",
    "opt_evals",
]
CERTIFICATE = ("gap", "radius", "proxy_radius", "log_volume", "sigma_min", "sigma_gmean", "sigma_max")
MEMORY_COLUMNS = ["memory", "gap_original", "predict_original"]  # what the memory step adds to a table
MEMORY_ACTIONS = ("none", "inside", "shrunk", "abstained")  # the values of its ``memory`` column


def certificate(predict, gap, theta, radius_factor: float, norm: str) -> dict[str, np.ndarray]:
    """The certificate columns (:data:`CERTIFICATE`) of rows with prediction ``predict`` (B,), certified gap
    ``gap`` (B,) and noise scale ``theta`` (B, d), certified in a space ``radius_factor`` times the input's.

    The certified region is {δ : ‖δ ⊘ (θ·factor)‖_p ≤ gap}: ``radius`` = min θ · gap · factor (the largest ℓp
    ball inside it: the certificate), ``proxy_radius`` = (∏θ)^{1/d} · gap · factor (the ball of equal volume:
    no certificate), ``log_volume`` its log-volume. An abstention (predict = :data:`ABSTAIN`) certifies
    nothing: its gap is 0 (CERTIFY sets it so; another gap is refused), so radius and proxy radius are 0 and
    the log-volume −inf. ``sigma_min/gmean/max`` summarize θ as given.
    """
    g = np.asarray(gap, dtype=float)
    require(
        not (g[np.asarray(predict) == ABSTAIN] != 0).any(),
        "an abstention certifies nothing: its gap must be 0 (CERTIFY and the memory step set it so)",
    )
    theta = np.asarray(theta, dtype=float)
    lo, gmean, hi = theta.min(1), np.exp(np.log(theta).mean(1)), theta.max(1)
    return {
        "gap": g,
        "radius": lo * g * radius_factor,
        "proxy_radius": gmean * g * radius_factor,
        "log_volume": stats.region_log_volume(theta * radius_factor, g, norm),
        "sigma_min": lo,
        "sigma_gmean": gmean,
        "sigma_max": hi,
    }
