"""Coverage solver: facility location (exact lazy / stochastic greedy, dense or kNN) and k-center.

Each backend is an engine behind one interface (``_engine.Engine``), one module each: ``_numpy_impl``
(the reference), ``_cpp`` (``mads_fast._solver_cpu``), ``_cuda`` (``mads_fast._solver_cuda``);
``_backends`` discovers and resolves them. ``partitioned`` splits the rows into partitions solved by worker
processes or Ray actors (``_partition``, ``_partition_worker``, ``_placement``) and merges their runs
(``_merge``). Importing this package loads no native module (``_native`` loads them on first use) and no
torch.
"""
from ._backends import available_backends
from ._tie import TIE_ABS, TIE_REL, tie_tolerance
from .facility_location import FacilityLocation
from .kcenter import KCenter
from .partitioned import PartitionedFacilityLocation

__all__ = ["FacilityLocation", "KCenter", "PartitionedFacilityLocation", "available_backends", "TIE_ABS", "TIE_REL",
           "tie_tolerance"]
