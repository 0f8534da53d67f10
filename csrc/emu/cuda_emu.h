// A CPU emulation of the part of the CUDA execution model that fastcka's kernels use, so that the very same
// csrc/ops/cuda/*.cu sources (kernels and their launchers) run in CI on a machine without a GPU. Test-only: it is
// compiled into the separate extension build-emu/fastcka_emu*.so (csrc/emu/build.py, `make emu`), whose ops are
// registered as torch.ops.fastcka_emu.* for CPU tensors; it is never part of the wheel.
//
// What is real here (the semantics a kernel bug would violate):
// - the threads of a block run concurrently as fibers (one stack each, switched cooperatively) on one OS thread, and
//   __syncthreads is a real barrier: a thread that reaches it waits until every live thread of its block has;
// - shared memory is per block: `__shared__` is `static thread_local`, and each OS worker runs one block at a time;
// - warp intrinsics (__shfl_*_sync, __ballot_sync, __syncwarp) exchange values in lock step: every lane named in
//   the mask must arrive; a mask that names an absent or exited lane is reported as a launch error (undefined
//   behaviour on a GPU), and a lane outside the mask reads as a NaN pattern (an undefined value on a GPU);
// - blocks run on several OS threads at once, in a shuffled order (not the launch order), so atomics on global
//   memory really race and a kernel that relies on block order fails; atomics are real atomic read-modify-writes;
// - launch configurations are checked like the driver does (grid.y/z ≤ 65535, grid.x < 2^31, ≤ 1024 threads).
// What is not: memory is host memory (no bounds checking, no coalescing), launches and memsets are synchronous,
// every stream is the null stream, and the lanes of a warp only meet at warp intrinsics (they do not run in lock
// step between them: code that relies on implicit warp synchrony without __syncwarp fails here, as on Volta+).
//
// The sources select the emulation with FASTCKA_CUDA_EMU (defined below); their nvcc build is unchanged: the launch
// macro FASTCKA_LAUNCH and the registration macro FASTCKA_CUDA_LIBRARY_IMPL expand to `<<<…>>>` and
// STABLE_TORCH_LIBRARY_IMPL(fastcka, CUDA, m) there (csrc/ops/cuda/primitives.cuh).
#pragma once

#ifndef FASTCKA_CUDA_EMU
#define FASTCKA_CUDA_EMU 1
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// --- qualifiers -----------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
// Per block: each OS worker thread runs one block at a time, and a block's threads are fibers on that OS thread.
#define __shared__ static thread_local

// --- built-in types and variables -----------------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace fastcka_emu {
extern __thread uint3 thread_idx, block_idx;
extern __thread dim3 block_dim, grid_dim;
}  // namespace fastcka_emu

#define threadIdx (::fastcka_emu::thread_idx)
#define blockIdx (::fastcka_emu::block_idx)
#define blockDim (::fastcka_emu::block_dim)
#define gridDim (::fastcka_emu::grid_dim)
#define warpSize 32

// --- runtime API (synchronous) --------------------------------------------------------------------------------------
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

namespace fastcka_emu {
// The sticky "last error" of the emulated device (kernel faults the emulation detects, bad launch configurations).
cudaError_t get_last_error();
const char* error_string(cudaError_t e);
void set_error(cudaError_t e, const char* what);
}  // namespace fastcka_emu

inline cudaError_t cudaGetLastError() { return fastcka_emu::get_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) { return fastcka_emu::error_string(e); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, int = 0, cudaStream_t = nullptr) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// --- cuBLAS: the handle calls and the two GEMMs the CUDA sources use (cuda/blas.cuh), with cuBLAS's column-major
// semantics and argument checks, as plain loops that accumulate in the element type (cublasSgemm/Dgemm in
// CUBLAS_DEFAULT_MATH: float32 products are IEEE float32, never TF32). Host memory, synchronous, like the launches.
typedef struct FastckaEmuCublas* cublasHandle_t;
enum cublasStatus_t : int { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t : int { CUBLAS_DEFAULT_MATH = 0 };
inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  static int handle;
  *h = reinterpret_cast<cublasHandle_t>(&handle);
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
namespace fastcka_emu {
// C (m×n, leading dimension ldc) = α·op(A)·op(B) + β·C, all column-major; op(A) is m×k, op(B) k×n.
template <class T>
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const T* alpha,
                    const T* A, int lda, const T* B, int ldb, const T* beta, T* C, int ldc) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int rows_a = ta == CUBLAS_OP_N ? m : k, rows_b = tb == CUBLAS_OP_N ? k : n;
  if (m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) || ldb < (rows_b > 1 ? rows_b : 1) ||
      ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < m; ++i) {
      T acc = T(0);
      for (int64_t l = 0; l < k; ++l) {
        const T a = ta == CUBLAS_OP_N ? A[i + l * lda] : A[l + i * lda];
        const T b = tb == CUBLAS_OP_N ? B[l + j * ldb] : B[j + l * ldb];
        acc += a * b;
      }
      T& c = C[i + j * ldc];
      c = *beta == T(0) ? *alpha * acc : *alpha * acc + *beta * c;  // β = 0: C is not read (may be garbage)
    }
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace fastcka_emu
inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float* alpha, const float* A, int lda, const float* B, int ldb,
                                  const float* beta, float* C, int ldc) {
  return fastcka_emu::gemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline cublasStatus_t cublasDgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const double* alpha, const double* A, int lda, const double* B, int ldb,
                                  const double* beta, double* C, int ldc) {
  return fastcka_emu::gemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// The AOTI shim declares this only for CUDA builds; under emulation every tensor is a CPU tensor on the null stream.
inline int32_t aoti_torch_get_current_cuda_stream(int32_t, void** stream) {
  *stream = nullptr;
  return 0;
}

// torch::stable::accelerator::DeviceGuard fails for CPU tensors (index -1, no accelerator): under emulation the
// launchers' guards are a no-op class of the same namespace and interface. The real header is included first, so
// the rename below reaches only the code that follows it (the CUDA sources), not the header's own definition.
#include <torch/csrc/stable/accelerator.h>
HIDDEN_NAMESPACE_BEGIN(torch, stable, accelerator)
class FastckaEmuDeviceGuard {
 public:
  explicit FastckaEmuDeviceGuard(DeviceIndex) {}
  void set_index(DeviceIndex) {}
};
HIDDEN_NAMESPACE_END(torch, stable, accelerator)
#define DeviceGuard FastckaEmuDeviceGuard

// --- device functions -----------------------------------------------------------------------------------------------
namespace fastcka_emu {
void syncthreads();
// The warp exchange behind every warp intrinsic: this lane publishes `bits`, waits for every lane in `mask`, and
// returns the bits of lane `src` (which must be in the mask); then waits again so that no lane overwrites early.
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src);
unsigned warp_ballot(unsigned mask, bool pred);
void warp_sync(unsigned mask);

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp shuffle of a type over 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
inline int lane_id() { return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u); }
}  // namespace fastcka_emu

inline void __syncthreads() { fastcka_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { fastcka_emu::warp_sync(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = fastcka_emu::lane_id();
  return fastcka_emu::from_bits<T>(fastcka_emu::warp_exchange(mask, fastcka_emu::to_bits(v), (lane & ~(width - 1)) + (src & (width - 1))));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = fastcka_emu::lane_id();
  const int src = (lane % width) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return fastcka_emu::from_bits<T>(fastcka_emu::warp_exchange(mask, fastcka_emu::to_bits(v), src));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = fastcka_emu::lane_id();
  const int src = (lane % width) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return fastcka_emu::from_bits<T>(fastcka_emu::warp_exchange(mask, fastcka_emu::to_bits(v), src));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = fastcka_emu::lane_id();
  const int src = ((lane ^ lane_mask) & ~(width - 1)) == (lane & ~(width - 1)) ? lane ^ lane_mask : lane;
  return fastcka_emu::from_bits<T>(fastcka_emu::warp_exchange(mask, fastcka_emu::to_bits(v), src));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return fastcka_emu::warp_ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return (fastcka_emu::warp_ballot(mask, pred != 0) & mask) != 0; }
inline int __all_sync(unsigned mask, int pred) { return (fastcka_emu::warp_ballot(mask, pred != 0) & mask) == mask; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }

inline long long __double_as_longlong(double v) { return fastcka_emu::from_bits<long long>(fastcka_emu::to_bits(v)); }
inline double __longlong_as_double(long long v) { return fastcka_emu::from_bits<double>(fastcka_emu::to_bits(v)); }
inline int __float_as_int(float v) { return fastcka_emu::from_bits<int>(fastcka_emu::to_bits(v)); }
inline float __int_as_float(int v) { return fastcka_emu::from_bits<float>(fastcka_emu::to_bits(v)); }
inline unsigned __float_as_uint(float v) { return fastcka_emu::from_bits<unsigned>(fastcka_emu::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return fastcka_emu::from_bits<float>(fastcka_emu::to_bits(v)); }

// CUDA's integer min/max overloads (device code calls them unqualified).
#define FASTCKA_EMU_MINMAX(T)                          \
  inline T min(T a, T b) { return b < a ? b : a; }      \
  inline T max(T a, T b) { return a < b ? b : a; }
FASTCKA_EMU_MINMAX(int)
FASTCKA_EMU_MINMAX(unsigned)
FASTCKA_EMU_MINMAX(long)
FASTCKA_EMU_MINMAX(unsigned long)
FASTCKA_EMU_MINMAX(long long)
FASTCKA_EMU_MINMAX(unsigned long long)
#undef FASTCKA_EMU_MINMAX

// --- atomics (relaxed, like CUDA's; real read-modify-writes: blocks run on several OS threads) -----------------------
template <class T>
inline T fastcka_emu_atomic_float_add(T* a, T v) {
  using U = typename std::conditional<sizeof(T) == 8, uint64_t, uint32_t>::type;
  U* p = reinterpret_cast<U*>(a);
  U old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    const U nxt = fastcka_emu::from_bits<U>(fastcka_emu::to_bits(fastcka_emu::from_bits<T>(old) + v));
    if (__atomic_compare_exchange_n(p, &old, nxt, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) break;
  }
  return fastcka_emu::from_bits<T>(old);
}
inline double atomicAdd(double* a, double v) { return fastcka_emu_atomic_float_add(a, v); }
inline float atomicAdd(float* a, float v) { return fastcka_emu_atomic_float_add(a, v); }
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
template <class T>
inline T fastcka_emu_atomic_max(T* a, T v) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <class T>
inline T fastcka_emu_atomic_min(T* a, T v) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicMax(int* a, int v) { return fastcka_emu_atomic_max(a, v); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return fastcka_emu_atomic_max(a, v); }
inline long long atomicMax(long long* a, long long v) { return fastcka_emu_atomic_max(a, v); }
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) { return fastcka_emu_atomic_max(a, v); }
inline int atomicMin(int* a, int v) { return fastcka_emu_atomic_min(a, v); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return fastcka_emu_atomic_min(a, v); }
inline long long atomicMin(long long* a, long long v) { return fastcka_emu_atomic_min(a, v); }
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) { return fastcka_emu_atomic_min(a, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long expected, unsigned long long v) {
  __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}
inline int atomicCAS(int* a, int expected, int v) {
  __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}

// --- launches -------------------------------------------------------------------------------------------------------
namespace fastcka_emu {
// Runs body(ctx) as every thread of every block of the grid (blocks in a shuffled order, on several OS threads);
// returns when all have finished. A bad configuration or a fault the emulation detects sets the last error.
// FASTCKA_EMU_TRACE=<file>: the name of each kernel is appended to the file at its first launch.
void run_grid(const char* name, dim3 grid, dim3 block, size_t shmem, void (*body)(void*), void* ctx);

template <class F>
struct Launcher {
  const char* name;
  dim3 grid, block;
  size_t shmem;
  F kernel;
  template <class... A>
  void operator()(A... args) const {
    auto call = [&]() { kernel(args...); };  // each thread gets its own copies of the parameters (by-value params)
    run_grid(name, grid, block, shmem, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  }
};
template <class F>
Launcher<F> launcher(const char* name, dim3 grid, dim3 block, size_t shmem, cudaStream_t, F kernel) {
  return Launcher<F>{name, grid, block, shmem, kernel};
}
}  // namespace fastcka_emu

// FASTCKA_LAUNCH(grid, block, shmem, stream, kernel)(args...) — the kernel last, as it may contain template commas.
#define FASTCKA_LAUNCH(grid, block, shmem, stream, ...) \
  ::fastcka_emu::launcher(#__VA_ARGS__, grid, block, shmem, stream,                 \
                          [](auto&&... fastcka_emu_a) { __VA_ARGS__(fastcka_emu_a...); })

// The emulated ops: torch.ops.fastcka_emu.*, for CPU tensors.
#define FASTCKA_CUDA_LIBRARY_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(fastcka_emu, CPU, m)
