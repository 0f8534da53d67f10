// CPU kernel and registration of the fused Gram centring.
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
      // Row and column sums in one parallel pass over row chunks (column partials per chunk, added in order).
      const int64_t nch = std::max<int64_t>(1, std::min<int64_t>(16, n / 64)), step = (n + nch - 1) / nch;
      std::vector<double> row(n, 0.0), col(n, 0.0), part(nch * n, 0.0);
      torch::stable::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double* pc = part.data() + c * n;
          for (int64_t i = c * step; i < std::min(n, (c + 1) * step); ++i) {
            const scalar_t* r = kp + i * n;
            double s = 0;
            for (int64_t j = 0; j < n; ++j) {
              const double v = static_cast<double>(r[j]);
              s += v;
              pc[j] += v;
            }
            if (skip_diag) {
              const double d = static_cast<double>(r[i]);
              s -= d;
              pc[i] -= d;
            }
            row[i] = s;
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
      std::vector<CenterCoef> coef(n);
      for (int64_t i = 0; i < n; ++i) coef[i] = center_coef(mode, n, row[i], col[i], total_col, total_both);
      const double c = center_constant(mode, n, total_col, total_both);
      torch::stable::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = 0; j < n; ++j)
            o[i * n + j] = static_cast<scalar_t>(
                center_value(mode, static_cast<double>(kp[i * n + j]), coef[i].a, coef[j].b, c, i == j));
      });
    });
    return out;
  }
};

STABLE_TORCH_LIBRARY_IMPL(fastcka, CPU, m) { m.impl("center_gram", TORCH_BOX(&center_gram<CpuCenter>)); }

}  // namespace fastcka
