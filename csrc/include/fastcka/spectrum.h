// Fourier energy spectrum along residue axes (Nanda et al. 2023): the fold shared by the CPU and CUDA kernels.
//
// The input is first projected on the real DFT basis of each transformed axis: F[c, k] = Σ_a basis_c(k, a) x[a] with
// c = 0 for cos(2πka/p) and c = 1 for sin(2πka/p), k = 0 … H−1, H = ⌊p/2⌋ + 1 (rfft gives the same numbers:
// Re = cos part, Im = −sin part). For a real input the DFT coefficients k and p − k have equal modulus, so the
// energy of the folded frequency k, Σ over the DFT indices ±k of |x̂|², is w_k·(C_k² + S_k²) with w_k = 1 when
// k ≡ −k (mod p) (k = 0, or k = p/2 for even p) and 2 otherwise. Over a p×p grid the same holds per axis:
// E[ka, kb] = w_ka·w_kb·Σ_{ca, cb} F[cb, kb, ca, ka]², summed over the trailing (non-residue) index m.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastcka/macros.h"

namespace fastcka {

struct SpectrumParams {
  int64_t p;     // residues per transformed axis
  int64_t h;     // folded frequencies per axis, ⌊p/2⌋ + 1
  int64_t m;     // trailing elements summed over
  int ndim;      // 1: F is (2, h, m); 2: F is (2, h_b, 2, h_a, m) and the output is (h_a, h_b)
};

FASTCKA_HD double fold_weight(int64_t k, int64_t p) { return (k == 0 || 2 * k == p) ? 1.0 : 2.0; }

FASTCKA_HD int64_t spectrum_entries(const SpectrumParams& s) { return s.ndim == 1 ? s.h : s.h * s.h; }

// Real DFT basis entry: cos or sin of 2π·((k·a) mod p)/p (the reduction keeps the angle exact to one rounding).
FASTCKA_HD double fourier_basis(int c, int64_t k, int64_t a, int64_t p) {
  const double ang = 6.283185307179586476925286766559 * static_cast<double>((k * a) % p) / static_cast<double>(p);
  return c == 0 ? cos(ang) : sin(ang);
}

// Offset in F of element (cb, kb, ca, ka, j) for output entry e = ka·h + kb (ndim 2) or e = k (ndim 1).
FASTCKA_HD int64_t spectrum_offset(const SpectrumParams& s, int64_t e, int variant, int64_t j) {
  if (s.ndim == 1) return (static_cast<int64_t>(variant) * s.h + e) * s.m + j;
  const int64_t ka = e / s.h, kb = e % s.h;
  const int ca = variant & 1, cb = variant >> 1;
  return (((static_cast<int64_t>(cb) * s.h + kb) * 2 + ca) * s.h + ka) * s.m + j;
}

FASTCKA_HD double spectrum_weight(const SpectrumParams& s, int64_t e) {
  if (s.ndim == 1) return fold_weight(e, s.p);
  return fold_weight(e / s.h, s.p) * fold_weight(e % s.h, s.p);
}

// Partial sum of squares for output entry e over j = j0, j0 + step, … (CPU: j0 = 0, step = 1; CUDA: one thread's
// share of a block). The caller multiplies the total by spectrum_weight.
template <typename T>
FASTCKA_HD double spectrum_partial(const T* F, const SpectrumParams& s, int64_t e, int64_t j0, int64_t step) {
  const int variants = s.ndim == 1 ? 2 : 4;
  double acc = 0.0;
  for (int v = 0; v < variants; ++v)
    for (int64_t j = j0; j < s.m; j += step) {
      const double f = static_cast<double>(F[spectrum_offset(s, e, v, j)]);
      acc += f * f;
    }
  return acc;
}

// Backward of the fold: ∂E[e]/∂F at flat index `idx` of F is 2·w_e·F; returns the entry e that idx belongs to.
FASTCKA_HD int64_t spectrum_entry_of(const SpectrumParams& s, int64_t idx) {
  const int64_t j = idx % s.m;
  (void)j;
  int64_t rest = idx / s.m;
  if (s.ndim == 1) return rest % s.h;
  const int64_t ka = rest % s.h;
  rest /= s.h;
  rest /= 2;  // ca
  const int64_t kb = rest % s.h;
  return ka * s.h + kb;
}

}  // namespace fastcka
