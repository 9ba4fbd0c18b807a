"""smoothcert: certified robustness by randomized smoothing, as a reproducible pipeline.

The public entry points mirror locuslab/smoothing's ``core.Smooth`` so that code
written against the reference implementation ports unchanged::

    from smoothcert import Smooth, ABSTAIN
"""
__all__ = ["ABSTAIN", "Smooth"]


def __getattr__(name: str):
    # Lazy, so that `import smoothcert.config` (the Snakefile's) does not load torch.
    if name in __all__:
        from smoothcert import core

        return getattr(core, name)
    raise AttributeError(name)
__version__ = "0.1.0"
