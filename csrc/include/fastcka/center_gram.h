// Fused centring of a given n×n Gram matrix, and its adjoint: out_ij = A_ij − a_i − b_j + c (0 on the diagonal
// for the unbiased forms), from the row sums, column sums and diagonal of A. Shared by the CPU and CUDA kernels.
//   biased   (H A H):  a = row means, b = column means, c = grand mean; for symmetric A this is Kornblith et al.'s
//                      center_gram(unbiased=False). Self-adjoint.
//   unbiased (Song et al.; Kornblith's center_gram(unbiased=True), which uses the column sums on both sides):
//                      Ã = A with a zero diagonal, v_j = Σ_i Ã_ij/(n−2), a = b = v − Σv/(2(n−1)), c = 0.
//   its adjoint:       w_j = Σ_i Ã_ij + Σ_i Ã_ji, a = 0, b = w/(n−2), c = Σw/(2(n−1)(n−2)).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastcka/macros.h"

namespace fastcka {

enum CenterMode : int { kCenterBiased = 0, kCenterUnbiased = 1, kCenterUnbiasedAdjoint = 2 };

struct CenterCoef {
  double a, b;
};

// a_i and b_i from the (diagonal-free when unbiased) row and column sums of row/column i and the totals.
FASTCKA_HD CenterCoef center_coef(int mode, int64_t n, double rowsum, double colsum, double total_col,
                                  double total_both) {
  const double nd = static_cast<double>(n);
  CenterCoef c;
  if (mode == kCenterBiased) {
    c.a = rowsum / nd;
    c.b = colsum / nd;
  } else if (mode == kCenterUnbiased) {
    c.a = c.b = colsum / (nd - 2.0) - total_col / ((nd - 2.0) * 2.0 * (nd - 1.0));
  } else {
    c.a = 0.0;
    c.b = (rowsum + colsum) / (nd - 2.0);
  }
  return c;
}

FASTCKA_HD double center_constant(int mode, int64_t n, double total_col, double total_both) {
  const double nd = static_cast<double>(n);
  if (mode == kCenterBiased) return total_col / (nd * nd);
  if (mode == kCenterUnbiased) return 0.0;
  return total_both / (2.0 * (nd - 1.0) * (nd - 2.0));
}

FASTCKA_HD double center_value(int mode, double a_ij, double a_i, double b_j, double c, bool diagonal) {
  if (diagonal && mode != kCenterBiased) return 0.0;
  return a_ij - a_i - b_j + c;
}

// The symmetry check's per-pair test: do K_ij and K_ji differ by more than the threshold, or by an infinite amount
// (an infinite entry facing a finite one, caught even when the threshold is infinite)? A NaN difference (a NaN entry,
// or the same infinity on both sides) is not an asymmetry. Branch-free, so that the CPU loop vectorises.
FASTCKA_HD bool is_asymmetric(double a, double b, double threshold) {
  const double d = fabs(a - b);
  return (d > threshold) | (d > 1.7976931348623157e308);  // the second: d is +inf
}

}  // namespace fastcka
