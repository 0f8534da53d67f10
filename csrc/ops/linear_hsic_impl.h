// Linear HSIC, device-generic: centring and float64 reductions come from the backend (CPU or CUDA kernels), the
// Grams from ATen's matmul (MKL/OpenBLAS or cuBLAS: the floor for this op). Returns float64
// [HSIC(K,L), HSIC(K,K), HSIC(L,L)]; the Python layer forms CKA from it.
#pragma once

#include <tuple>

#include "fastcka/linear_hsic.h"
#include "stable_common.h"

namespace fastcka {

struct LinearPrepared {
  Tensor xc, yc, m, dk, dl;
  bool sample;
};

inline void check_linear_inputs(const Tensor& x, const Tensor& y, bool unbiased, const char* op) {
  check_matrix(x, op, "x");
  check_matrix(y, op, "y");
  STD_TORCH_CHECK(x.size(0) == y.size(0), op, ": x and y must have the same number of rows");
  STD_TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype");
  STD_TORCH_CHECK(x.size(0) >= (unbiased ? 4 : 2), op, ": too few examples (n >= 2, n >= 4 unbiased)");
}

// Centre and normalise both sides, fill the row-norm moments the unbiased estimator needs.
template <class D>
LinearPrepared linear_prepare(const Tensor& x_, const Tensor& y_, bool unbiased, int64_t method) {
  LinearPrepared s;
  const Tensor x = as_contiguous(x_), y = as_contiguous(y_);
  s.m = zeros_f64(x, kNumLinearMoments);
  s.xc = D::center_normalise(x, s.m, kScaleX);
  s.yc = D::center_normalise(y, s.m, kScaleY);
  s.sample = use_sample_space(method, x.size(0), x.size(1), y.size(1));
  s.dk = D::row_sq(s.xc);
  s.dl = D::row_sq(s.yc);
  D::sum_into(s.dk, s.m, kTrK);
  D::sum_into(s.dl, s.m, kTrL);
  if (unbiased) {
    D::dot_into(s.dk, s.dl, s.m, kDkDl);
    D::dot_into(s.dk, s.dk, s.m, kDkDk);
    D::dot_into(s.dl, s.dl, s.m, kDlDl);
  }
  return s;
}

template <class D>
Tensor linear_hsic(const Tensor& x, const Tensor& y, bool unbiased, int64_t method) {
  check_linear_inputs(x, y, unbiased, "fastcka::linear_hsic");
  LinearPrepared s = linear_prepare<D>(x, y, unbiased, method);
  if (s.sample) {
    const Tensor k = mm(s.xc, transposed(s.xc)), l = mm(s.yc, transposed(s.yc));
    D::dot_into(k, l, s.m, kKL);
    D::dot_into(k, k, s.m, kKK);
    D::dot_into(l, l, s.m, kLL);
  } else {
    const Tensor c = mm(transposed(s.xc), s.yc);
    const Tensor gx = mm(transposed(s.xc), s.xc), gy = mm(transposed(s.yc), s.yc);
    D::dot_into(c, c, s.m, kKL);
    D::dot_into(gx, gx, s.m, kKK);
    D::dot_into(gy, gy, s.m, kLL);
  }
  Tensor out = empty_like_shape(x, {3}, ScalarType::Double);
  D::linear_combine(s.m, x.size(0), unbiased, out);
  return out;
}

// grad: float64 [3], the gradient of the loss with respect to linear_hsic's output.
template <class D>
std::tuple<Tensor, Tensor> linear_hsic_backward(const Tensor& grad, const Tensor& x, const Tensor& y, bool unbiased,
                                                int64_t method) {
  check_linear_inputs(x, y, unbiased, "fastcka::_linear_hsic_backward");
  LinearPrepared s = linear_prepare<D>(x, y, unbiased, method);
  const Tensor g = as_contiguous(grad);
  Tensor ax, bx, ay, by;  // A = (other Gram)·Xc, B = (own Gram)·Xc, in the cheaper association order
  if (s.sample) {
    const Tensor k = mm(s.xc, transposed(s.xc)), l = mm(s.yc, transposed(s.yc));
    ax = mm(l, s.xc);
    bx = mm(k, s.xc);
    ay = mm(k, s.yc);
    by = mm(l, s.yc);
  } else {
    const Tensor c = mm(transposed(s.xc), s.yc);  // p×q
    ax = mm(s.yc, transposed(c));
    bx = mm(s.xc, mm(transposed(s.xc), s.xc));
    ay = mm(s.xc, c);
    by = mm(s.yc, mm(transposed(s.yc), s.yc));
  }
  const int64_t n = x.size(0);
  Tensor dx = D::linear_grad_side(ax, bx, s.xc, s.dk, s.dl, g, s.m, true, n, unbiased);
  Tensor dy = D::linear_grad_side(ay, by, s.yc, s.dl, s.dk, g, s.m, false, n, unbiased);
  return std::make_tuple(dx, dy);
}

}  // namespace fastcka
