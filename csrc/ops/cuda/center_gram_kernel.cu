// CUDA kernels and registration of the fused Gram centring (math from fastcka/center_gram.h).
#include "center_gram_impl.h"
#include "cuda/primitives.cuh"

namespace fastcka {
namespace cuda {

// One block per row i: row sum of A (diagonal skipped for the unbiased modes) and atomic column sums.
template <typename T>
__global__ void center_sums_kernel(const T* k, int64_t n, bool skip_diag, double* row, double* col) {
  const int64_t i = blockIdx.x;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (skip_diag && i == j) continue;
    const double v = static_cast<double>(k[i * n + j]);
    s += v;
    atomicAdd(col + j, v);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) row[i] = s;
}

// totals[0] = Σ col, totals[1] = Σ (col + row), one block.
__global__ void center_totals_kernel(const double* row, const double* col, int64_t n, double* totals) {
  double a = 0.0, b = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    a += col[j];
    b += col[j] + row[j];
  }
  a = block_sum(a);
  b = block_sum(b);
  if (threadIdx.x == 0) {
    totals[0] = a;
    totals[1] = b;
  }
}

template <typename T>
__global__ void center_apply_kernel(const T* k, int64_t n, int mode, const double* row, const double* col,
                                    const double* totals, T* out) {
  const double c = center_constant(mode, n, totals[0], totals[1]);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e % n;
    const CenterCoef ci = center_coef(mode, n, row[i], col[i], totals[0], totals[1]);
    const CenterCoef cj = center_coef(mode, n, row[j], col[j], totals[0], totals[1]);
    out[e] = static_cast<T>(center_value(mode, static_cast<double>(k[e]), ci.a, cj.b, c, i == j));
  }
}

// One block per tile pair (bi, bj) of 32×32, those with bj ≥ bi working: the mirrored tile K[bj, bi] is staged in
// shared memory (coalesced), then each thread tests its entries of K[bi, bj] against it (above the diagonal only on
// a diagonal tile). Counts meet in shared memory, then one atomicAdd per block.
template <typename T>
__global__ void asymmetric_pairs_kernel(const T* k, int64_t n, const double* threshold, unsigned long long* out) {
  constexpr int kT = 32, kRowsPerSweep = kThreads / kT;
  __shared__ T mirror[kT][kT + 1];
  __shared__ unsigned long long block_count;
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  if (bj < bi) return;  // uniform over the block: no barrier is skipped by part of it
  const int tx = threadIdx.x % kT, ty0 = threadIdx.x / kT;
  const double thr = threshold[0];
  if (threadIdx.x == 0) block_count = 0;
  for (int ty = ty0; ty < kT; ty += kRowsPerSweep) {
    const int64_t r = bj * kT + ty, c = bi * kT + tx;
    mirror[ty][tx] = (r < n && c < n) ? k[r * n + c] : T(0);
  }
  __syncthreads();
  unsigned long long count = 0;
  for (int ty = ty0; ty < kT; ty += kRowsPerSweep) {
    const int64_t r = bi * kT + ty, c = bj * kT + tx;
    if (r < n && c < n && c > r)
      count += is_asymmetric(static_cast<double>(k[r * n + c]), static_cast<double>(mirror[tx][ty]), thr);
  }
  if (count) atomicAdd(&block_count, count);
  __syncthreads();
  if (threadIdx.x == 0 && block_count) atomicAdd(out, block_count);
}

}  // namespace cuda

struct CudaCenter {
  static Tensor center_apply(const Tensor& k, int mode) {
    const int64_t n = k.size(0);
    const cudaStream_t s = cuda::current_stream(k);
    Tensor out = empty_like_shape(k, {n, n}, k.scalar_type());
    Tensor row = zeros_f64(k, n), col = zeros_f64(k, n), totals = zeros_f64(k, 2);
    FASTCKA_DISPATCH_FLOATING(k.scalar_type(), "center_gram", [&] {
      FASTCKA_LAUNCH(static_cast<unsigned>(n), cuda::kThreads, 0, s, cuda::center_sums_kernel)(
          k.const_data_ptr<scalar_t>(), n, mode != kCenterBiased, row.mutable_data_ptr<double>(),
          col.mutable_data_ptr<double>());
      FASTCKA_LAUNCH(1, cuda::kThreads, 0, s, cuda::center_totals_kernel)(
          row.const_data_ptr<double>(), col.const_data_ptr<double>(), n, totals.mutable_data_ptr<double>());
      FASTCKA_LAUNCH(cuda::blocks_for(n * n, cuda::kThreads), cuda::kThreads, 0, s, cuda::center_apply_kernel)(
          k.const_data_ptr<scalar_t>(), n, mode, row.const_data_ptr<double>(), col.const_data_ptr<double>(),
          totals.const_data_ptr<double>(), out.mutable_data_ptr<scalar_t>());
      cuda::check_launch("center_gram");
    });
    return out;
  }

  static Tensor asymmetric_pairs(const Tensor& k, const Tensor& threshold) {
    const int64_t n = k.size(0), tiles = (n + 31) / 32;
    Tensor out = empty_like_shape(k, {}, ScalarType::Long);
    torch::stable::zero_(out);
    if (tiles == 0) return out;
    FASTCKA_DISPATCH_FLOATING(k.scalar_type(), "gram_asymmetric_pairs", [&] {
      FASTCKA_LAUNCH(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles)), cuda::kThreads, 0,
                     cuda::current_stream(k), cuda::asymmetric_pairs_kernel)(
          k.const_data_ptr<scalar_t>(), n, threshold.const_data_ptr<double>(),
          reinterpret_cast<unsigned long long*>(out.mutable_data_ptr<int64_t>()));
      cuda::check_launch("gram_asymmetric_pairs");
    });
    return out;
  }
};

Tensor gram_asymmetric_pairs_cuda(const Tensor& k, const Tensor& threshold) {
  torch::stable::accelerator::DeviceGuard guard(k.get_device_index());
  return gram_asymmetric_pairs<CudaCenter>(k, threshold);
}

Tensor center_gram_cuda(const Tensor& k, int64_t mode) {
  torch::stable::accelerator::DeviceGuard guard(k.get_device_index());
  return center_gram<CudaCenter>(k, mode);
}

FASTCKA_CUDA_LIBRARY_IMPL(m) {
  m.impl("center_gram", TORCH_BOX(&center_gram_cuda));
  m.impl("gram_asymmetric_pairs", TORCH_BOX(&gram_asymmetric_pairs_cuda));
}

}  // namespace fastcka
