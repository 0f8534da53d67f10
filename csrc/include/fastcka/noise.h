// When a cancelling HSIC numerator is rounding noise. Shared by the linear and kernel formulas.
//
// Exact arithmetic gives HSIC 0 for degenerate representations whose estimator terms cancel exactly — all rows but
// one equal makes the U-centred Gram exactly 0 — and CKA's documented value there is 0; floating point leaves noise
// of a few ulps of the terms instead, and the ratio of two such noises is anything (a debiased CKA of 2.3 was seen).
// A numerator within `noise`·(Σ|terms|) of 0 is taken as 0: 64 units of roundoff of the precision the entries carry —
// the input's for linear kernels (GEMM dots in it), float64's for RBF kernels (float64 entries from distances
// recomputed exactly wherever they could lose digits; kernel_hsic_impl.h).
#pragma once

#include <cmath>

#include "fastcka/macros.h"

namespace fastcka {

FASTCKA_HD double hsic_noise_coef(bool double_input) {
  return 64.0 * (double_input ? 1.1102230246251565e-16 : 5.9604644775390625e-08);
}

FASTCKA_HD double drop_noise(double num, double magnitude, double noise) {
  return fabs(num) <= noise * magnitude ? 0.0 : num;
}

}  // namespace fastcka
