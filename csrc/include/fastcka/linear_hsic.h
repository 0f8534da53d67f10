// Linear-kernel HSIC from a handful of float64 moments: the math shared by the CPU and CUDA kernels.
//
// The moments are taken on column-centred features that were multiplied by exact powers of two sx, sy (so that
// nothing overflows or goes subnormal); every formula divides the scales back out. With Xc, Yc centred,
// K = XcXcᵀ, L = YcYcᵀ, dK = diag K (row norms²), trK = Σ dK:
//   biased   HSIC₀(K,L) = ⟨K,L⟩ / (n−1)²                               (Gretton et al. 2005)
//   unbiased HSIC₁(K,L) = [⟨K,L⟩ − n/(n−2)·dK·dL + trK·trL/((n−1)(n−2))] / (n(n−3))
// The unbiased line is Song et al.'s estimator rewritten for centred features (K1 = 0), as in Kornblith et al.'s
// feature-space debiased CKA; HSIC₁ of a linear kernel does not change when the features are shifted.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastcka/macros.h"
#include "fastcka/noise.h"
#include "fastcka/u_centred.h"

namespace fastcka {

// Slots of the float64 moment vector a linear-HSIC forward fills.
enum LinearMoment : int {
  kKL = 0,     // ⟨K, L⟩ = ‖XcᵀYc‖²_F
  kKK = 1,     // ⟨K, K⟩
  kLL = 2,     // ⟨L, L⟩
  kDkDl = 3,   // Σ dKᵢ dLᵢ
  kDkDk = 4,   // Σ dKᵢ²
  kDlDl = 5,   // Σ dLᵢ²
  kTrK = 6,    // Σ dKᵢ
  kTrL = 7,    // Σ dLᵢ
  kScaleX = 8, // sx (power of two)
  kScaleY = 9, // sy
  kUCentred = 10,  // kNumUCentredSlots slots: the small-n numerators, from the scaled Grams (u_centred.h)
  kNumLinearMoments = kUCentred + kNumUCentredSlots
};

// One HSIC from moments of kernels built on features scaled by sa and sb: the moments carry sa²·sb², divided out
// one factor at a time so that the product of the scales never underflows.
// u, which: the small-n slots and which of the three HSICs this is (u_centred.h).
FASTCKA_HD double hsic_from_moments(double kl, double dadb, double tra, double trb, double sa, double sb, int64_t n,
                                   bool unbiased, double noise, const double* u, int which) {
  const double nd = static_cast<double>(n);
  const double t1 = nd / (nd - 2.0) * dadb, t2 = tra * trb / ((nd - 1.0) * (nd - 2.0));
  const double num =
      unbiased ? unbiased_numerator(kl - t1 + t2, fabs(kl) + fabs(t1) + fabs(t2), u, which, 1.0, noise) : kl;
  const double norm = unbiased ? nd * (nd - 3.0) : (nd - 1.0) * (nd - 1.0);
  return num / (sa * sa) / (sb * sb) / norm;
}

// out[0..2] = HSIC(K,L), HSIC(K,K), HSIC(L,L); noise: hsic_noise_coef of the inputs' precision (noise.h).
FASTCKA_HD void linear_hsic_combine(const double* m, int64_t n, bool unbiased, double noise, double* out) {
  const double sx = m[kScaleX], sy = m[kScaleY];
  const double* u = m + kUCentred;
  out[0] = hsic_from_moments(m[kKL], m[kDkDl], m[kTrK], m[kTrL], sx, sy, n, unbiased, noise, u, 0);
  out[1] = hsic_from_moments(m[kKK], m[kDkDk], m[kTrK], m[kTrK], sx, sx, n, unbiased, noise, u, 1);
  out[2] = hsic_from_moments(m[kLL], m[kDlDl], m[kTrL], m[kTrL], sy, sy, n, unbiased, noise, u, 2);
}

// The one-pass unbiased numerator of one HSIC (the moments of hsic_from_moments) and the size of its terms.
FASTCKA_HD void unbiased_numerator_terms(double kl, double dadb, double tra, double trb, int64_t n, double* num,
                                         double* size) {
  const double nd = static_cast<double>(n);
  const double t1 = nd / (nd - 2.0) * dadb, t2 = tra * trb / ((nd - 1.0) * (nd - 2.0));
  *num = kl - t1 + t2;
  *size = fabs(kl) + fabs(t1) + fabs(t2);
}

// Is the one-pass unbiased estimate from the moments m (all three HSICs) too coarse for CKA: does one rounding of its
// terms, times `ratio`, exceed √(HSIC(K,K)·HSIC(L,L)) for the cross term, or a self term itself? The error that
// matters is CKA's, so unrelated layers (HSIC(K,L) ≈ 0, terms of the self terms' size) pass, and a far row (terms
// many times the self terms) does not.
FASTCKA_HD bool one_pass_too_coarse(const double* m, int64_t n, double ratio) {
  double nkl, skl, nkk, skk, nll, sll;
  unbiased_numerator_terms(m[kKL], m[kDkDl], m[kTrK], m[kTrL], n, &nkl, &skl);
  unbiased_numerator_terms(m[kKK], m[kDkDk], m[kTrK], m[kTrK], n, &nkk, &skk);
  unbiased_numerator_terms(m[kLL], m[kDlDl], m[kTrL], m[kTrL], n, &nll, &sll);
  return skk > ratio * fabs(nkk) || sll > ratio * fabs(nll) || skl > ratio * sqrt(fabs(nkk)) * sqrt(fabs(nll));
}

// The ratios at which the CPU repairs a pass (linear_hsic_impl.h: linear_hsic_repaired). Float32 moments are summed
// from float32 GEMMs, whose rounding a far row makes coherent (debiased CKA 0.91 off, one row 10⁴ spreads from 199
// others: a ratio of 5e5); they are repaired above a ratio of 64. Lower, wide layers paid for nothing: at n ≪ p the
// terms are ~2p/n times the self terms (9 at n = 256, p = 1024; 131 at n = 64, p = 4096), but their float32 error
// stays near one rounding of the result (2e-8 to 9e-8 of CKA, found in review), so a threshold of 8 recomputed them
// all at 2.3× the cost. A far row below the threshold: 4e-6 of CKA (ratio 45, n = 200). Float64 moments are repaired
// where a rounding of their terms reaches 2⁻⁴⁰ ≈ 1e-12 of CKA (ε₆₄ = 2⁻⁵³).
constexpr double kFloat32Coarse = 64.0;
constexpr double kFloat64Coarse = 8192.0;

// Gradient of g·(HSIC(K,L), HSIC(K,K), HSIC(L,L)) with respect to the centred X side, as
//   ∂/∂Xcᵢ = a·(Yc Ycᵀ Xc)ᵢ + b·(Xc Xcᵀ Xc)ᵢ + rᵢ·Xcᵢ,
// computed from the scaled products A' = Yc'Yc'ᵀXc' (= sx·sy²·A) and B' = Xc'Xc'ᵀXc' (= sx³·B) and Xc' = sx·Xc.
// For the Y side call it with the roles swapped (g_self = g[2], own/other moments swapped).
struct LinearGradCoef {
  double a;        // multiplies A'
  double b;        // multiplies B'
  double r_const;  // rᵢ = r_const + r_other·dLᵢ' + r_own·dKᵢ'  (multiplies Xc')
  double r_other;
  double r_own;
};

FASTCKA_HD LinearGradCoef linear_grad_coef(double g_cross, double g_self, double s_own, double s_other,
                                           double tr_own_scaled, double tr_other_scaled, int64_t n,
                                           bool unbiased) {
  const double nd = static_cast<double>(n);
  const double so2 = s_own * s_own, st2 = s_other * s_other;
  const double norm = unbiased ? 1.0 / (nd * (nd - 3.0)) : 1.0 / ((nd - 1.0) * (nd - 1.0));
  LinearGradCoef c;
  c.a = 2.0 * g_cross * norm / (s_own * st2);
  c.b = 4.0 * g_self * norm / (s_own * so2);
  if (!unbiased) {
    c.r_const = c.r_other = c.r_own = 0.0;
    return c;
  }
  const double tr_own = tr_own_scaled / so2, tr_other = tr_other_scaled / st2;
  // rᵢ (unscaled Xc) = norm·[−2n/(n−2)(g_cross·dLᵢ + 2 g_self·dKᵢ) + 2/((n−1)(n−2))(g_cross·trL + 2 g_self·trK)];
  // Xc' carries sx and dK', dL' carry sx², sy².
  const double k1 = -2.0 * nd / (nd - 2.0) * norm / s_own;
  const double k2 = 2.0 / ((nd - 1.0) * (nd - 2.0)) * norm / s_own;
  c.r_other = k1 * g_cross / st2;
  c.r_own = k1 * 2.0 * g_self / so2;
  c.r_const = k2 * (g_cross * tr_other + 2.0 * g_self * tr_own);
  return c;
}

// A column's mean from its float64 sum, kept inside the column's range [lo, hi]. A float64 sum of n equal values can
// round, and a mean an ulp off would centre a constant column to rounding residue instead of exactly 0 (CKA of a
// representation with no variation is 0: linear CKA of float64 rows all equal came out 1.0 before this). Clamping
// makes a constant column's mean its value, and never moves any other mean away from the exact one.
FASTCKA_HD double column_mean(double sum, int64_t n, double lo, double hi) {
  const double m = sum / static_cast<double>(n);
  return m < lo ? lo : (m > hi ? hi : m);  // NaN stays NaN
}

// A centred entry (x − mean) − correction, in float64. For float64 input the mean carries its sum's rounding, up to
// ~n·u·max|x|: with data far from 0 (an offset 10⁴× the spread) that leaves every row shifted by more than its own
// rounding, and the unbiased linear formula (written for exactly centred features) is first-order in that shift, so
// rows all equal but one gave a debiased CKA of −3e-8 instead of 0. The correction is the mean of the residuals
// x − mean, from a second pass over the data (for float32 input it is 0: the float64 mean is exact enough).
FASTCKA_HD double centred_entry(double x, double mean, double correction) { return (x - mean) - correction; }

// Power-of-two multiplier that brings max|x| into [0.5, 1): exact, and keeps Grams of the result finite and normal.
FASTCKA_HD double pow2_normaliser(double maxabs) {
  if (!(maxabs > 0.0) || maxabs > 1.79e308) return 1.0;  // zero, NaN or inf: leave the data as it is
  int e = 0;
  // frexp is host/device in both libstdc++ and CUDA's math library.
  (void)frexp(maxabs, &e);
  e = e < -1000 ? -1000 : e;  // float64 subnormals: stop before the multiplier itself overflows
  return ldexp(1.0, -e);
}

}  // namespace fastcka

namespace fastcka {

// Path choice for linear HSIC: 0 = auto, 1 = feature space (p×p, q×q, p×q Grams), 2 = sample space (n×n Grams).
enum LinearPath : int { kPathAuto = 0, kPathFeature = 1, kPathSample = 2 };

// Auto picks the smaller multiply count: sample n²(p + q) (XcXcᵀ, YcYcᵀ) against feature n(pq + g(p) + g(q)), where
// the symmetric self terms come from column panels of `panel` columns (linear_hsic_impl.h: gram_sq_add), so
// g(p) = p²/2 + p·min(panel, p)/2. Counting them as p² (before the panels) put the switch at n = 1.5p where it is
// now near n = p: at p = q = 1024, n = 1280 (CPU, 1 thread) the sample path took 74 ms, the feature path 67 ms.
FASTCKA_HD bool use_sample_space(int64_t method, int64_t n, int64_t p, int64_t q, int64_t panel) {
  if (method != kPathAuto) return method == kPathSample;
  const double nd = static_cast<double>(n), pd = static_cast<double>(p), qd = static_cast<double>(q);
  auto self = [&](double d) { return 0.5 * d * d + 0.5 * d * (static_cast<double>(panel) < d ? panel : d); };
  return nd * nd * (pd + qd) < nd * (pd * qd + self(pd) + self(qd));
}

}  // namespace fastcka
