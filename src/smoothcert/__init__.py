"""smoothcert: certified robustness by randomized smoothing, as a reproducible pipeline.

The map (details: docs/architecture.md); dependencies point down the list, never up:

* ``commands``  — ``smoothcert <command>``: argument parsing and one call;
* ``reporting`` — the report: metrics over certificate tables, importers, figures, the paper comparison;
* ``pipeline``  — one runner per stage, and the stage map (what each stage reads; dvc.yaml comes from it);
* ``training``  — base models, objectives, the train loop (images and clips);
* ``methods``   — the registry (the one list of methods) and one module per method;
* ``engine``    — noise, sampling, counting, statistics, the memory step's geometry: the only code that
  turns draws into bounds; it imports no method, stage or command;
* base modules  — ``config`` (params.yaml + schema), ``data``, ``artifacts``, ``errors``, ``runtime``, ``audit``.

A new method is one module in ``methods/`` registered in the registry, plus its params.yaml section.

The public entry points mirror locuslab/smoothing's ``core.Smooth`` so that code
written against the reference implementation ports unchanged::

    from smoothcert import Smooth, ABSTAIN
"""

__all__ = ["ABSTAIN", "Smooth"]


def __getattr__(name: str):
    # Lazy, so that `import smoothcert.config` (the Snakefile's) does not load torch.
    if name in __all__:
        from smoothcert.engine import core

        return getattr(core, name)
    raise AttributeError(name)


__version__ = "0.1.0"
