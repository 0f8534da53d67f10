// Schemas of the Fourier energy spectrum op and its backward.
#include "stable_common.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastcka, m) {
  // x: (p, m) or (p, p, m) -> float64 (h,) or (h, h), h = p // 2 + 1; method: 0 auto, 1 basis GEMM, 2 rfft.
  m.def("frequency_spectrum(Tensor x, int method) -> Tensor");
  m.def("_frequency_spectrum_backward(Tensor grad, Tensor x, int method) -> Tensor");
}
