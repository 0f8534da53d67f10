// Fourier energy spectrum, device-generic: the DFT as a GEMM with the real cos/sin basis (exact, p ≤ 512) or as
// rfft (larger p), then the fold kernel of the backend. x is (p, m) for one residue axis, (p, p, m) for a grid.
// Returns float64 (h) or (h, h), h = ⌊p/2⌋ + 1; see csrc/include/fastcka/spectrum.h.
#pragma once

#include <tuple>

#include "fastcka/spectrum.h"
#include "backend.h"  // the contract every backend D fulfils
#include "stable_common.h"

namespace fastcka {

enum SpectrumMethod : int { kSpectrumAuto = 0, kSpectrumMatmul = 1, kSpectrumFft = 2 };
constexpr int64_t kSpectrumMatmulMaxP = 512;

inline SpectrumParams spectrum_params(const Tensor& x, const char* op) {
  STD_TORCH_CHECK(x.dim() == 2 || x.dim() == 3, op, ": x must be (p, m) or (p, p, m)");
  SpectrumParams s;
  s.p = x.size(0);
  STD_TORCH_CHECK(s.p >= 2, op, ": the residue axis needs at least 2 entries");
  s.ndim = static_cast<int>(x.dim()) - 1;
  if (s.ndim == 2) STD_TORCH_CHECK(x.size(1) == s.p, op, ": a grid must be p×p");
  s.h = s.p / 2 + 1;
  s.m = x.size(x.dim() - 1);
  return s;
}

// Projection on the real DFT basis along every residue axis, laid out as spectrum_offset expects.
template <class D>
Tensor spectrum_project_matmul(const Tensor& x, const SpectrumParams& s, const Tensor& basis) {
  if (s.ndim == 1) return mm(basis, x);
  const Tensor g = mm(basis, reshaped(x, {s.p, s.p * s.m}));                // (ca, ka, b, j)
  const Tensor gb = reshaped(permuted(reshaped(g, {2 * s.h, s.p, s.m}), {1, 0, 2}), {s.p, 2 * s.h * s.m});
  return mm(basis, gb);                                                      // (cb, kb, ca, ka, j)
}

inline Tensor rfft_real_parts(const Tensor& x) {  // rfft along dim 0, as a real tensor (..., 2)
  const Tensor c = call_aten("aten::fft_rfft", "", x, std::optional<int64_t>(), int64_t(0), std::optional<std::string>());
  return call_aten("aten::view_as_real", "", c);
}

inline Tensor spectrum_project_fft(const Tensor& x, const SpectrumParams& s) {
  const Tensor f = rfft_real_parts(x);                                        // (h, [p_b,] m, 2)
  if (s.ndim == 1) return permuted(f, {2, 0, 1});                             // (c, k, j)
  const Tensor g = permuted(f, {1, 3, 0, 2});                                 // (b, ca, ka, j)
  return permuted(rfft_real_parts(g), {4, 0, 1, 2, 3});                       // (cb, kb, ca, ka, j)
}

template <class D>
Tensor frequency_spectrum(const Tensor& x_, int64_t method) {
  STD_TORCH_CHECK(method >= kSpectrumAuto && method <= kSpectrumFft,
                  "fastcka::frequency_spectrum: method must be 0 (auto), 1 (matmul) or 2 (fft)");
  const Tensor x = as_contiguous(x_);
  const SpectrumParams s = spectrum_params(x, "fastcka::frequency_spectrum");
  const bool use_fft = method == kSpectrumFft || (method == kSpectrumAuto && s.p > kSpectrumMatmulMaxP);
  const Tensor f = use_fft ? spectrum_project_fft(x, s)
                           : spectrum_project_matmul<D>(x, s, D::fourier_basis(x, s.p));
  return D::spectrum_fold(f, s);
}

// grad: float64, the gradient with respect to the spectrum. E = w·Σ F², F linear in x: dx = Bᵀ(2·w·grad·F).
template <class D>
Tensor frequency_spectrum_backward(const Tensor& grad, const Tensor& x_, int64_t method) {
  (void)method;  // the gradient always uses the basis: the transpose of a real DFT is another GEMM
  const Tensor x = as_contiguous(x_);
  const SpectrumParams s = spectrum_params(x, "fastcka::_frequency_spectrum_backward");
  check_grad(grad, x, s.ndim == 1 ? s.h : s.h * s.h, "fastcka::_frequency_spectrum_backward");
  const Tensor basis = D::fourier_basis(x, s.p);
  const Tensor df = D::spectrum_fold_backward(spectrum_project_matmul<D>(x, s, basis), as_contiguous(grad), s);
  const Tensor bt = transposed(basis);                                        // (p, 2h)
  if (s.ndim == 1) return mm(bt, df);
  const Tensor gb = mm(bt, reshaped(df, {2 * s.h, 2 * s.h * s.m}));           // (b, ca, ka, j)
  const Tensor ga = reshaped(permuted(reshaped(gb, {s.p, 2 * s.h, s.m}), {1, 0, 2}), {2 * s.h, s.p * s.m});
  return reshaped(mm(bt, ga), {s.p, s.p, s.m});
}

}  // namespace fastcka
