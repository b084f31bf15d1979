// pybind11 bindings of the CUDA solver: mads_fast._solver_cuda (private; the API is mads_fast.solver).
// Same surface as mads_fast._solver_cpu (DenseSimilarity with kernel, columns, column_sums,
// lazy_greedy; the host-side graph_lazy_greedy), plus device input: any object with
// __cuda_array_interface__ (torch CUDA tensors, CuPy arrays) is read in place on its own device, never
// copied through the host. DenseSimilarity's inputs are validated in Python first; these checks only
// guard memory safety (graph_lazy_greedy checks its whole input itself). Long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "bindings_common.h"
#include "facility_location.cuh"

namespace py = pybind11;
using mads::bindings::Progress;
using mads::bindings::run_greedy;
using mads::cuda::DenseSimilarityCuda;

namespace {

// The C++ engine plus, for borrowed device input, the Python object that owns the memory it reads.
struct PyDense {
  std::unique_ptr<DenseSimilarityCuda> impl;
  py::object owner;
};

mads::cuda::Matrix from_cuda_array_interface(const py::object& X) {
  py::dict cai = X.attr("__cuda_array_interface__");
  mads::cuda::Matrix mat;
  const auto shape = cai["shape"].cast<py::tuple>();
  if (shape.size() != 2) throw std::invalid_argument("X must be 2-D [N, D]");
  mat.n = shape[0].cast<int64_t>();
  mat.d = shape[1].cast<int64_t>();
  const std::string ts = cai["typestr"].cast<std::string>();
  int64_t item = 0;
  if (ts == "<f4" || ts == "=f4") {
    item = 4;
  } else if (ts == "|i1" || ts == "<i1" || ts == "=i1") {
    item = 1;
    mat.int8 = true;
  } else {
    throw std::invalid_argument("X must be float32 or int8 on the device (typestr " + ts + ")");
  }
  if (cai.contains("mask") && !cai["mask"].is_none()) throw std::invalid_argument("masked device arrays are not supported");
  mat.row_stride = mat.d;
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const auto st = cai["strides"].cast<py::tuple>();
    const int64_t s0 = st[0].cast<int64_t>(), s1 = st[1].cast<int64_t>();
    if (mat.d > 1 && s1 != item) throw std::invalid_argument("X rows must be contiguous (last-axis stride != itemsize)");
    if (mat.n > 1 && (s0 % item != 0 || s0 < mat.d * item))
      throw std::invalid_argument("X must have non-overlapping rows with a stride that is a multiple of the itemsize");
    if (mat.n > 1) mat.row_stride = s0 / item;
  }
  const auto data = cai["data"].cast<py::tuple>();
  const auto address = data[0].cast<uintptr_t>();
  mat.data = reinterpret_cast<const void*>(address);
  mat.on_device = true;
  if (cai.contains("stream") && !cai["stream"].is_none()) mat.stream = cai["stream"].cast<uintptr_t>();
  if (mat.n > 0 && mat.d > 0) mat.device = mads::cuda::pointer_device(address);
  return mat;
}

std::unique_ptr<PyDense> make_dense(const py::object& X, const std::string& precision, int64_t scratch_bytes) {
  auto out = std::make_unique<PyDense>();
  mads::cuda::Matrix mat;
  py::array host;  // keeps a converted host array alive while it is uploaded
  if (py::hasattr(X, "__cuda_array_interface__")) {
    mat = from_cuda_array_interface(X);
    out->owner = X;
  } else {
    py::array a = py::array::ensure(X);
    if (!a) throw std::invalid_argument("X must be a NumPy array or expose __cuda_array_interface__");
    if (a.ndim() != 2) throw std::invalid_argument("X must be 2-D [N, D]");
    if (a.dtype().kind() == 'i' && a.itemsize() == 1) {
      host = py::array_t<int8_t, py::array::c_style | py::array::forcecast>::ensure(a);
      mat.int8 = true;
    } else if (a.dtype().kind() == 'f' && a.itemsize() == 4) {
      host = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    } else {
      throw std::invalid_argument("X must be float32 or int8");
    }
    mat.data = host.data();
    mat.n = host.shape(0);
    mat.d = host.shape(1);
    mat.row_stride = mat.d;
  }
  py::gil_scoped_release release;
  out->impl = std::make_unique<DenseSimilarityCuda>(mat, precision, scratch_bytes);
  return out;
}

using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

void check_indices(const IndexArray& idx) {
  if (idx.ndim() != 1) throw std::invalid_argument("idx must be 1-D");
}

}  // namespace

PYBIND11_MODULE(_solver_cuda, m) {
  m.doc() = "CUDA facility-location solver (cuBLAS GEMMs on tensor cores; features resident on the GPU)";
  m.attr("TIE_ABS") = mads::kTieAbs;
  m.attr("TIE_REL") = mads::kTieRel;
  m.def("device_count", &mads::cuda::device_count, "visible CUDA devices (0 without a driver or device)");
  m.def("graph_lazy_greedy", &mads::bindings::graph_lazy_greedy, py::arg("neighbors"), py::arg("sims"),
        py::arg("budget"), py::arg("batch") = 0, py::arg("progress") = py::none(), mads::bindings::kGraphLazyGreedyDoc);
  m.def(
      "versions",
      [](int device) {
        const auto v = mads::cuda::versions(device);
        py::dict d;
        d["driver"] = v.driver;
        d["runtime"] = v.runtime;
        d["cublas"] = v.cublas;
        d["device_name"] = v.device_name;
        d["compute_capability"] = py::make_tuple(v.major, v.minor);
        d["total_memory"] = v.total_memory;
        return d;
      },
      py::arg("device") = 0, "driver/runtime/cuBLAS versions and the device's name, capability and memory");

  py::class_<PyDense>(m, "DenseSimilarity")
      .def(py::init(&make_dense), py::arg("X"), py::arg("precision") = "auto", py::arg("scratch_bytes") = 0)
      .def_property_readonly("kernel", [](const PyDense& s) { return s.impl->kernel(); })
      .def_property_readonly("precision", [](const PyDense& s) { return s.impl->precision(); })
      .def_property_readonly("n", [](const PyDense& s) { return s.impl->n(); })
      .def_property_readonly("d", [](const PyDense& s) { return s.impl->d(); })
      .def_property_readonly("device", [](const PyDense& s) { return s.impl->device(); })
      .def_property_readonly("borrowed", [](const PyDense& s) { return s.impl->borrowed(); },
                             "True when the GEMMs read the caller's device buffer itself (no copy)")
      .def_property_readonly("features_pointer", [](const PyDense& s) { return s.impl->features_pointer(); })
      .def_property_readonly("uploaded_bytes", [](const PyDense& s) { return s.impl->uploaded_bytes(); },
                             "feature bytes copied host -> device (0 for device input)")
      .def_property_readonly("device_bytes", [](const PyDense& s) { return s.impl->device_bytes(); })
      .def(
          "columns",
          [](PyDense& s, const IndexArray& idx, py::array_t<float, py::array::c_style | py::array::forcecast> cur) {
            check_indices(idx);
            const int64_t n = s.impl->n();
            if (cur.ndim() != 1 || cur.shape(0) != n) throw std::invalid_argument("cur must be float32 [N]");
            const int64_t mm = idx.shape(0);
            py::array_t<float> out({mm, n});
            py::array_t<double> gains(mm);
            {
              py::gil_scoped_release release;
              s.impl->columns(idx.data(), mm, cur.data(), out.mutable_data(), gains.mutable_data());
            }
            return py::make_tuple(out, gains);
          },
          py::arg("idx"), py::arg("cur"), "similarity columns [m, N] of candidates idx and their gains [m] against cur")
      .def(
          "columns_device",
          [](PyDense& s, const IndexArray& idx, uintptr_t out, int64_t ld, uintptr_t stream) {
            check_indices(idx);
            py::gil_scoped_release release;
            s.impl->columns_device(idx.data(), idx.shape(0), reinterpret_cast<float*>(out), ld, stream);
          },
          py::arg("idx"), py::arg("out"), py::arg("ld"), py::arg("stream") = 0,
          "write s(i, idx[c]) to the device float32 buffer at address out + (c * ld + i) * 4, after `stream`")
      .def("column_sums",
           [](PyDense& s) {
             py::array_t<double> out(s.impl->n());
             {
               py::gil_scoped_release release;
               s.impl->column_sums(out.mutable_data());
             }
             return out;
           })
      .def(
          "lazy_greedy",
          [](PyDense& s, int64_t budget, int64_t batch, py::object progress) {
            return run_greedy(progress, [&](const Progress& cb) { return s.impl->lazy_greedy(budget, batch, cb); });
          },
          py::arg("budget"), py::arg("batch") = 0, py::arg("progress") = py::none());
}
