// CUDA backend of the facility-location solver (see facility_location.h for the semantics and the tie
// rule, facility_location.cuh for the interface).
//
// Data on the device, per object: the features X [N, ldx] (borrowed int8, or an owned normalised copy),
// int8 inverse norms [N], one GEMM output tile R [cols][npad] (int32 or fp32), the kept similarity
// columns [cap][npad] fp32, cur [npad], nearest [N]; all O(N) except the two column blocks, which are
// capped in bytes. No N x N buffer exists at any time.
//
// One pass = gather the m candidate rows, one cublasGemmEx ([N, D] x [D, m], "TN": X rows are the
// column-major X^T; N padded to a multiple of 16 rows, see State::mrows), then clip_gain_kernel turns the
// N x m block into similarities (int8: float(dot) * (inv_i * inv_c), the header's symmetric rule), stores
// them and sums max(0, s - cur_i) per column in double in a fixed order (per-thread strided sums, a fixed
// shuffle tree, then partials summed in row-block order), so the gains are bitwise reproducible run to
// run. The lazy greedy host loop is the C++ backend's: a heap
// of upper bounds, batched re-evaluation, multi-pick from the kept columns, eviction of the lowest
// fresh gains. After a pick only the rows whose cur changed (compacted with cub::DeviceSelect, stable)
// update the kept gains, so a pick costs O(changed x kept) instead of O(N x kept).
//
// Registers (nvcc 13.0 -Xptxas -v, sm_80 and sm_90 alike): clip_gain_kernel 32, normalise_rows_kernel 32,
// drop_kernel 32 (34 on sm_80), gather_rows_kernel 32, int8_inverse_norms_kernel 30, the rest <= 29; no
// spills, no stack. (cub's select sweep kernel spills 12 bytes on sm_80; it runs once per pick on N bytes.)
#include "facility_location.cuh"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/device/device_select.cuh>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace mads {
namespace cuda {
namespace {

constexpr int kThreads = 256;                   // every kernel: 8 warps
constexpr int64_t kRowsPerBlock = 4096;         // clip_gain rows per block: 16 per thread
constexpr int64_t kDefaultBatch = 128;          // candidates per pass: one pass reads X once (213 MB at
                                                // 52k x 4096 int8, ~70 us on H100), so wide batches pay
constexpr int64_t kDefaultScratch = int64_t(512) << 20;
constexpr int64_t kKeptBytes = int64_t(1) << 30;  // kept columns: 3 batches, at most 1 GiB
constexpr int64_t kStageBytes = int64_t(64) << 20;  // host float upload staging: 64 MiB
constexpr int64_t kRowAlign = 16;               // GEMM m (rows of X) padded to this: IMMA needs m % 4 == 0,
                                                // fp16/bf16 tensor-core kernels prefer m % 8 == 0

// ------------------------------------------------------------------------------------------ errors
std::string call_name(const char* expr) {
  const char* paren = std::strchr(expr, '(');
  return paren ? std::string(expr, paren - expr) : std::string(expr);
}

void check_cuda(cudaError_t err, const char* expr) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so later calls report their own
    throw std::runtime_error(call_name(expr) + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

void check_blas(cublasStatus_t st, const char* expr) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(call_name(expr) + " failed: " + cublasGetStatusName(st) + " (" +
                             cublasGetStatusString(st) + ")");
}

#define MADS_CUDA(expr) check_cuda((expr), #expr)
#define MADS_BLAS(expr) check_blas((expr), #expr)
#define MADS_LAUNCHED(name) check_cuda(cudaGetLastError(), name "(launch)")

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ------------------------------------------------------------------------------------------ memory
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { release(); }
  void allocate(int64_t count) {
    release();
    if (count <= 0) return;
    void* p = nullptr;
    MADS_CUDA(cudaMalloc(&p, size_t(count) * sizeof(T)));
    ptr_ = static_cast<T*>(p);
    count_ = count;
  }
  void release() {
    if (ptr_) cudaFree(ptr_);  // errors here cannot be reported from a destructor
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  int64_t count() const { return count_; }
  int64_t bytes() const { return count_ * int64_t(sizeof(T)); }

 private:
  T* ptr_ = nullptr;
  int64_t count_ = 0;
};

template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  void allocate(int64_t count) {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    void* p = nullptr;
    MADS_CUDA(cudaMallocHost(&p, size_t(std::max<int64_t>(count, 1)) * sizeof(T)));
    ptr_ = static_cast<T*>(p);
  }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
};

// Makes `device` current for a scope and restores the caller's device (a torch user's current device
// must not change behind their back).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    MADS_CUDA(cudaGetDevice(&previous_));
    if (device != previous_) MADS_CUDA(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

cudaStream_t foreign_stream(uintptr_t s) {
  if (s == 1) return cudaStreamLegacy;
  if (s == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(s);
}

// ------------------------------------------------------------------------------------------ kernels
// Deterministic block sum: fixed shuffle tree per warp, then warp 0 sums the 8 warp totals in order.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T warp_total[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_total[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warp_total[w];
  __syncthreads();  // warp_total may be reused by the caller's next block_sum
  return total;     // valid in thread 0 only
}

template <class T>
__device__ T from_float(float x);
template <>
__device__ float from_float<float>(float x) { return x; }
template <>
__device__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// One block per row: inverse norm in double (1 / sqrt(sum x^2), rounded to float, as in C++), the row
// times it in float32, rounded to T, zero-padded to dpad. A non-finite entry records its row.
template <class T>
__global__ void __launch_bounds__(kThreads)
    normalise_rows_kernel(const float* __restrict__ src, int64_t lds, int64_t d, int64_t row0, T* __restrict__ dst,
                          int64_t ldd, int64_t dpad, unsigned long long* __restrict__ bad_row) {
  const int64_t r = blockIdx.x;
  const float* x = src + r * lds;
  T* y = dst + (row0 + r) * ldd;
  double sq = 0.0;
  int bad = 0;
  for (int64_t k = threadIdx.x; k < d; k += kThreads) {
    const float v = x[k];
    bad |= !isfinite(v);
    sq += double(v) * double(v);
  }
  bad = __syncthreads_or(bad);
  __shared__ float inv_shared;
  sq = block_sum(sq);
  if (threadIdx.x == 0) {
    inv_shared = sq > 0.0 ? float(1.0 / sqrt(sq)) : 0.f;
    if (bad) atomicMin(bad_row, (unsigned long long)(row0 + r));
  }
  __syncthreads();
  const float inv = inv_shared;
  for (int64_t k = threadIdx.x; k < dpad; k += kThreads) y[k] = from_float<T>(k < d ? x[k] * inv : 0.f);
}

// One block per row of int8 features: exact integer sum of squares, inverse norm rounded to float.
__global__ void __launch_bounds__(kThreads)
    int8_inverse_norms_kernel(const int8_t* __restrict__ x, int64_t ldx, int64_t d, float* __restrict__ inv) {
  const int64_t r = blockIdx.x;
  const int8_t* row = x + r * ldx;
  long long sq = 0;
  for (int64_t k = threadIdx.x; k < d; k += kThreads) sq += int(row[k]) * int(row[k]);
  sq = block_sum(sq);
  if (threadIdx.x == 0) inv[r] = sq > 0 ? float(1.0 / sqrt(double(sq))) : 0.f;
}

// Candidate rows into a dense [mpad, dvec] block (16-byte vectors), zero rows past m; int8 also
// gathers the candidates' inverse norms.
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(const uint4* __restrict__ x, int64_t ldx_vec, const int64_t* __restrict__ idx, int m,
                       int64_t dvec, uint4* __restrict__ out, const float* __restrict__ inv, float* __restrict__ cinv) {
  const int c = blockIdx.x;
  uint4* dst = out + c * dvec;
  if (c < m) {
    const int64_t j = idx[c];
    const uint4* src = x + j * ldx_vec;
    for (int v = threadIdx.x; v < int(dvec); v += kThreads) dst[v] = src[v];
    if (cinv && threadIdx.x == 0) cinv[c] = inv[j];
  } else {
    for (int v = threadIdx.x; v < int(dvec); v += kThreads) dst[v] = make_uint4(0u, 0u, 0u, 0u);
    if (cinv && threadIdx.x == 0) cinv[c] = 0.f;
  }
}

// grid (row blocks, m). R column c holds the GEMM output of candidate c ([npad] int32 dots or fp32
// similarities). Writes s = max(0, sim) to dst column slots[c] (if dst) and partial[c][rb] = the double
// sum over the block's rows of max(0, s - cur_i) (cur null: of s).
template <bool kInt8>
__global__ void __launch_bounds__(kThreads)
    clip_gain_kernel(const void* __restrict__ R, int64_t ldr, int64_t n, const float* __restrict__ inv,
                     const float* __restrict__ cinv, const float* __restrict__ cur, float* __restrict__ dst,
                     int64_t ldd, const int* __restrict__ slots, double* __restrict__ partial, int nrb) {
  const int c = blockIdx.y, rb = blockIdx.x;
  const int64_t r0 = int64_t(rb) * kRowsPerBlock, r1 = min(n, r0 + kRowsPerBlock);
  const float ci = kInt8 ? cinv[c] : 1.f;
  float* out = dst ? dst + int64_t(slots ? slots[c] : c) * ldd : nullptr;
  double acc = 0.0;
  for (int64_t i = r0 + threadIdx.x; i < r1; i += kThreads) {
    float s;
    if (kInt8) s = __int2float_rn(static_cast<const int32_t*>(R)[c * ldr + i]) * (inv[i] * ci);
    else s = static_cast<const float*>(R)[c * ldr + i];
    s = fmaxf(s, 0.f);
    if (out) out[i] = s;
    acc += double(cur ? fmaxf(s - cur[i], 0.f) : s);
  }
  acc = block_sum(acc);
  if (partial && threadIdx.x == 0) partial[int64_t(c) * nrb + rb] = acc;
}

__global__ void sum_partials_kernel(const double* __restrict__ partial, int m, int nrb, double* __restrict__ gains) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= m) return;
  double g = 0.0;
  for (int rb = 0; rb < nrb; ++rb) g += partial[int64_t(c) * nrb + rb];
  gains[c] = g;
}

__global__ void iota_kernel(int* __restrict__ out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = int(i);
}

__global__ void changed_flags_kernel(const float* __restrict__ pick, const float* __restrict__ cur, int64_t n,
                                     unsigned char* __restrict__ flags) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) flags[i] = pick[i] > cur[i];
}

// One block per kept column q: drop[q] = sum over changed rows i of max(0, S_i - old_i) - max(0, S_i - new_i)
// (the C++ backend's update), in a fixed order; runs before apply_pick_kernel changes cur.
__global__ void __launch_bounds__(kThreads)
    drop_kernel(const float* __restrict__ kept, int64_t ldk, const int* __restrict__ live, const int* __restrict__ changed,
                const int* __restrict__ nchanged, const float* __restrict__ pick, const float* __restrict__ cur,
                double* __restrict__ drop) {
  const float* S = kept + int64_t(live[blockIdx.x]) * ldk;
  const int cnt = *nchanged;
  double acc = 0.0;
  for (int r = threadIdx.x; r < cnt; r += kThreads) {
    const int i = changed[r];
    const float s = S[i];
    acc += double(fmaxf(s - cur[i], 0.f)) - double(fmaxf(s - pick[i], 0.f));
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) drop[blockIdx.x] = acc;
}

// cur = max(cur, pick), nearest = j where pick is strictly larger; the first pick is everyone's nearest.
__global__ void apply_pick_kernel(const float* __restrict__ pick, float* __restrict__ cur, int64_t* __restrict__ nearest,
                                  int64_t n, int64_t j, int first) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (first) nearest[i] = j;
  if (pick && pick[i] > cur[i]) {
    cur[i] = pick[i];
    nearest[i] = j;
  }
}

unsigned grid_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

enum class Prec { kFp32, kTf32, kFp16, kBf16, kInt8 };

}  // namespace

// ------------------------------------------------------------------------------------------ state
struct DenseSimilarityCuda::State {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;
  cublasHandle_t blas = nullptr;

  int64_t n = 0, d = 0, dpad = 0, npad = 0;
  Prec prec = Prec::kFp32;
  std::string kernel, precision;
  int64_t elem = 4;             // bytes per feature element
  const void* x = nullptr;      // GEMM operand, [n, ldx]
  int64_t ldx = 0;              // elements per row of x
  // GEMM rows. cuBLASLt documents its int8 IMMA (tensor-core) kernels, regular ordering, as TN only with
  // m, k and the leading dimensions multiples of 4; cublasGemmEx documents only lda, ldb % 4 for int8, so
  // m = N with N % 4 != 0 risks NOT_SUPPORTED or a silent fallback to a slower kernel. The GEMM therefore
  // never sees m = N: owned copies of X get zero rows up to mrows = round_up(N, kRowAlign); a borrowed X
  // keeps its largest aligned prefix (mmain rows) in place and its last N - mmain rows go through xtail, a
  // zero-padded kRowAlign-row copy multiplied into R's rows [mmain, mrows). Rows >= N of R are never read.
  int64_t mrows = 0, mmain = 0;
  bool borrowed = false;
  int64_t uploaded = 0;
  DeviceArray<unsigned char> xown;
  DeviceArray<unsigned char> xtail;  // [kRowAlign][dpad] int8, borrowed X with N % kRowAlign != 0 only
  DeviceArray<float> inv;       // [n] int8 inverse norms

  int64_t cols = 0;             // columns of one GEMM output tile
  int nrb = 0;                  // row blocks of clip_gain_kernel
  DeviceArray<unsigned char> cand;   // [cols][dpad] gathered candidate rows
  DeviceArray<unsigned char> R;      // [cols][npad] GEMM output (int32 or fp32)
  DeviceArray<float> cinv;           // [cols]
  DeviceArray<double> partial;       // [cols][nrb]
  DeviceArray<double> gains;         // [cols]
  DeviceArray<int64_t> idx;          // [cols]
  DeviceArray<int> slots;            // [cols]
  PinnedArray<int64_t> idx_h;
  PinnedArray<int> slots_h;
  PinnedArray<double> gains_h;

  ~State() {
    if (blas) cublasDestroy(blas);
    if (ready) cudaEventDestroy(ready);
    if (stream) cudaStreamDestroy(stream);
  }

  void wait_for(uintptr_t foreign) {
    if (!foreign) return;
    MADS_CUDA(cudaEventRecord(ready, foreign_stream(foreign)));
    MADS_CUDA(cudaStreamWaitEvent(stream, ready, 0));
  }

  void sync() { MADS_CUDA(cudaStreamSynchronize(stream)); }

  // out column c (c < m) of the GEMM: X rows (all n, padded to mrows) against B's m columns, B [m, ldb]
  // row-major.
  void gemm(const void* B, int64_t ldb, int64_t m) {
    if (mmain > 0) gemm_rows(x, ldx, mmain, 0, B, ldb, m);
    if (mrows > mmain) gemm_rows(xtail.get(), dpad, mrows - mmain, mmain, B, ldb, m);
  }

  // R rows [row0, row0 + rows) from the row-major operand A [rows, lda].
  void gemm_rows(const void* A, int64_t lda, int64_t rows, int64_t row0, const void* B, int64_t ldb, int64_t m) {
    const int mi = int(rows), ni = int(m), ki = int(dpad);
    void* C = R.get() + row0 * 4;  // int32 or fp32; row0 % kRowAlign == 0 keeps C 64-byte aligned
    if (prec == Prec::kInt8) {
      const int32_t one = 1, zero = 0;
      MADS_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, mi, ni, ki, &one, A, CUDA_R_8I, int(lda), B, CUDA_R_8I,
                             int(ldb), &zero, C, CUDA_R_32I, int(npad), CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT));
      return;
    }
    const float one = 1.f, zero = 0.f;
    cudaDataType_t t = CUDA_R_32F;
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    if (prec == Prec::kTf32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
    if (prec == Prec::kFp16) t = CUDA_R_16F;
    if (prec == Prec::kBf16) t = CUDA_R_16BF;
    MADS_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, mi, ni, ki, &one, A, t, int(lda), B, t, int(ldb), &zero,
                           C, CUDA_R_32F, int(npad), ct, CUBLAS_GEMM_DEFAULT));
  }

  // Epilogue of one GEMM tile of m columns: similarities into dst (column slots[c] or c), gains into
  // this->gains[0..m) when want_gains.
  void epilogue(int64_t m, const float* cand_inv, const float* cur, float* dst, int64_t ldd, const int* slot_ptr,
                bool want_gains) {
    const dim3 grid{unsigned(nrb), unsigned(m), 1u};
    double* part = want_gains ? partial.get() : nullptr;
    if (prec == Prec::kInt8) {
      clip_gain_kernel<true><<<grid, kThreads, 0, stream>>>(R.get(), npad, n, inv.get(), cand_inv, cur, dst, ldd,
                                                            slot_ptr, part, nrb);
    } else {
      clip_gain_kernel<false><<<grid, kThreads, 0, stream>>>(R.get(), npad, n, nullptr, nullptr, cur, dst, ldd,
                                                             slot_ptr, part, nrb);
    }
    MADS_LAUNCHED("clip_gain_kernel");
    if (want_gains) {
      sum_partials_kernel<<<unsigned((m + 127) / 128), 128, 0, stream>>>(partial.get(), int(m), nrb, gains.get());
      MADS_LAUNCHED("sum_partials_kernel");
    }
  }

  // Candidates idx[0..m) (m <= cols): gather, GEMM, epilogue. Gains land in gains_h after sync().
  void pass(const int64_t* idx_host, int64_t m, const float* cur, float* dst, int64_t ldd, const int* slots_host,
            bool want_gains) {
    // cuBLAS n padded with zero candidates to a multiple of 32: small-n int8 GEMMs are where IMMA kernels
    // are fussiest (torch's _int_mm refuses n <= 16), and the extra columns cost nothing here.
    const int64_t mpad = round_up(m, 32);
    std::copy(idx_host, idx_host + m, idx_h.get());
    MADS_CUDA(cudaMemcpyAsync(idx.get(), idx_h.get(), m * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
    if (slots_host) {
      std::copy(slots_host, slots_host + m, slots_h.get());
      MADS_CUDA(cudaMemcpyAsync(slots.get(), slots_h.get(), m * sizeof(int), cudaMemcpyHostToDevice, stream));
    }
    const int64_t dvec = dpad * elem / 16, ldx_vec = ldx * elem / 16;
    gather_rows_kernel<<<unsigned(mpad), kThreads, 0, stream>>>(
        static_cast<const uint4*>(x), ldx_vec, idx.get(), int(m), dvec, reinterpret_cast<uint4*>(cand.get()),
        inv.get(), prec == Prec::kInt8 ? cinv.get() : nullptr);
    MADS_LAUNCHED("gather_rows_kernel");
    gemm(cand.get(), dpad, mpad);
    epilogue(m, cinv.get(), cur, dst, ldd, slots_host ? slots.get() : nullptr, want_gains);
    if (want_gains)
      MADS_CUDA(cudaMemcpyAsync(gains_h.get(), gains.get(), m * sizeof(double), cudaMemcpyDeviceToHost, stream));
  }
};

// ------------------------------------------------------------------------------------------ public
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int pointer_device(uintptr_t address) {
  cudaPointerAttributes attr{};
  MADS_CUDA(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(address)));
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument("the __cuda_array_interface__ pointer is not device memory");
  return attr.device;
}

Versions versions(int device) {
  Versions v;
  MADS_CUDA(cudaDriverGetVersion(&v.driver));
  MADS_CUDA(cudaRuntimeGetVersion(&v.runtime));
  int major = 0, minor = 0, patch = 0;
  MADS_BLAS(cublasGetProperty(MAJOR_VERSION, &major));
  MADS_BLAS(cublasGetProperty(MINOR_VERSION, &minor));
  MADS_BLAS(cublasGetProperty(PATCH_LEVEL, &patch));
  v.cublas = major * 10000 + minor * 100 + patch;
  cudaDeviceProp prop{};
  MADS_CUDA(cudaGetDeviceProperties(&prop, device));
  v.device_name = prop.name;
  v.major = prop.major;
  v.minor = prop.minor;
  v.total_memory = int64_t(prop.totalGlobalMem);
  return v;
}

DenseSimilarityCuda::DenseSimilarityCuda(const Matrix& X, const std::string& precision, int64_t scratch_bytes)
    : s_(new State) {
  State& s = *s_;
  if (X.n <= 0 || X.d <= 0) throw std::invalid_argument("X must have at least one row and one column");
  if (X.n >= (int64_t(1) << 31) - 64) throw std::invalid_argument("the CUDA backend takes N < 2^31 rows");
  if (X.row_stride < X.d) throw std::invalid_argument("row stride is smaller than the row length");
  if (X.int8) check_int8_dim(X.d);
  static const char* kNames[] = {"auto", "fp32", "tf32", "fp16", "bf16", "int8"};
  if (std::find(std::begin(kNames), std::end(kNames), precision) == std::end(kNames))
    throw std::invalid_argument("precision must be one of auto, fp32, tf32, fp16, bf16 (got '" + precision + "')");
  if (X.int8) {
    s.prec = Prec::kInt8;
  } else if (precision == "int8") {
    throw std::invalid_argument("precision 'int8' needs int8 features (quantise them first)");
  } else if (precision == "tf32") {
    s.prec = Prec::kTf32;
  } else if (precision == "fp16") {
    s.prec = Prec::kFp16;
  } else if (precision == "bf16") {
    s.prec = Prec::kBf16;
  }
  const char* prec_names[] = {"fp32", "tf32", "fp16", "bf16", "int8"};
  s.precision = prec_names[int(s.prec)];
  s.kernel = s.prec == Prec::kInt8 ? "cublas-int8-imma" : "cublas-" + s.precision;

  if (X.on_device) {
    s.device = X.device;
  } else {
    MADS_CUDA(cudaGetDevice(&s.device));
  }
  DeviceScope scope(s.device);
  MADS_CUDA(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  MADS_CUDA(cudaEventCreateWithFlags(&s.ready, cudaEventDisableTiming));
  MADS_BLAS(cublasCreate(&s.blas));
  MADS_BLAS(cublasSetStream(s.blas, s.stream));
  if (X.on_device) s.wait_for(X.stream);

  s.n = X.n;
  s.d = X.d;
  s.npad = round_up(X.n, 32);  // 128-byte aligned columns of R and of the kept block
  s.elem = s.prec == Prec::kInt8 ? 1 : (s.prec == Prec::kFp16 || s.prec == Prec::kBf16) ? 2 : 4;
  s.dpad = round_up(X.d, 16 / s.elem);  // 16-byte rows: cuBLAS int8 needs lda % 4 == 0; gathers use uint4
  s.mrows = round_up(X.n, kRowAlign);  // <= npad: R's columns hold every padded row
  s.mmain = s.mrows;

  if (s.prec == Prec::kInt8) {
    const bool aligned = X.on_device && X.row_stride % 16 == 0 && reinterpret_cast<uintptr_t>(X.data) % 16 == 0 &&
                         X.d == s.dpad;
    if (aligned) {
      s.borrowed = true;
      s.x = X.data;
      s.ldx = X.row_stride;
      s.mmain = s.n / kRowAlign * kRowAlign;
      if (s.mmain < s.n) {  // the caller's rows end at N: its last N - mmain rows go through a padded copy
        s.xtail.allocate(kRowAlign * s.dpad);
        MADS_CUDA(cudaMemsetAsync(s.xtail.get(), 0, size_t(s.xtail.bytes()), s.stream));
        MADS_CUDA(cudaMemcpy2DAsync(s.xtail.get(), size_t(s.dpad),
                                    static_cast<const int8_t*>(X.data) + s.mmain * X.row_stride,
                                    size_t(X.row_stride), size_t(X.d), size_t(s.n - s.mmain),
                                    cudaMemcpyDeviceToDevice, s.stream));
      }
    } else {
      s.xown.allocate(s.mrows * s.dpad);  // zeroed below, padding rows included
      MADS_CUDA(cudaMemsetAsync(s.xown.get(), 0, size_t(s.xown.bytes()), s.stream));
      MADS_CUDA(cudaMemcpy2DAsync(s.xown.get(), size_t(s.dpad), X.data, size_t(X.row_stride), size_t(X.d),
                                  size_t(X.n), X.on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice,
                                  s.stream));
      if (!X.on_device) s.uploaded = X.n * X.d;
      s.x = s.xown.get();
      s.ldx = s.dpad;
    }
    s.inv.allocate(s.n);
    int8_inverse_norms_kernel<<<unsigned(s.n), kThreads, 0, s.stream>>>(static_cast<const int8_t*>(s.x), s.ldx, s.d,
                                                                         s.inv.get());
    MADS_LAUNCHED("int8_inverse_norms_kernel");
  } else {
    s.xown.allocate(s.mrows * s.dpad * s.elem);
    s.x = s.xown.get();
    s.ldx = s.dpad;
    if (s.mrows > s.n)  // padding rows: zeros, so their GEMM rows are 0 (never read, never NaN)
      MADS_CUDA(cudaMemsetAsync(s.xown.get() + s.n * s.dpad * s.elem, 0, size_t((s.mrows - s.n) * s.dpad * s.elem),
                                s.stream));
    DeviceArray<unsigned long long> bad;
    bad.allocate(1);
    MADS_CUDA(cudaMemsetAsync(bad.get(), 0xff, sizeof(unsigned long long), s.stream));
    // Host input goes up in 64 MiB row chunks, so the peak is the normalised copy plus one chunk.
    const int64_t chunk = X.on_device ? s.n : std::max<int64_t>(1, kStageBytes / (4 * X.d));
    DeviceArray<float> stage;
    if (!X.on_device) stage.allocate(std::min(chunk, s.n) * X.d);
    for (int64_t r0 = 0; r0 < s.n; r0 += chunk) {
      const int64_t rows = std::min(chunk, s.n - r0);
      const float* src = static_cast<const float*>(X.data) + r0 * X.row_stride;
      int64_t lds = X.row_stride;
      if (!X.on_device) {
        MADS_CUDA(cudaMemcpy2DAsync(stage.get(), size_t(4 * X.d), src, size_t(4 * X.row_stride), size_t(4 * X.d),
                                    size_t(rows), cudaMemcpyHostToDevice, s.stream));
        s.uploaded += rows * X.d * 4;
        src = stage.get();
        lds = X.d;
      }
      switch (s.prec) {
        case Prec::kFp16:
          normalise_rows_kernel<__half><<<unsigned(rows), kThreads, 0, s.stream>>>(
              src, lds, s.d, r0, static_cast<__half*>(static_cast<void*>(s.xown.get())), s.dpad, s.dpad, bad.get());
          break;
        case Prec::kBf16:
          normalise_rows_kernel<__nv_bfloat16><<<unsigned(rows), kThreads, 0, s.stream>>>(
              src, lds, s.d, r0, static_cast<__nv_bfloat16*>(static_cast<void*>(s.xown.get())), s.dpad, s.dpad,
              bad.get());
          break;
        default:
          normalise_rows_kernel<float><<<unsigned(rows), kThreads, 0, s.stream>>>(
              src, lds, s.d, r0, static_cast<float*>(static_cast<void*>(s.xown.get())), s.dpad, s.dpad, bad.get());
      }
      MADS_LAUNCHED("normalise_rows_kernel");
      if (!X.on_device) s.sync();  // the staging chunk is reused by the next copy
    }
    unsigned long long first_bad = 0;
    MADS_CUDA(cudaMemcpyAsync(&first_bad, bad.get(), sizeof(first_bad), cudaMemcpyDeviceToHost, s.stream));
    s.sync();
    if (first_bad != ~0ull) throw std::invalid_argument("X contains NaN or inf (first in row " + std::to_string(first_bad) + ")");
  }

  // One GEMM output tile: as many columns as fit in scratch_bytes, never fewer than one padded batch.
  const int64_t scratch = scratch_bytes > 0 ? scratch_bytes : kDefaultScratch;
  s.cols = std::min<int64_t>(8192, std::max<int64_t>(round_up(kDefaultBatch, 32), scratch / (4 * s.npad) / 32 * 32));
  s.nrb = int((s.n + kRowsPerBlock - 1) / kRowsPerBlock);
  s.cand.allocate(s.cols * s.dpad * s.elem);
  s.R.allocate(s.cols * s.npad * 4);
  s.cinv.allocate(s.cols);
  s.partial.allocate(s.cols * s.nrb);
  s.gains.allocate(s.cols);
  s.idx.allocate(s.cols);
  s.slots.allocate(s.cols);
  s.idx_h.allocate(s.cols);
  s.slots_h.allocate(s.cols);
  s.gains_h.allocate(s.cols);
  s.sync();
}

DenseSimilarityCuda::~DenseSimilarityCuda() {
  if (s_) {
    int previous = 0;
    const bool known = cudaGetDevice(&previous) == cudaSuccess;
    cudaSetDevice(s_->device);
    cudaStreamSynchronize(s_->stream);
    s_.reset();
    if (known) cudaSetDevice(previous);
  }
}

int64_t DenseSimilarityCuda::n() const { return s_->n; }
int64_t DenseSimilarityCuda::d() const { return s_->d; }
int DenseSimilarityCuda::device() const { return s_->device; }
const std::string& DenseSimilarityCuda::kernel() const { return s_->kernel; }
const std::string& DenseSimilarityCuda::precision() const { return s_->precision; }
bool DenseSimilarityCuda::borrowed() const { return s_->borrowed; }
uintptr_t DenseSimilarityCuda::features_pointer() const { return reinterpret_cast<uintptr_t>(s_->x); }
int64_t DenseSimilarityCuda::uploaded_bytes() const { return s_->uploaded; }
int64_t DenseSimilarityCuda::device_bytes() const {
  const State& s = *s_;
  return s.xown.bytes() + s.xtail.bytes() + s.inv.bytes() + s.cand.bytes() + s.R.bytes() + s.cinv.bytes() +
         s.partial.bytes() + s.gains.bytes() + s.idx.bytes() + s.slots.bytes();
}

void DenseSimilarityCuda::columns(const int64_t* idx, int64_t m, const float* cur, float* out, double* gains) {
  State& s = *s_;
  DeviceScope scope(s.device);
  for (int64_t c = 0; c < m; ++c)
    if (idx[c] < 0 || idx[c] >= s.n) throw std::out_of_range("candidate index out of range");
  DeviceArray<float> cur_d, stage;
  cur_d.allocate(s.npad);
  MADS_CUDA(cudaMemcpyAsync(cur_d.get(), cur, s.n * sizeof(float), cudaMemcpyHostToDevice, s.stream));
  const int64_t chunk = std::min<int64_t>(s.cols, std::max<int64_t>(8, m));
  stage.allocate(chunk * s.npad);
  for (int64_t c0 = 0; c0 < m; c0 += chunk) {
    const int64_t cnt = std::min(chunk, m - c0);
    s.pass(idx + c0, cnt, cur_d.get(), stage.get(), s.npad, nullptr, true);
    MADS_CUDA(cudaMemcpy2DAsync(out + c0 * s.n, size_t(s.n) * 4, stage.get(), size_t(s.npad) * 4, size_t(s.n) * 4,
                                size_t(cnt), cudaMemcpyDeviceToHost, s.stream));
    s.sync();
    std::copy(s.gains_h.get(), s.gains_h.get() + cnt, gains + c0);
  }
}

void DenseSimilarityCuda::columns_device(const int64_t* idx, int64_t m, float* out, int64_t ld, uintptr_t stream) {
  State& s = *s_;
  DeviceScope scope(s.device);
  if (ld < s.n) throw std::invalid_argument("ld must be >= N");
  for (int64_t c = 0; c < m; ++c)
    if (idx[c] < 0 || idx[c] >= s.n) throw std::out_of_range("candidate index out of range");
  s.wait_for(stream);
  for (int64_t c0 = 0; c0 < m; c0 += s.cols) {
    const int64_t cnt = std::min(s.cols, m - c0);
    s.pass(idx + c0, cnt, nullptr, out + c0 * ld, ld, nullptr, false);
    s.sync();  // idx_h is reused by the next chunk
  }
}

void DenseSimilarityCuda::column_sums(double* out) {
  State& s = *s_;
  DeviceScope scope(s.device);
  std::vector<int64_t> idx(size_t(s.cols));
  for (int64_t j0 = 0; j0 < s.n; j0 += s.cols) {
    const int64_t m = std::min(s.cols, s.n - j0);
    // Gathered like any candidates (one extra read of X in total), so the last tile is zero-padded too.
    for (int64_t c = 0; c < m; ++c) idx[c] = j0 + c;
    s.pass(idx.data(), m, nullptr, nullptr, 0, nullptr, true);
    s.sync();
    std::copy(s.gains_h.get(), s.gains_h.get() + m, out + j0);
  }
}

// ------------------------------------------------------------------------------------------ lazy greedy
GreedyOutput DenseSimilarityCuda::lazy_greedy(int64_t budget, int64_t batch,
                                              const std::function<void(int64_t)>& progress) {
  State& s = *s_;
  DeviceScope scope(s.device);
  const int64_t n = s.n;
  if (budget < 1 || budget > n) throw std::invalid_argument("budget must be in [1, N]");
  const int64_t m = std::min(batch > 0 ? batch : kDefaultBatch, s.cols);
  const int64_t cap = std::max<int64_t>(m + 8, std::min<int64_t>(3 * m, kKeptBytes / (4 * s.npad)));

  DeviceArray<float> cur, kept;
  DeviceArray<int64_t> nearest;
  DeviceArray<int> iota, changed, nchanged, live_d;
  DeviceArray<unsigned char> flags, cub_tmp;
  DeviceArray<double> drop_d;
  PinnedArray<int> live_h;
  PinnedArray<double> drop_h;
  cur.allocate(s.npad);
  kept.allocate(cap * s.npad);
  nearest.allocate(n);
  iota.allocate(n);
  changed.allocate(n);
  nchanged.allocate(1);
  flags.allocate(n);
  live_d.allocate(cap);
  drop_d.allocate(cap);
  live_h.allocate(cap);
  drop_h.allocate(cap);
  size_t tmp_bytes = 0;
  MADS_CUDA(cub::DeviceSelect::Flagged(nullptr, tmp_bytes, iota.get(), flags.get(), changed.get(), nchanged.get(),
                                       int(n), s.stream));
  cub_tmp.allocate(int64_t(tmp_bytes));
  MADS_CUDA(cudaMemsetAsync(cur.get(), 0, size_t(cur.bytes()), s.stream));
  MADS_CUDA(cudaMemsetAsync(nearest.get(), 0, size_t(nearest.bytes()), s.stream));
  iota_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(iota.get(), n);
  MADS_LAUNCHED("iota_kernel");

  // Host wall clock around synchronised work: column_sums and the final copies end with a stream sync.
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  GreedyOutput out;
  out.ranking.reserve(budget);
  out.gains.reserve(budget);
  out.evaluations.reserve(budget);
  std::vector<double> bounds(n);
  column_sums(bounds.data());
  out.n_evaluations = n;
  out.n_passes = 1;
  const auto t_first = clock::now();
  out.first_pass_seconds = std::chrono::duration<double>(t_first - t_start).count();
  LazyHeap heap(bounds.data(), n);

  std::vector<int64_t> slot_idx(cap, -1);
  std::vector<double> slot_gain(cap, 0.0);
  std::vector<int64_t> take;
  std::vector<int> take_slot, live_slots;

  for (int64_t step = 0; step < budget; ++step) {
    double best = -std::numeric_limits<double>::infinity();
    int64_t live = 0;
    for (int64_t q = 0; q < cap; ++q)
      if (slot_idx[q] >= 0) {
        ++live;
        best = std::max(best, slot_gain[q]);
      }
    // Evaluate stale candidates while one could reach the tie set (bound >= G - tau); 0 bounds are exact.
    while (!heap.empty() && heap.top().ub > 0.0 && (live == 0 || heap.top().ub >= best - tie_tolerance(best))) {
      take.clear();
      while (int64_t(take.size()) < m && !heap.empty() && heap.top().ub > 0.0) take.push_back(heap.pop().idx);
      const int64_t empty = cap - live;
      if (empty < int64_t(take.size())) {
        // Evict the lowest fresh gains; their gains stay valid upper bounds.
        std::vector<int64_t> order;
        for (int64_t q = 0; q < cap; ++q)
          if (slot_idx[q] >= 0) order.push_back(q);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return slot_gain[a] < slot_gain[b] || (slot_gain[a] == slot_gain[b] && slot_idx[a] > slot_idx[b]);
        });
        for (int64_t q = 0; q < int64_t(take.size()) - empty; ++q) {
          heap.push(slot_gain[order[q]], slot_idx[order[q]]);
          slot_idx[order[q]] = -1;
          --live;
        }
      }
      take_slot.clear();
      for (int64_t q = 0; q < cap && take_slot.size() < take.size(); ++q)
        if (slot_idx[q] < 0) take_slot.push_back(int(q));
      s.pass(take.data(), int64_t(take.size()), cur.get(), kept.get(), s.npad, take_slot.data(), true);
      s.sync();
      out.n_evaluations += int64_t(take.size());
      out.n_passes += 1;
      for (size_t q = 0; q < take.size(); ++q) {
        slot_idx[take_slot[q]] = take[q];
        slot_gain[take_slot[q]] = s.gains_h.get()[q];
      }
      best = -std::numeric_limits<double>::infinity();
      live = 0;
      for (int64_t q = 0; q < cap; ++q)
        if (slot_idx[q] >= 0) {
          ++live;
          best = std::max(best, slot_gain[q]);
        }
    }
    // Tie set: fresh candidates within tau of the best, plus the lowest-index exact-zero bound.
    int64_t pick = -1, pick_slot = -1;
    double pick_gain = 0.0;
    if (live > 0) {
      const double floor = best - tie_tolerance(best);
      for (int64_t q = 0; q < cap; ++q)
        if (slot_idx[q] >= 0 && slot_gain[q] >= floor && (pick < 0 || slot_idx[q] < pick)) {
          pick = slot_idx[q];
          pick_slot = q;
          pick_gain = slot_gain[q];
        }
    }
    if (!heap.empty() && heap.top().ub <= 0.0 && (live == 0 || 0.0 >= best - tie_tolerance(best)) &&
        (pick < 0 || heap.top().idx < pick)) {
      pick = heap.pop().idx;
      pick_slot = -1;
      pick_gain = 0.0;
    }
    if (pick_slot >= 0) {
      const float* col = kept.get() + pick_slot * s.npad;
      slot_idx[pick_slot] = -1;
      live_slots.clear();
      for (int64_t q = 0; q < cap; ++q)
        if (slot_idx[q] >= 0) live_slots.push_back(int(q));
      const int nl = int(live_slots.size());
      if (nl > 0) {
        // Keep the other fresh gains exact from the rows whose cur changes; X is not touched.
        changed_flags_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(col, cur.get(), n, flags.get());
        MADS_LAUNCHED("changed_flags_kernel");
        MADS_CUDA(cub::DeviceSelect::Flagged(cub_tmp.get(), tmp_bytes, iota.get(), flags.get(), changed.get(),
                                             nchanged.get(), int(n), s.stream));
        std::copy(live_slots.begin(), live_slots.end(), live_h.get());
        MADS_CUDA(cudaMemcpyAsync(live_d.get(), live_h.get(), nl * sizeof(int), cudaMemcpyHostToDevice, s.stream));
        drop_kernel<<<unsigned(nl), kThreads, 0, s.stream>>>(kept.get(), s.npad, live_d.get(), changed.get(),
                                                             nchanged.get(), col, cur.get(), drop_d.get());
        MADS_LAUNCHED("drop_kernel");
        MADS_CUDA(cudaMemcpyAsync(drop_h.get(), drop_d.get(), nl * sizeof(double), cudaMemcpyDeviceToHost, s.stream));
      }
      apply_pick_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(col, cur.get(), nearest.get(), n, pick, step == 0);
      MADS_LAUNCHED("apply_pick_kernel");
      s.sync();
      for (int q = 0; q < nl; ++q) {
        const int slot = live_slots[q];
        slot_gain[slot] = std::max(0.0, slot_gain[slot] - drop_h.get()[q]);
      }
    } else if (step == 0) {
      apply_pick_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(nullptr, cur.get(), nearest.get(), n, pick, 1);
      MADS_LAUNCHED("apply_pick_kernel");
    }
    out.add_pick(pick, pick_gain);
    report_progress(progress, step + 1, budget);
  }
  out.nearest.resize(n);
  out.nearest_similarity.resize(n);
  MADS_CUDA(cudaMemcpyAsync(out.nearest.data(), nearest.get(), n * sizeof(int64_t), cudaMemcpyDeviceToHost, s.stream));
  MADS_CUDA(cudaMemcpyAsync(out.nearest_similarity.data(), cur.get(), n * sizeof(float), cudaMemcpyDeviceToHost,
                            s.stream));
  s.sync();
  out.greedy_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  return out;
}

}  // namespace cuda
}  // namespace mads
