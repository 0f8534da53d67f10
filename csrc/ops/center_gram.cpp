// Schemas of the fused Gram-centring op (its backward is the same op in its adjoint mode) and its symmetry check.
#include "stable_common.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastcka, m) {
  // mode: 0 biased (H K H), 1 unbiased (U-centring), 2 the adjoint of 1 (used by the backward).
  m.def("center_gram(Tensor k, int mode) -> Tensor");
  // int64 0-d: the number of pairs i < j of a square matrix with |K_ij − K_ji| > threshold (a float64 0-d tensor on
  // k's device) or infinite; NaN differences do not count. center_gram's symmetry check, one read of each pair.
  m.def("gram_asymmetric_pairs(Tensor k, Tensor threshold) -> Tensor");
}
