// Schemas of the fused tiled kernel-HSIC op, its backward, and the exact median of squared distances.
#include "stable_common.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastcka, m) {
  // -> float64 [HSIC(K,L), HSIC(K,K), HSIC(L,L)]; kernel_x/kernel_y: 0 linear, 1 rbf; gamma: float64 [γx, γy] with
  // γ = 1/(2σ²) (ignored for a linear side). K and L are never stored.
  m.def("kernel_hsic(Tensor x, Tensor y, Tensor gamma, int kernel_x, int kernel_y, bool unbiased) -> Tensor");
  m.def("_kernel_hsic_backward(Tensor grad, Tensor x, Tensor y, Tensor gamma, int kernel_x, int kernel_y, "
        "bool unbiased) -> (Tensor, Tensor)");
  // numpy's median of the n² squared distances between the rows of x (diagonal zeros included), float64 0-d.
  // method: 0 auto (a sampled window first, exact radix passes on a miss), 1 radix only; 2 and 3 are for tests.
  m.def("median_sq_dist(Tensor x, int method=0) -> Tensor");
  // float64 [L]: median_sq_dist of each layer (any n each; one device), the layers' medians at once where it pays.
  m.def("median_sq_dists(Tensor[] xs, int method=0) -> Tensor");
}
