// CPU building blocks of the GEMM-based ops: float64 reductions and fused element-wise passes.
// Partial sums run over a fixed number of chunks (not one per thread), so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "fastcka/linear_hsic.h"
#include "stable_common.h"

namespace fastcka::cpu {

inline int64_t num_chunks(int64_t len, int64_t min_chunk, int64_t max_chunks) {
  return std::max<int64_t>(1, std::min<int64_t>(max_chunks, (len + min_chunk - 1) / min_chunk));
}

// Σ a∘b in float64 (b == nullptr: Σ a).
template <typename T>
double dot_f64(const T* a, const T* b, int64_t len) {
  const int64_t nch = num_chunks(len, 1 << 14, 64), step = (len + nch - 1) / nch;
  std::vector<double> part(nch, 0.0);
  torch::stable::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * step, hi = std::min(len, lo + step);
      double acc = 0.0;
      if (b)
        for (int64_t i = lo; i < hi; ++i) acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
      else
        for (int64_t i = lo; i < hi; ++i) acc += static_cast<double>(a[i]);
      part[c] = acc;
    }
  });
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

// Column means of a row-major n×p matrix minus `shift` (one value per column; nullptr: 0), in float64.
template <typename T>
std::vector<double> column_means(const T* x, int64_t n, int64_t p, const double* shift = nullptr) {
  const int64_t nch = std::max<int64_t>(1, std::min(num_chunks(n, 256, 32), (int64_t(1) << 22) / std::max<int64_t>(p, 1)));
  const int64_t step = (n + nch - 1) / nch;
  std::vector<double> part(nch * p, 0.0);
  torch::stable::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* acc = part.data() + c * p;
      for (int64_t i = c * step; i < std::min(n, (c + 1) * step); ++i) {
        const T* row = x + i * p;
        if (shift)
          for (int64_t j = 0; j < p; ++j) acc[j] += static_cast<double>(row[j]) - shift[j];
        else
          for (int64_t j = 0; j < p; ++j) acc[j] += static_cast<double>(row[j]);
      }
    }
  });
  std::vector<double> mean(p, 0.0);
  for (int64_t c = 0; c < nch; ++c)
    for (int64_t j = 0; j < p; ++j) mean[j] += part[c * p + j];
  for (int64_t j = 0; j < p; ++j) mean[j] /= static_cast<double>(n);
  return mean;
}

// out = x − mean (subtracted in float64, then rounded once), returning max |out|.
template <typename T>
double subtract_means(const T* x, const std::vector<double>& mean, int64_t n, int64_t p, T* out) {
  const int64_t nch = num_chunks(n, 64, 64), step = (n + nch - 1) / nch;
  std::vector<double> mx(nch, 0.0);
  torch::stable::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double m = 0.0;
      for (int64_t i = c * step; i < std::min(n, (c + 1) * step); ++i)
        for (int64_t j = 0; j < p; ++j) {
          const T v = static_cast<T>(static_cast<double>(x[i * p + j]) - mean[j]);
          out[i * p + j] = v;
          m = std::max(m, static_cast<double>(std::fabs(v)));
        }
      mx[c] = m;
    }
  });
  return *std::max_element(mx.begin(), mx.end());
}

template <typename T>
void scale_inplace(T* x, int64_t len, double s) {
  if (s == 1.0) return;
  // in float64: for float32 subnormals the multiplier itself (up to 2^149) is not a float
  torch::stable::parallel_for(0, len, 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] = static_cast<T>(static_cast<double>(x[i]) * s);
  });
}

// Loops that touch every element or pair (centring here, the kernel passes' epilogues): the default build targets
// baseline x86-64 (SSE2), so with GCC on x86-64 Linux they are also compiled for AVX2 and AVX-512 (x86-64-v4) and
// picked at load time (an ifunc): ~2× faster per pass on the bench machine. -std=c++17 keeps FP contraction off, so
// every version gives the same bits.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTCKA_CPU_CLONES __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define FASTCKA_CPU_CLONES
#endif

// Rows [r0, r1) into column sums (float64) and extremes (in T, exact).
template <typename T>
__attribute__((always_inline)) inline void column_stats_rows_impl(const T* x, int64_t r0, int64_t r1, int64_t p,
                                                                  double* acc, T* lo, T* hi) {
  for (int64_t i = r0; i < r1; ++i) {
    const T* row = x + i * p;
    for (int64_t j = 0; j < p; ++j) {
      const T v = row[j];
      acc[j] += static_cast<double>(v);
      lo[j] = std::min(lo[j], v);
      hi[j] = std::max(hi[j], v);
    }
  }
}
FASTCKA_CPU_CLONES inline void column_stats_rows(const float* x, int64_t r0, int64_t r1, int64_t p, double* acc,
                                                 float* lo, float* hi) {
  column_stats_rows_impl(x, r0, r1, p, acc, lo, hi);
}
FASTCKA_CPU_CLONES inline void column_stats_rows(const double* x, int64_t r0, int64_t r1, int64_t p, double* acc,
                                                 double* lo, double* hi) {
  column_stats_rows_impl(x, r0, r1, p, acc, lo, hi);
}

// Rows [r0, r1) of out = centred_entry(x, mean, corr)·s, in float64 and rounded once.
template <typename T>
__attribute__((always_inline)) inline void center_rows_impl(const T* x, int64_t r0, int64_t r1, int64_t p,
                                                            const double* mean, const double* corr, double s,
                                                            T* out) {
  for (int64_t i = r0; i < r1; ++i)
    for (int64_t j = 0; j < p; ++j)
      out[i * p + j] = static_cast<T>(centred_entry(static_cast<double>(x[i * p + j]), mean[j], corr[j]) * s);
}
FASTCKA_CPU_CLONES inline void center_rows(const float* x, int64_t r0, int64_t r1, int64_t p, const double* mean,
                                           const double* corr, double s, float* out) {
  center_rows_impl(x, r0, r1, p, mean, corr, s, out);
}
FASTCKA_CPU_CLONES inline void center_rows(const double* x, int64_t r0, int64_t r1, int64_t p, const double* mean,
                                           const double* corr, double s, double* out) {
  center_rows_impl(x, r0, r1, p, mean, corr, s, out);
}

// Column means and max |x − mean| (from the column extremes) in one pass: sums in float64, extremes in T (exact, and
// twice the lanes of float64 for float32 input).
template <typename T>
std::vector<double> column_means_and_spread(const T* x, int64_t n, int64_t p, double* maxabs) {
  const int64_t nch = std::max<int64_t>(1, std::min(num_chunks(n, 256, 32), (int64_t(1) << 20) / std::max<int64_t>(p, 1)));
  const int64_t step = (n + nch - 1) / nch;
  std::vector<double> part(nch * p);
  std::vector<T> ext(2 * nch * p);
  torch::stable::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* acc = part.data() + c * p;
      T *lo = ext.data() + 2 * c * p, *hi = lo + p;
      for (int64_t j = 0; j < p; ++j) {
        acc[j] = 0.0;
        lo[j] = static_cast<T>(INFINITY);
        hi[j] = static_cast<T>(-INFINITY);
      }
      column_stats_rows(x, std::min(n, c * step), std::min(n, (c + 1) * step), p, acc, lo, hi);
    }
  });
  std::vector<double> mean(p, 0.0), lo(p, INFINITY), hi(p, -INFINITY);
  for (int64_t c = 0; c < nch; ++c)
    for (int64_t j = 0; j < p; ++j) {
      if (c * step >= n) continue;
      mean[j] += part[c * p + j];
      lo[j] = std::min(lo[j], static_cast<double>(ext[2 * c * p + j]));
      hi[j] = std::max(hi[j], static_cast<double>(ext[(2 * c + 1) * p + j]));
    }
  double m = 0.0;
  for (int64_t j = 0; j < p; ++j) {
    mean[j] = column_mean(mean[j], n, lo[j], hi[j]);
    m = std::max(m, std::max(hi[j] - mean[j], mean[j] - lo[j]));
  }
  *maxabs = m;
  return mean;
}

// Column-centred copy of x multiplied by a power of two (max |·| ≤ 1), in two passes: column means and extremes,
// then one write of (x − mean)·s (in float64, rounded once); the multiplier goes to m[slot].
inline Tensor center_normalise(const Tensor& x, Tensor& m, int slot) {
  const int64_t n = x.size(0), p = x.size(1);
  Tensor xc = empty_like_shape(x, {n, p}, x.scalar_type());
  FASTCKA_DISPATCH_FLOATING(x.scalar_type(), "center", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = xc.mutable_data_ptr<scalar_t>();
    double maxabs = 0.0;
    const std::vector<double> mean = column_means_and_spread(xp, n, p, &maxabs);
    const std::vector<double> corr = std::is_same<scalar_t, double>::value
        ? column_means(xp, n, p, mean.data()) : std::vector<double>(p, 0.0);  // centred_entry's correction
    const double s = pow2_normaliser(maxabs);
    torch::stable::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(p, 1)), [&](int64_t r0, int64_t r1) {
      center_rows(xp, r0, r1, p, mean.data(), corr.data(), s, op);
    });
    m.mutable_data_ptr<double>()[slot] = s;
  });
  return xc;
}

// m[slot] = Σ a∘b (b may be undefined-equivalent: pass `same` to reuse a).
inline void dot_into(const Tensor& a, const Tensor& b, Tensor& m, int slot) {
  FASTCKA_DISPATCH_FLOATING(a.scalar_type(), "dot", [&] {
    m.mutable_data_ptr<double>()[slot] = dot_f64(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), a.numel());
  });
}

// m[slot] += w·Σ a∘b: the block products of a symmetric Gram add into one moment (linear_hsic_impl.h: gram_sq_add).
// w is ±1 or 2, so the weighting itself is exact in float64.
inline void dot_add_into(const Tensor& a, const Tensor& b, Tensor& m, int slot, double w) {
  FASTCKA_DISPATCH_FLOATING(a.scalar_type(), "dot", [&] {
    m.mutable_data_ptr<double>()[slot] += w * dot_f64(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), a.numel());
  });
}

inline void sum_into(const Tensor& a, Tensor& m, int slot) {
  FASTCKA_DISPATCH_FLOATING(a.scalar_type(), "sum", [&] {
    m.mutable_data_ptr<double>()[slot] = dot_f64<scalar_t>(a.const_data_ptr<scalar_t>(), nullptr, a.numel());
  });
}

// Row sums of squares in float64 (the diagonal of XcXcᵀ).
inline Tensor row_sq(const Tensor& xc) {
  const int64_t n = xc.size(0), p = xc.size(1);
  Tensor out = empty_like_shape(xc, {n}, ScalarType::Double);
  double* o = out.mutable_data_ptr<double>();
  FASTCKA_DISPATCH_FLOATING(xc.scalar_type(), "row_sq", [&] {
    const scalar_t* x = xc.const_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        double acc = 0.0;
        for (int64_t j = 0; j < p; ++j) acc += static_cast<double>(x[i * p + j]) * static_cast<double>(x[i * p + j]);
        o[i] = acc;
      }
    });
  });
  return out;
}

inline void linear_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out3) {
  linear_hsic_combine(m.const_data_ptr<double>(), n, unbiased, noise, out3.mutable_data_ptr<double>());
}

// ∂/∂X of g·HSIC-triple for one side: a·A' + b·B' + rᵢ·Xc', then projected by H (column-centred).
inline Tensor linear_grad_side(const Tensor& A, const Tensor& B, const Tensor& xc, const Tensor& d_own,
                               const Tensor& d_other, const Tensor& g, const Tensor& m, bool x_side, int64_t n,
                               bool unbiased) {
  const double* gp = g.const_data_ptr<double>();
  const double* mp = m.const_data_ptr<double>();
  const LinearGradCoef c = x_side
      ? linear_grad_coef(gp[0], gp[1], mp[kScaleX], mp[kScaleY], mp[kTrK], mp[kTrL], n, unbiased)
      : linear_grad_coef(gp[0], gp[2], mp[kScaleY], mp[kScaleX], mp[kTrL], mp[kTrK], n, unbiased);
  const int64_t p = xc.size(1);
  Tensor out = empty_like_shape(xc, {n, p}, xc.scalar_type());
  FASTCKA_DISPATCH_FLOATING(xc.scalar_type(), "linear_grad", [&] {
    const scalar_t *a = A.const_data_ptr<scalar_t>(), *b = B.const_data_ptr<scalar_t>(), *x = xc.const_data_ptr<scalar_t>();
    const double *dow = d_own.const_data_ptr<double>(), *dot = d_other.const_data_ptr<double>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    std::vector<double> tmp;  // assembled in float64, rounded once after centring
    tmp.resize(static_cast<size_t>(n * p));
    torch::stable::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const double r = c.r_const + c.r_other * dot[i] + c.r_own * dow[i];
        for (int64_t j = 0; j < p; ++j)
          tmp[i * p + j] = c.a * a[i * p + j] + c.b * b[i * p + j] + r * x[i * p + j];
      }
    });
    const std::vector<double> mean = column_means(tmp.data(), n, p);
    torch::stable::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t j = 0; j < p; ++j) o[i * p + j] = static_cast<scalar_t>(tmp[i * p + j] - mean[j]);
    });
  });
  return out;
}

}  // namespace fastcka::cpu

namespace fastcka {
// The CPU backend as a type, for the device-generic op templates (csrc/ops/*_impl.h).
struct CpuBackend {
  static Tensor center_normalise(const Tensor& x, Tensor& m, int slot) { return cpu::center_normalise(x, m, slot); }
  static void dot_into(const Tensor& a, const Tensor& b, Tensor& m, int slot) { cpu::dot_into(a, b, m, slot); }
  static void dot_add_into(const Tensor& a, const Tensor& b, Tensor& m, int slot, double w) {
    cpu::dot_add_into(a, b, m, slot, w);
  }
  static void sum_into(const Tensor& a, Tensor& m, int slot) { cpu::sum_into(a, m, slot); }
  // Symmetric Grams ZᵀZ go in row panels of this many columns (gram_sq_add); MKL, one thread, K = n in the thousands:
  // ~80 % of its full-size rate at 64 columns, and the panel count p/64 keeps the per-call cost small.
  static constexpr int64_t kGramPanel = 64;
  // The moments live in host memory: a driver may read them back for free (linear_hsic_impl.h: the float32 recompute).
  static constexpr bool kHostMoments = true;
  static Tensor row_sq(const Tensor& xc) { return cpu::row_sq(xc); }
  static void linear_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out3) {
    cpu::linear_combine(m, n, unbiased, noise, out3);
  }
  static Tensor linear_grad_side(const Tensor& A, const Tensor& B, const Tensor& xc, const Tensor& d_own,
                                 const Tensor& d_other, const Tensor& g, const Tensor& m, bool x_side, int64_t n,
                                 bool unbiased) {
    return cpu::linear_grad_side(A, B, xc, d_own, d_other, g, m, x_side, n, unbiased);
  }
};
}  // namespace fastcka
