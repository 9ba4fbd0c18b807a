"""The method registry: the one list of certification methods, and what each needs from the pipeline.

Each method lives in one module of this package, which declares its :class:`Method` entry (or entries) as
``METHODS`` next to its code. The schema's method enums, the CLI's choices, the Snakemake rules, the stage
map, validation of norms and the report all read this registry, never a method's name.

Importing the registry imports no torch: method modules import their heavy dependencies inside the functions
that need them, so the Snakefile, ``validate`` and the stage map stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from smoothcert.errors import require

NORMS = ("l2", "l1")


@dataclass(frozen=True)
class Method:
    """A certification method.

    ``norms``: the norms whose certificate is proven (docs/soundness.md); ``validate`` refuses the others.
    ``variant``: for a method whose proof depends on one key of its section, that key, and ``variant_norms``
    maps each of its values to the proven norms (overriding ``norms``).
    ``section`` / ``schema``: its params.yaml section and the JSON schema of that section (defaults included:
    the one place a default of an absent key is stated).
    ``per_input_sigma``: σ / θ is searched per input by ``optimize`` ("module:function", see
    :func:`smoothcert.pipeline.optimize.optimize_shard`; it returns θ (B, d) and the base-classifier
    evaluations (B,) each input spent) in an ``optimize-sigma`` stage, starting from the θ of
    ``init_from`` when set; ``memory``: its certificates are sound only after the memory step; ``proxy``: its
    region is anisotropic and it reports a volume-equivalent (proxy) radius; ``wrap`` ("module:function"): it
    certifies a classifier built around the trained model (:class:`smoothcert.engine.certify.Certified`);
    ``clips``: it also certifies video clips.
    """

    name: str
    summary: str
    norms: tuple[str, ...] = NORMS
    section: str | None = None
    schema: Mapping[str, Any] | None = None
    variant: str | None = None
    variant_norms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    per_input_sigma: bool = False
    init_from: str | None = None
    optimize: str | None = None
    memory: bool = False
    proxy: bool = False
    wrap: str | None = None
    clips: bool = False
    module: str | None = None  # where it is declared (set on registration from its module)

    def certified_norms(self, section: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The norms with a proven certificate under ``section`` (this method's params.yaml section)."""
        if self.variant is None:
            return self.norms
        return tuple(self.variant_norms.get((section or {}).get(self.variant), ()))


# The modules of the package's own methods, in registration order (the report lists methods in this order).
MODULES = ("cohen", "ddrs", "ancer", "smooth_reduce")
_REGISTRY: dict[str, Method] = {}
_LOADED = []  # set once the package's own methods are registered


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a test or a plugin may register its own); returns it."""
    require(
        method.name not in _REGISTRY or _REGISTRY[method.name] == method, f"method {method.name!r} is registered twice"
    )
    require(
        method.per_input_sigma == (method.optimize is not None),
        f"method {method.name!r}: per_input_sigma and optimize go together",
    )
    require(
        method.init_from is None or method.init_from in _REGISTRY,
        f"method {method.name!r} starts from {method.init_from!r}, which is not registered before it",
    )
    require(
        (method.section is None) == (method.schema is None), f"method {method.name!r}: section and schema go together"
    )
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method registered by :func:`register` (tests)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    if not _LOADED:
        _LOADED.append(True)
        extra = {name: _REGISTRY.pop(name) for name in list(_REGISTRY)}  # registered early: after the package's own
        for module in MODULES:
            declared = importlib.import_module(f"{__name__}.{module}")
            for method in declared.METHODS:
                register(replace(method, module=declared.__name__))
        for method in extra.values():
            register(method)


def registry() -> dict[str, Method]:
    """Every registered method by name, in registration order."""
    _load()
    return dict(_REGISTRY)


def names() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(registry())


def get(name: str | Method) -> Method:
    """The registered :class:`Method` called ``name`` (a :class:`Method` is returned as it is: code that has one
    passes it on, rather than its name to be looked up again)."""
    if isinstance(name, Method):
        return name
    methods = registry()
    require(name in methods, f"unknown method {name!r}; allowed: {sorted(methods)}")
    return methods[name]


def function(ref: str | None) -> Callable | None:
    """The function a "module:function" reference names (None for None)."""
    if ref is None:
        return None
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def sections() -> dict[str, Mapping[str, Any]]:
    """params.yaml section → its JSON schema, for every registered method that has one."""
    return {m.section: m.schema for m in registry().values() if m.section is not None}
