"""Every choice the library accepts, one list each, and the budget's one parser.

The CLI's ``choices=`` and the library's checks read the same tuples, so a value the command line offers
is always one the code takes. Errors name the Python parameter (``InputError.param``: ``budget``,
``max_length``); the CLI turns that into its flag (``--budget``, ``--max-length``). Nothing here imports
torch.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import numpy as np

from mads_fast.errors import InputError
from mads_fast.quant import QUANTS  # noqa: F401  (defined with the formats it names)

# features (extract)
FEATURES = ("hidden", "mlp")                   # residual stream (layer output) | MLP neurons (down_proj input)
POOLS = ("mean", "max", "last", "active")
TEMPLATES = ("chat", "alpaca", "none")
COMPUTE_DTYPES = ("auto", "fp32", "bf16", "fp16")
# selection (solve)
OBJECTIVES = ("facility", "kcenter")
BACKENDS = ("auto", "cuda", "cpp", "numpy")
MODES = ("auto", "dense", "knn")  # auto: dense up to solver.facility_location.AUTO_KNN_MIN_N rows, then knn
KNN_INDEXES = ("auto", "exact", "ivf")         # knn mode's graph: exact top-K, FAISS inverted file, or by N
OPTIMIZERS = ("lazy", "stochastic")
NORMALIZE = ("standardize", "center")
SOLVER_DTYPES = ("int8", "float32")
# partitioned selection (mads_fast.solver.partitioned)
PARTITION_METHODS = ("kmeans", "random")     # FAISS k-means on the solver input | seeded uniform split
MERGES = ("refined", "separable")            # GreeDi-style greedy under the true objective | merged gain sequences


def check_choice(param: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else an InputError naming ``param``."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown value {value!r} (choose from {', '.join(choices)})", param=param)
    return value


def check_knn_recall(value) -> float:
    """knn mode's recall target (``knn_recall``): a number in (0, 1], or an InputError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or not 0.0 < float(value) <= 1.0:
        raise InputError(f"must be a number in (0, 1], got {value!r}", param="knn_recall")
    return float(value)


def check_positive_int(param: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"must be a positive integer, got {value!r}", param=param)
    return int(value)


def parse_budget(value) -> Union[int, float]:
    """A budget as given by a user: ``"0.15"`` or ``0.15`` -> 0.15 (a fraction of N), ``"7800"`` or ``7800`` ->
    7800 (a count). Integers are counts and floats fractions, as in ``resolve_budget``; text is read as an
    integer when it is one. Anything else is an InputError naming ``budget``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise InputError(f"{text!r} is not a number (use a fraction like 0.15 or a count like 7800)",
                                 param="budget") from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"expected a fraction in (0, 1] or a positive count, got {value!r}", param="budget")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise InputError(f"a count must be >= 1, got {int(value)}", param="budget")
        return int(value)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise InputError(f"a fraction must lie in (0, 1], got {value!r}", param="budget")
    return float(value)


_BYTE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
               "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_memory_budget(value) -> Optional[int]:
    """The solver's memory budget in bytes: None or ``"auto"`` -> None (the solver's default), an int >= 0, or
    text with a binary suffix (``"2G"``, ``"512MiB"``, ``"1.5g"``, ``"0"``; K/M/G/T all mean powers of 1024).
    Anything else is an InputError naming ``memory_budget``."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        if text == "AUTO":
            return None
        number = text.rstrip("KMGTIB")
        unit = text[len(number):]
        try:
            amount = float(number) if unit in _BYTE_UNITS and number else math.nan
        except ValueError:
            amount = math.nan
        if not math.isfinite(amount) or amount < 0:
            raise InputError(f"{value!r} is not a size in bytes (e.g. 2G, 512M, 1073741824 or auto)",
                             param="memory_budget")
        return int(amount * _BYTE_UNITS[unit])
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"expected a byte count >= 0, a size like '2G', or 'auto'; got {value!r}",
                         param="memory_budget")
    return int(value)


def resolve_budget(budget, n: int) -> int:
    """Picks for a budget over ``n`` examples: an int count in [1, n], or a float fraction in (0, 1] ->
    max(1, round(fraction * n)). Text is refused here (``parse_budget`` reads it): the solvers take numbers."""
    if isinstance(budget, str):
        raise InputError(f"{budget!r} is text; pass an int count or a float fraction "
                         "(mads_fast.options.parse_budget reads text)", param="budget")
    b = parse_budget(budget)
    k = max(1, int(round(b * n))) if isinstance(b, float) else b
    if k > n:
        raise InputError(f"{k:,} picks asked for but the data has only {n:,} records", param="budget")
    return k
