// The unbiased HSIC at small n from the U-centred Grams themselves: shared by the linear and kernel ops.
//
// The one-pass formulas (linear_hsic.h, tiled_hsic.h) sum whole-Gram moments, Σ K̃∘L̃ + S_K S_L/((n−1)(n−2)) −
// 2/(n−2)·r_K·r_L, whose terms are as large as the entries squared. When the U-centred Gram Ũ is R times smaller
// than the entries, those terms cancel to R² times their rounding: at n ≤ 8 (few dimensions left after the
// U-centring: n(n−3)/2) on clustered rows, or an RBF σ far above the median, the fuzz suite saw errors of 2e-8 to
// 8e-4 in float64, and a CKA of 0 for 0.25 where the numerator fell below the noise rule. Centring each entry first,
//   Ũᵢⱼ = K̃ᵢⱼ − vᵢ − vⱼ (i ≠ j; 0 on the diagonal; center_gram.h, the unbiased mode)   HSIC₁ = ⟨Ũ_K, Ũ_L⟩ / (n(n−3)),
// leaves errors of R times the rounding of the entries instead. Up to kUCentredMaxN rows the ops therefore also build
// the n×n Grams (float64, at most 128 KB each), and a numerator whose one-pass terms cancel to below kUCentredSwitch
// of their size (a one-pass error above ~ε/kUCentredSwitch = 5e-13 of it) is taken from them. Elsewhere the one-pass
// numerator stays: the gradient ops differentiate the one-pass formula from the same entries, and where ∇CKA is a
// small difference of its parts (g·∇HSIC), values from the other formula, off by 1e-14 of the first, moved a gradient
// by 1.7e-7 of itself (a nearly diagonal RBF kernel, checked at 50 digits). Above kUCentredMaxN rows no n×n is held.
// The noise rule (noise.h) on these numerators: an entry of Ũ is off by a few roundings of the entries (at most a =
// max|K|, which for a linear Gram, the diagonal included, also bounds its GEMM error |xᵢ||xⱼ|); errors shared by a row
// (its mean vᵢ) cancel against the other side's zero row sums, and the rest add with independent signs, so
// ⟨Ũ_K, Ũ_L⟩ is off by about ε·(a_K‖Ũ_L‖ + a_L‖Ũ_K‖) (Frobenius norms); a numerator within `noise`·4(a_K‖Ũ_L‖ +
// a_L‖Ũ_K‖) of 0 is taken as 0 (all rows but one equal: Ũ is exactly 0). With Σ|Ũ| in place of ‖Ũ‖ the rule was
// n times too wide: a float32 CKA of 1e-4 at n = 128, p = 1024 came out 0.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastcka/macros.h"
#include "fastcka/noise.h"

namespace fastcka {

constexpr int64_t kUCentredMaxN = 128;
constexpr double kUCentredSwitch = 1.0 / 4096.0;

// Slots, from a base slot of a moment vector (kmUCentred, kUCentred): the three inner products ⟨Ũ_K, Ũ_L⟩, ⟨Ũ_K, Ũ_K⟩,
// ⟨Ũ_L, Ũ_L⟩; max|K|, max|L|; and 1 where the slots are filled (0: the one-pass moments apply).
enum UCentredSlot : int { kuKL = 0, kuKK, kuLL, kuAbsK, kuAbsL, kuOn, kNumUCentredSlots };

FASTCKA_HD bool u_centred_on(const double* u) { return u[kuOn] != 0.0; }

// The numerator of HSIC₁ from the slots u (which: 0 = (K, L), 1 = (K, K), 2 = (L, L)), noise dropped; the caller
// divides by n(n−3) and by the kernels' scale factors.
FASTCKA_HD double u_centred_numerator(const double* u, int which, double noise) {
  const double ak = u[kuAbsK], al = u[kuAbsL], nk = sqrt(fabs(u[kuKK])), nl = sqrt(fabs(u[kuLL]));
  const double magnitude = which == 0 ? 4.0 * (ak * nl + al * nk) : (which == 1 ? 8.0 * ak * nk : 8.0 * al * nl);
  return drop_noise(u[kuKL + which], magnitude, noise);
}

// The unbiased numerator: the one-pass `num`, whose terms add up to `magnitude` in absolute value, or where those
// cancel (below kUCentredSwitch) and the slots u are filled, the U-centred one times `unit` (the kernels' scale
// factors that num already carries); noise dropped either way.
FASTCKA_HD double unbiased_numerator(double num, double magnitude, const double* u, int which, double unit,
                                     double noise) {
  if (u_centred_on(u) && fabs(num) < kUCentredSwitch * magnitude) return u_centred_numerator(u, which, noise) * unit;
  return drop_noise(num, magnitude, noise);
}

}  // namespace fastcka
