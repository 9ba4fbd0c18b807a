"""Certification methods by name, and what each needs from the pipeline.

``per_input_sigma``: σ or θ is optimized per input (``optimize-sigma`` stage) and
read from a θ file; ``memory``: the data-dependent certificate is only sound
after the memory step; ``wrapper``: "module:function" building the certified
base classifier from the trained model (Smooth-Reduce's patch classifier).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from smoothcert.errors import require


@dataclass(frozen=True)
class Method:
    name: str
    per_input_sigma: bool = False
    memory: bool = False
    wrapper: str | None = None


METHODS = {
    "cohen": Method("cohen"),
    "ddrs": Method("ddrs", per_input_sigma=True, memory=True),
    "ancer": Method("ancer", per_input_sigma=True, memory=True),
    "smooth_reduce_max": Method("smooth_reduce_max", wrapper="smoothcert.methods.smooth_reduce:wrap"),
    "smooth_reduce_mean": Method("smooth_reduce_mean", wrapper="smoothcert.methods.smooth_reduce:wrap"),
}


def get(name: str) -> Method:
    """The registered :class:`Method` called ``name``."""
    require(name in METHODS, f"unknown method {name!r}; allowed: {sorted(METHODS)}")
    return METHODS[name]


def load_wrapper(method: Method):
    """Import the wrapper factory of ``method`` (None for plain smoothing)."""
    if method.wrapper is None:
        return None
    module, func = method.wrapper.split(":")
    return getattr(importlib.import_module(module), func)
