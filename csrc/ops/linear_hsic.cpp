// Schemas of the linear-kernel HSIC op and its backward.
#include "stable_common.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastcka, m) {
  // -> float64 [HSIC(K,L), HSIC(K,K), HSIC(L,L)] for K = XXᵀ, L = YYᵀ; method: 0 auto, 1 feature, 2 sample space.
  m.def("linear_hsic(Tensor x, Tensor y, bool unbiased, int method) -> Tensor");
  // -> float64 (L, M) linear HSIC of every xs[i] against every ys[j]; ys empty: xs against itself (symmetric).
  m.def("linear_hsic_matrix(Tensor[] xs, Tensor[] ys, bool unbiased, int method) -> Tensor");
  m.def("_linear_hsic_backward(Tensor grad, Tensor x, Tensor y, bool unbiased, int method) -> (Tensor, Tensor)");
}
