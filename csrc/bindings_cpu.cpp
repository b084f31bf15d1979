// pybind11 bindings of the C++ solver: mads_fast._solver_cpu (private; the API is mads_fast.solver).
// DenseSimilarity's inputs are validated in Python first; its checks here only guard memory safety.
// graph_lazy_greedy (bindings_common.h, also in the CUDA module) checks its whole input itself. Long
// calls release the GIL; the progress callback re-acquires it briefly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>

#include "bindings_common.h"
#include "facility_location.h"

namespace py = pybind11;
using mads::DenseSimilarity;
using mads::bindings::Progress;
using mads::bindings::run_greedy;
using mads::bindings::to_numpy;

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

}  // namespace

PYBIND11_MODULE(_solver_cpu, m) {
  m.doc() = "C++ facility-location solver (OpenMP; AVX-512 fp32 / VNNI int8 and AVX2 fp32 / int8 kernels chosen at run time)";
  m.attr("TIE_ABS") = mads::kTieAbs;
  m.attr("TIE_REL") = mads::kTieRel;
  m.attr("DEFAULT_GRAPH_K") = mads::kDefaultGraphK;
  m.def("graph_lazy_greedy", &mads::bindings::graph_lazy_greedy, py::arg("neighbors"), py::arg("sims"),
        py::arg("budget"), py::arg("batch") = 0, py::arg("progress") = py::none(), mads::bindings::kGraphLazyGreedyDoc);
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
          "neighbor_graph",
          [](const DenseSimilarity& s, int64_t k) {
            if (k < 1) throw std::invalid_argument("k must be >= 1");
            mads::NeighborGraph g;
            py::array_t<double> sums(s.n());
            {
              py::gil_scoped_release release;
              s.first_pass(k, sums.mutable_data(), &g);
            }
            const int64_t w = g.k + 1;
            py::array_t<int64_t> idx({s.n(), w});
            py::array_t<float> sim({s.n(), w});
            std::copy(g.idx.begin(), g.idx.end(), idx.mutable_data());
            std::copy(g.sim.begin(), g.sim.end(), sim.mutable_data());
            py::dict d;
            d["neighbors"] = idx;
            d["sims"] = sim;
            d["threshold"] = to_numpy(std::move(g.threshold));
            d["column_sums"] = sums;
            return d;
          },
          py::arg("k"),
          "first pass: neighbors int64 [N, k'+1] (self first, then the k' = min(k, N-1) most similar others in "
          "ascending index order), sims float32 [N, k'+1], threshold float32 [N], column_sums float64 [N]")
      .def(
          "lazy_greedy",
          [](const DenseSimilarity& s, int64_t budget, int64_t batch, py::object progress, int64_t graph_k,
             int64_t memory_budget) {
            return run_greedy(progress, [&](const Progress& cb) {
              return s.lazy_greedy(budget, batch, graph_k, memory_budget, cb);
            });
          },
          py::arg("budget"), py::arg("batch") = 0, py::arg("progress") = py::none(),
          py::arg("graph_k") = mads::kDefaultGraphK, py::arg("memory_budget") = -1,
          "exact lazy greedy; graph_k = 0 runs every evaluation dense, >= 1 uses a saturation graph of that width; "
          "memory_budget (bytes) >= matrix_bytes builds the whole similarity once and reads its columns (graph_k "
          "unused), a smaller one >= 0 caps the kept columns of the streaming greedy, -1 keeps the 512 MiB default")
      .def_property_readonly("matrix_bytes", &DenseSimilarity::matrix_bytes,
                             "bytes of the cached similarity matrix (N columns of N rounded up to 64 floats)")
      .def(
          "knn_lazy_greedy",
          [](const DenseSimilarity& s, int64_t budget, int64_t n_neighbors, int64_t batch, py::object progress) {
            return run_greedy(progress,
                              [&](const Progress& cb) { return s.knn_lazy_greedy(budget, n_neighbors, batch, cb); });
          },
          py::arg("budget"), py::arg("n_neighbors"), py::arg("batch") = 0, py::arg("progress") = py::none(),
          "exact lazy greedy on the top-n_neighbors graph (gains and nearest on the graph): graph_lazy_greedy on "
          "neighbor_graph(n_neighbors), the first pass in the profile");
}
