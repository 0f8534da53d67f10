// CUDA kernels and registration of the Fourier energy spectrum op (fold math from fastcka/spectrum.h).
#include "cuda/primitives.cuh"
#include "frequency_spectrum_impl.h"

namespace fastcka {
namespace cuda {

template <typename T>
__global__ void fourier_basis_kernel(T* out, int64_t p, int64_t h) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < 2 * h * p;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p, a = i % p;
    out[i] = static_cast<T>(::fastcka::fourier_basis(r >= h, r % h, a, p));
  }
}

// One block per output entry, looping over the entries beyond the grid (h² can exceed any grid: the loop bound is
// uniform over the block, so block_sum's barriers are reached by all of its threads).
template <typename T>
__global__ void spectrum_fold_kernel(const T* f, SpectrumParams s, int64_t entries, double* out) {
  for (int64_t e = blockIdx.x; e < entries; e += gridDim.x) {
    const double v = block_sum(spectrum_partial(f, s, e, threadIdx.x, blockDim.x));
    if (threadIdx.x == 0) out[e] = spectrum_weight(s, e) * v;
  }
}

template <typename T>
__global__ void spectrum_fold_backward_kernel(const T* f, const double* g, SpectrumParams s, int64_t len, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < len;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = spectrum_entry_of(s, i);
    out[i] = static_cast<T>(2.0 * spectrum_weight(s, e) * g[e] * static_cast<double>(f[i]));
  }
}

}  // namespace cuda

struct CudaSpectrum {
  static Tensor fourier_basis(const Tensor& like, int64_t p) {
    const int64_t h = p / 2 + 1;
    Tensor b = empty_like_shape(like, {2 * h, p}, like.scalar_type());
    FASTCKA_DISPATCH_FLOATING(like.scalar_type(), "fourier_basis", [&] {
      FASTCKA_LAUNCH(cuda::blocks_for(2 * h * p, cuda::kThreads), cuda::kThreads, 0, cuda::current_stream(like),
                     cuda::fourier_basis_kernel)(b.mutable_data_ptr<scalar_t>(), p, h);
      cuda::check_launch("fourier_basis");
    });
    return b;
  }

  static Tensor spectrum_fold(const Tensor& f, const SpectrumParams& s) {
    Tensor out = s.ndim == 1 ? empty_like_shape(f, {s.h}, ScalarType::Double)
                             : empty_like_shape(f, {s.h, s.h}, ScalarType::Double);
    FASTCKA_DISPATCH_FLOATING(f.scalar_type(), "spectrum_fold", [&] {
      FASTCKA_LAUNCH(cuda::blocks_for(spectrum_entries(s), 1, cuda::kMaxEntryBlocks), cuda::kThreads, 0,
                     cuda::current_stream(f), cuda::spectrum_fold_kernel)(
          f.const_data_ptr<scalar_t>(), s, spectrum_entries(s), out.mutable_data_ptr<double>());
      cuda::check_launch("spectrum_fold");
    });
    return out;
  }

  static Tensor spectrum_fold_backward(const Tensor& f, const Tensor& grad, const SpectrumParams& s) {
    Tensor df = empty_like_shape(f, {f.numel()}, f.scalar_type());
    FASTCKA_DISPATCH_FLOATING(f.scalar_type(), "spectrum_fold_backward", [&] {
      FASTCKA_LAUNCH(cuda::blocks_for(f.numel(), cuda::kThreads), cuda::kThreads, 0, cuda::current_stream(f),
                     cuda::spectrum_fold_backward_kernel)(
          f.const_data_ptr<scalar_t>(), grad.const_data_ptr<double>(), s, f.numel(), df.mutable_data_ptr<scalar_t>());
      cuda::check_launch("spectrum_fold_backward");
    });
    std::vector<int64_t> shape;
    for (int64_t d = 0; d < f.dim(); ++d) shape.push_back(f.size(d));
    return reshaped(df, shape);
  }
};

Tensor frequency_spectrum_cuda(const Tensor& x, int64_t method) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return frequency_spectrum<CudaSpectrum>(x, method);
}

Tensor frequency_spectrum_backward_cuda(const Tensor& grad, const Tensor& x, int64_t method) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return frequency_spectrum_backward<CudaSpectrum>(grad, x, method);
}

FASTCKA_CUDA_LIBRARY_IMPL(m) {
  m.impl("frequency_spectrum", TORCH_BOX(&frequency_spectrum_cuda));
  m.impl("_frequency_spectrum_backward", TORCH_BOX(&frequency_spectrum_backward_cuda));
}

}  // namespace fastcka
