"""Coverage solver: facility location (exact lazy / stochastic greedy, dense or kNN) and k-center.

Backends: ``numpy`` (the reference), ``cpp`` (``mads_fast._solver_cpu``), ``cuda``
(``mads_fast._solver_cuda``). Importing this package loads no native module; they load on first use.
"""
from ._backends import available_backends
from ._tie import TIE_ABS, TIE_REL, tie_tolerance
from .facility_location import FacilityLocation
from .kcenter import KCenter

__all__ = ["FacilityLocation", "KCenter", "available_backends", "TIE_ABS", "TIE_REL", "tie_tolerance"]
