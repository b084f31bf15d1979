// pybind11 bindings of the C++ solver: mads_fast._solver_cpu (private; the API is mads_fast.solver).
// Inputs are validated in Python first; these checks only guard memory safety. Long calls release
// the GIL; the progress callback re-acquires it briefly.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>

#include "facility_location.h"

namespace py = pybind11;
using mads::DenseSimilarity;

namespace {

std::unique_ptr<DenseSimilarity> make_dense(py::array X) {
  if (X.ndim() != 2) throw std::invalid_argument("X must be 2-D [N, D]");
  const int64_t n = X.shape(0), d = X.shape(1);
  if (py::isinstance<py::array_t<int8_t>>(X) && X.dtype().kind() == 'i' && X.itemsize() == 1) {
    auto a = py::array_t<int8_t, py::array::c_style | py::array::forcecast>::ensure(X);
    py::gil_scoped_release release;
    return std::make_unique<DenseSimilarity>(a.data(), n, d);
  }
  if (X.dtype().kind() != 'f' || X.itemsize() != 4) throw std::invalid_argument("X must be float32 or int8");
  auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(X);
  py::gil_scoped_release release;
  return std::make_unique<DenseSimilarity>(a.data(), n, d);
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

}  // namespace

PYBIND11_MODULE(_solver_cpu, m) {
  m.doc() = "C++ facility-location solver (OpenMP; AVX-512 fp32 / VNNI int8 kernels chosen at run time)";
  m.attr("TIE_ABS") = mads::kTieAbs;
  m.attr("TIE_REL") = mads::kTieRel;
  py::class_<DenseSimilarity>(m, "DenseSimilarity")
      .def(py::init(&make_dense), py::arg("X"))
      .def_property_readonly("kernel", [](const DenseSimilarity& s) { return s.kernel(); })
      .def_property_readonly("n", &DenseSimilarity::n)
      .def_property_readonly("d", &DenseSimilarity::d)
      .def(
          "columns",
          [](const DenseSimilarity& s, py::array_t<int64_t, py::array::c_style | py::array::forcecast> idx,
             py::array_t<float, py::array::c_style | py::array::forcecast> cur) {
            if (idx.ndim() != 1) throw std::invalid_argument("idx must be 1-D");
            if (cur.ndim() != 1 || cur.shape(0) != s.n()) throw std::invalid_argument("cur must be float32 [N]");
            const int64_t m = idx.shape(0);
            for (int64_t c = 0; c < m; ++c)
              if (idx.data()[c] < 0 || idx.data()[c] >= s.n()) throw std::out_of_range("candidate index out of range");
            py::array_t<float> out({m, s.n()});
            py::array_t<double> gains(m);
            {
              py::gil_scoped_release release;
              s.columns(idx.data(), m, cur.data(), out.mutable_data(), gains.mutable_data());
            }
            return py::make_tuple(out, gains);
          },
          py::arg("idx"), py::arg("cur"), "similarity columns [m, N] of candidates idx and their gains [m] against cur")
      .def("column_sums",
           [](const DenseSimilarity& s) {
             py::array_t<double> out(s.n());
             {
               py::gil_scoped_release release;
               s.column_sums(out.mutable_data());
             }
             return out;
           })
      .def(
          "lazy_greedy",
          [](const DenseSimilarity& s, int64_t budget, int64_t batch, py::object progress) {
            std::function<void(int64_t)> cb;
            if (!progress.is_none()) {
              cb = [progress](int64_t done) {
                py::gil_scoped_acquire acquire;
                progress(done);
              };
            }
            mads::GreedyOutput r;
            {
              py::gil_scoped_release release;
              r = s.lazy_greedy(budget, batch, cb);
            }
            py::dict d;
            d["ranking"] = to_numpy(std::move(r.ranking));
            d["gains"] = to_numpy(std::move(r.gains));
            d["nearest"] = to_numpy(std::move(r.nearest));
            d["nearest_similarity"] = to_numpy(std::move(r.nearest_similarity));
            d["n_evaluations"] = r.n_evaluations;
            d["n_passes"] = r.n_passes;
            return d;
          },
          py::arg("budget"), py::arg("batch") = 0, py::arg("progress") = py::none());
}
