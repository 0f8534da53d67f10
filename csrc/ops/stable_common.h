// Torch-facing helpers shared by every op file: stable-ABI includes, checks, dtype dispatch, small tensor utilities.
// The math itself lives in csrc/include/fastcka/ (torch-free); this file only moves tensors around.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <array>
#include <string>
#include <utility>
#include <vector>

namespace fastcka {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// Float and double kernels only: the Python layer upcasts half and bfloat16 to float32 before calling an op.
#define FASTCKA_DISPATCH_FLOATING(st, name, ...)                                        \
  [&] {                                                                                \
    if ((st) == ScalarType::Double) {                                                  \
      using scalar_t = double;                                                         \
      return __VA_ARGS__();                                                            \
    }                                                                                  \
    STD_TORCH_CHECK((st) == ScalarType::Float, name, ": expected float32 or float64"); \
    using scalar_t = float;                                                            \
    return __VA_ARGS__();                                                              \
  }()

inline Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

inline Tensor transposed(const Tensor& t) { return torch::stable::transpose(t, 0, 1); }

inline Tensor narrowed(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  Tensor view = t;  // stable narrow takes a non-const handle; the copy shares the storage
  return torch::stable::narrow(view, dim, start, length);
}

inline Tensor mm(const Tensor& a, const Tensor& b) { return torch::stable::matmul(a, b); }

inline Tensor empty_like_shape(const Tensor& like, std::vector<int64_t> sizes, ScalarType dtype) {
  return torch::stable::new_empty(like, torch::headeronly::IntHeaderOnlyArrayRef(sizes.data(), sizes.size()), dtype);
}

inline Tensor zeros_f64(const Tensor& like, int64_t size) {
  Tensor t = empty_like_shape(like, {size}, ScalarType::Double);
  torch::stable::zero_(t);
  return t;
}

inline void check_matrix(const Tensor& t, const char* op, const char* arg) {
  STD_TORCH_CHECK(t.dim() == 2, op, ": ", arg, " must be 2-D (n, features)");
}

// A tensor argument besides x lives on x's device: the dispatcher picks the kernel from every tensor argument, so a
// CUDA kernel would otherwise be handed a CPU pointer (or the CPU kernel a device one).
inline void check_on_device_of(const Tensor& t, const Tensor& x, const char* op, const char* arg) {
  STD_TORCH_CHECK(t.device() == x.device(), op, ": ", arg, " must be on the same device as x");
}

// The (x, y) pair of an HSIC op: matrices with the same rows, dtype and device, enough rows for the estimator.
inline void check_pair_inputs(const Tensor& x, const Tensor& y, bool unbiased, const char* op) {
  check_matrix(x, op, "x");
  check_matrix(y, op, "y");
  check_on_device_of(y, x, op, "y");
  STD_TORCH_CHECK(x.size(0) == y.size(0), op, ": x and y must have the same number of rows");
  STD_TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype");
  STD_TORCH_CHECK(x.size(0) >= (unbiased ? 4 : 2), op, ": too few examples (n >= 2, n >= 4 unbiased)");
}

// The gradient a backward op receives for its float64 output of `numel` entries, on x's device.
inline void check_grad(const Tensor& grad, const Tensor& x, int64_t numel, const char* op) {
  STD_TORCH_CHECK(grad.scalar_type() == ScalarType::Double && grad.numel() == numel, op,
                  ": grad must be a float64 tensor of ", numel, " entries");
  check_on_device_of(grad, x, op, "grad");
}

}  // namespace fastcka

namespace fastcka {

// Calls any ATen op through the dispatcher (the stable ABI's escape hatch) and returns its first output. kReturns
// must be the op's number of (tensor) outputs: the dispatcher hands each one over as an owned handle, and the ones
// after the first are released here (not naming them leaked them, e.g. median.dim's indices on every call).
template <int kReturns = 1, class... Args>
Tensor call_aten(const char* name, const char* overload, Args&&... args) {
  constexpr size_t kSlots = sizeof...(Args) > size_t(kReturns) ? sizeof...(Args) : size_t(kReturns);
  std::array<StableIValue, kSlots> stack{torch::stable::detail::from(std::forward<Args>(args))...};
  STD_TORCH_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION) == AOTI_TORCH_SUCCESS,
                  "fastcka: call to ", name, " failed");
  for (int i = 1; i < kReturns; ++i) (void)torch::stable::detail::to<Tensor>(stack[i]);  // owned, then released
  return torch::stable::detail::to<Tensor>(stack[0]);
}

inline Tensor permuted(const Tensor& t, std::vector<int64_t> dims) {
  return as_contiguous(call_aten("aten::permute", "", t, std::vector<int64_t>(dims)));
}

inline Tensor reshaped(const Tensor& t, std::vector<int64_t> sizes) {
  return torch::stable::reshape(t, torch::headeronly::IntHeaderOnlyArrayRef(sizes.data(), sizes.size()));
}

}  // namespace fastcka
