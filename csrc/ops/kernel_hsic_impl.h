// Kernel HSIC through the fused tiled pass, and the exact median of squared distances, device-generic.
// The backend D supplies the passes (CPU: BLAS row blocks + fused epilogue; CUDA: one block per tile pair), the
// float64 reductions and the combine; the math is in csrc/include/fastcka/{tiled_hsic,median}.h.
#pragma once

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "fastcka/median.h"
#include "fastcka/tiled_hsic.h"
#include "stable_common.h"

namespace fastcka {

// Scaled rows x' = s(x − x₀) (s a power of two), their float64 squared norms, and s as a float64 [1] tensor on
// the device (the CUDA kernels read it there: no host sync).
struct ScaledRows {
  Tensor xs, norms, scale;
};

// Float64 vectors a pass fills: r (row sums), d (diagonal) per side, and the three Σ entries.
struct PassOutput {
  Tensor rk, rl, dk, dl, m;  // m: kNumKernelMoments, slots kmKL, kmKK, kmLL filled by the pass
};

// Zeroed accumulators of one pass, on the input's device.
inline PassOutput zeroed_pass_output(const Tensor& like, int64_t n) {
  PassOutput o;
  o.m = zeros_f64(like, kNumKernelMoments);
  o.rk = zeros_f64(like, n);
  o.rl = zeros_f64(like, n);
  o.dk = zeros_f64(like, n);
  o.dl = zeros_f64(like, n);
  return o;
}

inline void check_kernel_inputs(const Tensor& x, const Tensor& y, bool unbiased, const char* op) {
  check_matrix(x, op, "x");
  check_matrix(y, op, "y");
  STD_TORCH_CHECK(x.size(0) == y.size(0), op, ": x and y must have the same number of rows");
  STD_TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype");
  STD_TORCH_CHECK(x.size(0) >= (unbiased ? 4 : 2), op, ": too few examples (n >= 2, n >= 4 unbiased)");
}

template <class D>
Tensor kernel_hsic(const Tensor& x_, const Tensor& y_, const Tensor& gamma_, int64_t kx, int64_t ky, bool unbiased) {
  check_kernel_inputs(x_, y_, unbiased, "fastcka::kernel_hsic");
  const Tensor gamma = as_contiguous(gamma_);
  const ScaledRows a = D::scale_rows(as_contiguous(x_)), b = D::scale_rows(as_contiguous(y_));
  PassOutput o = D::hsic_pass(a, b, kx, ky, gamma);
  D::dot_into(o.rk, o.rl, o.m, kmRkRl);
  D::dot_into(o.rk, o.rk, o.m, kmRkRk);
  D::dot_into(o.rl, o.rl, o.m, kmRlRl);
  D::sum_into(o.rk, o.m, kmSk);
  D::sum_into(o.rl, o.m, kmSl);
  D::dot_into(o.dk, o.dl, o.m, kmDkDl);
  D::dot_into(o.dk, o.dk, o.m, kmDkDk);
  D::dot_into(o.dl, o.dl, o.m, kmDlDl);
  D::sum_into(o.dk, o.m, kmTk);
  D::sum_into(o.dl, o.m, kmTl);
  D::dot_into(o.rk, o.dl, o.m, kmRkDl);
  D::dot_into(o.dk, o.rl, o.m, kmDkRl);
  D::dot_into(o.rk, o.dk, o.m, kmRkDk);
  D::dot_into(o.rl, o.dl, o.m, kmRlDl);
  Tensor out = empty_like_shape(x_, {3}, ScalarType::Double);
  D::kernel_combine(o.m, x_.size(0), unbiased, out);
  return out;
}

template <class D>
std::tuple<Tensor, Tensor> kernel_hsic_backward(const Tensor& grad, const Tensor& x_, const Tensor& y_,
                                                const Tensor& gamma_, int64_t kx, int64_t ky, bool unbiased) {
  check_kernel_inputs(x_, y_, unbiased, "fastcka::_kernel_hsic_backward");
  const Tensor gamma = as_contiguous(gamma_);
  const ScaledRows a = D::scale_rows(as_contiguous(x_)), b = D::scale_rows(as_contiguous(y_));
  PassOutput o = D::hsic_pass(a, b, kx, ky, gamma);  // row sums and diagonals the gradient weights need
  return D::hsic_grad_pass(a, b, kx, ky, gamma, o, as_contiguous(grad), unbiased);
}

// --- exact median of squared distances -------------------------------------------------------------------------------

// The k-th smallest (0-based) of the n² squared distances, by radix selection over the bit patterns.
template <class D>
double select_squared_distance(const ScaledRows& a, int64_t k, std::map<std::pair<uint64_t, int>, std::vector<int64_t>>& cache) {
  const int64_t n = a.xs.size(0);
  constexpr int64_t kCollectCap = int64_t(1) << 22;
  uint64_t prefix = 0;
  int bits = 0;
  while (bits < 64) {
    auto key = std::make_pair(prefix, bits);
    auto it = cache.find(key);
    if (it == cache.end()) {
      std::vector<int64_t> h = D::distance_histogram(a, prefix, bits);  // counts pairs i < j
      for (auto& c : h) c *= 2;
      if (prefix == 0) h[0] += n;  // the diagonal zeros (bit pattern 0)
      it = cache.emplace(key, std::move(h)).first;
    }
    const std::vector<int64_t>& h = it->second;
    int64_t digit = 0;
    while (k >= h[digit]) k -= h[digit++];
    const int64_t in_bin = h[digit];
    prefix = (prefix << kDigitBits) | static_cast<uint64_t>(digit);
    bits += kDigitBits;
    if (bits < 64 && in_bin <= kCollectCap) {
      std::vector<double> v = D::distance_collect(a, prefix, bits);  // pairs i < j with this prefix
      std::vector<double> all;
      all.reserve(2 * v.size() + n);
      for (double d : v) {
        all.push_back(d);
        all.push_back(d);
      }
      if (prefix == 0) all.insert(all.end(), static_cast<size_t>(n), 0.0);
      STD_TORCH_CHECK(static_cast<int64_t>(all.size()) == in_bin, "fastcka median: pass counts disagree");
      std::nth_element(all.begin(), all.begin() + k, all.end());
      return all[k];
    }
  }
  double out;
  std::memcpy(&out, &prefix, sizeof(out));
  return out;
}

// numpy's median of the n² squared distances of the rows of x (diagonal zeros included), float64, in x's units.
template <class D>
Tensor median_sq_dist(const Tensor& x_) {
  check_matrix(x_, "fastcka::median_sq_dist", "x");
  const ScaledRows a = D::scale_rows(as_contiguous(x_));
  const int64_t n = x_.size(0), total = n * n;
  std::map<std::pair<uint64_t, int>, std::vector<int64_t>> cache;
  const double lo = select_squared_distance<D>(a, (total - 1) / 2, cache);
  const double hi = total % 2 ? lo : select_squared_distance<D>(a, total / 2, cache);
  const double s = D::host_scale(a);
  const double med = 0.5 * (lo + hi) / (s * s);  // back to x's units (s is a power of two: exact)
  return D::scalar_tensor(x_, med);
}

}  // namespace fastcka
