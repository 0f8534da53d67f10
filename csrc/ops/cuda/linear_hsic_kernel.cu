// CUDA registration of the linear HSIC op (Grams through cuBLAS via ATen's matmul, reductions in cuda/primitives.cuh).
#include "cuda/primitives.cuh"
#include "linear_hsic_impl.h"

namespace fastcka {


Tensor linear_hsic_cuda(const Tensor& x, const Tensor& y, bool unbiased, int64_t method) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return linear_hsic<CudaBackend>(x, y, unbiased, method);
}

std::tuple<Tensor, Tensor> linear_hsic_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& y,
                                                     bool unbiased, int64_t method) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return linear_hsic_backward<CudaBackend>(grad, x, y, unbiased, method);
}

Tensor linear_hsic_matrix_cuda(const std::vector<Tensor>& xs, const std::vector<Tensor>& ys, bool unbiased,
                               int64_t method) {
  torch::stable::accelerator::DeviceGuard guard(xs.at(0).get_device_index());
  return linear_hsic_matrix<CudaBackend>(xs, ys, unbiased, method);
}

FASTCKA_CUDA_LIBRARY_IMPL(m) {
  m.impl("linear_hsic_matrix", TORCH_BOX(&linear_hsic_matrix_cuda));
  m.impl("linear_hsic", TORCH_BOX(&linear_hsic_cuda));
  m.impl("_linear_hsic_backward", TORCH_BOX(&linear_hsic_backward_cuda));
}

}  // namespace fastcka
