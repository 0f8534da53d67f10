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
      std::vector<double> row(n, 0.0), col(n, 0.0);
      torch::stable::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          double s = 0;
          for (int64_t j = 0; j < n; ++j)
            if (!(skip_diag && i == j)) s += static_cast<double>(kp[i * n + j]);
          row[i] = s;
        }
      });
      for (int64_t i = 0; i < n; ++i)  // column sums, row by row (sequential: a fixed order)
        for (int64_t j = 0; j < n; ++j)
          if (!(skip_diag && i == j)) col[j] += static_cast<double>(kp[i * n + j]);
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
