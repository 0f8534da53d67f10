// CPU registration of the linear HSIC op.
#include "cpu/primitives.h"
#include "linear_hsic_impl.h"

namespace fastcka {
STABLE_TORCH_LIBRARY_IMPL(fastcka, CPU, m) {
  m.impl("linear_hsic", TORCH_BOX(&linear_hsic<CpuBackend>));
  m.impl("_linear_hsic_backward", TORCH_BOX(&linear_hsic_backward<CpuBackend>));
  m.impl("linear_hsic_matrix", TORCH_BOX(&linear_hsic_matrix<CpuBackend>));
}
}  // namespace fastcka
