// Lazy greedy on a given coverage graph (see facility_location.h): host C++ only, compiled into both
// native modules, and the C++ backend's kNN mode (DenseSimilarity::knn_lazy_greedy) once its first
// pass has built the graph.
//
// It runs the reference's steps (mads_fast/solver/_lazy.py over _oracles.SparseOracle) in the same
// order: the same heap order (LazyHeap), the same rounds of `batch` pops, the same tie set, so the
// picks, the nearest rule and even the evaluation count agree with the Python loop. A gain is
// sum over the rows r that c covers of max(0, w - cur_r): the float difference clipped at 0, summed in
// double over ascending rows, O(in-degree of c).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "facility_location.h"

namespace mads {

GreedyOutput graph_lazy_greedy(const CoverageGraph& g, int64_t budget, int64_t batch,
                               const std::function<void(int64_t)>& progress) {
  const int64_t n = g.n;
  if (budget < 1 || budget > n) throw std::invalid_argument("budget must be in [1, N]");
  if (batch < 0) throw std::invalid_argument("batch must be >= 0 (0 = 1 candidate per round)");
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  const int64_t m = batch > 0 ? batch : 1;  // no pass to share here: one candidate a round evaluates least
  GreedyOutput out;
  out.ranking.reserve(budget);
  out.gains.reserve(budget);
  out.evaluations.reserve(budget);
  out.unsaturated.assign(budget, 0);

  // The gains on the empty set: column sums of W, in double, in row order (SparseOracle.initial_gains).
  std::vector<double> bounds(n);
  for (int64_t c = 0; c < n; ++c) {
    double s = 0.0;
    for (int64_t e = g.ptr[c]; e < g.ptr[c + 1]; ++e) s += double(g.w[e]);
    bounds[c] = s;
  }
  out.n_evaluations = n;
  LazyHeap heap(bounds.data(), n);

  std::vector<float> cur(n, 0.f);
  out.nearest.assign(n, 0);
  auto gain = [&](int64_t c) {
    double s = 0.0;
    for (int64_t e = g.ptr[c]; e < g.ptr[c + 1]; ++e) s += double(std::max(g.w[e] - cur[g.row[e]], 0.f));
    return s;
  };

  std::vector<Entry> fresh;  // {exact gain against cur, candidate} of this step, in evaluation order
  std::vector<int64_t> take;
  for (int64_t step = 0; step < budget; ++step) {
    fresh.clear();
    double best = -std::numeric_limits<double>::infinity();
    // A stale bound is evaluated while it is > 0 (0 is exact) and could reach the tie set.
    auto needs_evaluation = [&]() {
      return !heap.empty() && heap.top().ub > 0.0 && (fresh.empty() || heap.top().ub >= best - tie_tolerance(best));
    };
    while (needs_evaluation()) {
      take.clear();
      while (int64_t(take.size()) < m && needs_evaluation()) take.push_back(heap.pop().idx);
      for (const int64_t c : take) {
        const double v = gain(c);
        fresh.push_back({v, c});
        best = std::max(best, v);
      }
      out.n_evaluations += int64_t(take.size());
    }
    // Tie set: fresh gains >= G - tau, plus the lowest-index zero bound when 0 itself is tied.
    const bool zero = !heap.empty() && heap.top().ub <= 0.0 && (fresh.empty() || 0.0 >= best - tie_tolerance(best));
    const double top = fresh.empty() ? 0.0 : best;  // G over the tie candidates (gains are >= 0)
    const double floor = top - tie_tolerance(top);
    int64_t pick = -1, pick_pos = -1;
    double pick_gain = 0.0;
    for (int64_t q = 0; q < int64_t(fresh.size()); ++q)
      if (fresh[q].ub >= floor && (pick < 0 || fresh[q].idx < pick)) {
        pick = fresh[q].idx;
        pick_pos = q;
        pick_gain = fresh[q].ub;
      }
    if (zero && (pick < 0 || heap.top().idx < pick)) {
      pick = heap.pop().idx;
      pick_pos = -1;
      pick_gain = 0.0;
    }
    if (pick < 0) throw std::logic_error("graph_lazy_greedy: no candidate left to pick");  // budget <= N
    for (int64_t q = 0; q < int64_t(fresh.size()); ++q)
      if (q != pick_pos) heap.push(fresh[q].ub, fresh[q].idx);
    // Apply the pick (SparseOracle.apply): strictly larger weights move a row's nearest.
    if (step == 0) std::fill(out.nearest.begin(), out.nearest.end(), pick);
    for (int64_t e = g.ptr[pick]; e < g.ptr[pick + 1]; ++e) {
      const int32_t r = g.row[e];
      if (g.w[e] > cur[r]) {
        cur[r] = g.w[e];
        out.nearest[r] = pick;
      }
    }
    out.add_pick(pick, pick_gain);
    report_progress(progress, step + 1, budget);
  }
  out.nearest_similarity.assign(cur.begin(), cur.end());
  out.greedy_seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  return out;
}

GreedyOutput graph_lazy_greedy(const int64_t* neighbors, const float* sims, int64_t n, int64_t w, int64_t budget,
                               int64_t batch, const std::function<void(int64_t)>& progress) {
  if (n < 0 || w < 0) throw std::invalid_argument("neighbors and sims must have a shape [N, W]");
  if (n >= (int64_t(1) << 31)) throw std::invalid_argument("the graph must have fewer than 2^31 rows");
  if (budget < 1 || budget > n) throw std::invalid_argument("budget must be in [1, N]");
  if (batch < 0) throw std::invalid_argument("batch must be >= 0 (0 = 1 candidate per round)");
  // Validate every entry, counting each column's entries on the way; seen[c] = the last row listing c.
  std::vector<int64_t> ptr(n + 1, 0), seen(n, -1);
  auto at = [](int64_t i, int64_t t) { return "[" + std::to_string(i) + ", " + std::to_string(t) + "]"; };
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < w; ++t) {
      const int64_t c = neighbors[i * w + t];
      const float v = sims[i * w + t];
      if (c < 0 || c >= n)
        throw std::out_of_range("neighbors" + at(i, t) + " = " + std::to_string(c) + " is outside [0, N = " +
                                std::to_string(n) + ")");
      if (!(v >= 0.f) || std::isinf(v))
        throw std::invalid_argument("sims" + at(i, t) + " must be finite and >= 0, got " + std::to_string(v));
      if (seen[c] == i)
        throw std::invalid_argument("neighbors[" + std::to_string(i) + "] lists column " + std::to_string(c) +
                                    " twice");
      seen[c] = i;
      ++ptr[c + 1];
    }
  for (int64_t c = 0; c < n; ++c) ptr[c + 1] += ptr[c];
  // By candidate, rows ascending (the order of SparseOracle's stable sort).
  std::vector<int32_t> row(ptr[n]);
  std::vector<float> wt(ptr[n]);
  std::vector<int64_t> fill(ptr.begin(), ptr.end() - 1);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < w; ++t) {
      const int64_t e = fill[neighbors[i * w + t]]++;
      row[e] = int32_t(i);
      wt[e] = sims[i * w + t];
    }
  const CoverageGraph g{n, ptr.data(), row.data(), wt.data()};
  return graph_lazy_greedy(g, budget, batch, progress);
}

}  // namespace mads
