"""A re-export of the engine's front door, kept only for the benchmarks that still import it
(``benchmarks/bench_certify.py``, ``benchmarks/bench_sequential.py``); delete it once they import the modules.

The code lives in three modules: :mod:`~smoothcert.engine.sampling` (``Sampling``, ``count_classes``: the CPU and
device counting engines), :mod:`~smoothcert.engine.certify` (``Certified``, CERTIFY / PREDICT fixed-N and
sequential, ``SequentialPlan``, the options object ``Draws``) and :mod:`~smoothcert.engine.smooth` (``Smooth``, the
call-compatible port of locuslab/smoothing's ``core.Smooth``). Package code and tests import the module they use
(``tests/test_registry.py`` checks), so that a stage hashes only the code it runs.
"""

from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.certify import (
    Certified,
    Draws,
    SequentialPlan,
    certify,
    certify_batch,
    certify_sequential_batch,
    predict_batch,
    predict_sequential_batch,
)
from smoothcert.engine.sampling import Sampling, count_classes, noise_threads
from smoothcert.engine.smooth import Smooth

__all__ = [
    "ABSTAIN",
    "Certified",
    "Draws",
    "Sampling",
    "SequentialPlan",
    "Smooth",
    "certify",
    "certify_batch",
    "certify_sequential_batch",
    "count_classes",
    "noise_threads",
    "predict_batch",
    "predict_sequential_batch",
]
