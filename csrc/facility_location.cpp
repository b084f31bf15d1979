// C++ backend of the facility-location solver (see facility_location.h for the semantics).
//
// Layout: rows live in panels of 16 ([npad/16][dpad][16] fp32, [npad/16][dpad/4][16][4] int8), so
// one 64-byte load gives 16 rows at one k (fp32) or 16 rows x 4 k (int8, the vpdpbusd operand). The
// micro-kernel computes a 64 x 6 tile (rows x candidates): 24 zmm accumulators (AVX2 fp32: 16 rows at a
// time, 12 ymm accumulators, the same fma chain per similarity; AVX2 int8: 8 rows at a time, 6 ymm int32
// accumulators fed by vpmaddwd), per k 4 row loads and 6 candidate broadcasts, and fuses the epilogue
// (scale, clip at 0, store the column, accumulate the
// clipped gain against cur in double; in the first pass also offer each similarity to the top-K lists
// of its row and, off the diagonal, of its candidate). Kernels are compiled with target attributes and
// chosen at run time with __builtin_cpu_supports, so the module runs on any x86-64 (portable loops
// otherwise).
//
// Sparse-saturation lazy greedy (exact). The first pass keeps, for every row i, its top-K neighbours
// and t_i, the K-th largest similarity. Once cur_i >= t_i the row is "saturated": every candidate c
// outside its list has s(i, c) <= t_i <= cur_i and gains exactly 0 from row i. So
//   gain(c) = sum over saturated i listing c of max(0, s_ic - cur_i)     (reverse adjacency, O(K) avg)
//           + sum over unsaturated i of max(0, s(i, c) - cur_i)          (GEMM over the rows of U only)
// U's rows are repacked into their own panels whenever U has shrunk to half the packed rows, so the
// GEMM streams only U; once U is empty every evaluation is sparse. Saturated rows still in the packed
// panels get an effective cur of kBig (> any similarity), so the GEMM epilogue counts them as 0.
//
// Cached lazy greedy (exact, when memory_budget >= N * npad * 4 bytes). The whole matrix is built once from
// the upper triangle by the same tile kernels (block (a, b) into the columns of b, copied transposed into
// the columns of a), so each stored float is the value the streaming path computes for that pair: the
// kernel's dot product is one fma (or mul + add) per k in k order, symmetric in its two operands, and the
// int8 scale is a product of the two inverse norms. Gains are then clipped sums over a stored column in
// double, exactly as the streaming epilogue sums them up to the order of additions; the tie rule
// (tau = 1e-6 + 1e-5 |G|) absorbs that order, as it does between backends. Evaluating a candidate reads N
// floats instead of N * D multiply-adds; the saturation graph is not needed there.
#include "facility_location.h"

#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

namespace mads {
namespace {

// Kernel families (isa_): 0 portable loops, 1 AVX-512 fp32, 2 AVX-512 VNNI int8, 3 AVX2+FMA fp32, 4 AVX2 int8
// (vpmaddwd). Read when a similarity is built: MADS_FAST_ISA=portable forces the plain loops (so the tests run
// both paths on a SIMD machine), =avx512 / =avx2 insist on that family for both dtypes (an error on a CPU
// without it), unset or auto takes the best the CPU supports (int8 without AVX-512 VNNI: the AVX2 kernel).
int choose_isa(bool int8) {
  const bool has512 = __builtin_cpu_supports("avx512f") &&
                      (int8 ? __builtin_cpu_supports("avx512vnni") : __builtin_cpu_supports("avx512dq"));
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const int isa512 = int8 ? 2 : 1;
  const char* env = std::getenv("MADS_FAST_ISA");
  const std::string want = env ? env : "";
  const int isa2 = int8 ? 4 : 3;
  if (want.empty() || want == "auto") return has512 ? isa512 : has2 ? isa2 : 0;
  if (want == "portable") return 0;
  if (want == "avx512") {
    if (!has512)
      throw std::runtime_error(std::string("MADS_FAST_ISA=avx512, but this CPU lacks ") +
                               (int8 ? "AVX-512F/VNNI" : "AVX-512F/DQ"));
    return isa512;
  }
  if (want == "avx2") {
    if (!has2) throw std::runtime_error("MADS_FAST_ISA=avx2, but this CPU lacks AVX2/FMA");
    return isa2;
  }
  throw std::invalid_argument("MADS_FAST_ISA must be auto, portable, avx2 or avx512, got '" + want + "'");
}

constexpr int kTileRows = 64;  // 4 panels of 16 rows
constexpr int kTileCols = 6;   // candidates per micro-tile: 4 x 6 = 24 accumulators + 5 live zmm
constexpr int64_t kSymBlock = 384;  // lcm(64, 6) * 2: square blocks of the symmetric first pass
constexpr float kBig = 4.0f;        // effective cur of saturated rows: cosines are <= 1 (+ rounding)
// Passes below this many multiply-adds run on one thread: ~0.1 ms of work, where fork/join and a
// second core busy with other jobs cost more than they save.
constexpr int64_t kParallelWork = int64_t(512) << 20;
// Per-thread top-K lists of the first pass are capped at this many bytes in all (fewer threads beyond).
constexpr int64_t kTopKBytes = int64_t(1) << 30;
// Kept similarity columns of the greedy phase (see greedy()).
constexpr int64_t kCacheBytes = int64_t(512) << 20;
// A greedy step that has evaluated N / kRefreshDiv candidates through GEMM columns switches to
// a full refresh: the exact gains of every candidate from one triangular pass (N^2 D / 2 multiply-adds,
// the cost of N/2 columns, in the first pass's big blocks). Early picks lower nearly every gain, so lazy
// greedy would evaluate 80-90% of N columns there (pick 2 at N=20k on MiniLM features). N/8 vs N/4 at
// N=20k, k=2k MiniLM-256 fp32: 3 vs 2 refreshes, 335 vs 365 G greedy multiply-adds.
constexpr int64_t kRefreshDiv = 8;
// After a pick that changed more than |U| / 8 rows, or |U| / kDropDiv rows and kDropWork gathers in
// all, the kept gains turn into upper bounds (each refreshed from its column, O(|U|) streamed, only if
// it could reach a tie set) instead of subtracting every changed row's drop from every kept gain
// (|changed| gathers x up to N/4 columns per pick: 15% of the N=20k greedy in perf at |U| / 8 alone,
// gone at 1024; wall 10.95 -> 9.96 s at load 3.0).
constexpr int64_t kDropDiv = 1024;
constexpr int64_t kDropWork = int64_t(1) << 20;  // ~1 ms of gathers: below it the exact drop is cheap

// Per-thread partial top-K lists of every row (first pass). Each row appends offers that beat its bar
// into a buffer of 2K; a full buffer is cut back to its best K with nth_element and the bar becomes the
// K-th best (value, then index: ties keep the lowest index). Amortised O(1) per accepted offer, and
// after the first ~K offers the bar rejects all but ~K ln(N/K) of a row's N offers with one compare.
// (A per-row heap cost 0.7 s on top of a 1.0 s column-sum pass at N=20k, K=64, one core; 2.8 s at K=256.)
struct TopK {
  using Item = std::pair<float, int32_t>;  // (similarity, row index of the candidate)
  int64_t k;
  std::vector<Item> buf;      // [n, 2k]
  std::vector<int32_t> cnt;   // [n]
  std::vector<float> bar;     // [npad] K-th best similarity after the last cut; -1 before; +inf for padding
  std::vector<int32_t> barj;  // [n] its index
  TopK(int64_t n, int64_t npad, int64_t k_)
      : k(k_), buf(n * 2 * k_), cnt(n, 0), bar(npad, std::numeric_limits<float>::infinity()), barj(n, -1) {
    std::fill(bar.begin(), bar.begin() + n, -1.f);
  }
  static bool better(const Item& a, const Item& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); }
  void offer(int64_t i, float v, int32_t c) {
    if (v < bar[i] || (v == bar[i] && c > barj[i])) return;
    Item* row = buf.data() + i * 2 * k;
    row[cnt[i]++] = {v, c};
    if (cnt[i] == 2 * k) cut(i);
  }
  void cut(int64_t i) {
    Item* row = buf.data() + i * 2 * k;
    if (cnt[i] <= k) return;
    std::nth_element(row, row + (k - 1), row + cnt[i], better);
    cnt[i] = int32_t(k);
    bar[i] = row[k - 1].first;
    barj[i] = row[k - 1].second;
  }
};

struct Epi {
  const float* cur;        // [npad] or null (= zeros)
  const float* inv;        // [npad] row inverse norms (int8 only)
  const int32_t* rowsum;   // [npad] row integer sums (int8 only)
  const float* cand_inv;   // [6] candidate inverse norms (int8 only)
  float* const* dst;       // [6] column bases (index by row) or null entries
  double* gsum;            // [6 * 8] gain accumulators, 8 double lanes per candidate
  float* rowacc;           // [64] sum over the 6 candidates of s(row, c), or null
  int64_t row0;
  // First pass only (topk null otherwise): rows and candidates are both rows of X here.
  TopK* topk;              // this thread's partial lists
  const int32_t* cidx;     // [6] candidate row indices, -1 for padding
  bool transposed;         // off-diagonal block: also offer row r to candidate c's list
  float* selfsim;          // [n] s(i, i), written on diagonal blocks (null elsewhere)
  int64_t n;
  // Refresh pass only: [6] the candidates' own cur, so rowacc sums max(0, s - cur_c) (null = zeros).
  const float* cand_cur = nullptr;
};

// Offers one similarity in each direction; called only for lanes that passed a bar (or on the diagonal).
inline void offer_pair(const Epi& e, int64_t r, int c, float x) {
  const int64_t i = e.row0 + r, jc = e.cidx[c];
  if (i >= e.n || jc < 0) return;
  if (i == jc) {
    if (e.selfsim) e.selfsim[i] = x;
    return;
  }
  if (!e.topk) return;
  if (x >= e.topk->bar[i]) e.topk->offer(i, x, int32_t(jc));
  if (e.transposed && x >= e.topk->bar[jc]) e.topk->offer(jc, x, int32_t(i));
}

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
      if (e.rowacc) e.rowacc[r] += std::max(x - (e.cand_cur ? e.cand_cur[c] : 0.f), 0.f);
      if (e.topk || e.selfsim) offer_pair(e, r, c, x);
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
    for (int r = 0; r < kTileRows; ++r) s[c][r] = float(acc[c][r]) * (e.inv[e.row0 + r] * e.cand_inv[c]);
  epilogue_portable(s, e);
}

// ---------------------------------------------------------------- AVX-512 kernels
#define MADS_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define MADS_VNNI __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,fma")))

// First-pass top-K step: one compare per 16 lanes against the rows' bars (and, off the diagonal, the
// candidate's bar); only lanes that pass go to the scalar heap. After the first ~K offers a row's bar
// rejects all but ~K ln(N/K) of its N offers.
MADS_AVX512 inline __attribute__((always_inline)) void topk_avx512(const __m512 (&s)[4][kTileCols], const Epi& e) {
  const __m512 zero = _mm512_setzero_ps();
  const bool diag = e.selfsim != nullptr;
  for (int v = 0; v < 4; ++v) {
    const __m512 bar = e.topk ? _mm512_loadu_ps(e.topk->bar.data() + e.row0 + 16 * v) : zero;
    for (int c = 0; c < kTileCols; ++c) {
      const int64_t jc = e.cidx[c];
      if (jc < 0) continue;
      const __m512 x = _mm512_max_ps(s[v][c], zero);
      __mmask16 m = 0;
      if (e.topk) {
        m = _mm512_cmp_ps_mask(x, bar, _CMP_GE_OQ);
        if (e.transposed) m |= _mm512_cmp_ps_mask(x, _mm512_set1_ps(e.topk->bar[jc]), _CMP_GE_OQ);
      }
      if (diag) {
        const int64_t lane = jc - (e.row0 + 16 * v);
        if (lane >= 0 && lane < 16) m |= __mmask16(1u << lane);
      }
      if (!m) continue;
      alignas(64) float buf[16];
      _mm512_store_ps(buf, x);
      for (unsigned bits = m; bits; bits &= bits - 1) {
        const int l = __builtin_ctz(bits);
        offer_pair(e, 16 * v + l, c, buf[l]);
      }
    }
  }
}

MADS_AVX512 inline __attribute__((always_inline)) void epilogue_avx512(__m512 (&s)[4][kTileCols], const Epi& e) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 rs[4] = {zero, zero, zero, zero};
  __m512 cu[4];
  for (int v = 0; v < 4; ++v) cu[v] = e.cur ? _mm512_loadu_ps(e.cur + e.row0 + 16 * v) : zero;
#pragma GCC unroll 6
  for (int c = 0; c < kTileCols; ++c) {
    __m512 gv = zero;
    const __m512 cc = e.cand_cur ? _mm512_set1_ps(e.cand_cur[c]) : zero;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m512 x = _mm512_max_ps(s[v][c], zero);
      if (e.dst[c]) _mm512_storeu_ps(e.dst[c] + e.row0 + 16 * v, x);
      gv = _mm512_add_ps(gv, _mm512_max_ps(_mm512_sub_ps(x, cu[v]), zero));
      rs[v] = _mm512_add_ps(rs[v], _mm512_max_ps(_mm512_sub_ps(x, cc), zero));
    }
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(gv));
    __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(gv, 1));
    __m512d acc = _mm512_loadu_pd(e.gsum + 8 * c);
    _mm512_storeu_pd(e.gsum + 8 * c, _mm512_add_pd(acc, _mm512_add_pd(lo, hi)));
  }
  if (e.rowacc)
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(e.rowacc + 16 * v, rs[v]);
  if (e.topk || e.selfsim) topk_avx512(s, e);
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
      s[v][c] = _mm512_mul_ps(dot, _mm512_mul_ps(inv, _mm512_set1_ps(e.cand_inv[c])));
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

// Exact drop of one kept gain after a pick: sum over the changed rows r of
// max(0, S[pos_r] - old_r) - max(0, S[pos_r] - new_r), 16 rows per gather (the scalar loop was ~12% of
// the N=20k greedy in perf: every pick touches up to N/4 kept columns at each changed row).
MADS_AVX512 double drop_avx512(const float* S, const int32_t* pos, const float* oldv, const float* newv, int64_t R) {
  const __m512 zero = _mm512_setzero_ps();
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (int64_t r = 0; r < R; r += 16) {
    const __mmask16 m = R - r >= 16 ? __mmask16(0xffff) : __mmask16((1u << (R - r)) - 1);
    const __m512i p = _mm512_maskz_loadu_epi32(m, pos + r);
    const __m512 x = _mm512_mask_i32gather_ps(zero, m, p, S, 4);
    const __m512 o = _mm512_maskz_loadu_ps(m, oldv + r), nv = _mm512_maskz_loadu_ps(m, newv + r);
    const __m512 hi = _mm512_max_ps(_mm512_sub_ps(x, o), zero), lo = _mm512_max_ps(_mm512_sub_ps(x, nv), zero);
    a0 = _mm512_add_pd(a0, _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(hi)), _mm512_cvtps_pd(_mm512_castps512_ps256(lo))));
    a1 = _mm512_add_pd(a1, _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(hi, 1)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(lo, 1))));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

// ---------------------------------------------------------------- AVX2 kernels (fp32)
// The same 64 x 6 tile on 8-lane registers: per 16-row sub-panel 2 x 6 = 12 accumulators + 2 row loads +
// 1 broadcast (16 ymm). Each similarity is the same fma chain over k as the AVX-512 kernel (one fma per k,
// in k order), so both families produce bit-identical similarities; only the float partial sums of the
// gains differ in grouping (8 vs 16 lanes), which the tie rule absorbs like any backend's order.
#define MADS_AVX2 __attribute__((target("avx2,fma")))

MADS_AVX2 inline __attribute__((always_inline)) void topk_avx2(const __m256 (&s)[8][kTileCols], const Epi& e) {
  const __m256 zero = _mm256_setzero_ps();
  const bool diag = e.selfsim != nullptr;
  for (int v = 0; v < 8; ++v) {
    const __m256 bar = e.topk ? _mm256_loadu_ps(e.topk->bar.data() + e.row0 + 8 * v) : zero;
    for (int c = 0; c < kTileCols; ++c) {
      const int64_t jc = e.cidx[c];
      if (jc < 0) continue;
      const __m256 x = _mm256_max_ps(s[v][c], zero);
      unsigned m = 0;
      if (e.topk) {
        m = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(x, bar, _CMP_GE_OQ)));
        if (e.transposed) m |= unsigned(_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(e.topk->bar[jc]), _CMP_GE_OQ)));
      }
      if (diag) {
        const int64_t lane = jc - (e.row0 + 8 * v);
        if (lane >= 0 && lane < 8) m |= 1u << lane;
      }
      if (!m) continue;
      alignas(32) float buf[8];
      _mm256_store_ps(buf, x);
      for (unsigned bits = m; bits; bits &= bits - 1) {
        const int l = __builtin_ctz(bits);
        offer_pair(e, 8 * v + l, c, buf[l]);
      }
    }
  }
}

// kRowOrderGains = false (fp32): each candidate's tile gain is 8 float lane sums (rows l, l + 8, ...), then
// added per lane into its 8 double gsum lanes. true (int8): the portable epilogue's order exactly, each
// clipped term widened to double and summed row by row, r = 0 .. 63, into gsum lane 0, so the int8 gains
// and column sums are the portable kernel's bits (6 serial chains of 64 adds: the N = 20k, D = 256 int8
// column sums took 0.88-0.90 s against 0.85 s with the 8-lane float sums, ~5%, on a shared 2-core EPYC).
// The column stores, rowacc (float, candidates in order 0 .. 5) and the top-K offers are the same either way.
template <bool kRowOrderGains>
MADS_AVX2 inline __attribute__((always_inline)) void epilogue_avx2(__m256 (&s)[8][kTileCols], const Epi& e) {
  const __m256 zero = _mm256_setzero_ps();
  alignas(32) double terms[kRowOrderGains ? kTileCols : 1][kTileRows];
  __m256 rs[8];
  __m256 cu[8];
  for (int v = 0; v < 8; ++v) {
    rs[v] = zero;
    cu[v] = e.cur ? _mm256_loadu_ps(e.cur + e.row0 + 8 * v) : zero;
  }
  for (int c = 0; c < kTileCols; ++c) {
    __m256 gv = zero;
    const __m256 cc = e.cand_cur ? _mm256_set1_ps(e.cand_cur[c]) : zero;
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) {
      const __m256 x = _mm256_max_ps(s[v][c], zero);
      if (e.dst[c]) _mm256_storeu_ps(e.dst[c] + e.row0 + 8 * v, x);
      const __m256 t = _mm256_max_ps(_mm256_sub_ps(x, cu[v]), zero);
      if constexpr (kRowOrderGains) {
        _mm256_store_pd(&terms[c][8 * v], _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
        _mm256_store_pd(&terms[c][8 * v + 4], _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
      } else {
        gv = _mm256_add_ps(gv, t);
      }
      rs[v] = _mm256_add_ps(rs[v], _mm256_max_ps(_mm256_sub_ps(x, cc), zero));
    }
    if constexpr (!kRowOrderGains) {
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(gv));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1));
      _mm256_storeu_pd(e.gsum + 8 * c, _mm256_add_pd(_mm256_loadu_pd(e.gsum + 8 * c), lo));
      _mm256_storeu_pd(e.gsum + 8 * c + 4, _mm256_add_pd(_mm256_loadu_pd(e.gsum + 8 * c + 4), hi));
    }
  }
  if constexpr (kRowOrderGains) {
    double g[kTileCols] = {};
    for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 6
      for (int c = 0; c < kTileCols; ++c) g[c] += terms[c][r];
    for (int c = 0; c < kTileCols; ++c) e.gsum[8 * c] += g[c];
  }
  if (e.rowacc)
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(e.rowacc + 8 * v, rs[v]);
  if (e.topk || e.selfsim) topk_avx2(s, e);
}

MADS_AVX2 void tile_f32_avx2(const float* p, int64_t pstride, const float* cand, int64_t dpad, const Epi& e) {
  __m256 s[8][kTileCols];
  for (int v = 0; v < 4; ++v) {
    const float* pv = p + v * pstride;
    __m256 a0[kTileCols], a1[kTileCols];
    for (int c = 0; c < kTileCols; ++c) a0[c] = a1[c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < dpad; ++k) {
      const __m256 r0 = _mm256_loadu_ps(pv + 16 * k), r1 = _mm256_loadu_ps(pv + 16 * k + 8);
#pragma GCC unroll 6
      for (int c = 0; c < kTileCols; ++c) {
        const __m256 b = _mm256_broadcast_ss(cand + c * dpad + k);
        a0[c] = _mm256_fmadd_ps(r0, b, a0[c]);
        a1[c] = _mm256_fmadd_ps(r1, b, a1[c]);
      }
    }
    for (int c = 0; c < kTileCols; ++c) {
      s[2 * v][c] = a0[c];
      s[2 * v + 1][c] = a1[c];
    }
  }
  epilogue_avx2<false>(s, e);
}

// ---------------------------------------------------------------- AVX2 kernel (int8)
// The 64 x 6 int8 tile without VNNI: per 8-row slab (half of a 16-row panel's 64-byte k-quad: 8 rows x 4 k
// bytes) one load, then two int16 views of it by shifts within each 16-bit lane: ev = (x_k0, x_k2) and
// od = (x_k1, x_k3) per row's dword, sign-extended. vpmaddwd of ev with the candidate's (c_k0, c_k2) and
// of od with (c_k1, c_k3) gives each row's 4-term dot in its own int32 lane; 6 accumulators + 3 row
// registers + 2 broadcasts per slab. No saturation anywhere: int8 x int8 products are <= 2^14 in
// magnitude, a pair <= 2^15 (vpmaddwd overflows only for two (-2^15)^2 products, impossible from int8),
// and a whole dot <= D * 2^14 < 2^31 for D <= kInt8MaxDim. The candidate operand is signed int16 (x, not
// x + 128: no rowsum fix), packed by pack_candidates with each quad ordered (k0, k2, k1, k3).
// Integer sums are exact, so the int32 dot equals the portable and VNNI kernels' dot; the scale is the
// same float expression float(dot) * (inv_r * inv_c) as theirs, so every similarity is the same float.
// The epilogue sums the gains in the portable order (epilogue_avx2<true>), and this family's clip sums
// and drops do too (clip_sum, drop_of), so every int8 output (columns, gains, column sums, graph, the
// whole greedy) is the portable kernel's, bit for bit; the VNNI family differs from both only in the
// grouping of its gain sums.
MADS_AVX2 void tile_i8_avx2(const int8_t* p, int64_t pstride, const int16_t* cand, int64_t dpad, const Epi& e) {
  __m256 s[8][kTileCols];
  const int64_t kq = dpad / 4;
  for (int v = 0; v < 8; ++v) {
    const int8_t* pv = p + (v / 2) * pstride + (v % 2) * 32;  // rows 8v .. 8v + 7 of the tile
    __m256i acc[kTileCols];
    for (int c = 0; c < kTileCols; ++c) acc[c] = _mm256_setzero_si256();
    for (int64_t q = 0; q < kq; ++q) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pv + 64 * q));
      const __m256i ev = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8);
      const __m256i od = _mm256_srai_epi16(x, 8);
#pragma GCC unroll 6
      for (int c = 0; c < kTileCols; ++c) {
        int32_t w[2];
        std::memcpy(w, cand + c * dpad + 4 * q, 8);
        const __m256i t = _mm256_add_epi32(_mm256_madd_epi16(ev, _mm256_set1_epi32(w[0])),
                                           _mm256_madd_epi16(od, _mm256_set1_epi32(w[1])));
        acc[c] = _mm256_add_epi32(acc[c], t);
      }
    }
    const __m256 inv = _mm256_loadu_ps(e.inv + e.row0 + 8 * v);
    for (int c = 0; c < kTileCols; ++c)
      s[v][c] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[c]), _mm256_mul_ps(inv, _mm256_set1_ps(e.cand_inv[c])));
  }
  epilogue_avx2<true>(s, e);
}

// portable_order: the final reduction of clip_sum_portable, ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
// over its lanes a_l (rows i = l mod 8; those lane sums are identical here), so the result is its bits.
MADS_AVX2 double clip_sum_avx2(const float* col, const float* cur, int64_t n, bool portable_order) {
  const __m256 zero = _mm256_setzero_ps();
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (int64_t i = 0; i < n; i += 8) {  // n is a multiple of 8
    const __m256 t = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(col + i), _mm256_loadu_ps(cur + i)), zero);
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
  }
  if (portable_order) {
    alignas(32) double lo[4], hi[4];
    _mm256_store_pd(lo, a0);
    _mm256_store_pd(hi, a1);
    return ((lo[0] + lo[1]) + (lo[2] + lo[3])) + ((hi[0] + hi[1]) + (hi[2] + hi[3]));
  }
  alignas(32) double out[4];
  _mm256_store_pd(out, _mm256_add_pd(a0, a1));
  return (out[0] + out[1]) + (out[2] + out[3]);
}

MADS_AVX2 double drop_avx2(const float* S, const int32_t* pos, const float* oldv, const float* newv, int64_t R) {
  const __m256 zero = _mm256_setzero_ps();
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t r = 0;
  for (; r + 8 <= R; r += 8) {
    const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pos + r));
    const __m256 x = _mm256_i32gather_ps(S, p, 4);
    const __m256 hi = _mm256_max_ps(_mm256_sub_ps(x, _mm256_loadu_ps(oldv + r)), zero);
    const __m256 lo = _mm256_max_ps(_mm256_sub_ps(x, _mm256_loadu_ps(newv + r)), zero);
    a0 = _mm256_add_pd(a0, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi)), _mm256_cvtps_pd(_mm256_castps256_ps128(lo))));
    a1 = _mm256_add_pd(a1, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1))));
  }
  alignas(32) double out[4];
  _mm256_store_pd(out, _mm256_add_pd(a0, a1));
  double drop = (out[0] + out[1]) + (out[2] + out[3]);
  for (; r < R; ++r) {
    const float x = S[pos[r]];
    drop += double(std::max(x - oldv[r], 0.f)) - double(std::max(x - newv[r], 0.f));
  }
  return drop;
}

// drop_portable's order (one serial sum over r, for the AVX2 int8 family's bit identity with it) with the
// gathers and clips 8 rows at a time.
MADS_AVX2 double drop_avx2_serial(const float* S, const int32_t* pos, const float* oldv, const float* newv, int64_t R) {
  const __m256 zero = _mm256_setzero_ps();
  double drop = 0.0;
  int64_t r = 0;
  alignas(32) double t[8];
  for (; r + 8 <= R; r += 8) {
    const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pos + r));
    const __m256 x = _mm256_i32gather_ps(S, p, 4);
    const __m256 hi = _mm256_max_ps(_mm256_sub_ps(x, _mm256_loadu_ps(oldv + r)), zero);
    const __m256 lo = _mm256_max_ps(_mm256_sub_ps(x, _mm256_loadu_ps(newv + r)), zero);
    _mm256_store_pd(t, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi)), _mm256_cvtps_pd(_mm256_castps256_ps128(lo))));
    _mm256_store_pd(t + 4, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1))));
    for (int l = 0; l < 8; ++l) drop += t[l];
  }
  for (; r < R; ++r) {
    const float x = S[pos[r]];
    drop += double(std::max(x - oldv[r], 0.f)) - double(std::max(x - newv[r], 0.f));
  }
  return drop;
}

double drop_portable(const float* S, const int32_t* pos, const float* oldv, const float* newv, int64_t R) {
  double drop = 0.0;
  for (int64_t r = 0; r < R; ++r) {
    const float x = S[pos[r]];
    drop += double(std::max(x - oldv[r], 0.f)) - double(std::max(x - newv[r], 0.f));
  }
  return drop;
}

double clip_sum_portable(const float* col, const float* cur, int64_t n) {
  double a[8] = {};
  for (int64_t i = 0; i < n; i += 8)
    for (int l = 0; l < 8; ++l) a[l] += std::max(col[i + l] - cur[i + l], 0.f);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// sum_i max(0, col[i] - cur[i]) over n (a multiple of 64) rows, in the family's vector width (AVX2 int8: in the
// portable order).
double clip_sum(int isa, const float* col, const float* cur, int64_t n) {
  if (isa == 1 || isa == 2) return clip_sum_avx512(col, cur, n);
  if (isa == 3 || isa == 4) return clip_sum_avx2(col, cur, n, isa == 4);
  return clip_sum_portable(col, cur, n);
}

// drop_avx512 / drop_avx2 / drop_avx2_serial (the portable order) / drop_portable by family.
double drop_of(int isa, const float* S, const int32_t* pos, const float* oldv, const float* newv, int64_t R) {
  if (isa == 1 || isa == 2) return drop_avx512(S, pos, oldv, newv, R);
  if (isa == 3) return drop_avx2(S, pos, oldv, newv, R);
  if (isa == 4) return drop_avx2_serial(S, pos, oldv, newv, R);
  return drop_portable(S, pos, oldv, newv, R);
}

// Rows in panels of 16: all of X, or a packed subset (the unsaturated rows). Positions are view-local.
struct RowView {
  const void* base = nullptr;
  int64_t rows_pad = 0;             // multiple of 64; 0 = empty
  const float* inv = nullptr;       // [rows_pad]
  const int32_t* rowsum = nullptr;  // [rows_pad]
};

struct Kernel {
  int isa;
  bool int8;
  int64_t dpad;
  void operator()(const RowView& v, int64_t row0, const void* cand, const Epi& e) const {
    const int64_t pstride = dpad * 16;
    if (int8) {
      const int8_t* p = static_cast<const int8_t*>(v.base) + (row0 / 16) * pstride;
      if (isa == 4) {
        tile_i8_avx2(p, pstride, static_cast<const int16_t*>(cand), dpad, e);
        return;
      }
      const uint8_t* cb = static_cast<const uint8_t*>(cand);
      if (isa == 2) tile_i8_vnni(p, pstride, cb, dpad, e);
      else tile_i8_portable(p, pstride, cb, dpad, e);
    } else {
      const float* p = static_cast<const float*>(v.base) + (row0 / 16) * pstride;
      const float* cb = static_cast<const float*>(cand);
      if (isa == 1) tile_f32_avx512(p, pstride, cb, dpad, e);
      else if (isa == 3) tile_f32_avx2(p, pstride, cb, dpad, e);
      else tile_f32_portable(p, pstride, cb, dpad, e);
    }
  }
  // Bytes per k of a packed candidate (pack_candidates): fp32 4, int8 1 (x + 128), AVX2 int8 2 (int16).
  int64_t elem() const { return int8 ? (isa == 4 ? 2 : 1) : 4; }
  // Bytes per k of a row in the panels.
  int64_t row_elem() const { return int8 ? 1 : 4; }
};

// Similarity columns of mpad packed candidates (groups of 6) over the rows of `view`: dst[c] (view
// positions, may be null) and gains[c] = sum over view rows of max(0, s - cur).
void run_block(const Kernel& kern, const RowView& view, const void* cand, const float* cinv, int64_t m, int64_t mpad,
               const float* cur, float* const* dst, double* gains) {
  const int64_t groups = mpad / kTileCols;
  const int64_t tiles = view.rows_pad / kTileRows;
  // Rows per chunk: keep a chunk of row panels in L2 (~256 KB) while every candidate group sweeps it.
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / (kTileRows * kern.dpad * kern.row_elem()));
  const int64_t nchunks = (tiles + chunk - 1) / chunk;
  const int64_t work = view.rows_pad * mpad * kern.dpad;
  std::vector<double> total(mpad * 8, 0.0);
  const int32_t nocidx[kTileCols] = {-1, -1, -1, -1, -1, -1};
#pragma omp parallel if (work >= kParallelWork && nchunks > 1)
  {
    std::vector<double> gsum(mpad * 8, 0.0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t t1 = std::min(tiles, (ch + 1) * chunk);
      for (int64_t g = 0; g < groups; ++g) {
        const void* cb = static_cast<const uint8_t*>(cand) + g * kTileCols * kern.dpad * kern.elem();
        for (int64_t t = ch * chunk; t < t1; ++t) {
          Epi e{cur, view.inv, view.rowsum, cinv + g * kTileCols, dst + g * kTileCols, gsum.data() + g * kTileCols * 8,
                nullptr, t * kTileRows, nullptr, nocidx, false, nullptr, 0};
          kern(view, t * kTileRows, cb, e);
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

}  // namespace

// ---------------------------------------------------------------- construction
DenseSimilarity::DenseSimilarity(const float* X, int64_t n, int64_t d) : n_(n), d_(d) {
  if (n <= 0 || d <= 0) throw std::invalid_argument("X must have at least one row and one column");
  if (n >= (int64_t(1) << 31)) throw std::invalid_argument("X must have fewer than 2^31 rows");
  npad_ = round_up(n, kTileRows);
  dpad_ = d;
  isa_ = choose_isa(false);
  kernel_ = isa_ == 1 ? "avx512-fp32" : isa_ == 3 ? "avx2-fp32" : "portable-fp32";
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
  if (n >= (int64_t(1) << 31)) throw std::invalid_argument("X must have fewer than 2^31 rows");
  check_int8_dim(d);
  npad_ = round_up(n, kTileRows);
  dpad_ = round_up(d, 4);
  isa_ = choose_isa(true);
  kernel_ = isa_ == 2 ? "avx512-vnni-int8" : isa_ == 4 ? "avx2-int8" : "portable-int8";
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
    if (int8_ && isa_ == 4) {  // tile_i8_avx2's operand: int16, each k-quad ordered (k0, k2, k1, k3)
      int16_t* out = static_cast<int16_t*>(buf) + c * dpad_;
      if (j < 0) {
        std::fill(out, out + dpad_, int16_t(0));
        continue;
      }
      const int8_t* panel = xq_.data() + (j / 16) * dpad_ * 16 + (j % 16) * 4;
      for (int64_t q = 0; q < dpad_ / 4; ++q) {
        const int8_t* x = panel + q * 64;
        out[4 * q] = x[0];
        out[4 * q + 1] = x[2];
        out[4 * q + 2] = x[1];
        out[4 * q + 3] = x[3];
      }
    } else if (int8_) {
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

// ---------------------------------------------------------------- similarity blocks
void DenseSimilarity::block(const int64_t* idx, int64_t m, const float* cur, float* const* dst, double* gains) const {
  const int64_t mpad = round_up(m, kTileCols);
  const Kernel kern{isa_, int8_, dpad_};
  std::vector<uint8_t> cand(mpad * dpad_ * kern.elem());
  pack_candidates(idx, m, mpad, cand.data());
  std::vector<float> cinv(mpad, 0.f);
  for (int64_t c = 0; c < m; ++c) cinv[c] = inv_[idx[c]];
  std::vector<float*> dsts(mpad, nullptr);
  if (dst)
    for (int64_t c = 0; c < m; ++c) dsts[c] = dst[c];
  const RowView all{int8_ ? (const void*)xq_.data() : (const void*)xf_.data(), npad_, inv_.data(), rowsum_.data()};
  run_block(kern, all, cand.data(), cinv.data(), m, mpad, cur, dsts.data(), gains);
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

void DenseSimilarity::column_sums(double* out) const { first_pass(0, out, nullptr); }

// ---------------------------------------------------------------- first pass
int64_t DenseSimilarity::first_pass(int64_t k, double* out, NeighborGraph* graph) const {
  return sym_pass(nullptr, k, out, graph);
}

// One pass over the upper triangle of s in kSymBlock x kSymBlock blocks. With cur null: column sums
// (and the top-K graph). With cur [npad]: out[j] = sum_i max(0, s(i, j) - cur_i), where each
// off-diagonal tile gives column j its clipped sum over the rows AND row i its clipped sum over the
// candidates (against cur_j), so every gain costs half a column (the refresh of the lazy greedy).
int64_t DenseSimilarity::sym_pass(const float* cur, int64_t k, double* out, NeighborGraph* graph) const {
  if (cur) graph = nullptr;
  const Kernel kern{isa_, int8_, dpad_};
  const int64_t elem = kern.elem();
  const int64_t nb = (npad_ + kSymBlock - 1) / kSymBlock;
  const RowView all{int8_ ? (const void*)xq_.data() : (const void*)xf_.data(), npad_, inv_.data(), rowsum_.data()};
  const int64_t keff = graph ? std::max<int64_t>(0, std::min(k, n_ - 1)) : 0;
  int threads = omp_get_max_threads();
  if (keff > 0)
    threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, kTopKBytes / std::max<int64_t>(1, n_ * keff * 8))));
  std::vector<std::unique_ptr<TopK>> lists(threads);
  std::vector<float> selfsim(graph ? n_ : 0, 0.f);
  std::vector<double> total(npad_, 0.0);
  int64_t madds = 0;
#pragma omp parallel num_threads(threads) reduction(+ : madds)
  {
    const int tid = omp_get_thread_num();
    if (keff > 0) lists[tid] = std::make_unique<TopK>(n_, npad_, keff);
    TopK* topk = keff > 0 ? lists[tid].get() : nullptr;
    std::vector<double> acc(npad_, 0.0);
    std::vector<uint8_t> cand(kSymBlock * dpad_ * elem);
    std::vector<int64_t> idx(kSymBlock);
    std::vector<int32_t> cidx(kSymBlock);
    std::vector<float> cinv(kSymBlock);
    std::vector<float> ccur(kSymBlock);  // [kSymBlock] candidates' cur (refresh only), kBig for padding
    std::vector<double> gsum(kSymBlock * 8);
    float rowacc[kTileRows];
    float* nodst[kTileCols] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
#pragma omp for schedule(dynamic, 1)
    for (int64_t bb = 0; bb < nb; ++bb) {
      const int64_t b = nb - 1 - bb;  // the largest rows of work first
      const int64_t j0 = b * kSymBlock, m = std::max<int64_t>(0, std::min(n_, j0 + kSymBlock) - j0);
      for (int64_t c = 0; c < kSymBlock; ++c) {
        idx[c] = c < m ? j0 + c : -1;
        cidx[c] = c < m ? int32_t(j0 + c) : -1;
        cinv[c] = c < m ? inv_[j0 + c] : 0.f;
        ccur[c] = cur && c < m ? cur[j0 + c] : kBig;
      }
      pack_candidates(idx.data(), kSymBlock, kSymBlock, cand.data());
      std::fill(gsum.begin(), gsum.end(), 0.0);
      const int64_t groups = (m + kTileCols - 1) / kTileCols;
      for (int64_t a = 0; a <= b; ++a) {
        const int64_t t0 = a * kSymBlock / kTileRows, t1 = std::min(npad_, (a + 1) * kSymBlock) / kTileRows;
        madds += (t1 - t0) * kTileRows * groups * kTileCols * dpad_;
        for (int64_t g = 0; g < groups; ++g) {
          const void* cb = cand.data() + g * kTileCols * dpad_ * elem;
          for (int64_t t = t0; t < t1; ++t) {
            // Off the diagonal each tile also gives the transposed block's column sums (its row sums)
            // and offers each row to its candidates' lists.
            Epi e{cur, inv_.data(), rowsum_.data(), cinv.data() + g * kTileCols, nodst,
                  gsum.data() + g * kTileCols * 8, a < b ? rowacc : nullptr, t * kTileRows,
                  topk, cidx.data() + g * kTileCols, a < b, (graph && a == b) ? selfsim.data() : nullptr, n_,
                  cur ? ccur.data() + g * kTileCols : nullptr};
            kern(all, t * kTileRows, cb, e);
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
  if (!graph) return madds;

  // Merge the per-thread lists: each ordered pair (i, c) was offered to exactly one thread, so the union
  // of the partial top-K lists holds the global top-K of every row.
  NeighborGraph& g = *graph;
  const int64_t w = keff + 1;
  g.n = n_;
  g.k = keff;
  g.idx.assign(n_ * w, 0);
  g.sim.assign(n_ * w, 0.f);
  g.threshold.assign(n_, 0.f);
  const bool complete = keff == n_ - 1;
#pragma omp parallel num_threads(threads)
  {
    std::vector<std::pair<float, int32_t>> pool;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_; ++i) {
      pool.clear();
      for (int t = 0; t < threads; ++t) {
        const TopK* L = lists[t].get();
        if (!L) continue;
        for (int32_t q = 0; q < L->cnt[i]; ++q) pool.push_back(L->buf[i * 2 * keff + q]);
      }
      auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      };
      const int64_t take = std::min<int64_t>(keff, int64_t(pool.size()));
      std::partial_sort(pool.begin(), pool.begin() + take, pool.end(), better);
      g.threshold[i] = (complete || take == 0) ? 0.f : pool[take - 1].first;
      std::sort(pool.begin(), pool.begin() + take,
                [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) { return a.second < b.second; });
      g.idx[i * w] = int32_t(i);
      g.sim[i * w] = selfsim[i];
      for (int64_t q = 0; q < take; ++q) {
        g.idx[i * w + 1 + q] = pool[q].second;
        g.sim[i * w + 1 + q] = pool[q].first;
      }
    }
  }
  lists.clear();
  g.rptr.assign(n_ + 1, 0);
  for (int64_t e = 0; e < n_ * w; ++e) ++g.rptr[g.idx[e] + 1];
  for (int64_t c = 0; c < n_; ++c) g.rptr[c + 1] += g.rptr[c];
  g.rrow.assign(n_ * w, 0);
  g.rsim.assign(n_ * w, 0.f);
  std::vector<int64_t> fill(g.rptr.begin(), g.rptr.end() - 1);
  for (int64_t i = 0; i < n_; ++i)
    for (int64_t q = 0; q < w; ++q) {
      const int64_t e = fill[g.idx[i * w + q]]++;
      g.rrow[e] = int32_t(i);
      g.rsim[e] = g.sim[i * w + q];
    }
  return madds;
}

// ---------------------------------------------------------------- lazy greedy
GreedyOutput DenseSimilarity::lazy_greedy(int64_t budget, int64_t batch,
                                          const std::function<void(int64_t)>& progress) const {
  return greedy(budget, batch, kDefaultGraphK, kCacheBytes, progress);
}

GreedyOutput DenseSimilarity::lazy_greedy(int64_t budget, int64_t batch, int64_t graph_k, int64_t memory_budget,
                                          const std::function<void(int64_t)>& progress) const {
  if (graph_k < 0) throw std::invalid_argument("graph_k must be >= 0");
  if (memory_budget >= 0 && matrix_bytes() <= memory_budget) return cached_greedy(budget, batch, progress);
  return greedy(budget, batch, graph_k, memory_budget < 0 ? kCacheBytes : memory_budget, progress);
}

GreedyOutput DenseSimilarity::knn_lazy_greedy(int64_t budget, int64_t n_neighbors, int64_t batch,
                                              const std::function<void(int64_t)>& progress) const {
  if (n_neighbors < 1) throw std::invalid_argument("n_neighbors must be >= 1");
  if (budget < 1 || budget > n_) throw std::invalid_argument("budget must be in [1, N]");
  // The first pass's graph, then the greedy on it: W[i, c] = s(i, c) for the c that row i lists.
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  std::vector<double> sums(n_);
  NeighborGraph g;
  const int64_t madds = first_pass(n_neighbors, sums.data(), &g);
  const double first_seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  GreedyOutput out = graph_lazy_greedy(CoverageGraph{n_, g.rptr.data(), g.rrow.data(), g.rsim.data()}, budget,
                                       batch < 0 ? 0 : batch, progress);
  out.first_pass_multiply_adds = madds;
  out.multiply_adds = madds;
  out.n_passes = 1;
  out.first_pass_seconds = first_seconds;
  return out;
}

GreedyOutput DenseSimilarity::greedy(int64_t budget, int64_t batch, int64_t graph_k, int64_t cache_bytes,
                                     const std::function<void(int64_t)>& progress) const {
  if (budget < 1 || budget > n_) throw std::invalid_argument("budget must be in [1, N]");
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  const bool use_graph = graph_k > 0;
  const int64_t m = batch > 0 ? batch : 48;
  GreedyOutput out;
  out.ranking.reserve(budget);
  out.gains.reserve(budget);
  out.unsaturated.reserve(budget);
  out.evaluations.reserve(budget);

  std::vector<double> bounds(n_);
  NeighborGraph g;
  out.first_pass_multiply_adds = first_pass(use_graph ? graph_k : 0, bounds.data(), use_graph ? &g : nullptr);
  out.multiply_adds = out.first_pass_multiply_adds;
  out.n_evaluations = n_;
  out.n_passes = 1;
  const auto t_first = clock::now();
  out.first_pass_seconds = std::chrono::duration<double>(t_first - t_start).count();

  const int64_t w = g.k + 1;
  // Row i is saturated once cur_i >= thr_i: without a graph every row stays dense.
  std::vector<float> thr(n_, std::numeric_limits<float>::infinity());
  if (use_graph) std::copy(g.threshold.begin(), g.threshold.end(), thr.begin());
  std::vector<float> cur(n_, 0.f);
  out.nearest.assign(n_, 0);
  std::vector<uint8_t> sat(n_, 0);
  int64_t u = 0;
  for (int64_t i = 0; i < n_; ++i) {
    sat[i] = 0.f >= thr[i];
    u += !sat[i];
  }

  // The packed view of (a superset of) the unsaturated rows U, in ascending row order.
  const Kernel kern{isa_, int8_, dpad_};
  std::vector<float> pf;
  std::vector<int8_t> pq;
  std::vector<float> pinv;
  std::vector<int32_t> prowsum;
  std::vector<int32_t> prow;  // [ppad] row of each packed position, -1 for padding
  std::vector<float> ceff;    // [ppad] cur for unsaturated rows, kBig for saturated and padding rows
  RowView view;
  int64_t prows = 0;          // real rows in the view
  if (u == n_) {
    view = {int8_ ? (const void*)xq_.data() : (const void*)xf_.data(), npad_, inv_.data(), rowsum_.data()};
    prow.assign(npad_, -1);
    ceff.assign(npad_, kBig);
    for (int64_t i = 0; i < n_; ++i) {
      prow[i] = int32_t(i);
      ceff[i] = 0.f;
    }
    prows = n_;
  }
  // Kept columns: a cache of candidate columns over the view. A kept candidate's gain is refreshed
  // exactly from its column in O(|U|) instead of a GEMM in O(|U| D); early picks re-evaluate thousands
  // of the same candidates (every pick lowers every gain by the small similarities it covers), so this
  // is most of the saving there. Capped at cache_bytes and N/4 columns (never the N x N matrix); the
  // stride is the view size and shrinks in place at each repack, which raises the capacity.
  int64_t stride = u == n_ ? npad_ : round_up(u, kTileRows);
  const int64_t col_limit = std::max<int64_t>(8 * m + kTileCols, n_ / 4);
  const int64_t cache_floats =
      u > 0 ? std::min(col_limit, std::max<int64_t>(8 * m + kTileCols, cache_bytes / 4 / stride)) * stride : 0;
  int64_t cap = u > 0 ? cache_floats / stride : 8 * m + kTileCols;
  std::vector<float> cols(cache_floats);
  out.cache_bytes = int64_t(cols.size() * sizeof(float));
  std::vector<int64_t> slot_idx(cap, -1);
  std::vector<double> slot_dense(cap, 0.0), slot_sparse(cap, 0.0);
  std::vector<uint8_t> slot_fresh(cap, 0);  // gain exact for the current cur (else an upper bound)
  std::vector<int32_t> slot_of(n_, -1);

  // Compacts the view (and every live column) to the rows still unsaturated.
  auto repack = [&]() {
    const int64_t npadu = round_up(u, kTileRows);
    std::vector<float> nf;
    std::vector<int8_t> nq;
    if (int8_) nq.assign(npadu * dpad_, 0);
    else nf.assign(npadu * dpad_, 0.f);
    std::vector<float> ninv(npadu, 0.f), nceff(npadu, kBig);
    std::vector<int32_t> nrowsum(npadu, 0), nrow(npadu, -1);
    std::vector<std::pair<int64_t, int64_t>> moves;  // (old position, new position), both ascending
    moves.reserve(u);
    int64_t q = 0;
    const int64_t span = prows ? prows : n_;  // no view yet: scan every row
    for (int64_t p = 0; p < span; ++p) {
      const int64_t i = prows ? prow[p] : p;
      if (i < 0 || sat[i]) continue;
      if (int8_) {
        const int8_t* src = xq_.data() + (i / 16) * dpad_ * 16 + (i % 16) * 4;
        int8_t* dstp = nq.data() + (q / 16) * dpad_ * 16 + (q % 16) * 4;
        for (int64_t kq = 0; kq < dpad_ / 4; ++kq) std::memcpy(dstp + kq * 64, src + kq * 64, 4);
      } else {
        const float* src = xf_.data() + (i / 16) * dpad_ * 16 + (i % 16);
        float* dstp = nf.data() + (q / 16) * dpad_ * 16 + (q % 16);
        for (int64_t k = 0; k < dpad_; ++k) dstp[k * 16] = src[k * 16];
      }
      ninv[q] = inv_[i];
      nrowsum[q] = rowsum_[i];
      nrow[q] = int32_t(i);
      nceff[q] = cur[i];
      if (prows) moves.emplace_back(p, q);
      ++q;
    }
    // New stride <= old and q <= p: a forward in-place copy never overwrites a value still to be read.
    const int64_t nstride = npadu;
    if (prows)
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0) {
          const float* src = cols.data() + s * stride;
          float* dstc = cols.data() + s * nstride;
          for (const auto& mv : moves) dstc[mv.second] = src[mv.first];
          std::fill(dstc + q, dstc + nstride, 0.f);
        }
    if (nstride > 0 && !cols.empty()) {
      stride = nstride;
      const int64_t ncap = std::max(cap, std::min<int64_t>(col_limit, int64_t(cols.size()) / stride));
      slot_idx.resize(ncap, -1);
      slot_dense.resize(ncap, 0.0);
      slot_sparse.resize(ncap, 0.0);
      slot_fresh.resize(ncap, 0);
      cap = ncap;
    }
    pf.swap(nf);
    pq.swap(nq);
    pinv.swap(ninv);
    prowsum.swap(nrowsum);
    prow.swap(nrow);
    ceff.swap(nceff);
    view = {int8_ ? (const void*)pq.data() : (const void*)pf.data(), npadu, pinv.data(), prowsum.data()};
    prows = u;
    out.n_repacks += 1;
  };
  if (u > 0 && u < n_) repack();

  LazyHeap heap(bounds.data(), n_);

  std::vector<int64_t> take, take_slot;
  std::vector<float*> dst;
  std::vector<double> new_dense;
  std::vector<uint8_t> cand;
  std::vector<float> cinv;
  std::vector<int32_t> changed_p, sat_changed, newly;
  std::vector<float> old_eff, new_eff, sat_old;
  std::vector<int64_t> live_slots, stale, order;

  auto gain_of = [&](int64_t s) { return slot_dense[s] + slot_sparse[s]; };
  auto sparse_gain = [&](int64_t c) {
    double sp = 0.0;
    for (int64_t e = g.rptr[c]; e < g.rptr[c + 1]; ++e) {
      const int32_t r = g.rrow[e];
      if (sat[r]) sp += std::max(g.rsim[e] - cur[r], 0.f);
    }
    return sp;
  };

  std::vector<uint8_t> chosen(n_, 0);   // [n] picked already
  std::vector<float> cfull, pcol;       // refresh: [npad] effective cur; [view rows] the pick's column
  std::vector<double> rgain, rsparse;   // [n] refresh gains: dense part, sparse part
  for (int64_t step = 0; step < budget; ++step) {
    int64_t step_dense = 0;  // GEMM column evaluations of this step
    bool refresh = false;
    // Fresh slots compete directly; stale kept columns are refreshed from the column (cheap) and the
    // heap's candidates through a GEMM batch, both while their bound could reach the tie set.
    double best = -std::numeric_limits<double>::infinity();
    int64_t live = 0;  // fresh slots
    for (int64_t s = 0; s < cap; ++s)
      if (slot_idx[s] >= 0 && slot_fresh[s]) {
        ++live;
        best = std::max(best, gain_of(s));
      }
    stale.clear();
    for (int64_t s = 0; s < cap; ++s)
      if (slot_idx[s] >= 0 && !slot_fresh[s]) stale.push_back(s);
    // A heap, not a sort: a step refreshes a few of the thousands of stale kept columns (sorting them all
    // every step was 4.8% of the N=20k greedy in perf).
    const auto stale_less = [&](int64_t a, int64_t b) {
      return gain_of(a) < gain_of(b) || (gain_of(a) == gain_of(b) && slot_idx[a] > slot_idx[b]);
    };
    std::make_heap(stale.begin(), stale.end(), stale_less);
    while (!stale.empty()) {
      const int64_t s = stale.front();
      if (live > 0 && gain_of(s) < best - tie_tolerance(best)) break;  // the largest: no other qualifies
      std::pop_heap(stale.begin(), stale.end(), stale_less);
      stale.pop_back();
      slot_dense[s] = prows == 0 ? 0.0 : clip_sum(isa_, cols.data() + s * stride, ceff.data(), view.rows_pad);
      slot_fresh[s] = 1;
      ++live;
      best = std::max(best, gain_of(s));
      out.n_evaluations += 1;
      out.cache_hits += 1;
    }
    // Evaluate heap candidates while one could reach the tie set (bound >= G - tau); 0 bounds are exact.
    // A step that needs another pass doubles its batch (up to 8 m): early picks evaluate thousands of
    // candidates, and one pass over U serves many more columns.
    int64_t mb = m;
    const bool can_refresh = prows > 0 && 2 * u > n_;  // the triangle over all rows costs <= N columns over U
    while (!refresh && !heap.empty() && heap.top().ub > 0.0 &&
           (live == 0 || heap.top().ub >= best - tie_tolerance(best))) {
      if (can_refresh && step_dense * kRefreshDiv >= n_) {
        refresh = true;
        break;
      }
      take.clear();
      // Fill the batch with the next best bounds: one pass over U costs about the same for 6 or m
      // columns, and the extra kept columns serve later steps.
      while (int64_t(take.size()) < mb && !heap.empty() && heap.top().ub > 0.0) {
        const int64_t c = heap.pop().idx;
        if (slot_of[c] >= 0) continue;  // a kept column's heap entry is obsolete (its slot holds the bound)
        take.push_back(c);
      }
      if (take.empty()) continue;
      const int64_t mt = int64_t(take.size());
      int64_t used = 0;
      for (int64_t s = 0; s < cap; ++s) used += slot_idx[s] >= 0;
      if (cap - used < mt) {
        // Evict in bulk (an eighth at a time): stale before fresh, then the lowest bounds; their gains
        // stay valid upper bounds in the heap. A fresh gain that could be in the tie set is never evicted
        // (the heap would hand it straight back): with a tie set larger than the cache, the cache grows.
        order.clear();
        const double floor = live > 0 ? best - tie_tolerance(best) : std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < cap; ++s)
          if (slot_idx[s] >= 0 && (!slot_fresh[s] || gain_of(s) < floor)) order.push_back(s);
        const int64_t need = mt - (cap - used);
        const int64_t nev = std::min<int64_t>(int64_t(order.size()), std::max<int64_t>(need, cap / 8));
        if (nev > 0)
          std::nth_element(order.begin(), order.begin() + (nev - 1), order.end(), [&](int64_t a, int64_t b) {
            if (slot_fresh[a] != slot_fresh[b]) return slot_fresh[a] < slot_fresh[b];
            return gain_of(a) < gain_of(b) || (gain_of(a) == gain_of(b) && slot_idx[a] > slot_idx[b]);
          });
        for (int64_t q = 0; q < nev; ++q) {
          const int64_t s = order[q];
          if (slot_fresh[s]) --live;
          heap.push(gain_of(s), slot_idx[s]);
          slot_of[slot_idx[s]] = -1;
          slot_idx[s] = -1;
          slot_fresh[s] = 0;
        }
        if (nev < need) {
          cap += need - nev;
          slot_idx.resize(cap, -1);
          slot_dense.resize(cap, 0.0);
          slot_sparse.resize(cap, 0.0);
          slot_fresh.resize(cap, 0);
          if (prows > 0) cols.resize(cap * stride, 0.f);
          out.cache_bytes = std::max(out.cache_bytes, int64_t(cols.size() * sizeof(float)));
        }
      }
      take_slot.clear();
      for (int64_t s = 0; s < cap && int64_t(take_slot.size()) < mt; ++s)
        if (slot_idx[s] < 0) take_slot.push_back(s);
      new_dense.assign(mt, 0.0);
      if (prows > 0) {
        const int64_t mpad = round_up(mt, kTileCols);
        cand.resize(mpad * dpad_ * kern.elem());
        pack_candidates(take.data(), mt, mpad, cand.data());
        cinv.assign(mpad, 0.f);
        dst.assign(mpad, nullptr);
        for (int64_t q = 0; q < mt; ++q) {
          cinv[q] = inv_[take[q]];
          dst[q] = cols.data() + take_slot[q] * stride;
        }
        run_block(kern, view, cand.data(), cinv.data(), mt, mpad, ceff.data(), dst.data(), new_dense.data());
        mb = std::min(2 * mb, 8 * m);
        out.n_passes += 1;
        out.n_dense_evaluations += mt;
        step_dense += mt;
        out.multiply_adds += view.rows_pad * mpad * dpad_;
      }
      out.n_evaluations += mt;
      for (int64_t q = 0; q < mt; ++q) {
        const int64_t s = take_slot[q];
        slot_idx[s] = take[q];
        slot_of[take[q]] = int32_t(s);
        slot_dense[s] = new_dense[q];
        slot_sparse[s] = use_graph ? sparse_gain(take[q]) : 0.0;
        slot_fresh[s] = 1;
        ++live;
        best = std::max(best, gain_of(s));
      }
    }
    // Tie set: fresh candidates within tau of the best, plus the lowest-index exact-zero bound.
    int64_t pick = -1, pick_slot = -1;
    double pick_gain = 0.0;
    const float* pickcol = nullptr;  // the pick's column over the view
    if (refresh) {
      // Exact gains of every candidate: dense part from one triangular pass against the effective cur
      // (kBig on saturated rows), sparse part from the reverse adjacency. Every bound becomes exact.
      cfull.assign(npad_, kBig);
      for (int64_t i = 0; i < n_; ++i)
        if (!sat[i]) cfull[i] = cur[i];
      rgain.assign(n_, 0.0);
      rsparse.assign(n_, 0.0);
      out.multiply_adds += sym_pass(cfull.data(), 0, rgain.data(), nullptr);
      out.n_passes += 1;
      out.n_refreshes += 1;
      best = 0.0;
      for (int64_t j = 0; j < n_; ++j) {
        if (chosen[j]) continue;
        rgain[j] = std::max(0.0, rgain[j]);
        if (use_graph) rsparse[j] = sparse_gain(j);
        best = std::max(best, rgain[j] + rsparse[j]);
        out.n_evaluations += 1;
        out.n_dense_evaluations += 1;
      }
      const double floor = best - tie_tolerance(best);
      for (int64_t j = 0; j < n_ && pick < 0; ++j)
        if (!chosen[j] && rgain[j] + rsparse[j] >= floor) pick = j;
      pick_gain = rgain[pick] + rsparse[pick];
      pick_slot = slot_of[pick];
      live = 0;
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0) {
          slot_dense[s] = rgain[slot_idx[s]];
          slot_sparse[s] = rsparse[slot_idx[s]];
          slot_fresh[s] = 1;
          ++live;
        }
      std::vector<Entry> bounds_now;
      bounds_now.reserve(size_t(n_));
      for (int64_t j = 0; j < n_; ++j)
        if (!chosen[j] && slot_of[j] < 0 && j != pick) bounds_now.push_back({rgain[j] + rsparse[j], j});
      heap = LazyHeap(std::move(bounds_now));
      if (pick_slot < 0) {  // its column over the view, for the cur update
        pcol.assign(view.rows_pad, 0.f);
        cand.resize(kTileCols * dpad_ * kern.elem());
        pack_candidates(&pick, 1, kTileCols, cand.data());
        cinv.assign(kTileCols, 0.f);
        cinv[0] = inv_[pick];
        dst.assign(kTileCols, nullptr);
        dst[0] = pcol.data();
        double gd = 0.0;
        run_block(kern, view, cand.data(), cinv.data(), 1, kTileCols, ceff.data(), dst.data(), &gd);
        out.multiply_adds += view.rows_pad * kTileCols * dpad_;
        pickcol = pcol.data();
      }
    } else if (live > 0) {
      const double floor = best - tie_tolerance(best);
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0 && slot_fresh[s] && gain_of(s) >= floor && (pick < 0 || slot_idx[s] < pick)) {
          pick = slot_idx[s];
          pick_slot = s;
          pick_gain = gain_of(s);
        }
    }
    if (!refresh && !heap.empty() && heap.top().ub <= 0.0 && (live == 0 || 0.0 >= best - tie_tolerance(best)) &&
        (pick < 0 || heap.top().idx < pick)) {
      pick = heap.pop().idx;
      pick_slot = -1;
      pick_gain = 0.0;
    }
    if (step == 0) std::fill(out.nearest.begin(), out.nearest.end(), pick);
    chosen[pick] = 1;
    if (pick_slot >= 0) pickcol = cols.data() + pick_slot * stride;
    // A pick from the heap has gain 0: no row improves, nothing changes.
    if (pick_slot >= 0 || refresh) {
      if (pick_slot >= 0) {
        slot_idx[pick_slot] = -1;
        slot_fresh[pick_slot] = 0;
        slot_of[pick] = -1;
      }
      // Saturated rows improve only where they list the pick (reverse adjacency) ...
      sat_changed.clear();
      sat_old.clear();
      if (use_graph)
        for (int64_t e = g.rptr[pick]; e < g.rptr[pick + 1]; ++e) {
          const int32_t r = g.rrow[e];
          if (sat[r] && g.rsim[e] > cur[r]) {
            sat_changed.push_back(r);
            sat_old.push_back(cur[r]);
            cur[r] = g.rsim[e];
            out.nearest[r] = pick;
          }
        }
      // ... unsaturated ones from the pick's column over the view; those reaching t_i leave U.
      changed_p.clear();
      old_eff.clear();
      newly.clear();
      if (prows > 0) {
        const float* col = pickcol;
        for (int64_t p = 0; p < prows; ++p) {
          const int32_t i = prow[p];
          if (sat[i] || !(col[p] > cur[i])) continue;
          changed_p.push_back(int32_t(p));
          old_eff.push_back(cur[i]);
          cur[i] = col[p];
          out.nearest[i] = pick;
          if (cur[i] >= thr[i]) {
            sat[i] = 1;
            newly.push_back(i);
            ceff[p] = kBig;
            --u;
          } else {
            ceff[p] = cur[i];
          }
        }
      }
      // Keep the other fresh gains exact without touching X: the dense part from the kept columns
      // (recomputed when many rows changed, else each changed row's drop), the sparse part from the
      // lists of the rows that changed or saturated.
      live_slots.clear();
      for (int64_t s = 0; s < cap; ++s)
        if (slot_idx[s] >= 0) live_slots.push_back(s);
      const int64_t nl = int64_t(live_slots.size());
      if (!changed_p.empty()) {
        const int64_t nchanged = int64_t(changed_p.size());
        if (nchanged * 8 > view.rows_pad || (nchanged * kDropDiv > view.rows_pad && nchanged * nl > kDropWork)) {
          // Many rows changed: a drop per row costs more than a refresh, so the kept gains become upper
          // bounds, refreshed from their columns only when they could reach a tie set.
          for (const int64_t s : live_slots) slot_fresh[s] = 0;
        } else {
          // Few rows changed: subtract each changed row's drop, exact for fresh gains and still a valid
          // upper bound for stale ones.
          const int64_t work = nl * int64_t(changed_p.size());
          const int64_t R = int64_t(changed_p.size());
          new_eff.resize(R);
          for (int64_t r = 0; r < R; ++r) new_eff[r] = ceff[changed_p[r]];
#pragma omp parallel for schedule(static) if (work > (int64_t(1) << 24))
          for (int64_t q = 0; q < nl; ++q) {
            const int64_t s = live_slots[q];
            const float* S = cols.data() + s * stride;
            const double drop = drop_of(isa_, S, changed_p.data(), old_eff.data(), new_eff.data(), R);
            slot_dense[s] = std::max(0.0, slot_dense[s] - drop);
          }
        }
      }
      if (nl > 0 && use_graph) {
        for (size_t r = 0; r < sat_changed.size(); ++r) {
          const int32_t i = sat_changed[r];
          for (int64_t q = 0; q < w; ++q) {
            const int32_t s = slot_of[g.idx[i * w + q]];
            if (s < 0) continue;
            const float v = g.sim[i * w + q];
            slot_sparse[s] -= double(std::max(v - sat_old[r], 0.f)) - double(std::max(v - cur[i], 0.f));
          }
        }
        for (const int32_t i : newly)
          for (int64_t q = 0; q < w; ++q) {
            const int32_t s = slot_of[g.idx[i * w + q]];
            if (s >= 0) slot_sparse[s] += std::max(g.sim[i * w + q] - cur[i], 0.f);
          }
        for (const int64_t s : live_slots) slot_sparse[s] = std::max(0.0, slot_sparse[s]);
      }
      // Stream only U: drop the view once U is empty, repack it once U is half of it.
      if (prows > 0 && u == 0) {
        view = RowView{};
        prows = 0;
        for (int64_t s = 0; s < cap; ++s) slot_dense[s] = 0.0;  // no unsaturated row is left
        std::vector<float>().swap(cols);
        out.n_repacks += 1;
      } else if (prows > 0 && 2 * u < prows && prows - u >= kTileRows) {
        repack();
      }
    }
    out.add_pick(pick, pick_gain);
    out.unsaturated.push_back(u);
    report_progress(progress, step + 1, budget);
  }
  out.nearest_similarity.assign(cur.begin(), cur.end());
  out.greedy_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  return out;
}

// ---------------------------------------------------------------- cached lazy greedy
// Builds S [n][npad] (column j at S + j * npad; rows n..npad-1 are 0, as the kernels give padding rows) from
// the upper triangle in kSymBlock blocks: block (a, b), a <= b, is one run of the tile kernel with the rows
// of block a against the candidates of block b, written into the columns of b; for a < b the block is
// then copied transposed into the columns of a (s(j, i) is the same float as s(i, j)). Returns the
// multiply-adds it ran.
namespace {
int64_t build_matrix(const Kernel& kern, const RowView& all, int64_t n, int64_t npad, const float* inv,
                     const std::function<void(const int64_t*, int64_t, void*)>& pack, float* S) {
  const int64_t elem = kern.elem(), dpad = kern.dpad;
  const int64_t nb = (npad + kSymBlock - 1) / kSymBlock;
  int64_t madds = 0;
  const int32_t nocidx[kTileCols] = {-1, -1, -1, -1, -1, -1};
#pragma omp parallel reduction(+ : madds)
  {
    std::vector<uint8_t> cand(kSymBlock * dpad * elem);
    std::vector<int64_t> idx(kSymBlock);
    std::vector<float> cinv(kSymBlock);
    std::vector<double> gsum(kSymBlock * 8);
    std::vector<float*> dst(kSymBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bb = 0; bb < nb; ++bb) {
      const int64_t b = nb - 1 - bb;  // the largest rows of work first
      const int64_t j0 = b * kSymBlock, m = std::max<int64_t>(0, std::min(n, j0 + kSymBlock) - j0);
      if (m == 0) continue;
      for (int64_t c = 0; c < kSymBlock; ++c) {
        idx[c] = c < m ? j0 + c : -1;
        cinv[c] = c < m ? inv[j0 + c] : 0.f;
        dst[c] = c < m ? S + (j0 + c) * npad : nullptr;
      }
      pack(idx.data(), kSymBlock, cand.data());
      const int64_t groups = (m + kTileCols - 1) / kTileCols;
      for (int64_t a = 0; a <= b; ++a) {
        const int64_t t0 = a * kSymBlock / kTileRows, t1 = std::min(npad, (a + 1) * kSymBlock) / kTileRows;
        madds += (t1 - t0) * kTileRows * groups * kTileCols * dpad;
        for (int64_t g = 0; g < groups; ++g) {
          const void* cb = cand.data() + g * kTileCols * dpad * elem;
          for (int64_t t = t0; t < t1; ++t) {
            Epi e{nullptr, all.inv, all.rowsum, cinv.data() + g * kTileCols, dst.data() + g * kTileCols,
                  gsum.data() + g * kTileCols * 8, nullptr, t * kTileRows, nullptr, nocidx, false, nullptr, 0};
            kern(all, t * kTileRows, cb, e);
          }
        }
        if (a == b) continue;
        // Transposed copy in 16 x 16 squares: S[i][j] = S[j][i] for rows i of block a, candidates j of b.
        const int64_t i0 = a * kSymBlock, i1 = std::min(n, i0 + kSymBlock);
        for (int64_t jj = j0; jj < j0 + m; jj += 16)
          for (int64_t ii = i0; ii < i1; ii += 16)
            for (int64_t j = jj; j < std::min(j0 + m, jj + 16); ++j)
              for (int64_t i = ii; i < std::min(i1, ii + 16); ++i) S[i * npad + j] = S[j * npad + i];
      }
    }
  }
  return madds;
}
}  // namespace

GreedyOutput DenseSimilarity::cached_greedy(int64_t budget, int64_t batch,
                                            const std::function<void(int64_t)>& progress) const {
  if (budget < 1 || budget > n_) throw std::invalid_argument("budget must be in [1, N]");
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  GreedyOutput out;
  out.ranking.reserve(budget);
  out.gains.reserve(budget);
  out.unsaturated.reserve(budget);
  out.evaluations.reserve(budget);
  out.cache_used = 1;
  out.cache_bytes = matrix_bytes();
  // Uninitialised: every column's npad rows are written, by the kernel (block b) or by a transposed copy.
  // 2 MiB-aligned and advised for transparent huge pages: first-touch faults and TLB misses of the
  // transposed writes (one page per column at 4 KiB) otherwise cost as much as the GEMM itself.
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t bytes = (size_t(matrix_bytes()) + kHuge - 1) / kHuge * kHuge;
  std::unique_ptr<float, void (*)(void*)> S(static_cast<float*>(std::aligned_alloc(kHuge, bytes)), std::free);
  if (!S) throw std::bad_alloc();
  madvise(S.get(), bytes, MADV_HUGEPAGE);  // advice only: a kernel without THP keeps 4 KiB pages
  const Kernel kern{isa_, int8_, dpad_};
  const RowView all{int8_ ? (const void*)xq_.data() : (const void*)xf_.data(), npad_, inv_.data(), rowsum_.data()};
  out.first_pass_multiply_adds = build_matrix(
      kern, all, n_, npad_, inv_.data(),
      [this](const int64_t* idx, int64_t m, void* buf) { pack_candidates(idx, m, m, buf); }, S.get());
  // The kernel writes all npad rows only of the last block's columns; the transposed copies fill the other
  // columns' rows up to n. Padding rows are 0 (as the kernels give them), so a clip sum over npad is exact.
  if (npad_ > n_) {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n_; ++j) std::fill(S.get() + j * npad_ + n_, S.get() + (j + 1) * npad_, 0.f);
  }
  out.cache_build_seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  out.multiply_adds = out.first_pass_multiply_adds;

  // The first bounds are exact: the column sums, i.e. every gain against cur = 0.
  std::vector<float> cur(npad_, 0.f);
  std::vector<double> bounds(n_);
  const int isa = isa_;
#pragma omp parallel for schedule(static) if (n_ * npad_ >= (int64_t(1) << 22))
  for (int64_t j = 0; j < n_; ++j) bounds[j] = clip_sum(isa, S.get() + j * npad_, cur.data(), npad_);
  out.n_evaluations = n_;
  out.n_passes = 1;
  const auto t_first = clock::now();
  out.first_pass_seconds = std::chrono::duration<double>(t_first - t_start).count();

  // Lazy greedy (graph_lazy_greedy's loop): stamp[j] == step marks a gain exact for this step's cur.
  LazyHeap heap(bounds.data(), n_);
  std::vector<int64_t> stamp(n_, 0);
  out.nearest.assign(n_, 0);
  // Candidates per round: enough columns to share between the threads (one column is only ~N floats).
  const int threads = omp_get_max_threads();
  const int64_t per_round = std::max<int64_t>(batch > 0 ? batch : 1, 8 * int64_t(threads));
  std::vector<Entry> fresh, round;
  std::vector<double> g;
  for (int64_t step = 0; step < budget; ++step) {
    fresh.clear();
    double best = -std::numeric_limits<double>::infinity();
    // Pop while the best bound could reach the tie set (>= G - tau); a bound of 0 is exact and stays.
    while (!heap.empty() && heap.top().ub > 0.0 && (fresh.empty() || heap.top().ub >= best - tie_tolerance(best))) {
      round.clear();
      while (int64_t(round.size()) < per_round && !heap.empty() && heap.top().ub > 0.0 &&
             (fresh.empty() || heap.top().ub >= best - tie_tolerance(best)))
        round.push_back(heap.pop());
      const int64_t r = int64_t(round.size());
      g.assign(r, 0.0);
      int64_t stale = 0;
      for (const Entry& e : round) stale += stamp[e.idx] != step;
#pragma omp parallel for schedule(static) if (stale * npad_ >= (int64_t(1) << 18))
      for (int64_t q = 0; q < r; ++q) {
        const int64_t j = round[q].idx;
        g[q] = stamp[j] == step ? round[q].ub : clip_sum(isa, S.get() + j * npad_, cur.data(), npad_);
      }
      for (int64_t q = 0; q < r; ++q) {
        const int64_t j = round[q].idx;
        if (stamp[j] != step) {
          stamp[j] = step;
          out.n_evaluations += 1;
          out.cache_hits += 1;
        }
        fresh.push_back({g[q], j});
        best = std::max(best, g[q]);
      }
    }
    // Tie set: fresh gains within tau of the best, plus the lowest-index exact-zero bound.
    int64_t pick = -1;
    double pick_gain = 0.0;
    if (!fresh.empty()) {
      const double floor = best - tie_tolerance(best);
      for (const Entry& e : fresh)
        if (e.ub >= floor && (pick < 0 || e.idx < pick)) {
          pick = e.idx;
          pick_gain = e.ub;
        }
    }
    if (!heap.empty() && heap.top().ub <= 0.0 && (fresh.empty() || 0.0 >= best - tie_tolerance(best)) &&
        (pick < 0 || heap.top().idx < pick)) {
      pick = heap.pop().idx;
      pick_gain = 0.0;
    }
    for (const Entry& e : fresh)
      if (e.idx != pick) heap.push(e.ub, e.idx);
    if (step == 0) std::fill(out.nearest.begin(), out.nearest.end(), pick);
    const float* col = S.get() + pick * npad_;
    for (int64_t i = 0; i < n_; ++i)
      if (col[i] > cur[i]) {
        cur[i] = col[i];
        out.nearest[i] = pick;
      }
    out.add_pick(pick, pick_gain);
    out.unsaturated.push_back(n_);  // no saturation graph here: every row stays in every evaluation
    report_progress(progress, step + 1, budget);
  }
  out.nearest_similarity.assign(cur.begin(), cur.begin() + n_);
  out.greedy_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  return out;
}

}  // namespace mads
