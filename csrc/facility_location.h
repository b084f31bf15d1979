// Facility-location coverage solver: declarations shared by the C++ (facility_location.cpp) and the
// CUDA (facility_location.cu) backends, so both apply the same similarity, tie rule and output layout.
//
// s(i, j) = max(0, cos(x_i, x_j)); f(S) = sum_i max_{j in S} s(i, j). Float features are normalised
// once in float32 (x * float32(1 / ||x||), the norm taken in double); int8 features keep their
// integers: exact int32 dot products, rounded to float, times the float product of the two inverse
// norms (a product is commutative, so s(i, j) and s(j, i) are the same float: the first pass may fill
// both from one triangle). A zero row has inverse norm 0, hence similarity 0 with everything, itself
// included.
//
// Tie rule (also mads_fast/solver/_tie.py): gains are accumulated in double; with G the best true gain
// of a step, tau = kTieAbs + kTieRel * |G|, and the pick is the LOWEST INDEX among candidates whose
// gain is >= G - tau. Lazy evaluation keeps evaluating stale candidates while the best remaining upper
// bound is >= G - tau; an upper bound of 0 is exact (gains are sums of non-negative terms).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mads {

constexpr double kTieAbs = 1e-6;
constexpr double kTieRel = 1e-5;

inline double tie_tolerance(double best) { return kTieAbs + kTieRel * std::fabs(best); }

// Widest int8 features: the dot products stay exact in int32 while D * 255 * 128 < 2^31 (the VNNI
// kernels multiply x_c + 128 <= 255 by a signed byte of magnitude <= 128). Both backends check it.
constexpr int64_t kInt8MaxDim = 65000;
inline void check_int8_dim(int64_t d) {
  if (d > kInt8MaxDim)
    throw std::invalid_argument("int8 features need D <= " + std::to_string(kInt8MaxDim) +
                                " (exact int32 dot products)");
}

// A lazy-greedy heap entry, shared by the C++ and CUDA loops so both order candidates identically:
// larger upper bound first, then the lower index (the tie rule's preference).
struct Entry {
  double ub;
  int64_t idx;
};
struct EntryLess {
  bool operator()(const Entry& a, const Entry& b) const { return a.ub < b.ub || (a.ub == b.ub && a.idx > b.idx); }
};

// The lazy greedy's max-heap of upper bounds in EntryLess order (top: the largest bound, then the
// lowest index), one type for every greedy loop so all pop candidates in the same order.
class LazyHeap {
 public:
  LazyHeap() = default;
  // One entry {bounds[j], j} per candidate j < n.
  LazyHeap(const double* bounds, int64_t n) {
    heap_.resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) heap_[size_t(j)] = {bounds[j], j};
    std::make_heap(heap_.begin(), heap_.end(), EntryLess());
  }
  // Any entries, e.g. the exact gains after a full refresh.
  explicit LazyHeap(std::vector<Entry> entries) : heap_(std::move(entries)) {
    std::make_heap(heap_.begin(), heap_.end(), EntryLess());
  }
  bool empty() const { return heap_.empty(); }
  int64_t size() const { return int64_t(heap_.size()); }
  const Entry& top() const { return heap_.front(); }
  Entry pop() {
    std::pop_heap(heap_.begin(), heap_.end(), EntryLess());
    const Entry e = heap_.back();
    heap_.pop_back();
    return e;
  }
  void push(double ub, int64_t idx) {
    heap_.push_back({ub, idx});
    std::push_heap(heap_.begin(), heap_.end(), EntryLess());
  }

 private:
  std::vector<Entry> heap_;
};

struct GreedyOutput {
  std::vector<int64_t> ranking;            // [k] picks in order
  std::vector<double> gains;               // [k] marginal gain of each pick
  std::vector<int64_t> nearest;            // [N] first pick attaining each example's max similarity
  std::vector<float> nearest_similarity;   // [N] that similarity
  int64_t n_evaluations = 0;               // candidate gains evaluated, first pass included
  int64_t n_passes = 0;                    // passes over X computing similarity columns (first pass = 1)
  // Profile of the sparse-saturation solver (zero / empty where a backend does not fill them).
  int64_t n_dense_evaluations = 0;         // evaluations that ran the GEMM over unsaturated rows
  int64_t multiply_adds = 0;               // dot-product multiply-adds of every pass, padding included
  int64_t first_pass_multiply_adds = 0;    // those of the first pass alone
  int64_t n_repacks = 0;                   // times the unsaturated rows were repacked into smaller panels
  int64_t n_refreshes = 0;                 // full triangular passes that made every gain exact
  double first_pass_seconds = 0.0;         // column sums + top-K graph
  double greedy_seconds = 0.0;             // everything after the first pass
  // Similarity cache (DenseSimilarity::lazy_greedy with a memory budget; zero where a backend has none).
  int64_t cache_used = 0;                  // 1: the whole similarity matrix was built once and the greedy read it
  int64_t cache_bytes = 0;                 // bytes of that matrix, or of the kept columns (streaming) at their largest
  double cache_build_seconds = 0.0;        // building the matrix (part of first_pass_seconds)
  int64_t cache_hits = 0;                  // gains evaluated from cached columns instead of a GEMM over X
  std::vector<int64_t> unsaturated;        // [k] rows still unsaturated after each pick
  std::vector<int64_t> evaluations;        // [k] n_evaluations after each pick

  // Records one pick of a greedy loop: its index, its gain and the evaluations so far.
  void add_pick(int64_t pick, double gain) {
    ranking.push_back(pick);
    gains.push_back(gain);
    evaluations.push_back(n_evaluations);
  }
};

// The progress cadence of every native greedy loop: progress(done) about 200 times over `budget`
// picks, and always after the last one.
inline void report_progress(const std::function<void(int64_t)>& progress, int64_t done, int64_t budget) {
  if (progress && (done % std::max<int64_t>(1, budget / 200) == 0 || done == budget)) progress(done);
}

// Top-K neighbour graph of the first pass. Row i lists itself first, then its k most similar other rows
// (similarity desc, ties to the lowest index; kept in ascending index order). threshold[i] is the k-th
// largest other similarity, so every row outside the list has s(i, c) <= threshold[i]; it is 0 when
// the list is complete (k == n - 1). The reverse adjacency lists, for each candidate c, the rows
// that list c (ascending) with s(i, c).
struct NeighborGraph {
  int64_t n = 0, k = 0;                    // k = min(requested, n - 1); row width k + 1
  std::vector<int32_t> idx;                // [n, k + 1]
  std::vector<float> sim;                  // [n, k + 1]
  std::vector<float> threshold;            // [n]
  std::vector<int64_t> rptr;               // [n + 1]
  std::vector<int32_t> rrow;               // [n * (k + 1)]
  std::vector<float> rsim;                 // [n * (k + 1)]
};

constexpr int64_t kDefaultGraphK = 64;     // top-K width of the dense solver's saturation graph

// A coverage graph stored by candidate (CSC): candidate c covers the rows row[ptr[c]] .. row[ptr[c+1] - 1]
// (each row at most once per candidate, ascending) with weights w >= 0; W[i, c] is that weight, 0 for
// rows c does not cover. A NeighborGraph's reverse adjacency is one (ptr = rptr, row = rrow, w = rsim).
struct CoverageGraph {
  int64_t n = 0;                 // rows = candidates
  const int64_t* ptr = nullptr;  // [n + 1]
  const int32_t* row = nullptr;  // [ptr[n]]
  const float* w = nullptr;      // [ptr[n]]
};

// Exact lazy greedy of f(S) = sum_i max_{j in S} W[i, j] on a graph (graph_greedy.cpp): the algorithm of
// mads_fast/solver/_lazy.py over a SparseOracle, natively. The first bounds are the column sums of W;
// each round pops up to `batch` candidates (0 = 1) while the best bound is > 0 and, once a gain is
// fresh, >= G - tau; the pick is the tie rule's over the fresh gains and the lowest-index zero bound;
// the other fresh gains go back as bounds. nearest: the first pick is every row's nearest until a
// strictly larger W[i, pick] arrives (rows no pick covers keep it, with similarity 0). Fills ranking,
// gains, nearest, nearest_similarity, n_evaluations (the N bounds included), evaluations,
// unsaturated (0: every row is on the graph) and greedy_seconds; n_passes 0 (X is never read).
GreedyOutput graph_lazy_greedy(const CoverageGraph& g, int64_t budget, int64_t batch,
                               const std::function<void(int64_t)>& progress);
// The same from row lists: row i covers the columns neighbors[i, t] with W[i, neighbors[i, t]] = sims[i, t]
// (both [n, w] row-major; i itself first, then its neighbours, by convention only). Throws
// std::out_of_range for an index outside [0, n), std::invalid_argument for a column listed twice in a
// row, a negative or non-finite similarity, n >= 2^31, budget outside [1, n] or batch < 0.
GreedyOutput graph_lazy_greedy(const int64_t* neighbors, const float* sims, int64_t n, int64_t w, int64_t budget,
                               int64_t batch, const std::function<void(int64_t)>& progress);

// Dense cosine similarity computed on the fly from X; holds an N x N matrix only inside cached_greedy, when
// the caller's memory budget allows it (lazy_greedy with memory_budget >= matrix_bytes()).
class DenseSimilarity {
 public:
  DenseSimilarity(const float* X, int64_t n, int64_t d);   // X [n, d] row-major
  DenseSimilarity(const int8_t* X, int64_t n, int64_t d);  // X [n, d] row-major

  int64_t n() const { return n_; }
  int64_t d() const { return d_; }
  const std::string& kernel() const { return kernel_; }

  // out [m, n]: out[c * n + i] = s(i, idx[c]); gains [m] = sum_i max(0, s(i, idx[c]) - cur[i]).
  void columns(const int64_t* idx, int64_t m, const float* cur, float* out, double* gains) const;
  // out [n]: sum_i s(i, j), computed on one triangle of the similarity (s is symmetric).
  void column_sums(double* out) const;
  // Exact lazy greedy, batched: `batch` candidates per pass (0 = default), multi-pick from the block.
  // Uses the sparse-saturation scheme with a kDefaultGraphK graph (same picks as the plain scheme).
  GreedyOutput lazy_greedy(int64_t budget, int64_t batch,
                           const std::function<void(int64_t)>& progress) const;
  // The same with an explicit graph width: graph_k = 0 keeps every row dense (no graph, the plain
  // batched lazy greedy); graph_k >= 1 saturates rows once cur_i >= threshold_i (exact either way).
  // memory_budget (bytes): < 0 streams with kept columns of at most kCacheBytes (the historical default);
  // >= 0: when matrix_bytes() <= memory_budget the whole similarity is built once (cached_greedy, graph_k
  // unused), else the streaming greedy keeps at most max(memory_budget, a 8-batch floor) bytes of columns.
  GreedyOutput lazy_greedy(int64_t budget, int64_t batch, int64_t graph_k, int64_t memory_budget,
                           const std::function<void(int64_t)>& progress) const;
  GreedyOutput lazy_greedy(int64_t budget, int64_t batch, int64_t graph_k,
                           const std::function<void(int64_t)>& progress) const {
    return lazy_greedy(budget, batch, graph_k, -1, progress);
  }
  // Bytes of the cached similarity matrix: N columns of npad floats.
  int64_t matrix_bytes() const { return n_ * npad_ * int64_t(sizeof(float)); }
  // Exact lazy greedy on the cached matrix: S [n][npad] with S[j * npad + i] = s(i, j), built once from one
  // triangle by the same tile kernels as the streaming columns (each similarity is one kernel's value for
  // the pair, and s(i, j) and s(j, i) are the same float: see the top of this file), so every gain is the
  // streaming path's clipped sum in another order. Evaluations read a column (N floats, no multiply-add);
  // the lazy loop, the tie rule and nearest are those of graph_lazy_greedy.
  GreedyOutput cached_greedy(int64_t budget, int64_t batch,
                             const std::function<void(int64_t)>& progress) const;
  // Lazy greedy on the kNN graph itself (W[i, c] = s(i, c) for listed c, else 0): approximate by design.
  // The first pass's top-n_neighbors graph, then graph_lazy_greedy on it (batch 0 = 1); the profile adds
  // the first pass (n_passes 1, its multiply-adds and seconds).
  GreedyOutput knn_lazy_greedy(int64_t budget, int64_t n_neighbors, int64_t batch,
                               const std::function<void(int64_t)>& progress) const;
  // First pass: column sums (out [n], as column_sums) and, when graph is not null, the top-k graph.
  // Returns the multiply-adds it ran.
  int64_t first_pass(int64_t k, double* sums, NeighborGraph* graph) const;

  // Internal: similarity columns of candidates `idx` into dst[c] (npad floats each, may be null).
  void block(const int64_t* idx, int64_t m, const float* cur, float* const* dst, double* gains) const;

 private:
  GreedyOutput greedy(int64_t budget, int64_t batch, int64_t graph_k, int64_t cache_bytes,
                      const std::function<void(int64_t)>& progress) const;
  // Triangular pass: column sums (cur null) or clipped gains against cur [npad] (see the .cpp).
  int64_t sym_pass(const float* cur, int64_t k, double* out, NeighborGraph* graph) const;
  void pack_candidates(const int64_t* idx, int64_t m, int64_t mpad, void* buf) const;
  int64_t n_ = 0, d_ = 0, npad_ = 0, dpad_ = 0;
  bool int8_ = false;
  int isa_ = 0;                   // 0 portable, 1 avx512 (fp32), 2 avx512 vnni (int8), 3 avx2+fma (fp32), 4 avx2 (int8)
  std::string kernel_;
  std::vector<float> xf_;         // fp32 panels: [npad/16][dpad][16], unit rows
  std::vector<int8_t> xq_;        // int8 panels: [npad/16][dpad/4][16][4]
  std::vector<float> inv_;        // [npad] inverse norms (0 for zero and padding rows)
  std::vector<int32_t> rowsum_;   // [npad] sum_k x_i[k] (int8: undoes the +128 of VNNI)
};

}  // namespace mads
