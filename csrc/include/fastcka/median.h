// Exact median of the n² squared distances (diagonal zeros included, numpy's median: the mean of the two middle
// values for an even count), by radix selection on the bit patterns of the float64 distances, which order like the
// values since they are ≥ 0. Each pass histograms one 16-bit digit of the pairs whose higher bits match the prefix
// found so far; a pass visits the pairs i < j only (each stands for two entries), the n zeros of the diagonal are
// added by the driver. Nothing of size n² is stored. Shared by the CPU and CUDA passes.
//
// A faster first try (the window): a seeded sample of pairs brackets the median's rank, one pass counts the pairs
// below the bracket and collects those inside it, and the rank is read from them when it falls inside. A miss (the
// sample is only a guide) costs one pass and falls back to the radix passes, so the result is exact either way.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastcka/macros.h"
#include "fastcka/tiled_hsic.h"

namespace fastcka {

constexpr int kDigitBits = 16;
constexpr int64_t kDigitBins = int64_t(1) << kDigitBits;
// Once the pairs i < j left in the selected bin are at most this many (64 MB of float64), one pass collects them and
// the selection finishes in memory; the CUDA collect buffer has this size.
constexpr int64_t kCollectCapacity = int64_t(1) << 23;

FASTCKA_HD uint64_t distance_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t b;
  std::memcpy(&b, &d, sizeof(b));
  return b;
#endif
}

// Squared distance from the dot product and the row norms: ≥ 0, +0 on the diagonal, in float64.
FASTCKA_HD double squared_distance(double dot, double norm_i, double norm_j, bool diagonal) {
  if (diagonal) return 0.0;
  const double d = norm_i + norm_j - 2.0 * dot;
  return d > 0.0 ? d : 0.0;
}

// --- exact distances, and when the fast one is good enough ------------------------------------------------------
// The fast distance d̂ = nᵢ + nⱼ − 2·fl(x'ᵢ·x'ⱼ) (a GEMM in the input precision u over the scaled rows x' = fl(s(x−x₀)),
// float64 norms) loses the distance when the norms dwarf it: clustered or offset data, and equal rows, which must
// give exactly 0 (the median-0 rule). The exact distance is s²·Σ(xᵢ − xⱼ)² from the original rows in float64 — what
// the float64 reference computes (up to its summation order). Rigorous bound, with a = s(xᵢ − x₀), b = s(xⱼ − x₀):
//   x' rounding: x'ₖ = aₖ(1+δ), |δ| ≤ u ⇒ |‖a'−b'‖² − ‖a−b‖²| ≤ 2u(‖a‖+‖b‖)² + O(u²) ≤ 4.2u(nᵢ+nⱼ);
//   the dot: |fl(a'·b') − a'·b'| ≤ γ_p ‖a'‖‖b'‖ ≤ γ_p(nᵢ+nⱼ)/2, twice in d̂;
//   float64 norms and the final sums: ≤ (p + 4)·u₆₄(nᵢ+nⱼ).
// So |d̂ − d| ≤ β(nᵢ+nⱼ) with β = 1.01·(γ_p(u) + 4.2u + (p+4)u₆₄), distance_bound_coef below.
FASTCKA_HD double distance_bound_coef(int64_t p, double u) {
  const double pu = static_cast<double>(p) * u;
  const double gamma_p = pu / (1.0 - pu);
  return 1.01 * (gamma_p + 4.2 * u + (static_cast<double>(p) + 4.0) * 1.1102230246251565e-16);
}

// The kernel pass's guard: it recomputes d exactly when β'(nᵢ+nⱼ) > d̂, i.e. unless d̂'s error bound is within the
// relative tolerance τ (2⁻¹⁰ for float32 input, 2⁻³⁰ for float64: the RBF entry's relative error ≤ τ·γd·e^{−γd} ≤
// τ/e). β' = β(p_eff)/τ uses p_eff = min(p, 32√p) in γ_p: the worst-case γ_p ~ p·u is ~√p too pessimistic for a
// BLAS dot, and with it wide float32 layers (p ≳ 10⁴) would recompute every pair. (The median's passes use the
// rigorous β.)
FASTCKA_HD double kernel_guard_coef(int64_t p, double u) {
  const double p_eff = fmin(static_cast<double>(p), 32.0 * sqrt(static_cast<double>(p)));
  const double tol = u > 1e-10 ? 9.765625e-4 : 9.313225746154785e-10;
  return distance_bound_coef(static_cast<int64_t>(p_eff), u) / tol;
}

// s²·Σₖ(xᵢₖ − xⱼₖ)² from the original rows, in float64: the exact squared distance in scaled units (s² is a power of
// two, so it changes no digit); exactly 0 for equal rows.
template <typename T>
FASTCKA_HD double exact_sq_dist(const T* x, int64_t p, int64_t i, int64_t j, double s2) {
  const T *a = x + i * p, *b = x + j * p;
  // sixteen independent sums (p ≥ 16), else four: the loops vectorise without reassociation flags, and with sixteen
  // the sampled and recomputed pairs do not wait on one register's add latency. Below p = 16 the order is the four
  // sums' alone.
  double acc[16];
  for (int u = 0; u < 16; ++u) acc[u] = 0.0;
  int64_t c = 0;
  for (; c + 16 <= p; c += 16)
    for (int u = 0; u < 16; ++u) {
      const double v = static_cast<double>(a[c + u]) - static_cast<double>(b[c + u]);
      acc[u] += v * v;
    }
  for (; c + 4 <= p; c += 4)
    for (int u = 0; u < 4; ++u) {
      const double v = static_cast<double>(a[c + u]) - static_cast<double>(b[c + u]);
      acc[u] += v * v;
    }
  for (; c < p; ++c) {
    const double v = static_cast<double>(a[c]) - static_cast<double>(b[c]);
    acc[0] += v * v;
  }
  for (int u = 0; u < 8; ++u) acc[u] += acc[u + 8];
  for (int u = 0; u < 4; ++u) acc[u] += acc[u + 4];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) * s2;
}

// What a distance pass needs besides the GEMM dots: the original rows, the scaled rows' norms, s², the coefficients.
template <typename T>
struct DistanceRows {
  const T* x;           // the original rows (n × p, contiguous)
  const double* norms;  // float64 squared norms of the scaled rows
  int64_t p;
  double s2;            // s²
  double beta;          // rigorous: |d̂ − d| ≤ beta·(nᵢ + nⱼ)
  double guard;         // the kernel pass's: recompute when guard·(nᵢ + nⱼ) > d̂
};

// The kernel pass's distance of a pair i ≠ j: d̂, or the exact one where d̂ may have lost the digits the kernel needs.
template <typename T>
FASTCKA_HD double kernel_sq_dist(const DistanceRows<T>& r, double dot, int64_t i, int64_t j) {
  const double ni = r.norms[i], nj = r.norms[j], d = squared_distance(dot, ni, nj, false);
  return r.guard * (ni + nj) > d ? exact_sq_dist(r.x, r.p, i, j, r.s2) : d;
}

// The bit patterns the exact distance of a pair must lie between, from d̂ and its rigorous bound.
// Does the distance carry the prefix (its top `prefix_bits` bits)? Then which digit comes next?
FASTCKA_HD bool has_prefix(uint64_t bits, uint64_t prefix, int prefix_bits) {
  return prefix_bits == 0 || (bits >> (64 - prefix_bits)) == prefix;
}

FASTCKA_HD int64_t next_digit(uint64_t bits, int prefix_bits) {
  return static_cast<int64_t>((bits >> (64 - prefix_bits - kDigitBits)) & (kDigitBins - 1));
}


// The radix pass's digit of a pair (i < j) whose distance carries the prefix, or −1 when it does not: decided from d̂
// where its whole error interval [d̂ − β(nᵢ+nⱼ), d̂ + β(nᵢ+nⱼ)] falls on one side, else from the exact distance.
template <typename T>
FASTCKA_HD int64_t pair_digit(const DistanceRows<T>& r, double dot, int64_t i, int64_t j, uint64_t prefix, int bits) {
  const double ni = r.norms[i], nj = r.norms[j], d = squared_distance(dot, ni, nj, false), e = r.beta * (ni + nj);
  const uint64_t lo = distance_bits(d - e > 0.0 ? d - e : 0.0), hi = distance_bits(d + e);
  const int shift = 64 - bits - kDigitBits;
  if (bits > 0 && ((hi >> (64 - bits)) < prefix || (lo >> (64 - bits)) > prefix)) return -1;  // surely not this prefix
  if ((lo >> shift) == (hi >> shift)) return next_digit(lo, bits);                            // one digit: decided
  const uint64_t b = distance_bits(exact_sq_dist(r.x, r.p, i, j, r.s2));
  return has_prefix(b, prefix, bits) ? next_digit(b, bits) : -1;
}

// Where d̂'s error interval [f − e, f + e] lies against the window [lo, hi] (bit patterns): −1 wholly below, +1 wholly
// above, 0 otherwise. Branch-free, so a pass can count the (nearly all) decided pairs without mispredictions, half the
// pairs being below and half above in no order, and send only the rare undecided ones to pair_window.
FASTCKA_HD int interval_side(double f, double e, uint64_t lo, uint64_t hi) {
  const double down = f - e;
  const uint64_t f_lo = distance_bits(down > 0.0 ? down : 0.0), f_hi = distance_bits(f + e);
  return static_cast<int>(f_lo > hi) - static_cast<int>(f_hi < lo);
}

// The window pass's verdict on a pair (i < j): −1 below [lo, hi], +1 above, 0 inside. Inside, *d is d̂ with *exact
// false where d̂'s whole error interval lies in the window (the driver reads ranks exactly from such intervals:
// exact_ranks), else the exact distance; d̂ alone decides only where its interval lies wholly on one side.
template <typename T>
FASTCKA_HD int pair_window(const DistanceRows<T>& r, double dot, int64_t i, int64_t j, uint64_t lo, uint64_t hi,
                           double* d, bool* exact) {
  const double ni = r.norms[i], nj = r.norms[j], f = squared_distance(dot, ni, nj, false), e = r.beta * (ni + nj);
  const int side = interval_side(f, e, lo, hi);
  if (side != 0) return side;
  const uint64_t f_lo = distance_bits(f - e > 0.0 ? f - e : 0.0), f_hi = distance_bits(f + e);
  if (f_lo >= lo && f_hi <= hi) {
    *d = f;
    *exact = false;
    return 0;
  }
  const double x = exact_sq_dist(r.x, r.p, i, j, r.s2);
  const uint64_t b = distance_bits(x);
  *d = x;
  *exact = true;
  return b < lo ? -1 : (b > hi ? 1 : 0);
}

// --- the reduced-precision window pass ---------------------------------------------------------------------------
// The window pass only sorts pairs into below / inside / above a bracket, so it may read the dots from a bfloat16
// GEMM (8 significant bits, 3–5× the float32 GEMM's speed on CPUs with bf16 dot instructions) and recompute the
// pairs its error bound cannot sort. The model of that GEMM is what torch's CPU bfloat16 matmul computes: exact bf16
// products accumulated in float32 (oneDNN and cpublas accumulate in float32), each output rounded once to bfloat16
// (tests/test_median_reduced.py checks the model on this torch). With a, b the scaled rows as stored, ã = bf16(a)
// and δa = ã − a (exact in the rows' precision: ã is within 2⁻⁸ of a), a·b = ã·b̃ − δa·b̃ − ã·δb + δa·δb, so by
// Cauchy–Schwarz, with per-row norms t = ‖ã‖ and r = ‖δa‖ (float64):
//   inputs:        |ã·b̃ − a·b| ≤ rᵢtⱼ + tᵢrⱼ + rᵢrⱼ        (r ≈ 0.4·2⁻⁸·t for typical data: 2.5× tighter than
//                                                          the coordinate-wise 2·2⁻⁸·‖a‖‖b‖);
//   accumulation:  ≤ γ_p(2⁻²⁴)·Σ|ãₖb̃ₖ| ≤ γ_p(2⁻²⁴)·tᵢtⱼ, plus < 2⁻¹²⁶ per term and per addition where the dot
//                  instructions flush subnormals to zero (the scaled rows are ≤ 1 in magnitude);
//   output:        |ŝ − s| ≤ u_b/(1 − u_b)·|ŝ|, u_b = 2⁻⁸.
// f = nᵢ + nⱼ − 2ŝ differs from the distance with the exact dot by twice their sum, and that one from the exact d
// by the full-precision pass's β(nᵢ + nⱼ) (distance_bound_coef): |f − d| ≤ reduced_error(...) below. The factor
// 2.02 (not 2) covers the float64 rounding of the norms t, r and of the bound itself.
struct ReducedBound {
  double beta;  // × (nᵢ + nⱼ): the full-precision pass's terms
  double acc;   // × tᵢtⱼ: float32 accumulation
  double out;   // × |ŝ|: the output's rounding to bfloat16
  double abs;   // absolute: flushed subnormals
};

// The bound's coefficients for p features; beta = distance_bound_coef of the stored rows' precision. A p so large
// that γ_p(2⁻²⁴) is not small gets an infinite bound (every pair is recomputed: the driver will not pick the pass).
FASTCKA_HD ReducedBound reduced_bound(int64_t p, double beta) {
  const double ub = 0.00390625, pu = static_cast<double>(p) * 5.9604644775390625e-08;
  ReducedBound b;
  b.beta = beta;
  b.acc = pu < 0.25 ? 2.02 * pu / (1.0 - pu) : 1e300;
  b.out = 2.02 * ub / (1.0 - ub);
  b.abs = 2.02 * 2.0 * static_cast<double>(p + 1) * 1.1754943508222875e-38;  // 2·(p + 1)·2⁻¹²⁶, twice
  return b;
}

// The bound grouped for a pass along row i: e = a + β·nⱼ + b·tⱼ + c·rⱼ + out·|ŝ|.
struct ReducedRowTerms {
  double a, b, c;
};

FASTCKA_HD ReducedRowTerms reduced_row_terms(const ReducedBound& b, double ni, double ti, double ri) {
  ReducedRowTerms t;
  t.a = b.beta * ni + b.abs;
  t.b = 2.02 * ri + b.acc * ti;  // rᵢtⱼ and the accumulation's tᵢtⱼ
  t.c = 2.02 * (ti + ri);        // tᵢrⱼ + rᵢrⱼ
  return t;
}

FASTCKA_HD double reduced_error_at(const ReducedBound& b, const ReducedRowTerms& row, double nj, double tj, double rj,
                                   double dot) {
  return row.a + b.beta * nj + row.b * tj + row.c * rj + b.out * fabs(dot);
}

// |f − d| ≤ this, for the pair with norms² nᵢ, nⱼ, bf16-row norms tᵢ, tⱼ, rounding-error norms rᵢ, rⱼ and GEMM dot ŝ.
FASTCKA_HD double reduced_error(const ReducedBound& b, double ni, double nj, double ti, double tj, double ri,
                                double rj, double dot) {
  return reduced_error_at(b, reduced_row_terms(b, ni, ti, ri), nj, tj, rj, dot);
}

// The dot of two rows in their own precision, sixteen partial sums (one or two SIMD registers of them, so the loop
// vectorises without reassociation flags): the reduced pass's second tier. Its error is within the full-precision
// pass's β (γ_p holds for any summation order).
template <typename T>
FASTCKA_HD double row_dot(const T* a, const T* b, int64_t p) {
  T acc[16];
  for (int u = 0; u < 16; ++u) acc[u] = T(0);
  int64_t c = 0;
  for (; c + 16 <= p; c += 16)
    for (int u = 0; u < 16; ++u) acc[u] += a[c + u] * b[c + u];
  for (; c < p; ++c) acc[0] += a[c] * b[c];
  for (int w = 8; w >= 1; w /= 2)
    for (int u = 0; u < w; ++u) acc[u] += acc[u + w];
  return static_cast<double>(acc[0]);
}

// Round-to-nearest-even float → bfloat16 bits (NaN stays NaN), and back.
FASTCKA_HD uint16_t bf16_bits(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

FASTCKA_HD double bf16_value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float v;
  memcpy(&v, &u, sizeof(v));
  return static_cast<double>(v);
}

// The bin of a distance d among `count` equal-width bins of [lo, lo + count/scale] (the first pass of the
// two-window median counts its pairs per bin). Monotone non-decreasing in d (each step rounds monotonically), so
// each bin is an interval of distances, whose bit-pattern ends the driver finds by bisection; NaN goes to bin 0.
FASTCKA_HD int64_t window_bin(double d, double lo, double scale, int64_t count) {
  const double t = (d - lo) * scale;
  if (!(t > 0.0)) return 0;
  return t >= static_cast<double>(count) ? count - 1 : static_cast<int64_t>(t);
}

FASTCKA_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The s-th pair (i < j) of the seeded uniform sample of pairs of n ≥ 2 rows (n < 2³²).
FASTCKA_HD void sampled_pair(uint64_t seed, int64_t s, int64_t n, int64_t* i, int64_t* j) {
  const uint64_t r = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(s)));
  const int64_t a = static_cast<int64_t>((r >> 32) % static_cast<uint64_t>(n));
  int64_t b = static_cast<int64_t>((r & 0xFFFFFFFFull) % static_cast<uint64_t>(n - 1));
  if (b >= a) ++b;
  *i = a < b ? a : b;
  *j = a < b ? b : a;
}

// One sampled pair's vote on a side's kernel shift c (tiled_hsic.h): its exact distance, against γ'.
template <typename T>
FASTCKA_HD bool sampled_shift_vote(const T* x, int64_t n, int64_t p, double s2, double gamma, int64_t s) {
  int64_t i, j;
  sampled_pair(kShiftVoteSeed, s, n, &i, &j);
  return kernel_shift_vote(gamma, exact_sq_dist(x, p, i, j, s2));
}

// The unit roundoff of the input precision (the scaled rows and the GEMM are in it).
template <typename T>
FASTCKA_HD double unit_roundoff() {
  return sizeof(T) == sizeof(double) ? 1.1102230246251565e-16 : 5.9604644775390625e-08;
}

}  // namespace fastcka
