// C++ backend of the facility-location solver (see facility_location.h for the semantics).
//
// Layout: rows live in panels of 16 ([npad/16][dpad][16] fp32, [npad/16][dpad/4][16][4] int8), so
// one 64-byte load gives 16 rows at one k (fp32) or 16 rows x 4 k (int8, the vpdpbusd operand). The
// micro-kernel computes a 64 x 6 tile (rows x candidates): 24 zmm accumulators, per k 4 row loads and
// 6 candidate broadcasts, and fuses the epilogue (scale, clip at 0, store the column, accumulate the
// clipped gain against cur in double). Kernels are compiled with target attributes and chosen at run
// time with __builtin_cpu_supports, so the module runs on any x86-64 (portable loops otherwise).
#include "facility_location.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace mads {
namespace {

constexpr int kTileRows = 64;  // 4 panels of 16 rows
constexpr int kTileCols = 6;   // candidates per micro-tile: 4 x 6 = 24 accumulators + 5 live zmm
constexpr int64_t kSymBlock = 384;  // lcm(64, 6) * 2: square blocks of the symmetric first pass

struct Epi {
  const float* cur;        // [npad] or null (= zeros)
  const float* inv;        // [npad] row inverse norms (int8 only)
  const int32_t* rowsum;   // [npad] row integer sums (int8 only)
  const float* cand_inv;   // [6] candidate inverse norms (int8 only)
  float* const* dst;       // [6] column bases (index by row) or null entries
  double* gsum;            // [6 * 8] gain accumulators, 8 double lanes per candidate
  float* rowacc;           // [64] sum over the 6 candidates of s(row, c), or null
  int64_t row0;
};

// ---------------------------------------------------------------- portable kernels
void epilogue_portable(float (&s)[kTileCols][kTileRows], const Epi& e) {
  if (e.rowacc) std::fill(e.rowacc, e.rowacc + kTileRows, 0.f);
  for (int c = 0; c < kTileCols; ++c) {
    double g = 0.0;
    for (int r = 0; r < kTileRows; ++r) {
      float x = std::max(s[c][r], 0.f);
      if (e.dst[c]) e.dst[c][e.row0 + r] = x;
      float cu = e.cur ? e.cur[e.row0 + r] : 0.f;
      g += std::max(x - cu, 0.f);
      if (e.rowacc) e.rowacc[r] += x;
    }
    e.gsum[c * 8] += g;
  }
}

void tile_f32_portable(const float* p, int64_t pstride, const float* cand, int64_t dpad, const Epi& e) {
  float acc[kTileCols][kTileRows] = {};
  for (int64_t k = 0; k < dpad; ++k)
    for (int c = 0; c < kTileCols; ++c) {
      const float b = cand[c * dpad + k];
      for (int v = 0; v < 4; ++v)
        for (int r = 0; r < 16; ++r) acc[c][16 * v + r] += p[v * pstride + k * 16 + r] * b;
    }
  epilogue_portable(acc, e);
}

void tile_i8_portable(const int8_t* p, int64_t pstride, const uint8_t* cand, int64_t dpad, const Epi& e) {
  int32_t acc[kTileCols][kTileRows] = {};
  for (int64_t k = 0; k < dpad; ++k)
    for (int c = 0; c < kTileCols; ++c) {
      const int32_t b = int32_t(cand[c * dpad + k]) - 128;
      for (int v = 0; v < 4; ++v)
        for (int r = 0; r < 16; ++r) acc[c][16 * v + r] += int32_t(p[v * pstride + (k / 4) * 64 + r * 4 + k % 4]) * b;
    }
  float s[kTileCols][kTileRows];
  for (int c = 0; c < kTileCols; ++c)
    for (int r = 0; r < kTileRows; ++r) s[c][r] = (float(acc[c][r]) * e.inv[e.row0 + r]) * e.cand_inv[c];
  epilogue_portable(s, e);
}

// ---------------------------------------------------------------- AVX-512 kernels
#define MADS_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define MADS_VNNI __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,fma")))

MADS_AVX512 inline __attribute__((always_inline)) void epilogue_avx512(__m512 (&s)[4][kTileCols], const Epi& e) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 rs[4] = {zero, zero, zero, zero};
  __m512 cu[4];
  for (int v = 0; v < 4; ++v) cu[v] = e.cur ? _mm512_loadu_ps(e.cur + e.row0 + 16 * v) : zero;
#pragma GCC unroll 6
  for (int c = 0; c < kTileCols; ++c) {
    __m512 gv = zero;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m512 x = _mm512_max_ps(s[v][c], zero);
      if (e.dst[c]) _mm512_storeu_ps(e.dst[c] + e.row0 + 16 * v, x);
      gv = _mm512_add_ps(gv, _mm512_max_ps(_mm512_sub_ps(x, cu[v]), zero));
      rs[v] = _mm512_add_ps(rs[v], x);
    }
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(gv));
    __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(gv, 1));
    __m512d acc = _mm512_loadu_pd(e.gsum + 8 * c);
    _mm512_storeu_pd(e.gsum + 8 * c, _mm512_add_pd(acc, _mm512_add_pd(lo, hi)));
  }
  if (e.rowacc)
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(e.rowacc + 16 * v, rs[v]);
}

MADS_AVX512 void tile_f32_avx512(const float* p, int64_t pstride, const float* cand, int64_t dpad, const Epi& e) {
  __m512 acc[4][kTileCols];
  for (int v = 0; v < 4; ++v)
    for (int c = 0; c < kTileCols; ++c) acc[v][c] = _mm512_setzero_ps();
  const float* p0 = p;
  const float* p1 = p + pstride;
  const float* p2 = p + 2 * pstride;
  const float* p3 = p + 3 * pstride;
  const float* c0 = cand;
  for (int64_t k = 0; k < dpad; ++k) {
    const __m512 r0 = _mm512_loadu_ps(p0 + 16 * k), r1 = _mm512_loadu_ps(p1 + 16 * k);
    const __m512 r2 = _mm512_loadu_ps(p2 + 16 * k), r3 = _mm512_loadu_ps(p3 + 16 * k);
#pragma GCC unroll 6
    for (int c = 0; c < kTileCols; ++c) {
      const __m512 b = _mm512_set1_ps(c0[c * dpad + k]);
      acc[0][c] = _mm512_fmadd_ps(r0, b, acc[0][c]);
      acc[1][c] = _mm512_fmadd_ps(r1, b, acc[1][c]);
      acc[2][c] = _mm512_fmadd_ps(r2, b, acc[2][c]);
      acc[3][c] = _mm512_fmadd_ps(r3, b, acc[3][c]);
    }
  }
  epilogue_avx512(acc, e);
}

MADS_VNNI void tile_i8_vnni(const int8_t* p, int64_t pstride, const uint8_t* cand, int64_t dpad, const Epi& e) {
  __m512i acc[4][kTileCols];
  for (int v = 0; v < 4; ++v)
    for (int c = 0; c < kTileCols; ++c) acc[v][c] = _mm512_setzero_si512();
  const int64_t kq = dpad / 4;
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i r0 = _mm512_loadu_si512(p + 64 * q), r1 = _mm512_loadu_si512(p + pstride + 64 * q);
    const __m512i r2 = _mm512_loadu_si512(p + 2 * pstride + 64 * q);
    const __m512i r3 = _mm512_loadu_si512(p + 3 * pstride + 64 * q);
#pragma GCC unroll 6
    for (int c = 0; c < kTileCols; ++c) {
      int32_t word;
      std::memcpy(&word, cand + c * dpad + 4 * q, 4);
      const __m512i b = _mm512_set1_epi32(word);  // candidate bytes + 128: the unsigned operand
      acc[0][c] = _mm512_dpbusd_epi32(acc[0][c], b, r0);
      acc[1][c] = _mm512_dpbusd_epi32(acc[1][c], b, r1);
      acc[2][c] = _mm512_dpbusd_epi32(acc[2][c], b, r2);
      acc[3][c] = _mm512_dpbusd_epi32(acc[3][c], b, r3);
    }
  }
  __m512 s[4][kTileCols];
  for (int v = 0; v < 4; ++v) {
    // sum_k (x_c + 128) x_r = dot + 128 * rowsum_r
    const __m512i fix = _mm512_slli_epi32(_mm512_loadu_si512(e.rowsum + e.row0 + 16 * v), 7);
    const __m512 inv = _mm512_loadu_ps(e.inv + e.row0 + 16 * v);
    for (int c = 0; c < kTileCols; ++c) {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[v][c], fix));
      s[v][c] = _mm512_mul_ps(_mm512_mul_ps(dot, inv), _mm512_set1_ps(e.cand_inv[c]));
    }
  }
  epilogue_avx512(s, e);
}

MADS_AVX512 double clip_sum_avx512(const float* col, const float* cur, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 16) {  // n is a multiple of 64
    const __m512 t = _mm512_max_ps(_mm512_sub_ps(_mm512_loadu_ps(col + i), _mm512_loadu_ps(cur + i)), zero);
    a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
    a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1)));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

double clip_sum_portable(const float* col, const float* cur, int64_t n) {
  double a[8] = {};
  for (int64_t i = 0; i < n; i += 8)
    for (int l = 0; l < 8; ++l) a[l] += std::max(col[i + l] - cur[i + l], 0.f);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

// ---------------------------------------------------------------- construction
DenseSimilarity::DenseSimilarity(const float* X, int64_t n, int64_t d) : n_(n), d_(d) {
  if (n <= 0 || d <= 0) throw std::invalid_argument("X must have at least one row and one column");
  npad_ = round_up(n, kTileRows);
  dpad_ = d;
  isa_ = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") ? 1 : 0;
  kernel_ = isa_ ? "avx512-fp32" : "portable-fp32";
  inv_.assign(npad_, 0.f);
  rowsum_.assign(npad_, 0);
  xf_.assign(npad_ * dpad_, 0.f);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* x = X + i * d;
    double sq = 0.0;
    for (int64_t k = 0; k < d; ++k) sq += double(x[k]) * double(x[k]);
    const float inv = sq > 0.0 ? float(1.0 / std::sqrt(sq)) : 0.f;
    inv_[i] = inv;
    float* panel = xf_.data() + (i / 16) * dpad_ * 16 + (i % 16);
    for (int64_t k = 0; k < d; ++k) panel[k * 16] = x[k] * inv;
  }
}

DenseSimilarity::DenseSimilarity(const int8_t* X, int64_t n, int64_t d) : n_(n), d_(d), int8_(true) {
  if (n <= 0 || d <= 0) throw std::invalid_argument("X must have at least one row and one column");
  if (d > 65000) throw std::invalid_argument("int8 features need D <= 65000 (exact int32 dot products)");
  npad_ = round_up(n, kTileRows);
  dpad_ = round_up(d, 4);
  isa_ = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni") ? 2 : 0;
  kernel_ = isa_ ? "avx512-vnni-int8" : "portable-int8";
  inv_.assign(npad_, 0.f);
  rowsum_.assign(npad_, 0);
  xq_.assign(npad_ * dpad_, 0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int8_t* x = X + i * d;
    int64_t sq = 0, sum = 0;
    for (int64_t k = 0; k < d; ++k) {
      sq += int64_t(x[k]) * x[k];
      sum += x[k];
    }
    inv_[i] = sq > 0 ? float(1.0 / std::sqrt(double(sq))) : 0.f;
    rowsum_[i] = int32_t(sum);
    int8_t* panel = xq_.data() + (i / 16) * dpad_ * 16 + (i % 16) * 4;
    for (int64_t k = 0; k < d; ++k) panel[(k / 4) * 64 + k % 4] = x[k];
  }
}

void DenseSimilarity::pack_candidates(const int64_t* idx, int64_t m, int64_t mpad, void* buf) const {
  for (int64_t c = 0; c < mpad; ++c) {
    const int64_t j = c < m ? idx[c] : -1;
    if (int8_) {
      uint8_t* out = static_cast<uint8_t*>(buf) + c * dpad_;
      if (j < 0) {
        std::fill(out, out + dpad_, uint8_t(128));
        continue;
      }
      const int8_t* panel = xq_.data() + (j / 16) * dpad_ * 16 + (j % 16) * 4;
      for (int64_t k = 0; k < dpad_; ++k) out[k] = uint8_t(int32_t(panel[(k / 4) * 64 + k % 4]) + 128);
    } else {
      float* out = static_cast<float*>(buf) + c * dpad_;
      if (j < 0) {
        std::fill(out, out + dpad_, 0.f);
        continue;
      }
      const float* panel = xf_.data() + (j / 16) * dpad_ * 16 + (j % 16);
      for (int64_t k = 0; k < dpad_; ++k) out[k] = panel[k * 16];
    }
  }
}

namespace {
struct TileRunner {
  const DenseSimilarity* self;
  int isa;
  bool int8;
  const void* rows;  // panel base
  int64_t pstride;   // elements per panel
  int64_t dpad;
  void operator()(int64_t row0, const void* cand, const Epi& e) const {
    if (int8) {
      const int8_t* p = static_cast<const int8_t*>(rows) + (row0 / 16) * pstride;
      const uint8_t* cb = static_cast<const uint8_t*>(cand);
      if (isa == 2) tile_i8_vnni(p, pstride, cb, dpad, e);
      else tile_i8_portable(p, pstride, cb, dpad, e);
    } else {
      const float* p = static_cast<const float*>(rows) + (row0 / 16) * pstride;
      const float* cb = static_cast<const float*>(cand);
      if (isa == 1) tile_f32_avx512(p, pstride, cb, dpad, e);
      else tile_f32_portable(p, pstride, cb, dpad, e);
    }
  }
};
}  // namespace

// ---------------------------------------------------------------- similarity blocks
void DenseSimilarity::block(const int64_t* idx, int64_t m, const float* cur, float* const* dst, double* gains) const {
  const int64_t groups = (m + kTileCols - 1) / kTileCols, mpad = groups * kTileCols;
  const int64_t elem = int8_ ? 1 : 4;
  std::vector<uint8_t> cand(mpad * dpad_ * elem);
  pack_candidates(idx, m, mpad, cand.data());
  std::vector<float> cinv(mpad, 0.f);
  for (int64_t c = 0; c < m; ++c) cinv[c] = inv_[idx[c]];
  std::vector<float*> dsts(mpad, nullptr);
  if (dst)
    for (int64_t c = 0; c < m; ++c) dsts[c] = dst[c];
  const TileRunner run{this, isa_, int8_, int8_ ? (const void*)xq_.data() : (const void*)xf_.data(), dpad_ * 16,
                       dpad_};
  const int64_t tiles = npad_ / kTileRows;
  // Rows per chunk: keep a chunk of row panels in L2 (~256 KB) while every candidate group sweeps it.
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / (kTileRows * dpad_ * elem));
  const int64_t nchunks = (tiles + chunk - 1) / chunk;
  std::vector<double> total(mpad * 8, 0.0);
#pragma omp parallel
  {
    std::vector<double> gsum(mpad * 8, 0.0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t t1 = std::min(tiles, (ch + 1) * chunk);
      for (int64_t g = 0; g < groups; ++g) {
        const void* cb = cand.data() + g * kTileCols * dpad_ * elem;
        for (int64_t t = ch * chunk; t < t1; ++t) {
          Epi e{cur, inv_.data(), rowsum_.data(), cinv.data() + g * kTileCols, dsts.data() + g * kTileCols,
                gsum.data() + g * kTileCols * 8, nullptr, t * kTileRows};
          run(t * kTileRows, cb, e);
        }
      }
    }
#pragma omp critical
    for (int64_t i = 0; i < mpad * 8; ++i) total[i] += gsum[i];
  }
  for (int64_t c = 0; c < m; ++c) {
    double g = 0.0;
    for (int l = 0; l < 8; ++l) g += total[c * 8 + l];
    gains[c] = g;
  }
}

void DenseSimilarity::columns(const int64_t* idx, int64_t m, const float* cur, float* out, double* gains) const {
  std::vector<float> curpad(npad_, 0.f);
  std::copy(cur, cur + n_, curpad.begin());
  // The kernels write npad rows; stage through padded columns unless n is already a multiple of 64.
  const bool direct = npad_ == n_;
  std::vector<float> stage(direct ? 0 : std::min<int64_t>(m, 64) * npad_);
  for (int64_t start = 0; start < m; start += 64) {
    const int64_t cnt = std::min<int64_t>(64, m - start);
    std::vector<float*> dst(cnt);
    for (int64_t c = 0; c < cnt; ++c) dst[c] = direct ? out + (start + c) * n_ : stage.data() + c * npad_;
    block(idx + start, cnt, curpad.data(), dst.data(), gains + start);
    if (!direct)
      for (int64_t c = 0; c < cnt; ++c) std::copy(dst[c], dst[c] + n_, out + (start + c) * n_);
  }
}

void DenseSimilarity::column_sums(double* out) const {
  const int64_t elem = int8_ ? 1 : 4;
  const int64_t nb = (npad_ + kSymBlock - 1) / kSymBlock;
  const TileRunner run{this, isa_, int8_, int8_ ? (const void*)xq_.data() : (const void*)xf_.data(), dpad_ * 16,
                       dpad_};
  std::vector<double> total(npad_, 0.0);
#pragma omp parallel
  {
    std::vector<double> acc(npad_, 0.0);
    std::vector<uint8_t> cand(kSymBlock * dpad_ * elem);
    std::vector<int64_t> idx(kSymBlock);
    std::vector<float> cinv(kSymBlock);
    std::vector<double> gsum(kSymBlock * 8);
    float rowacc[kTileRows];
    float* nodst[kTileCols] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
#pragma omp for schedule(dynamic, 1)
    for (int64_t bb = 0; bb < nb; ++bb) {
      const int64_t b = nb - 1 - bb;  // the largest rows of work first
      const int64_t j0 = b * kSymBlock, m = std::max<int64_t>(0, std::min(n_, j0 + kSymBlock) - j0);
      for (int64_t c = 0; c < kSymBlock; ++c) {
        idx[c] = c < m ? j0 + c : -1;
        cinv[c] = c < m ? inv_[j0 + c] : 0.f;
      }
      pack_candidates(idx.data(), kSymBlock, kSymBlock, cand.data());
      std::fill(gsum.begin(), gsum.end(), 0.0);
      const int64_t groups = (m + kTileCols - 1) / kTileCols;
      for (int64_t a = 0; a <= b; ++a) {
        const int64_t t0 = a * kSymBlock / kTileRows, t1 = std::min(npad_, (a + 1) * kSymBlock) / kTileRows;
        for (int64_t g = 0; g < groups; ++g) {
          const void* cb = cand.data() + g * kTileCols * dpad_ * elem;
          for (int64_t t = t0; t < t1; ++t) {
            // Off the diagonal each tile also gives the transposed block's column sums (its row sums).
            Epi e{nullptr, inv_.data(), rowsum_.data(), cinv.data() + g * kTileCols, nodst,
                  gsum.data() + g * kTileCols * 8, a < b ? rowacc : nullptr, t * kTileRows};
            run(t * kTileRows, cb, e);
            if (a < b)
              for (int r = 0; r < kTileRows; ++r) acc[t * kTileRows + r] += rowacc[r];
          }
        }
      }
      for (int64_t c = 0; c < m; ++c) {
        double g = 0.0;
        for (int l = 0; l < 8; ++l) g += gsum[c * 8 + l];
        acc[j0 + c] += g;
      }
    }
#pragma omp critical
    for (int64_t i = 0; i < npad_; ++i) total[i] += acc[i];
  }
  std::copy(total.begin(), total.begin() + n_, out);
}

// ---------------------------------------------------------------- lazy greedy
namespace {
struct Entry {
  double ub;
  int64_t idx;
};
// max-heap order: larger bound first, then lower index
struct EntryLess {
  bool operator()(const Entry& a, const Entry& b) const { return a.ub < b.ub || (a.ub == b.ub && a.idx > b.idx); }
};
}  // namespace

GreedyOutput DenseSimilarity::lazy_greedy(int64_t budget, int64_t batch,
                                          const std::function<void(int64_t)>& progress) const {
  if (budget < 1 || budget > n_) throw std::invalid_argument("budget must be in [1, N]");
  const int64_t m = batch > 0 ? batch : 48;
  // Block capacity: fresh columns survive several passes (multi-pick), capped at ~512 MB.
  const int64_t cap = std::max<int64_t>(m + kTileCols, std::min<int64_t>(3 * m, (int64_t(512) << 20) / (4 * npad_)));
  GreedyOutput out;
  out.ranking.reserve(budget);
  out.gains.reserve(budget);
  std::vector<float> cur(npad_, 0.f);
  out.nearest.assign(n_, 0);

  std::vector<double> bounds(n_);
  column_sums(bounds.data());
  out.n_evaluations = n_;
  out.n_passes = 1;
  std::vector<Entry> heap(n_);
  for (int64_t j = 0; j < n_; ++j) heap[j] = {bounds[j], j};
  std::make_heap(heap.begin(), heap.end(), EntryLess());

  std::vector<float> cols(cap * npad_);
  std::vector<int64_t> slot_idx(cap, -1);
  std::vector<double> slot_gain(cap, 0.0);
  std::vector<int64_t> take, take_slot;
  std::vector<float*> dst;
  std::vector<double> new_gain;
  std::vector<int32_t> changed;
  std::vector<float> oldv;
  const bool avx = isa_ != 0;
  const int64_t report = std::max<int64_t>(1, budget / 200);

  auto pop = [&]() {
    std::pop_heap(heap.begin(), heap.end(), EntryLess());
    Entry e = heap.back();
    heap.pop_back();
    return e;
  };
  auto push = [&](double ub, int64_t j) {
    heap.push_back({ub, j});
    std::push_heap(heap.begin(), heap.end(), EntryLess());
  };

  for (int64_t step = 0; step < budget; ++step) {
    double best = -std::numeric_limits<double>::infinity();
    int64_t live = 0;
    for (int64_t s = 0; s < cap; ++s)
      if (slot_idx[s] >= 0) {
        ++live;
        best = std::max(best, slot_gain[s]);
      }
    // Evaluate stale candidates while one could reach the tie set (bound >= G - tau); 0 bounds are exact.
    while (!heap.empty() && heap.front().ub > 0.0 && (live == 0 || heap.front().ub >= best - tie_tolerance(best))) {
      take.clear();
      // Fill the batch with the next best bounds: one pass over X costs the same for 1 or m columns,
      // and the extra fresh columns let later steps pick without another pass.
      while (int64_t(take.size()) < m && !heap.empty() && heap.front().ub > 0.0) take.push_back(pop().idx);
      int64_t empty = cap - live;
      if (empty < int64_t(take.size())) {
        // Evict the lowest fresh gains; their gains stay valid upper bounds.
        std::vector<int64_t> order;
        for (int64_t s = 0; s < cap; ++s)
          if (slot_idx[s] >= 0) order.push_back(s);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return slot_gain[a] < slot_gain[b] || (slot_gain[a] == slot_gain[b] && slot_idx[a] > slot_idx[b]);
        });
        for (int64_t q = 0; q < int64_t(take.size()) - empty; ++q) {
          push(slot_gain[order[q]], slot_idx[order[q]]);
          slot_idx[order[q]] = -1;
          --live;
        }
      }
      take_slot.clear();
      dst.clear();
      for (int64_t s = 0; s < cap && take_slot.size() < take.size(); ++s)
        if (slot_idx[s] < 0) {
          take_slot.push_back(s);
          dst.push_back(cols.data() + s * npad_);
        }
      new_gain.assign(take.size(), 0.0);
      block(take.data(), int64_t(take.size()), cur.data(), dst.data(), new_gain.data());
      out.n_evaluations += int64_t(take.size());
      out.n_passes += 1;
      best = -std::numeric_limits<double>::infinity();
      for (size_t q = 0; q < take.size(); ++q) {
        slot_idx[take_slot[q]] = take[q];
        slot_gain[take_slot[q]] = new_gain[q];
      }
      live = 0;
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0) {
          ++live;
          best = std::max(best, slot_gain[s]);
        }
    }
    // Tie set: fresh candidates within tau of the best, plus the lowest-index exact-zero bound.
    int64_t pick = -1, pick_slot = -1;
    double pick_gain = 0.0;
    if (live > 0) {
      const double floor = best - tie_tolerance(best);
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0 && slot_gain[s] >= floor && (pick < 0 || slot_idx[s] < pick)) {
          pick = slot_idx[s];
          pick_slot = s;
          pick_gain = slot_gain[s];
        }
    }
    if (!heap.empty() && heap.front().ub <= 0.0 && (live == 0 || 0.0 >= best - tie_tolerance(best)) &&
        (pick < 0 || heap.front().idx < pick)) {
      pick = pop().idx;
      pick_slot = -1;
      pick_gain = 0.0;
    }
    if (pick_slot >= 0) {
      const float* col = cols.data() + pick_slot * npad_;
      slot_idx[pick_slot] = -1;
      changed.clear();
      oldv.clear();
      for (int64_t i = 0; i < n_; ++i)
        if (col[i] > cur[i]) {
          changed.push_back(int32_t(i));
          oldv.push_back(cur[i]);
          cur[i] = col[i];
          out.nearest[i] = pick;
        }
      if (step == 0) std::fill(out.nearest.begin(), out.nearest.end(), pick);
      // Keep the other fresh gains exact: recompute from the block when many rows changed, else subtract
      // each changed row's drop; neither touches X.
      const bool full = int64_t(changed.size()) * 8 > npad_;
      std::vector<int64_t> live_slots;
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0) live_slots.push_back(s);
      const int64_t nl = int64_t(live_slots.size());
      const int64_t work = full ? nl * npad_ : nl * int64_t(changed.size());
#pragma omp parallel for schedule(static) if (work > (1 << 16))
      for (int64_t q = 0; q < nl; ++q) {
        const int64_t s = live_slots[q];
        const float* S = cols.data() + s * npad_;
        if (full) {
          slot_gain[s] = avx ? clip_sum_avx512(S, cur.data(), npad_) : clip_sum_portable(S, cur.data(), npad_);
        } else {
          double drop = 0.0;
          for (size_t r = 0; r < changed.size(); ++r) {
            const int32_t i = changed[r];
            drop += double(std::max(S[i] - oldv[r], 0.f)) - double(std::max(S[i] - cur[i], 0.f));
          }
          slot_gain[s] = std::max(0.0, slot_gain[s] - drop);
        }
      }
    } else if (step == 0) {
      std::fill(out.nearest.begin(), out.nearest.end(), pick);
    }
    out.ranking.push_back(pick);
    out.gains.push_back(pick_gain);
    if (progress && ((step + 1) % report == 0 || step + 1 == budget)) progress(step + 1);
  }
  out.nearest_similarity.assign(cur.begin(), cur.begin() + n_);
  return out;
}

}  // namespace mads
