// pybind11 helpers shared by the two binding files (bindings_cpu.cpp: mads_fast._solver_cpu,
// bindings_cuda.cpp: mads_fast._solver_cuda), so both modules hand Python the same objects: a
// GreedyOutput becomes one dict with every field, vectors become NumPy arrays without a copy, and a
// progress callback re-acquires the GIL that the long calls release.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "facility_location.h"

namespace mads {
namespace bindings {

namespace py = pybind11;
using Progress = std::function<void(int64_t)>;  // picks done so far

// A 1-D NumPy array that owns the vector's buffer (moved into a capsule, freed with the array).
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

// The C++ progress callback for a Python callable (empty for None). It runs on the solver's thread
// while the GIL is released, so it takes the GIL for the call.
inline Progress callback(py::object progress) {
  Progress cb;
  if (!progress.is_none()) {
    cb = [progress](int64_t done) {
      py::gil_scoped_acquire acquire;
      progress(done);
    };
  }
  return cb;
}

// Every field of a GreedyOutput; a backend that does not compute a profile field leaves it 0 or empty.
inline py::dict to_dict(GreedyOutput&& r) {
  py::dict d;
  d["ranking"] = to_numpy(std::move(r.ranking));
  d["gains"] = to_numpy(std::move(r.gains));
  d["nearest"] = to_numpy(std::move(r.nearest));
  d["nearest_similarity"] = to_numpy(std::move(r.nearest_similarity));
  d["n_evaluations"] = r.n_evaluations;
  d["n_passes"] = r.n_passes;
  d["n_dense_evaluations"] = r.n_dense_evaluations;
  d["multiply_adds"] = r.multiply_adds;
  d["first_pass_multiply_adds"] = r.first_pass_multiply_adds;
  d["n_repacks"] = r.n_repacks;
  d["n_refreshes"] = r.n_refreshes;
  d["first_pass_seconds"] = r.first_pass_seconds;
  d["greedy_seconds"] = r.greedy_seconds;
  d["cache_used"] = r.cache_used;
  d["cache_bytes"] = r.cache_bytes;
  d["cache_build_seconds"] = r.cache_build_seconds;
  d["cache_hits"] = r.cache_hits;
  d["unsaturated"] = to_numpy(std::move(r.unsaturated));
  d["evaluations"] = to_numpy(std::move(r.evaluations));
  return d;
}

// Runs solve(cb) -> GreedyOutput with the GIL released (cb: the callback of `progress`) and returns
// to_dict of its output.
template <class Solve>
py::dict run_greedy(py::object progress, Solve&& solve) {
  const Progress cb = callback(std::move(progress));
  GreedyOutput r;
  {
    py::gil_scoped_release release;
    r = solve(cb);
  }
  return to_dict(std::move(r));
}

// Module-level graph_lazy_greedy(neighbors int64 [N, W], sims float32 [N, W], budget, batch, progress) of
// both modules (host C++, graph_greedy.cpp): dtypes and shapes are checked here, indices and values there.
inline py::dict graph_lazy_greedy(py::array neighbors, py::array sims, int64_t budget, int64_t batch,
                                  py::object progress) {
  if (neighbors.ndim() != 2 || neighbors.dtype().kind() != 'i' || neighbors.itemsize() != 8)
    throw std::invalid_argument("neighbors must be a 2-D int64 array [N, W]");
  if (sims.ndim() != 2 || sims.dtype().kind() != 'f' || sims.itemsize() != 4)
    throw std::invalid_argument("sims must be a 2-D float32 array [N, W]");
  if (sims.shape(0) != neighbors.shape(0) || sims.shape(1) != neighbors.shape(1))
    throw std::invalid_argument("sims must have the shape of neighbors [N, W]");
  constexpr int kFlags = py::array::c_style | py::array::forcecast;
  const auto idx = py::array_t<int64_t, kFlags>::ensure(neighbors);
  const auto val = py::array_t<float, kFlags>::ensure(sims);
  const int64_t n = idx.shape(0), w = idx.shape(1);
  return run_greedy(std::move(progress), [&](const Progress& cb) {
    return mads::graph_lazy_greedy(idx.data(), val.data(), n, w, budget, batch, cb);
  });
}

// Its docstring, the same in both modules.
constexpr const char* kGraphLazyGreedyDoc =
    "exact lazy greedy of f(S) = sum_i max_{j in S} W[i, j] on a given graph: W[i, neighbors[i, t]] = "
    "sims[i, t] (row i lists itself first, then its neighbours), 0 elsewhere; the dict of "
    "DenseSimilarity.lazy_greedy, with the picks of mads_fast.solver._lazy.lazy_greedy over a SparseOracle";

}  // namespace bindings
}  // namespace mads
