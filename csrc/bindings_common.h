// pybind11 helpers shared by the two binding files (bindings_cpu.cpp: mads_fast._solver_cpu,
// bindings_cuda.cpp: mads_fast._solver_cuda), so both modules hand Python the same objects: a
// GreedyOutput becomes one dict with every field, vectors become NumPy arrays without a copy, and a
// progress callback re-acquires the GIL that the long calls release.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
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

}  // namespace bindings
}  // namespace mads
