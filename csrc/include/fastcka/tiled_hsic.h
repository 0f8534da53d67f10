// Kernel HSIC in one pass over the i ≤ j pairs, never storing K or L: the math shared by the CPU and CUDA kernels.
//
// The features are shifted by x₀, the column medians of a seeded row subset, and multiplied by a power of two s
// (exact for the data a test can check exactly, robust to outlier rows, and it keeps Grams finite); kernels see the
// scaled rows x' = s(x − x₀):
//   linear  K'ᵢⱼ = x'ᵢ·x'ⱼ           (true Kᵢⱼ = κ·K'ᵢⱼ with κ = 1/s², applied in float64 at the end)
//   rbf     Kᵢⱼ  = exp(−γ'‖x'ᵢ − x'ⱼ‖²) with γ' = γ/s² = 1/(2σ²s²); ‖·‖² from the row norms and the dot, ≥ 0,
//           exactly 0 on the diagonal. (κ = 1.)
// A pass accumulates Σ K∘L, Σ K∘K, Σ L∘L over all n² entries (entries j > i count twice), the row sums r_K, r_L
// and the diagonals d_K, d_L; with them (Gretton et al. 2005; Song et al. 2012, K̃ = K with a zero diagonal):
//   HSIC₀ = [Σ K∘L − (2/n) r_K·r_L + S_K S_L/n²] / (n−1)²
//   HSIC₁ = [Σ K∘L − d_K·d_L + S̃_K S̃_L/((n−1)(n−2)) − 2/(n−2)·(r_K−d_K)·(r_L−d_L)] / (n(n−3)),  S̃ = S − Σd.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastcka/macros.h"

namespace fastcka {

enum KernelType : int { kKernelLinear = 0, kKernelRbf = 1 };

struct KernelSpec {
  int type;      // KernelType
  double gamma;  // γ' (rbf, scaled units); unused for linear
};

// Kernel value of a pair from the scaled dot product and the scaled row norms, in the input precision.
template <typename T>
FASTCKA_HD T kernel_value(const KernelSpec& k, T dot, T norm_i, T norm_j, bool diagonal) {
  if (k.type == kKernelLinear) return dot;
  if (diagonal) return T(1);
  T d = norm_i + norm_j - T(2) * dot;
  d = d > T(0) ? d : T(0);
  return exp(-static_cast<T>(k.gamma) * d);
}

// Weight of pair (i, j) in the n² sums when only j ≥ i is visited.
FASTCKA_HD double pair_weight(int64_t i, int64_t j) { return j > i ? 2.0 : (j == i ? 1.0 : 0.0); }

// Slots of the float64 moment vector a kernel-HSIC pass fills (r = row sums, d = diagonal, S = Σ r, T = Σ d).
enum KernelMoment : int {
  kmKL = 0, kmKK, kmLL,                     // Σ K∘L, Σ K∘K, Σ L∘L (scaled units)
  kmRkRl, kmRkRk, kmRlRl,                   // r·r
  kmSk, kmSl,                               // Σ r
  kmDkDl, kmDkDk, kmDlDl,                   // d·d
  kmTk, kmTl,                               // Σ d
  kmRkDl, kmDkRl, kmRkDk, kmRlDl,           // r·d
  kmKappaX, kmKappaY,                       // κ of each side
  kNumKernelMoments
};

// HSIC from the moments of a pair of kernels A, B (true units: every moment times its κ factors).
FASTCKA_HD double kernel_hsic_from_moments(double ab, double rarb, double sa, double sb, double dadb, double ta,
                                           double tb, double radb, double darb, int64_t n, bool unbiased) {
  const double nd = static_cast<double>(n);
  if (!unbiased) return (ab - 2.0 / nd * rarb + sa * sb / (nd * nd)) / ((nd - 1.0) * (nd - 1.0));
  const double tr = ab - dadb;
  const double cross = rarb - radb - darb + dadb;  // (r_A − d_A)·(r_B − d_B)
  return (tr + (sa - ta) * (sb - tb) / ((nd - 1.0) * (nd - 2.0)) - 2.0 / (nd - 2.0) * cross) / (nd * (nd - 3.0));
}

// out[0..2] = HSIC(K,L), HSIC(K,K), HSIC(L,L).
FASTCKA_HD void kernel_hsic_combine(const double* m, int64_t n, bool unbiased, double* out) {
  const double kx = m[kmKappaX], ky = m[kmKappaY];
  out[0] = kernel_hsic_from_moments(m[kmKL] * kx * ky, m[kmRkRl] * kx * ky, m[kmSk] * kx, m[kmSl] * ky,
                                    m[kmDkDl] * kx * ky, m[kmTk] * kx, m[kmTl] * ky, m[kmRkDl] * kx * ky,
                                    m[kmDkRl] * kx * ky, n, unbiased);
  out[1] = kernel_hsic_from_moments(m[kmKK] * kx * kx, m[kmRkRk] * kx * kx, m[kmSk] * kx, m[kmSk] * kx,
                                    m[kmDkDk] * kx * kx, m[kmTk] * kx, m[kmTk] * kx, m[kmRkDk] * kx * kx,
                                    m[kmRkDk] * kx * kx, n, unbiased);
  out[2] = kernel_hsic_from_moments(m[kmLL] * ky * ky, m[kmRlRl] * ky * ky, m[kmSl] * ky, m[kmSl] * ky,
                                    m[kmDlDl] * ky * ky, m[kmTl] * ky, m[kmTl] * ky, m[kmRlDl] * ky * ky,
                                    m[kmRlDl] * ky * ky, n, unbiased);
}

// --- backward -------------------------------------------------------------------------------------------------------
// With D the symmetric derivative of g·(HSIC(K,L), HSIC(K,K), HSIC(L,L)) with respect to the entries of K:
//   Dᵢⱼ = c_other·L'ᵢⱼ + c_own·K'ᵢⱼ + uᵢ + uⱼ + c0   (i ≠ j; on the diagonal the same for HSIC₀, 0 for HSIC₁),
// the gradient with respect to the original rows is, with Wᵢⱼ = Dᵢⱼ (linear) or Dᵢⱼ·Kᵢⱼ (rbf),
//   linear: ∂/∂X = (2κ s)·W X'                    rbf: ∂/∂X = 4γ's·(W X' − diag(W1) X')
// (X' the scaled rows; ∂K/∂xᵢ = xⱼ resp. −2γ Kᵢⱼ (xᵢ − xⱼ), both triangles of K counted).
struct KernelGradCoef {
  double c_other, c_own, c0;
  double u_other, u_own;  // uᵢ = u_other·ρ_other,ᵢ + u_own·ρ_own,ᵢ with ρ = r (HSIC₀) or r − d (HSIC₁), true units
  bool zero_diagonal;
};

FASTCKA_HD KernelGradCoef kernel_grad_coef(double g_cross, double g_self, double kappa_own, double kappa_other,
                                           double s_own, double s_other, double t_own, double t_other, int64_t n,
                                           bool unbiased) {
  // s_*, t_*: Σ r and Σ d of each side in true units.
  const double nd = static_cast<double>(n);
  KernelGradCoef c;
  if (!unbiased) {
    const double norm = 1.0 / ((nd - 1.0) * (nd - 1.0));
    c.c_other = g_cross * norm * kappa_other;
    c.c_own = 2.0 * g_self * norm * kappa_own;
    c.u_other = -g_cross * norm / nd;
    c.u_own = -2.0 * g_self * norm / nd;
    c.c0 = (g_cross * s_other + 2.0 * g_self * s_own) * norm / (nd * nd);
    c.zero_diagonal = false;
    return c;
  }
  const double norm = 1.0 / (nd * (nd - 3.0));
  c.c_other = g_cross * norm * kappa_other;
  c.c_own = 2.0 * g_self * norm * kappa_own;
  c.u_other = -g_cross * norm / (nd - 2.0);
  c.u_own = -2.0 * g_self * norm / (nd - 2.0);
  c.c0 = (g_cross * (s_other - t_other) + 2.0 * g_self * (s_own - t_own)) * norm / ((nd - 1.0) * (nd - 2.0));
  c.zero_diagonal = true;
  return c;
}

// W for one entry: D, times K for the rbf kernel. k_own, k_other in the units the pass computes (K', L').
FASTCKA_HD double kernel_grad_weight(const KernelGradCoef& c, int own_type, double k_own, double k_other, double u_i,
                                     double u_j, bool diagonal) {
  if (diagonal && c.zero_diagonal) return 0.0;
  const double d = c.c_other * k_other + c.c_own * k_own + u_i + u_j + c.c0;
  return own_type == kKernelRbf ? d * k_own : d;
}

// Multiplier of (W X') and of diag(W1) X' in the gradient of the original rows.
FASTCKA_HD double kernel_grad_scale(int own_type, double gamma, double kappa, double s) {
  return own_type == kKernelRbf ? 4.0 * gamma * s : 2.0 * kappa * s;
}

// --- triangular tile enumeration (CUDA: one block per tile pair ti ≤ tj) ---------------------------------------------
FASTCKA_HD void triangle_tile(int64_t t, int64_t tiles, int64_t* ti, int64_t* tj) {
  // t enumerates (ti, tj), ti ≤ tj, row by row: row ti holds tiles − ti pairs.
  int64_t row = 0, start = 0;
  while (start + (tiles - row) <= t) {
    start += tiles - row;
    ++row;
  }
  *ti = row;
  *tj = row + (t - start);
}

}  // namespace fastcka
