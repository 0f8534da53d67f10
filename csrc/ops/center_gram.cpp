// Schema of the fused Gram-centring op; its backward is the same op in its adjoint mode.
#include "stable_common.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastcka, m) {
  // mode: 0 biased (H K H), 1 unbiased (U-centring), 2 the adjoint of 1 (used by the backward).
  m.def("center_gram(Tensor k, int mode) -> Tensor");
}
