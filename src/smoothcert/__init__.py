"""smoothcert: certified robustness by randomized smoothing, as a reproducible pipeline.

The public entry points mirror locuslab/smoothing's ``core.Smooth`` so that code
written against the reference implementation ports unchanged::

    from smoothcert import Smooth, ABSTAIN
"""
from smoothcert.core import ABSTAIN, Smooth

__all__ = ["ABSTAIN", "Smooth"]
__version__ = "0.1.0"
