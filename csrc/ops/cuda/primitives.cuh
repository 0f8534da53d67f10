// CUDA building blocks of the GEMM-based ops, the twins of cpu/primitives.h: float64 reductions and fused element-wise
// passes. Dot products and sums (dot_into) add per-block partials in a fixed order and do not depend on block
// scheduling; column_stats still adds one float64 atomic per block, so the last bits of those sums may vary.
// The math they feed (moment combination, gradient coefficients, the power-of-two normaliser) comes from
// csrc/include/fastcka/, shared with the CPU.
#pragma once

#ifndef FASTCKA_CUDA_EMU
#include <cuda_runtime.h>
// A launch: FASTCKA_LAUNCH(grid, block, shmem, stream, kernel)(args...) is kernel<<<grid, block, shmem, stream>>>(
// args...) (the kernel last: it may hold template commas). The registration: the fastcka library's CUDA key. The CPU
// emulation of these sources (csrc/emu/cuda_emu.h, force-included, test-only) redefines both.
#define FASTCKA_LAUNCH(grid, block, shmem, stream, ...) __VA_ARGS__<<<grid, block, shmem, stream>>>
#define FASTCKA_CUDA_LIBRARY_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(fastcka, CUDA, m)
#endif
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <type_traits>

#include "fastcka/linear_hsic.h"
#include "stable_common.h"

namespace fastcka::cuda {

constexpr int kThreads = 256;

inline cudaStream_t current_stream(const Tensor& t) {
  void* s = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &s) == AOTI_TORCH_SUCCESS,
                  "fastcka: cannot get the current CUDA stream");
  return static_cast<cudaStream_t>(s);
}

inline void check_cuda(cudaError_t e, const char* what) {
  STD_TORCH_CHECK(e == cudaSuccess, "fastcka CUDA ", what, " failed: ", cudaGetErrorString(e));
}

inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  STD_TORCH_CHECK(e == cudaSuccess, "fastcka CUDA kernel ", what, " failed: ", cudaGetErrorString(e));
}

inline int blocks_for(int64_t work, int64_t per_block, int cap = 4096) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(cap, (work + per_block - 1) / per_block)));
}

// The most blocks a one-block-per-entry launcher puts on gridDim.x; its kernel loops over the entries beyond them
// (block-stride). The emulation uses a small cap, so that its tests run those loops.
#ifdef FASTCKA_CUDA_EMU
constexpr int kMaxEntryBlocks = 3;
#else
constexpr int kMaxEntryBlocks = 1 << 20;
#endif

// Reduces v over the block with op (identity: the value of an absent warp); the result is valid in thread 0. Any
// blockDim.x ≤ 1024 works, a partial last warp and blocks under 32 threads included: each shuffle names only the lanes
// that exist and uses a partner only when it exists. Every thread of the block must call it (it has barriers).
template <class Op>
__device__ inline double block_reduce(double v, double identity, Op op) {
  __shared__ double warp_part[32];
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31u) >> 5;
  const unsigned lanes = min(32u, blockDim.x - (threadIdx.x & ~31u));  // the lanes of this thread's warp
  const unsigned mask = lanes == 32u ? 0xffffffffu : (1u << lanes) - 1u;
  for (unsigned o = 16; o > 0; o >>= 1) {
    const double other = __shfl_down_sync(mask, v, o);
    if (lane + o < lanes) v = op(v, other);
  }
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {  // warp 0 has the same `lanes` and `mask` as above
    v = lane < nwarps ? warp_part[lane] : identity;
    for (unsigned o = 16; o > 0; o >>= 1) {
      const double other = __shfl_down_sync(mask, v, o);
      if (lane + o < lanes) v = op(v, other);
    }
  }
  __syncthreads();  // warp_part may be reused by the next call
  return v;
}

struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};

__device__ inline double block_sum(double v) { return block_reduce(v, 0.0, SumOp()); }
__device__ inline double block_max(double v) { return block_reduce(v, -INFINITY, MaxOp()); }

// Doubles as unsigned keys in the same order (non-NaN), so that atomicMin/atomicMax on the keys order the values.
__device__ inline unsigned long long order_key(double v) {
  const unsigned long long b = static_cast<unsigned long long>(__double_as_longlong(v));
  return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}
__device__ inline double from_order_key(unsigned long long k) {
  return __longlong_as_double(static_cast<long long>((k >> 63) ? (k & 0x7fffffffffffffffull) : ~k));
}

// Per column j: sums[j] += Σ_{rows of this block's chunk} x[i, j], and the chunk's extremes into lo/hi as order keys
// (blockIdx.y picks the row chunk; column_stats initialises the outputs).
template <typename T>
__global__ void column_stats_kernel(const T* x, int64_t n, int64_t p, int64_t rows_per_chunk, double* sums,
                                    unsigned long long* lo, unsigned long long* hi) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= p) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = min(n, r0 + rows_per_chunk);
  double acc = 0.0, mn = INFINITY, mx = -INFINITY;
  for (int64_t i = r0; i < r1; ++i) {
    const double v = static_cast<double>(x[i * p + j]);
    acc += v;
    mn = fmin(mn, v);
    mx = fmax(mx, v);
  }
  atomicAdd(sums + j, acc);
  atomicMin(lo + j, order_key(mn));
  atomicMax(hi + j, order_key(mx));
}

// stats: 3p doubles' room, filled as [column sums | lo keys | hi keys].
template <typename T>
void column_stats(const T* x, int64_t n, int64_t p, double* stats, cudaStream_t s) {
  auto* lo = reinterpret_cast<unsigned long long*>(stats + p);
  check_cuda(cudaMemsetAsync(stats, 0, sizeof(double) * p, s), "memset (column_stats)");
  check_cuda(cudaMemsetAsync(lo, 0xff, sizeof(double) * p, s), "memset (column_stats)");  // the largest key
  check_cuda(cudaMemsetAsync(lo + p, 0, sizeof(double) * p, s), "memset (column_stats)");  // the smallest key
  const int64_t chunks = std::min<int64_t>(std::max<int64_t>(1, n / 64), 1024);
  const int64_t rows = (n + chunks - 1) / chunks;
  dim3 grid(blocks_for(p, kThreads, 1 << 30), static_cast<unsigned>((n + rows - 1) / rows));
  FASTCKA_LAUNCH(grid, kThreads, 0, s, column_stats_kernel)(x, n, p, rows, stats, lo, lo + p);
  check_launch("column_stats");
}

__device__ inline double stats_mean(const double* stats, int64_t n, int64_t p, int64_t j) {
  const auto* keys = reinterpret_cast<const unsigned long long*>(stats + p);
  return column_mean(stats[j], n, from_order_key(keys[j]), from_order_key(keys[p + j]));
}

// resid[j] += Σ_{rows of this block's chunk} (x[i, j] − mean_j) (the float64 mean's correction, centred_entry).
template <typename T>
__global__ void residual_sums_kernel(const T* x, const double* stats, int64_t n, int64_t p, int64_t rows_per_chunk,
                                     double* resid) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= p) return;
  const double mean = stats_mean(stats, n, p, j);
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = min(n, r0 + rows_per_chunk);
  double acc = 0.0;
  for (int64_t i = r0; i < r1; ++i) acc += static_cast<double>(x[i * p + j]) - mean;
  atomicAdd(resid + j, acc);
}

// stats[3p, 4p): each column's Σ(x − mean) for float64 input (for float32 input 0: no correction).
template <typename T>
void residual_sums(const T* x, int64_t n, int64_t p, double* stats, cudaStream_t s) {
  double* resid = stats + 3 * p;
  check_cuda(cudaMemsetAsync(resid, 0, sizeof(double) * p, s), "memset (residual_sums)");
  if (!std::is_same<T, double>::value) return;
  const int64_t chunks = std::min<int64_t>(std::max<int64_t>(1, n / 64), 1024);
  const int64_t rows = (n + chunks - 1) / chunks;
  dim3 grid(blocks_for(p, kThreads, 1 << 30), static_cast<unsigned>((n + rows - 1) / rows));
  FASTCKA_LAUNCH(grid, kThreads, 0, s, residual_sums_kernel)(x, stats, n, p, rows, resid);
  check_launch("residual_sums");
}

// out = centred_entry(x, column mean, correction) (in float64, rounded once); stats from column_stats and (when
// `corrected`) residual_sums; *maxabs_bits = max |out| as the bits of a non-negative double.
template <typename Tin, typename Tout>
__global__ void subtract_means_kernel(const Tin* x, const double* stats, bool corrected, int64_t n, int64_t p,
                                      Tout* out, unsigned long long* maxabs_bits) {
  double m = 0.0;
  const double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n * p;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = k % p;
    const double corr = corrected ? stats[3 * p + j] * inv_n : 0.0;
    const Tout v = static_cast<Tout>(centred_entry(static_cast<double>(x[k]), stats_mean(stats, n, p, j), corr));
    out[k] = v;
    m = fmax(m, fabs(static_cast<double>(v)));
  }
  if (maxabs_bits) {
    m = block_max(m);
    if (threadIdx.x == 0) atomicMax(maxabs_bits, static_cast<unsigned long long>(__double_as_longlong(m)));
  }
}

template <typename T>
__global__ void normalise_kernel(T* x, int64_t len, const unsigned long long* maxabs_bits, double* m_slot) {
  const double s = pow2_normaliser(__longlong_as_double(static_cast<long long>(*maxabs_bits)));
  if (blockIdx.x == 0 && threadIdx.x == 0) *m_slot = s;
  if (s == 1.0) return;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < len;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[k] = static_cast<T>(static_cast<double>(x[k]) * s);  // float64: 2^149 is not a float
}

// Σ a∘b (b == nullptr: Σ a) per block into part[blockIdx.x]; dot_finish_kernel adds the partials in a fixed order, so
// the sum does not depend on block scheduling.
template <typename T>
__global__ void dot_kernel(const T* a, const T* b, int64_t len, double* part) {
  double acc = 0.0;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < len;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc += b ? static_cast<double>(a[k]) * static_cast<double>(b[k]) : static_cast<double>(a[k]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// *out += w·Σ part (one block).
__global__ inline void dot_finish_kernel(const double* part, int64_t parts, double w, double* out) {
  double acc = 0.0;
  for (int64_t t = threadIdx.x; t < parts; t += blockDim.x) acc += part[t];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out += w * acc;
}

// One warp per row.
template <typename T>
__global__ void row_sq_kernel(const T* x, int64_t n, int64_t p, double* out) {
  const int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  double acc = 0.0;
  for (int64_t j = lane; j < p; j += 32) {
    const double v = static_cast<double>(x[row * p + j]);
    acc += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
  if (lane == 0) out[row] = acc;
}

__global__ inline void linear_combine_kernel(const double* m, int64_t n, bool unbiased, double noise, double* out) {
  linear_hsic_combine(m, n, unbiased, noise, out);
}

template <typename T>
__global__ void linear_grad_assemble_kernel(const T* A, const T* B, const T* xc, const double* d_own,
                                            const double* d_other, const double* g, const double* m, bool x_side,
                                            int64_t n, int64_t p, bool unbiased, double* out) {
  const LinearGradCoef c = x_side
      ? linear_grad_coef(g[0], g[1], m[kScaleX], m[kScaleY], m[kTrK], m[kTrL], n, unbiased)
      : linear_grad_coef(g[0], g[2], m[kScaleY], m[kScaleX], m[kTrL], m[kTrK], n, unbiased);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n * p;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / p;
    const double r = c.r_const + c.r_other * d_other[i] + c.r_own * d_own[i];
    out[k] = c.a * static_cast<double>(A[k]) + c.b * static_cast<double>(B[k]) + r * static_cast<double>(xc[k]);
  }
}

// --- tensor-level wrappers (the CUDA backend) -----------------------------------------------------------------------

inline Tensor center_normalise(const Tensor& x, Tensor& m, int slot) {
  const int64_t n = x.size(0), p = x.size(1);
  const cudaStream_t s = current_stream(x);
  Tensor xc = empty_like_shape(x, {n, p}, x.scalar_type());
  Tensor stats = empty_like_shape(x, {4 * p + 1}, ScalarType::Double);  // column_stats, residual_sums, max bits
  FASTCKA_DISPATCH_FLOATING(x.scalar_type(), "center", [&] {
    double* sp = stats.mutable_data_ptr<double>();
    auto* bits = reinterpret_cast<unsigned long long*>(sp + 4 * p);
    column_stats(x.const_data_ptr<scalar_t>(), n, p, sp, s);
    residual_sums(x.const_data_ptr<scalar_t>(), n, p, sp, s);
    check_cuda(cudaMemsetAsync(bits, 0, sizeof(double), s), "memset (center_normalise)");
    const int blocks = blocks_for(n * p, kThreads);
    FASTCKA_LAUNCH(blocks, kThreads, 0, s, subtract_means_kernel)(
        x.const_data_ptr<scalar_t>(), sp, true, n, p, xc.mutable_data_ptr<scalar_t>(), bits);
    FASTCKA_LAUNCH(blocks, kThreads, 0, s, normalise_kernel)(
        xc.mutable_data_ptr<scalar_t>(), n * p, bits, m.mutable_data_ptr<double>() + slot);
    check_launch("center_normalise");
  });
  return xc;
}

// m[slot] += w·Σ a∘b (b == nullptr: Σ a), deterministic (dot_kernel, then dot_finish_kernel in a fixed order).
inline void dot_into(const Tensor& a, const Tensor* b, Tensor& m, int slot, double w = 1.0) {
  const cudaStream_t s = current_stream(a);
  const int blocks = blocks_for(a.numel(), kThreads * 4, 1024);
  Tensor part = empty_like_shape(a, {blocks}, ScalarType::Double);
  FASTCKA_DISPATCH_FLOATING(a.scalar_type(), "dot", [&] {
    FASTCKA_LAUNCH(blocks, kThreads, 0, s, dot_kernel)(
        a.const_data_ptr<scalar_t>(), b ? b->const_data_ptr<scalar_t>() : nullptr, a.numel(),
        part.mutable_data_ptr<double>());
    FASTCKA_LAUNCH(1, kThreads, 0, s, dot_finish_kernel)(part.const_data_ptr<double>(), blocks, w,
                                                          m.mutable_data_ptr<double>() + slot);
    check_launch("dot");
  });
}

inline Tensor row_sq(const Tensor& xc) {
  const int64_t n = xc.size(0), p = xc.size(1);
  Tensor out = empty_like_shape(xc, {n}, ScalarType::Double);
  FASTCKA_DISPATCH_FLOATING(xc.scalar_type(), "row_sq", [&] {
    FASTCKA_LAUNCH(blocks_for(n * 32, kThreads, 1 << 30), kThreads, 0, current_stream(xc), row_sq_kernel)(
        xc.const_data_ptr<scalar_t>(), n, p, out.mutable_data_ptr<double>());
    check_launch("row_sq");
  });
  return out;
}

inline Tensor linear_grad_side(const Tensor& A, const Tensor& B, const Tensor& xc, const Tensor& d_own,
                               const Tensor& d_other, const Tensor& g, const Tensor& m, bool x_side, int64_t n,
                               bool unbiased) {
  const int64_t p = xc.size(1);
  const cudaStream_t s = current_stream(xc);
  Tensor tmp = empty_like_shape(xc, {n, p}, ScalarType::Double);
  Tensor stats = empty_like_shape(xc, {3 * p}, ScalarType::Double);
  Tensor out = empty_like_shape(xc, {n, p}, xc.scalar_type());
  FASTCKA_DISPATCH_FLOATING(xc.scalar_type(), "linear_grad", [&] {
    const int blocks = blocks_for(n * p, kThreads);
    FASTCKA_LAUNCH(blocks, kThreads, 0, s, linear_grad_assemble_kernel)(
        A.const_data_ptr<scalar_t>(), B.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        d_own.const_data_ptr<double>(), d_other.const_data_ptr<double>(), g.const_data_ptr<double>(),
        m.const_data_ptr<double>(), x_side, n, p, unbiased, tmp.mutable_data_ptr<double>());
    column_stats(tmp.const_data_ptr<double>(), n, p, stats.mutable_data_ptr<double>(), s);
    FASTCKA_LAUNCH(blocks, kThreads, 0, s, subtract_means_kernel<double, scalar_t>)(
        tmp.const_data_ptr<double>(), stats.const_data_ptr<double>(), false, n, p, out.mutable_data_ptr<scalar_t>(),
        nullptr);
    check_launch("linear_grad_side");
  });
  return out;
}

}  // namespace fastcka::cuda

namespace fastcka {
// The CUDA backend as a type, for the device-generic op templates (csrc/ops/*_impl.h).
struct CudaBackend {
  // The moments live in device memory: reading them back would be a host sync, so no driver does.
  static constexpr bool kHostMoments = false;
  static Tensor center_normalise(const Tensor& x, Tensor& m, int slot) { return cuda::center_normalise(x, m, slot); }
  static void dot_into(const Tensor& a, const Tensor& b, Tensor& m, int slot) { cuda::dot_into(a, &b, m, slot); }
  static void dot_add_into(const Tensor& a, const Tensor& b, Tensor& m, int slot, double w) {
    cuda::dot_into(a, &b, m, slot, w);
  }
  static void sum_into(const Tensor& a, Tensor& m, int slot) { cuda::dot_into(a, nullptr, m, slot); }
  // Symmetric Grams ZᵀZ in row panels of this many columns (gram_sq_add). cuBLAS is not measured here: up to 1024
  // columns the Gram stays one product (today's cost), wider ones split into panels that still fill the GPU. The
  // emulation uses narrow panels, so that its tests run the panel loop.
#ifdef FASTCKA_CUDA_EMU
  static constexpr int64_t kGramPanel = 8;
#else
  static constexpr int64_t kGramPanel = 1024;
#endif
  static Tensor row_sq(const Tensor& xc) { return cuda::row_sq(xc); }
  static void linear_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out3) {
    FASTCKA_LAUNCH(1, 1, 0, cuda::current_stream(m), cuda::linear_combine_kernel)(
        m.const_data_ptr<double>(), n, unbiased, noise, out3.mutable_data_ptr<double>());
    cuda::check_launch("linear_combine");
  }
  static Tensor linear_grad_side(const Tensor& A, const Tensor& B, const Tensor& xc, const Tensor& d_own,
                                 const Tensor& d_other, const Tensor& g, const Tensor& m, bool x_side, int64_t n,
                                 bool unbiased) {
    return cuda::linear_grad_side(A, B, xc, d_own, d_other, g, m, x_side, n, unbiased);
  }
};
}  // namespace fastcka
