"""smoothcert: certified robustness by randomized smoothing, as a reproducible pipeline.

The Python API (names load lazily: ``import smoothcert`` loads no torch):

* ``Smooth``, ``ABSTAIN`` — locuslab/smoothing's ``core.Smooth``, call-compatible: ``certify(x, n0, n, alpha,
  batch_size)`` → (class, ℓ2 radius) holding with probability ≥ 1 − alpha, ``predict(x, n, alpha, batch_size)``;
* ``certify_batch``, ``predict_batch``, ``Sampling`` — CERTIFY and PREDICT for many inputs per forward pass,
  each input with its own seeds and σ (scalar, per input, or per pixel θ); ``lower_confidence_bound``,
  ``radius`` — the one-sided Clopper–Pearson bound and the certified radius of a bound;
* ``load_config`` — params.yaml, overrides merged as ``snakemake --configfile`` merges them, validated;
* ``load_model`` — a trained ``model.pt`` (architecture from the config, loaded with ``weights_only=True``);
* ``test_inputs``, ``certify_inputs`` — the pipeline's test inputs, and their certificate rows computed by the
  certify stage's own code: equal to the rows of the pipeline's ``certify.tsv`` (same seed, same radius).

Loading a trained model and reproducing one row of a pipeline table (README, "Python API")::

    import smoothcert
    cfg = smoothcert.load_config("params.yaml")
    rows = smoothcert.certify_inputs(cfg, "gaussian-fixed-l2-0.25", [3], method="cohen")
    rows.loc[3, "radius"]   # == results/digits/gaussian-fixed-l2-0.25/cohen/certify.tsv's row idx 3

The code's map (docs/architecture.md): ``commands`` (``smoothcert <command>``) → ``pipeline`` (one runner per
stage, the stage map) / ``reporting`` → ``training`` → ``methods`` (the registry) → ``engine`` (the only code
that turns draws into bounds) → base modules (``config``, ``data``, ``inputs``, ``artifacts``, ``shards``, ``errors``, ``runtime``).
"""

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "ABSTAIN": "smoothcert.engine.certificates",
    "Smooth": "smoothcert.engine.smooth",
    "Sampling": "smoothcert.engine.sampling",
    "certify_batch": "smoothcert.engine.certify",
    "predict_batch": "smoothcert.engine.certify",
    "lower_confidence_bound": "smoothcert.engine.stats",
    "radius": "smoothcert.engine.stats",
    "load_config": "smoothcert.api",
    "load_model": "smoothcert.api",
    "test_inputs": "smoothcert.api",
    "certify_inputs": "smoothcert.api",
    "SmoothcertError": "smoothcert.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that `import smoothcert.config` (the Snakefile's) does not load torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'smoothcert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
