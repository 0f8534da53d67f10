// CPU kernel and registration of the fused Gram centring.
#include <algorithm>
#include <vector>

#include "center_gram_impl.h"
#include "stable_common.h"

namespace fastcka {

struct CpuCenter {
  static Tensor center_apply(const Tensor& k, int mode) {
    const int64_t n = k.size(0);
    Tensor out = empty_like_shape(k, {n, n}, k.scalar_type());
    FASTCKA_DISPATCH_FLOATING(k.scalar_type(), "center_gram", [&] {
      const scalar_t* kp = k.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const bool skip_diag = mode != kCenterBiased;
      // Row and column sums in one parallel pass over row chunks (column partials per chunk, added in order). The
      // row sum runs in 4 interleaved partial sums, so that the float64 adds are not one serial dependency chain.
      const int64_t nch = std::max<int64_t>(1, std::min<int64_t>(16, n / 64)), step = (n + nch - 1) / nch;
      std::vector<double> row(n, 0.0), col(n, 0.0), part(nch * n, 0.0);
      torch::stable::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double* pc = part.data() + c * n;
          for (int64_t i = c * step; i < std::min(n, (c + 1) * step); ++i) {
            const scalar_t* r = kp + i * n;
            double s[4] = {0, 0, 0, 0};
            int64_t j = 0;
            for (; j + 4 <= n; j += 4) {
              for (int u = 0; u < 4; ++u) {
                const double v = static_cast<double>(r[j + u]);
                s[u] += v;
                pc[j + u] += v;
              }
            }
            for (; j < n; ++j) {
              const double v = static_cast<double>(r[j]);
              s[0] += v;
              pc[j] += v;
            }
            double sum = (s[0] + s[1]) + (s[2] + s[3]);
            if (skip_diag) {
              const double d = static_cast<double>(r[i]);
              sum -= d;
              pc[i] -= d;
            }
            row[i] = sum;
          }
        }
      });
      for (int64_t c = 0; c < nch; ++c)
        for (int64_t j = 0; j < n; ++j) col[j] += part[c * n + j];
      double total_col = 0, total_both = 0;
      for (int64_t j = 0; j < n; ++j) {
        total_col += col[j];
        total_both += col[j] + row[j];
      }
      std::vector<double> ca(n), cb(n);  // separate arrays, so that the element-wise pass vectorises
      for (int64_t i = 0; i < n; ++i) {
        const CenterCoef cf = center_coef(mode, n, row[i], col[i], total_col, total_both);
        ca[i] = cf.a;
        cb[i] = cf.b;
      }
      const double c = center_constant(mode, n, total_col, total_both);
      torch::stable::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const scalar_t* r = kp + i * n;
          scalar_t* oi = o + i * n;
          const double ai = ca[i];
          for (int64_t j = 0; j < n; ++j)
            oi[j] = static_cast<scalar_t>(center_value(mode, static_cast<double>(r[j]), ai, cb[j], c, false));
          oi[i] = static_cast<scalar_t>(center_value(mode, static_cast<double>(r[i]), ai, cb[i], c, true));
        }
      });
    });
    return out;
  }

  // Tile pairs (I ≤ J) of 64×64: the mirrored block K[J, I] is first copied transposed into a small buffer, so that
  // both sides are then read contiguously. Parallel over tile rows, counts added in order.
  static Tensor asymmetric_pairs(const Tensor& k, const Tensor& threshold) {
    constexpr int64_t kT = 64;
    const int64_t n = k.size(0), tiles = (n + kT - 1) / kT;
    const double thr = threshold.const_data_ptr<double>()[0];
    std::vector<int64_t> count(tiles, 0);
    FASTCKA_DISPATCH_FLOATING(k.scalar_type(), "gram_asymmetric_pairs", [&] {
      const scalar_t* kp = k.const_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        std::vector<scalar_t> mirror(kT * kT);
        for (int64_t bi = t0; bi < t1; ++bi) {
          int64_t c = 0;
          const int64_t i0 = bi * kT, rows = std::min(kT, n - i0);
          for (int64_t bj = bi; bj < tiles; ++bj) {
            const int64_t j0 = bj * kT, cols = std::min(kT, n - j0);
            for (int64_t jj = 0; jj < cols; ++jj) {
              const scalar_t* r = kp + (j0 + jj) * n + i0;
              for (int64_t ii = 0; ii < rows; ++ii) mirror[ii * kT + jj] = r[ii];
            }
            for (int64_t ii = 0; ii < rows; ++ii) {
              const scalar_t *r = kp + (i0 + ii) * n + j0, *t = mirror.data() + ii * kT;
              // on the diagonal tile only the pairs above the diagonal count (each pair once)
              for (int64_t jj = bi == bj ? ii + 1 : 0; jj < cols; ++jj)
                c += is_asymmetric(static_cast<double>(r[jj]), static_cast<double>(t[jj]), thr);
            }
          }
          count[bi] = c;
        }
      });
    });
    Tensor out = empty_like_shape(k, {}, ScalarType::Long);
    int64_t total = 0;
    for (int64_t c : count) total += c;
    out.mutable_data_ptr<int64_t>()[0] = total;
    return out;
  }
};

STABLE_TORCH_LIBRARY_IMPL(fastcka, CPU, m) {
  m.impl("center_gram", TORCH_BOX(&center_gram<CpuCenter>));
  m.impl("gram_asymmetric_pairs", TORCH_BOX(&gram_asymmetric_pairs<CpuCenter>));
}

}  // namespace fastcka
