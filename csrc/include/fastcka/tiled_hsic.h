// Kernel HSIC in one pass over the i ≤ j pairs, never storing K or L: the math shared by the CPU and CUDA kernels.
//
// The features are shifted by x₀, the column medians of a seeded row subset, and multiplied by a power of two s
// (exact for the data a test can check exactly, robust to outlier rows, and it keeps Grams finite); kernels see the
// scaled rows x' = s(x − x₀):
//   linear  K'ᵢⱼ = x'ᵢ·x'ⱼ           (true Kᵢⱼ = κ·K'ᵢⱼ with κ = 1/s², applied in float64 at the end)
//   rbf     Kᵢⱼ − c = exp(−γ'dᵢⱼ) − c  with γ' = γ/s² = 1/(2σ²s²), dᵢⱼ = ‖x'ᵢ − x'ⱼ‖² (median.h: from the GEMM's dot
//           and the row norms, recomputed from row differences where that loses digits; exactly 0 for equal rows),
//           and c ∈ {0, 1} per side (κ = 1).
// Both estimators are blind to a constant added to every entry (H1 = 0; the U-statistic's terms cancel it), so the
// pass may accumulate K − c. With c = 1 the entries are expm1(−γ'd), whose digits survive when σ is large against
// the distances (raw K ≈ 1 everywhere, and the centring would cancel every digit: CKA 3.5 came out of such sums);
// with c = 0 they are K itself, which keeps the digits of a nearly diagonal kernel (small σ). c comes from a vote of
// a seeded sample of pairs (kernel_shift_from_votes).
// A pass accumulates the OFF-diagonal sums Σᵢ≠ⱼ K∘L, Σ K∘K, Σ L∘L (entries j > i count twice) and row sums rᵢ =
// Σⱼ≠ᵢ Kᵢⱼ, and the diagonals d_K, d_L apart: the unbiased estimator needs no diagonal at all, so nothing of size
// n is subtracted from sums of size n to leave a tiny HSIC₁ (the cancellation that made small-σ HSIC₁ 1.0 for 9e-4).
// With them (Gretton et al. 2005; Song et al. 2012, K̃ = K with a zero diagonal, r, S off-diagonal):
//   HSIC₁ = [Σ K̃∘L̃ + S_K S_L/((n−1)(n−2)) − 2/(n−2)·r_K·r_L] / (n(n−3))
//   HSIC₀ = [Σ K∘L − (2/n) r⁺_K·r⁺_L + S⁺_K S⁺_L/n²] / (n−1)²   with the full sums ⁺ = off-diagonal + diagonal.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastcka/macros.h"
#include "fastcka/noise.h"
#include "fastcka/u_centred.h"

namespace fastcka {

enum KernelType : int { kKernelLinear = 0, kKernelRbf = 1 };

struct KernelSpec {
  int type;      // KernelType
  double gamma;  // γ' (rbf, scaled units); unused for linear
  double shift;  // c: the pass accumulates K − c (rbf: 0 or 1; linear: 0)
};

// eˣ − c for x ≤ 0 and c ∈ {0, 1}, in float64 to a few ulp of the result (c = 1: of expm1(x), so no digit is lost
// near 0), with no branch and no library call, so that the CPU pass's loops vectorise it: x = k·ln2 + r with
// |r| ≤ ln2/2 (k by the round-to-nearest magic constant 1.5·2⁵², r by a two-part ln2 whose high part has 11 trailing
// zero bits, so k·ln2_hi is exact), expm1(r) by its Taylor series to r¹³/13! (truncation < 3·10⁻¹⁸·|r|), then
// eˣ − c = 2ᵏ·expm1(r) + (2ᵏ − c), where 2ᵏ − c is exact for the k that occur (−1022 ≤ k ≤ 0). Below x = −708, eˣ
// (< 3.4·10⁻³⁰⁸) is taken as e⁻⁷⁰⁸: an absolute error under 10⁻³⁰⁷ in an entry.
FASTCKA_HD double exp_minus(double x, double c) {
  x = x < -708.0 ? -708.0 : (x > 0.0 ? 0.0 : x);
  const double magic = 6755399441055744.0;  // 1.5·2⁵²: adding it rounds to an integer held in the low bits
  const double kd = (x * 1.4426950408889634 + magic) - magic;
  const double r = (x - kd * 0.6931471803691238) - kd * 1.9082149292705877e-10;
  double q = 1.0 / 6227020800.0;  // 1/13!
  q = q * r + 1.0 / 479001600.0;
  q = q * r + 1.0 / 39916800.0;
  q = q * r + 1.0 / 3628800.0;
  q = q * r + 1.0 / 362880.0;
  q = q * r + 1.0 / 40320.0;
  q = q * r + 1.0 / 5040.0;
  q = q * r + 1.0 / 720.0;
  q = q * r + 1.0 / 120.0;
  q = q * r + 1.0 / 24.0;
  q = q * r + 1.0 / 6.0;
  q = q * r + 0.5;
  const double em1 = r + (r * r) * q;  // expm1(r)
  const int64_t k = static_cast<int64_t>(kd);
  const uint64_t bits = static_cast<uint64_t>(k + 1023) << 52;
  double scale;
  memcpy(&scale, &bits, sizeof(scale));
  return scale * em1 + (scale - c);
}

// Kernel entry minus the shift, in float64: linear from the scaled dot product, rbf from the squared distance d (the
// caller computes d only for the rbf kernel). Float64 also keeps a small-σ kernel out of float32's underflow.
FASTCKA_HD double kernel_entry(const KernelSpec& k, double dot, double d, bool diagonal) {
  if (k.type == kKernelLinear) return dot;
  if (diagonal) return 1.0 - k.shift;
  return exp_minus(-k.gamma * d, k.shift);
}

// The shift vote: a sampled pair votes for c = 1 when its kernel value exceeds 1/2; c = 1 wins with half the votes.
constexpr int64_t kShiftVotePairs = 512;
constexpr uint64_t kShiftVoteSeed = 0x5B1F7C0DEull;
FASTCKA_HD bool kernel_shift_vote(double gamma, double d) { return gamma * d < 0.69314718055994531; }
FASTCKA_HD double kernel_shift_from_votes(int64_t votes, int64_t pairs) { return 2 * votes >= pairs ? 1.0 : 0.0; }


// Slots of the float64 moment vector a kernel-HSIC pass fills (r = off-diagonal row sums, d = diagonal, S = Σ r,
// T = Σ d; the Σ entries are off-diagonal too).
enum KernelMoment : int {
  kmKL = 0, kmKK, kmLL,                     // Σ K∘L, Σ K∘K, Σ L∘L (scaled units)
  kmRkRl, kmRkRk, kmRlRl,                   // r·r
  kmSk, kmSl,                               // Σ r
  kmDkDl, kmDkDk, kmDlDl,                   // d·d
  kmTk, kmTl,                               // Σ d
  kmRkDl, kmDkRl, kmRkDk, kmRlDl,           // r·d
  kmKappaX, kmKappaY,                       // κ of each side
  kmShiftX, kmShiftY,                       // c of each side (the pass accumulates K − c)
  kmUCentred,                               // kNumUCentredSlots slots: the small-n numerators (u_centred.h)
  kNumKernelMoments = kmUCentred + kNumUCentredSlots
};

// HSIC from the moments of a pair of kernels A, B (true units: every moment times its κ factors; ab, ra·rb, sa, sb
// off-diagonal).
FASTCKA_HD double kernel_hsic_from_moments(double ab, double rarb, double sa, double sb, double dadb, double ta,
                                           double tb, double radb, double darb, int64_t n, bool unbiased,
                                           double noise, const double* u, int which, double unit) {
  const double nd = static_cast<double>(n);
  if (unbiased) {  // u, which, unit: the small-n slots, which HSIC this is, its κ factors (u_centred.h)
    const double t1 = sa * sb / ((nd - 1.0) * (nd - 2.0)), t2 = 2.0 / (nd - 2.0) * rarb;
    return unbiased_numerator(ab + t1 - t2, fabs(ab) + fabs(t1) + fabs(t2), u, which, unit, noise) /
           (nd * (nd - 3.0));
  }
  const double full_ab = ab + dadb, full_rr = rarb + radb + darb + dadb;  // (r_A + d_A)·(r_B + d_B)
  const double t1 = 2.0 / nd * full_rr, t2 = (sa + ta) * (sb + tb) / (nd * nd);
  return drop_noise(full_ab - t1 + t2, fabs(full_ab) + fabs(t1) + fabs(t2), noise) / ((nd - 1.0) * (nd - 1.0));
}

// out[0..2] = HSIC(K,L), HSIC(K,K), HSIC(L,L); noise: hsic_noise_coef of the inputs' precision (noise.h).
FASTCKA_HD void kernel_hsic_combine(const double* m, int64_t n, bool unbiased, double noise, double* out) {
  const double kx = m[kmKappaX], ky = m[kmKappaY];
  const double* u = m + kmUCentred;
  out[0] = kernel_hsic_from_moments(m[kmKL] * kx * ky, m[kmRkRl] * kx * ky, m[kmSk] * kx, m[kmSl] * ky,
                                    m[kmDkDl] * kx * ky, m[kmTk] * kx, m[kmTl] * ky, m[kmRkDl] * kx * ky,
                                    m[kmDkRl] * kx * ky, n, unbiased, noise, u, 0, kx * ky);
  out[1] = kernel_hsic_from_moments(m[kmKK] * kx * kx, m[kmRkRk] * kx * kx, m[kmSk] * kx, m[kmSk] * kx,
                                    m[kmDkDk] * kx * kx, m[kmTk] * kx, m[kmTk] * kx, m[kmRkDk] * kx * kx,
                                    m[kmRkDk] * kx * kx, n, unbiased, noise, u, 1, kx * kx);
  out[2] = kernel_hsic_from_moments(m[kmLL] * ky * ky, m[kmRlRl] * ky * ky, m[kmSl] * ky, m[kmSl] * ky,
                                    m[kmDlDl] * ky * ky, m[kmTl] * ky, m[kmTl] * ky, m[kmRlDl] * ky * ky,
                                    m[kmRlDl] * ky * ky, n, unbiased, noise, u, 2, ky * ky);
}

// --- backward -------------------------------------------------------------------------------------------------------
// With D the symmetric derivative of g·(HSIC(K,L), HSIC(K,K), HSIC(L,L)) with respect to the entries of K:
//   Dᵢⱼ = c_other·L'ᵢⱼ + c_own·K'ᵢⱼ + uᵢ + uⱼ + c0   (i ≠ j; on the diagonal the same for HSIC₀, 0 for HSIC₁),
// the gradient with respect to the original rows is, with Wᵢⱼ = Dᵢⱼ (linear) or Dᵢⱼ·Kᵢⱼ (rbf),
//   linear: ∂/∂X = (2κ s)·W X'                    rbf: ∂/∂X = 4γ's·(W X' − diag(W1) X')
// (X' the scaled rows; ∂K/∂xᵢ = xⱼ resp. −2γ Kᵢⱼ (xᵢ − xⱼ), both triangles of K counted). K', L' are the shifted
// entries the pass accumulates (the estimators do not see the shift, so neither does D); W uses the true K = K' + c.
struct KernelGradCoef {
  double c_other, c_own, c0;
  double u_other, u_own;  // uᵢ = u_other·ρ_other,ᵢ + u_own·ρ_own,ᵢ, ρ from kernel_grad_rho, true units
  bool zero_diagonal;
};

// ρᵢ of one side from its off-diagonal row sum and its diagonal entry: the full row sum for HSIC₀, the off-diagonal
// one for HSIC₁.
FASTCKA_HD double kernel_grad_rho(double r_off, double d, bool unbiased) { return unbiased ? r_off : r_off + d; }

FASTCKA_HD KernelGradCoef kernel_grad_coef(double g_cross, double g_self, double kappa_own, double kappa_other,
                                           double s_own, double s_other, double t_own, double t_other, int64_t n,
                                           bool unbiased) {
  // s_*: Σ of the off-diagonal row sums, t_*: Σ d of each side, in true units.
  const double nd = static_cast<double>(n);
  KernelGradCoef c;
  if (!unbiased) {
    const double norm = 1.0 / ((nd - 1.0) * (nd - 1.0));
    c.c_other = g_cross * norm * kappa_other;
    c.c_own = 2.0 * g_self * norm * kappa_own;
    c.u_other = -g_cross * norm / nd;
    c.u_own = -2.0 * g_self * norm / nd;
    c.c0 = (g_cross * (s_other + t_other) + 2.0 * g_self * (s_own + t_own)) * norm / (nd * nd);
    c.zero_diagonal = false;
    return c;
  }
  const double norm = 1.0 / (nd * (nd - 3.0));
  c.c_other = g_cross * norm * kappa_other;
  c.c_own = 2.0 * g_self * norm * kappa_own;
  c.u_other = -g_cross * norm / (nd - 2.0);
  c.u_own = -2.0 * g_self * norm / (nd - 2.0);
  c.c0 = (g_cross * s_other + 2.0 * g_self * s_own) * norm / ((nd - 1.0) * (nd - 2.0));
  c.zero_diagonal = true;
  return c;
}

// W for one entry: D, times the true K for the rbf kernel. k_own, k_other: the shifted entries of the pass (K', L');
// own_shift: c of the own side.
FASTCKA_HD double kernel_grad_weight(const KernelGradCoef& c, int own_type, double own_shift, double k_own,
                                     double k_other, double u_i, double u_j, bool diagonal) {
  if (diagonal && c.zero_diagonal) return 0.0;
  const double d = c.c_other * k_other + c.c_own * k_own + u_i + u_j + c.c0;
  return own_type == kKernelRbf ? d * (k_own + own_shift) : d;
}

// Multiplier of (W X') and of diag(W1) X' in the gradient of the original rows.
FASTCKA_HD double kernel_grad_scale(int own_type, double gamma, double kappa, double s) {
  return own_type == kKernelRbf ? 4.0 * gamma * s : 2.0 * kappa * s;
}

}  // namespace fastcka
