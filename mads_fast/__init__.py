"""mads_fast: model-aware diverse core-set selection.

Data flow, one module each: ``data`` (records in/out) -> ``tokens`` (render, truncate, batch) ->
``model`` + ``extraction`` (early-exit activation capture, fused pool/quantise) -> ``store`` (sharded
feature store; ``store.normalise`` builds the solver input) -> ``solver`` (facility-location lazy greedy)
-> ``report``. ``pipeline.select`` runs all of it, ``pipeline.solve`` the part after the store; ``cli``
is a thin shell over the same API. Shared by every stage: ``options`` (the choices and the budget),
``quant`` (the feature formats and ``dequantize``), ``atomic`` (every file write), ``errors``.

Nothing heavy (torch, native modules) is imported here: attributes load on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "FacilityLocation": "mads_fast.solver",
    "KCenter": "mads_fast.solver",
    "PartitionedFacilityLocation": "mads_fast.solver",
    "available_backends": "mads_fast.solver",
    "load_features": "mads_fast.store",
    "FeatureStore": "mads_fast.store",
    "read_records": "mads_fast.data",
    "extract": "mads_fast.extraction",
    "FeatureSpec": "mads_fast.extraction",
    "select": "mads_fast.pipeline",
    "solve": "mads_fast.pipeline",
    "SelectionResult": "mads_fast.pipeline",
    "InputError": "mads_fast.errors",
    "BackendUnavailableError": "mads_fast.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mads_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
