"""The CUDA engine: device-resident input, the ``Engine`` interface over ``mads_fast._solver_cuda``, the GPU kNN graph.

``mads_fast._solver_cuda.DenseSimilarity`` takes a NumPy array (copied to the device once) or any
object exposing ``__cuda_array_interface__`` (torch CUDA tensors, CuPy arrays), which it reads in
place on its own device: int8 rows with a 16-byte aligned stride are not even copied (``borrowed``);
float rows are normalised device to device into the GEMM precision. This module puts device input in
that form without a host round trip (DLPack-only arrays go through torch or CuPy, still on the
device), implements ``_engine.Engine`` as ``CudaEngine``, and builds the top-k neighbour graph on the
GPU: similarity rows straight into a torch buffer, ``torch.topk``, and exact lowest-index tie handling
at the k-th value, the rule of ``_knn.knn_graph_reference``. The lazy greedy over that graph runs in
the module's native host code (``graph_lazy_greedy``, the same source as the C++ module's): it touches
K+1 entries per evaluation, so the GPU buys little there.
"""
from __future__ import annotations

import sys

import numpy as np

from mads_fast.errors import InputError

from ._inputs import as_features
from ._native import load_native
from ._result import GreedyResult, result_from

PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")
KNN_BLOCK_BYTES = 1 << 30  # similarity rows held at once by knn_graph_cuda (float32 [rows, N])
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def _is_torch_tensor(X) -> bool:
    """isinstance(X, torch.Tensor) without importing torch (a tensor cannot exist before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(X, torch.Tensor)


def is_device_array(X) -> bool:
    """True for torch CUDA tensors, CuPy arrays and other CUDA arrays (interface or DLPack)."""
    # torch first: its __cuda_array_interface__ raises RuntimeError (which hasattr does not swallow) for a
    # CUDA tensor that requires grad, such as a model's output; as_device_features detaches it.
    if _is_torch_tensor(X):
        return bool(X.is_cuda)
    if hasattr(X, "__cuda_array_interface__"):
        return True
    device = getattr(X, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        return int(device()[0]) in _DLPACK_CUDA
    except Exception:  # noqa: BLE001 - an object that cannot say where it lives is not a CUDA array
        return False


def _from_dlpack(X):
    try:
        import torch

        return torch.from_dlpack(X)
    except ImportError:
        import cupy

        return cupy.from_dlpack(X)


def as_device_features(X):
    """X as a 2-D float32 or int8 CUDA array with rows contiguous, never through the host; InputError if bad.

    torch and CuPy arrays of other dtypes (fp16, bf16, fp64, other ints) are converted on their device.
    NaN/inf are found by the engine while it normalises (one pass it makes anyway).
    """
    is_torch = _is_torch_tensor(X)
    if not is_torch and not type(X).__module__.startswith("cupy") and not hasattr(X, "__cuda_array_interface__"):
        X = _from_dlpack(X)
        is_torch = _is_torch_tensor(X)
    module = type(X).__module__
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise InputError(f"X must be 2-D [N, D]; got shape {shape}")
    if shape[0] == 0:
        raise InputError(f"X is empty: shape {shape} has no rows")
    if shape[1] == 0:
        raise InputError(f"X has no feature columns: shape {shape}")
    if is_torch:
        import torch

        X = X.detach()  # before anything reads __cuda_array_interface__ (it raises while grad is required)
        if X.dtype in (torch.complex64, torch.complex128, torch.bool):
            raise InputError(f"X has dtype {X.dtype}; expected a real numeric dtype (float32, float16, float64, int8)")
        if X.dtype not in (torch.float32, torch.int8):
            X = X.float()
        if X.stride(1) != 1 or X.stride(0) < X.shape[1]:
            X = X.contiguous()
        # torch's __cuda_array_interface__ names no stream: finish pending writes (the conversions above,
        # the caller's kernels) before the engine reads X on its own stream.
        torch.cuda.current_stream(X.device).synchronize()
        return X
    if module.startswith("cupy"):
        import cupy

        kind = X.dtype.kind
        if kind not in "fiu":
            raise InputError(f"X has dtype {X.dtype}; expected a real numeric dtype (float32, float16, float64, int8)")
        # CuPy launches on, and names the stream of, the current device: make it X's, so that an array on
        # cuda:1 is converted and synchronised there while cuda:0 is current.
        with X.device:
            if X.dtype.name not in ("float32", "int8"):
                X = X.astype("float32")
            if X.strides[1] != X.itemsize or X.strides[0] < X.shape[1] * X.itemsize:
                X = cupy.ascontiguousarray(X)
            cupy.cuda.get_current_stream().synchronize()
        return X
    typestr = X.__cuda_array_interface__["typestr"]
    if typestr[1:] not in ("f4", "i1"):
        raise InputError(f"X has typestr {typestr}; the CUDA backend reads float32 or int8 device arrays")
    return X


class CudaEngine:
    """``mads_fast._solver_cuda.DenseSimilarity`` behind the ``Engine`` interface.

    ``X``: NumPy [N, D] float32/int8 (validated by ``_inputs.as_features``) or a CUDA array.
    ``precision``: "auto" (exact: fp32 for float input, int8 x int8 -> int32 for int8 input), or for float
    input "tf32", "fp16", "bf16" (tensor-core speed; similarities then differ from the reference by
    ~1e-3, so picks may too).
    """

    name = "cuda"
    default_batch = 0  # 0: the module's own default (csrc/facility_location.cu)

    @classmethod
    def prepare(cls, X):
        """A GPU-resident X (torch CUDA tensor, CuPy array) stays on its device (no host copy); host input
        goes through ``as_features``."""
        return as_device_features(X) if is_device_array(X) else as_features(X)

    def __init__(self, X, precision: str = "auto", scratch_bytes: int = 0):
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise InputError(f"precision={precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
        module = load_native("cuda")
        source = as_device_features(X) if is_device_array(X) else X
        try:
            self._impl = module.DenseSimilarity(source, precision, int(scratch_bytes))
        except ValueError as exc:  # NaN/inf rows, int8 D > 65000, bad layout: the caller's input
            raise InputError(str(exc)) from None
        self._source = source  # keeps a converted device copy alive as long as the engine reads it
        self.n, self.d = int(self._impl.n), int(self._impl.d)
        self.kernel = self._impl.kernel
        self.precision = self._impl.precision
        self.device = int(self._impl.device)

    @property
    def borrowed(self) -> bool:
        return bool(self._impl.borrowed)

    @property
    def features_pointer(self) -> int:
        return int(self._impl.features_pointer)

    @property
    def uploaded_bytes(self) -> int:
        return int(self._impl.uploaded_bytes)

    @property
    def device_bytes(self) -> int:
        return int(self._impl.device_bytes)

    def columns(self, idx, cur=None):
        """(S float32 [m, N] with S[c, i] = s(i, idx[c]), gains float64 [m] against cur), on the host."""
        idx = np.ascontiguousarray(idx, dtype=np.int64)  # [m]
        if cur is None:
            cur = np.zeros(self.n, dtype=np.float32)
        return self._impl.columns(idx, np.ascontiguousarray(cur, dtype=np.float32))

    def columns_device(self, idx, out):
        """Write s(i, idx[c]) into out[c, i]: a float32 torch CUDA tensor [m, >= N] on this engine's device."""
        import torch

        idx = np.ascontiguousarray(idx, dtype=np.int64)  # [m]
        if not (out.is_cuda and out.dtype == torch.float32 and out.dim() == 2 and out.stride(1) == 1):
            raise InputError("out must be a float32 CUDA tensor [m, N] with contiguous rows")
        if out.device.index != self.device or out.shape[0] < idx.size or out.shape[1] < self.n:
            raise InputError(f"out must be on cuda:{self.device} with shape >= [{idx.size}, {self.n}]")
        stream = torch.cuda.current_stream(out.device).cuda_stream
        self._impl.columns_device(idx, out.data_ptr(), out.stride(0), stream or 1)

    def column_sums(self):
        return self._impl.column_sums()

    def lazy_greedy(self, budget: int, batch_size=None, progress=None, memory_budget=None) -> GreedyResult:
        """Exact lazy greedy on the GPU (``memory_budget`` is the C++ engine's host cache; unused here)."""
        return result_from(self._impl.lazy_greedy(int(budget), int(batch_size or self.default_batch), progress))

    def knn_graph(self, n_neighbors: int):
        return knn_graph_cuda(self, n_neighbors)

    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch_size=None, progress=None) -> GreedyResult:
        neighbors, sims = self.knn_graph(n_neighbors)
        out = load_native("cuda").graph_lazy_greedy(neighbors, sims, int(budget), int(batch_size or 0), progress)
        return result_from(out)


def _keep_lowest_ties(S, kth, k: int):
    """Column indices [r, k] of each row's k largest entries, ties at the k-th value to the lowest index."""
    import torch

    above = S > kth[:, None]  # [r, N]
    level = S == kth[:, None]  # [r, N]
    room = k - above.sum(dim=1)  # [r]
    keep = above | (level & (torch.cumsum(level, dim=1, dtype=torch.int32) <= room[:, None]))
    return keep.nonzero()[:, 1].reshape(S.shape[0], k)  # row-major: ascending per row


def knn_graph_cuda(engine: CudaEngine, n_neighbors: int, block_bytes: int = KNN_BLOCK_BYTES):
    """``_knn.knn_graph_reference`` on the GPU: (neighbors int64 [N, K+1], sims float32 [N, K+1]) on the host.

    Row i keeps itself first, then its K = min(n_neighbors, N - 1) most similar other rows in ascending
    index order, ties at the k-th value to the lowest index; similarities are the engine's, clipped at 0.
    Rows are processed ``block_bytes // (4 N)`` at a time; nothing N x N is held.
    """
    import torch

    n = engine.n
    k = min(int(n_neighbors), n - 1)
    device = torch.device("cuda", engine.device)
    neighbors = np.empty((n, k + 1), dtype=np.int64)  # [N, K+1]
    sims = np.empty((n, k + 1), dtype=np.float32)  # [N, K+1]
    step = max(1, min(n, int(block_bytes) // (4 * n)))
    buffer = torch.empty((step, n), dtype=torch.float32, device=device)  # [rows, N]
    for start in range(0, n, step):
        rows = np.arange(start, min(n, start + step), dtype=np.int64)  # [r]
        r = rows.size
        S = buffer[:r]  # [r, N], S[c, i] = s(rows[c], i)
        engine.columns_device(rows, S)
        local = torch.arange(r, device=device)
        rows_t = torch.from_numpy(rows).to(device)
        self_sim = S[local, rows_t].clone()  # [r]
        neighbors[start:start + r, 0] = rows
        sims[start:start + r, 0] = self_sim.cpu().numpy()
        if k == 0:
            continue
        S[local, rows_t] = -1.0  # never one's own neighbour: similarities are >= 0
        vals, cols = torch.topk(S, k, dim=1, largest=True, sorted=False)  # [r, k]
        kth = vals.min(dim=1).values  # [r]
        # topk picks an arbitrary subset of the entries equal to the k-th value; rows where it had to
        # choose are redone with the lowest-index rule (rare: duplicates, or rows with < k positive sims).
        ambiguous = torch.nonzero((S == kth[:, None]).sum(dim=1) != (vals == kth[:, None]).sum(dim=1)).flatten()
        for a0 in range(0, ambiguous.numel(), 64):
            part = ambiguous[a0:a0 + 64]
            cols[part] = _keep_lowest_ties(S[part], kth[part], k)
        cols = torch.sort(cols, dim=1).values
        neighbors[start:start + r, 1:] = cols.cpu().numpy()
        sims[start:start + r, 1:] = torch.gather(S, 1, cols).cpu().numpy()
    return neighbors, sims
