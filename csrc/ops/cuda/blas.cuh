// Row-major GEMMs on cuBLAS for the CUDA passes whose products must keep the input precision (the kernel-HSIC row
// blocks; csrc/ops/cuda/kernel_hsic_kernel.cu).
//
// Why not ATen's matmul (`mm`, as the linear op uses): it follows PyTorch's global float32 matmul precision, and with
// TF32 enabled (`allow_tf32`, `set_float32_matmul_precision("high")`) its float32 products carry 10-bit mantissas.
// The kernel pass decides from the products' rigorous float32 error bound (median.h: distance_bound_coef,
// kernel_guard_coef) which squared distances it may use and which it recomputes, and the linear kernel's entries
// are the products themselves: a TF32 product breaks that bound, so the RBF kernels, the exact median and the linear
// kernel entries would change. The stable ABI has no per-call precision switch, so these GEMMs call cuBLAS directly,
// on a handle of our own in CUBLAS_DEFAULT_MATH: cublasSgemm then computes in IEEE float32 (TF32 is used only when a
// handle asks for CUBLAS_TF32_TENSOR_OP_MATH, which torch's handles do when TF32 is on), cublasDgemm in float64, on
// torch's current stream. Results do not depend on the global TF32 setting.
//
// Under the CPU emulation (csrc/emu/cuda_emu.h) the same calls run on an emulated cuBLAS with the same column-major
// argument conventions, so the calls below are exercised by tests/test_cuda_emu.py.
#pragma once

#ifndef FASTCKA_CUDA_EMU
#include <cublas_v2.h>
#endif

#include <vector>

#include "cuda/primitives.cuh"

namespace fastcka::cuda {

inline void check_blas(cublasStatus_t s, const char* what) {
  STD_TORCH_CHECK(s == CUBLAS_STATUS_SUCCESS, "fastcka cuBLAS ", what, " failed: status ", static_cast<int>(s));
}

// This host thread's handle for t's device (the op's DeviceGuard has made it current), bound to the current stream.
// Handles are created once per thread and device and never destroyed: a thread-exit destructor may run after the
// CUDA context is gone (torch keeps its own handles alive the same way).
inline cublasHandle_t blas_handle(const Tensor& t) {
  static thread_local std::vector<cublasHandle_t> handles;
  const int device = std::max<int>(0, t.get_device_index());  // the emulation's CPU tensors have index -1
  if (static_cast<int>(handles.size()) <= device) handles.resize(device + 1, nullptr);
  if (!handles[device]) {
    cublasHandle_t h = nullptr;
    check_blas(cublasCreate(&h), "create");
    check_blas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "set math mode");  // the default: no TF32
    handles[device] = h;
  }
  check_blas(cublasSetStream(handles[device], current_stream(t)), "set stream");
  return handles[device];
}

inline cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  const float one = 1.0f, zero = 0.0f;
  return cublasSgemm(h, ta, tb, m, n, k, &one, a, lda, b, ldb, &zero, c, ldc);
}
inline cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                const double* a, int lda, const double* b, int ldb, double* c, int ldc) {
  const double one = 1.0, zero = 0.0;
  return cublasDgemm(h, ta, tb, m, n, k, &one, a, lda, b, ldb, &zero, c, ldc);
}

inline int blas_int(int64_t v, const char* what) {
  STD_TORCH_CHECK(v >= 0 && v <= 0x7fffffff, "fastcka cuBLAS: ", what, " = ", v, " exceeds the 32-bit API");
  return static_cast<int>(v);
}

// Row-major C (M×N, contiguous) = A (M×K, contiguous) · Bᵀ with B N×K contiguous ("nt": Gram blocks A Bᵀ), or · B
// with B K×N contiguous ("nn"). cuBLAS is column-major, where a row-major matrix is its transpose: Cᵀ = op(B)·Aᵀ.
// An empty inner dimension (no features) gives zeros.
template <typename T>
void gemm_rowmajor(cublasHandle_t h, cudaStream_t s, bool b_transposed, int64_t M, int64_t N, int64_t K, const T* a,
                   const T* b, T* c) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    check_cuda(cudaMemsetAsync(c, 0, sizeof(T) * M * N, s), "memset (gemm, K = 0)");
    return;
  }
  const int m = blas_int(N, "columns"), n = blas_int(M, "rows"), k = blas_int(K, "inner size");
  const int ldb = std::max(1, b_transposed ? k : m), lda = std::max(1, k);
  check_blas(gemm_call(h, b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, b, ldb, a, lda, c, m),
             "gemm");
}

}  // namespace fastcka::cuda
