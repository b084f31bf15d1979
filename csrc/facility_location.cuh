// CUDA backend of the facility-location solver: host-side declarations only (no device code, no CUDA
// types), so the pybind11 bindings compile as plain C++. Semantics are those of facility_location.h:
// s(i, j) = max(0, cos(x_i, x_j)), gains accumulated in double, the shared tie rule, GreedyOutput.
//
// Features stay on the GPU: float input is normalised once into an fp32 (exact), tf32, fp16 or bf16
// copy; int8 input stays int8 (borrowed without a copy when the caller's device rows are 16-byte
// aligned) with float inverse norms. Similarity columns come from cuBLAS GEMMs ([N, D] x [D, m]) on
// the fly; nothing N x N is ever allocated.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "facility_location.h"

namespace mads {
namespace cuda {

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int device_count();

// Device ordinal owning a device (or managed) address; throws std::invalid_argument for host memory.
int pointer_device(uintptr_t address);

// What a benchmark records next to its numbers.
struct Versions {
  int driver = 0, runtime = 0, cublas = 0;  // e.g. 13000 for CUDA 13.0; cuBLAS as major*10000+minor*100+patch
  std::string device_name;
  int major = 0, minor = 0;                 // compute capability
  int64_t total_memory = 0;                 // bytes
};
Versions versions(int device);

// The caller's feature matrix, on the host or on a device.
struct Matrix {
  const void* data = nullptr;  // [n, row_stride] row-major, float32 or int8
  int64_t n = 0, d = 0;
  int64_t row_stride = 0;      // elements between rows (>= d)
  bool int8 = false;
  bool on_device = false;
  int device = -1;             // device ordinal holding `data` (on_device only)
  // Producer stream of __cuda_array_interface__ v3: 0 none, 1 legacy default, 2 per-thread default,
  // otherwise a cudaStream_t. Work on `data` waits for it.
  uintptr_t stream = 0;
};

class DenseSimilarityCuda {
 public:
  // precision: "auto" (fp32 for float input, int8 for int8 input), "fp32", "tf32", "fp16", "bf16".
  // int8 input is always exact int8 x int8 -> int32. scratch_bytes caps the GEMM output tile (0 = 512 MiB).
  DenseSimilarityCuda(const Matrix& X, const std::string& precision, int64_t scratch_bytes);
  ~DenseSimilarityCuda();
  DenseSimilarityCuda(const DenseSimilarityCuda&) = delete;
  DenseSimilarityCuda& operator=(const DenseSimilarityCuda&) = delete;

  int64_t n() const;
  int64_t d() const;
  int device() const;
  const std::string& kernel() const;     // e.g. "cublas-int8-imma", "cublas-fp32"
  const std::string& precision() const;  // "int8", "fp32", "tf32", "fp16", "bf16"
  bool borrowed() const;                 // true when the GEMMs read the caller's device buffer itself
  uintptr_t features_pointer() const;    // device address the GEMMs read
  int64_t uploaded_bytes() const;        // bytes copied host -> device for the features (0 for device input)
  int64_t device_bytes() const;          // device memory this object holds now

  // Host in/out. out [m, n]: out[c * n + i] = s(i, idx[c]); gains [m] = sum_i max(0, s(i, idx[c]) - cur[i]).
  void columns(const int64_t* idx, int64_t m, const float* cur, float* out, double* gains);
  // Device out: out[c * ld + i] = s(i, idx[c]) on this object's device, ordered after `stream` (same
  // encoding as Matrix::stream) and before the call returns.
  void columns_device(const int64_t* idx, int64_t m, float* out, int64_t ld, uintptr_t stream);
  // out [n]: sum_i s(i, j) for every j (the first pass), in column tiles of at most scratch_bytes.
  void column_sums(double* out);
  // Exact lazy greedy: `batch` stale candidates per GEMM (0 = 128), multi-pick from the kept columns.
  // Of the profile it fills first_pass_seconds, greedy_seconds and evaluations (the rest stay 0 / empty).
  GreedyOutput lazy_greedy(int64_t budget, int64_t batch, const std::function<void(int64_t)>& progress);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace cuda
}  // namespace mads
