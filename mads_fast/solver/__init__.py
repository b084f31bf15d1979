"""Coverage solver: facility location (exact lazy / stochastic greedy, dense or kNN) and k-center.

Each backend is an engine behind one interface (``_engine.Engine``), one module each: ``_numpy_impl``
(the reference), ``_cpp`` (``mads_fast._solver_cpu``), ``_cuda`` (``mads_fast._solver_cuda``);
``_backends`` discovers and resolves them. Importing this package loads no native module (``_native``
loads them on first use) and no torch.
"""
from ._backends import available_backends
from ._tie import TIE_ABS, TIE_REL, tie_tolerance
from .facility_location import FacilityLocation
from .kcenter import KCenter

__all__ = ["FacilityLocation", "KCenter", "available_backends", "TIE_ABS", "TIE_REL", "tie_tolerance"]
