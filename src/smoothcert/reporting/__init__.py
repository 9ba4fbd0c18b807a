"""Tables, plots, importers and the paper comparison, from certificate tables.

``tables`` (metrics: pure functions of DataFrames), ``importers`` (tables read from disk, locuslab's
format), ``plots`` (figures), ``build`` (the whole report of a run), ``paper`` (published numbers).
What differs between methods comes from the registry (:mod:`smoothcert.methods`), never from a name.
Importing this package alone is light (no torch, no pandas), for the Snakefile.
"""

from __future__ import annotations

THETA_FIGURE = "{method}_theta.png"  # per-pixel θ maps of one method's certified inputs
# Certified-accuracy figures, one set per norm, one question per panel: file → (what a panel holds fixed, what
# its curves vary, fewest distinct curves a panel needs). "training" is objective/sigma_mode.
CURVE_FIGURES = {
    "certified_accuracy_{norm}.png": (("training", "sigma"), "method", 1),
    "certified_accuracy_sigma_{norm}.png": (("training", "method"), "sigma", 2),
    "certified_accuracy_objective_{norm}.png": (("method", "sigma"), "training", 2),
}


def curve_figures(norms) -> list[str]:
    """File names of the certified-accuracy figures for ``norms`` (each norm its own set)."""
    return [name.format(norm=norm) for norm in norms for name in CURVE_FIGURES]


def theta_methods() -> list[str]:
    """Registered methods whose θ is per input and per pixel (an anisotropic region: ``per_input_sigma`` and
    ``proxy``), in registration order; each gets a θ figure."""
    from smoothcert.methods import registry

    return [m.name for m in registry().values() if m.per_input_sigma and m.proxy]


def theta_figures() -> list[str]:
    """File names of the θ figures the report writes (one per :func:`theta_methods`, a placeholder if not run)."""
    return [THETA_FIGURE.format(method=name) for name in theta_methods()]
