// Test-only ops of the emulation library (torch.ops.fastcka_emu._emu_*): small kernels that check the emulation's
// semantics (barriers, per-block shared memory, shuffles, atomics, block order, error reports) and run the shared
// block reductions of cuda/primitives.cuh at block sizes the ops never launch. tests/test_cuda_emu.py calls them.
#include <vector>

#include "cuda/blas.cuh"
#include "cuda/primitives.cuh"

namespace fastcka {
namespace emu_selftest {

// out[b] = (Σ, max) over the `threads` values x[b·threads + t] of block b, through cuda::block_sum/block_max.
__global__ void block_reduce_kernel(const double* x, int64_t len, double* out) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const double v = k < len ? x[k] : 0.0;
  const double s = cuda::block_sum(v);
  const double m = cuda::block_max(v);
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = s;
    out[2 * blockIdx.x + 1] = m;
  }
}

// Thread t writes t to shared memory, then (after a barrier, or not) reads its neighbour's slot.
__global__ void shared_neighbour_kernel(bool barrier, int64_t* out) {
  __shared__ int64_t s[1024];
  s[threadIdx.x] = threadIdx.x + 1000 * static_cast<int64_t>(blockIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Every thread adds 1 (float64 and u64 atomics) and its global index to a max; thread 0 of each block records the
// order in which the blocks ran.
__global__ void atomics_kernel(double* sum, unsigned long long* count, unsigned long long* max_index,
                               unsigned long long* next, int64_t* order) {
  const unsigned long long id = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x;
  atomicAdd(sum, 1.0);
  atomicAdd(count, 1ull);
  atomicMax(max_index, id);
  if (threadIdx.x == 0) order[atomicAdd(next, 1ull)] = blockIdx.x;
}

// A full-mask shuffle in a block of `blockDim.x` threads: undefined on a GPU unless every lane exists.
__global__ void full_mask_shuffle_kernel(double* out) {
  const double v = __shfl_down_sync(0xffffffffu, static_cast<double>(threadIdx.x), 1);
  if (threadIdx.x == 0) *out = v;
}

}  // namespace emu_selftest

namespace {
using namespace emu_selftest;

Tensor block_reduce(const Tensor& x_, int64_t threads) {
  const Tensor x = as_contiguous(x_);
  const int64_t len = x.numel(), blocks = (len + threads - 1) / threads;
  Tensor out = empty_like_shape(x, {blocks, 2}, ScalarType::Double);
  FASTCKA_LAUNCH(static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0, nullptr, block_reduce_kernel)(
      x.const_data_ptr<double>(), len, out.mutable_data_ptr<double>());
  cuda::check_launch("_emu_block_reduce");
  return out;
}

Tensor shared_neighbour(const Tensor& like, int64_t blocks, int64_t threads, bool barrier) {
  Tensor out = empty_like_shape(like, {blocks, threads}, ScalarType::Long);
  FASTCKA_LAUNCH(static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0, nullptr, shared_neighbour_kernel)(
      barrier, out.mutable_data_ptr<int64_t>());
  cuda::check_launch("_emu_shared_neighbour");
  return out;
}

// -> int64 [blocks + 3]: Σ 1 (float64, cast), the u64 count, the max index, then the order the blocks ran in.
Tensor atomics(const Tensor& like, int64_t blocks, int64_t threads) {
  Tensor acc = zeros_f64(like, 4);  // sum, count, max, next (u64 counters in float64-sized slots)
  Tensor order = empty_like_shape(like, {blocks}, ScalarType::Long);
  double* a = acc.mutable_data_ptr<double>();
  auto* u = reinterpret_cast<unsigned long long*>(a);
  FASTCKA_LAUNCH(static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0, nullptr, atomics_kernel)(
      a, u + 1, u + 2, u + 3, order.mutable_data_ptr<int64_t>());
  cuda::check_launch("_emu_atomics");
  Tensor out = empty_like_shape(like, {blocks + 3}, ScalarType::Long);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  o[0] = static_cast<int64_t>(a[0]);
  o[1] = static_cast<int64_t>(u[1]);
  o[2] = static_cast<int64_t>(u[2]);
  const int64_t* ord = order.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < blocks; ++b) o[3 + b] = ord[b];
  return out;
}

Tensor full_mask_shuffle(const Tensor& like, int64_t threads) {
  Tensor out = zeros_f64(like, 1);
  FASTCKA_LAUNCH(1, static_cast<unsigned>(threads), 0, nullptr, full_mask_shuffle_kernel)(
      out.mutable_data_ptr<double>());
  cuda::check_launch("_emu_full_mask_shuffle");
  return out;
}

// cuda::gemm_rowmajor (blas.cuh) on contiguous row-major a (M×K) and b (N×K if transposed, else K×N): a·bᵀ or a·b.
Tensor gemm(const Tensor& a, const Tensor& b, bool transposed) {
  const int64_t M = a.size(0), K = a.size(1), N = transposed ? b.size(0) : b.size(1);
  STD_TORCH_CHECK((transposed ? b.size(1) : b.size(0)) == K, "_emu_gemm: inner sizes differ");
  Tensor c = empty_like_shape(a, {M, N}, a.scalar_type());
  FASTCKA_DISPATCH_FLOATING(a.scalar_type(), "_emu_gemm", [&] {
    cuda::gemm_rowmajor(cuda::blas_handle(a), nullptr, transposed, M, N, K, a.const_data_ptr<scalar_t>(),
                        b.const_data_ptr<scalar_t>(), c.mutable_data_ptr<scalar_t>());
  });
  return c;
}

Tensor launch_config(const Tensor& like, int64_t gx, int64_t gy, int64_t threads) {
  Tensor out = zeros_f64(like, 1);
  FASTCKA_LAUNCH(dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), static_cast<unsigned>(threads), 0,
                 nullptr, full_mask_shuffle_kernel)(out.mutable_data_ptr<double>());
  cuda::check_launch("_emu_launch_config");
  return out;
}
}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastcka_emu, m) {
  m.def("_emu_block_reduce(Tensor x, int threads) -> Tensor");
  m.def("_emu_shared_neighbour(Tensor like, int blocks, int threads, bool barrier) -> Tensor");
  m.def("_emu_atomics(Tensor like, int blocks, int threads) -> Tensor");
  m.def("_emu_full_mask_shuffle(Tensor like, int threads) -> Tensor");
  m.def("_emu_launch_config(Tensor like, int grid_x, int grid_y, int threads) -> Tensor");
  m.def("_emu_gemm(Tensor a, Tensor b, bool transposed) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(fastcka_emu, CPU, m) {
  m.impl("_emu_block_reduce", TORCH_BOX(&block_reduce));
  m.impl("_emu_shared_neighbour", TORCH_BOX(&shared_neighbour));
  m.impl("_emu_atomics", TORCH_BOX(&atomics));
  m.impl("_emu_full_mask_shuffle", TORCH_BOX(&full_mask_shuffle));
  m.impl("_emu_launch_config", TORCH_BOX(&launch_config));
  m.impl("_emu_gemm", TORCH_BOX(&gemm));
}

}  // namespace fastcka
