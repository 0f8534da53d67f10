// CPU kernels and registration of the Fourier energy spectrum op.
#include "frequency_spectrum_impl.h"

namespace fastcka {

struct CpuSpectrum {
  // (2h, p): rows cos_0 … cos_{h−1}, sin_0 … sin_{h−1}, in x's dtype.
  static Tensor fourier_basis(const Tensor& like, int64_t p) {
    const int64_t h = p / 2 + 1;
    Tensor b = empty_like_shape(like, {2 * h, p}, like.scalar_type());
    FASTCKA_DISPATCH_FLOATING(like.scalar_type(), "fourier_basis", [&] {
      scalar_t* o = b.mutable_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, 2 * h, 8, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t a = 0; a < p; ++a) o[r * p + a] = static_cast<scalar_t>(::fastcka::fourier_basis(r >= h, r % h, a, p));
      });
    });
    return b;
  }

  static Tensor spectrum_fold(const Tensor& f, const SpectrumParams& s) {
    const int64_t entries = spectrum_entries(s);
    Tensor out = s.ndim == 1 ? empty_like_shape(f, {s.h}, ScalarType::Double)
                             : empty_like_shape(f, {s.h, s.h}, ScalarType::Double);
    double* o = out.mutable_data_ptr<double>();
    FASTCKA_DISPATCH_FLOATING(f.scalar_type(), "spectrum_fold", [&] {
      const scalar_t* fp = f.const_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, entries, 1, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e) o[e] = spectrum_weight(s, e) * spectrum_partial(fp, s, e, 0, 1);
      });
    });
    return out;
  }

  static Tensor spectrum_fold_backward(const Tensor& f, const Tensor& grad, const SpectrumParams& s) {
    Tensor df = empty_like_shape(f, {f.numel()}, f.scalar_type());
    const double* g = grad.const_data_ptr<double>();
    FASTCKA_DISPATCH_FLOATING(f.scalar_type(), "spectrum_fold_backward", [&] {
      const scalar_t* fp = f.const_data_ptr<scalar_t>();
      scalar_t* o = df.mutable_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, f.numel(), 1 << 14, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t e = spectrum_entry_of(s, i);
          o[i] = static_cast<scalar_t>(2.0 * spectrum_weight(s, e) * g[e] * static_cast<double>(fp[i]));
        }
      });
    });
    std::vector<int64_t> shape;
    for (int64_t d = 0; d < f.dim(); ++d) shape.push_back(f.size(d));
    return reshaped(df, shape);
  }
};

STABLE_TORCH_LIBRARY_IMPL(fastcka, CPU, m) {
  m.impl("frequency_spectrum", TORCH_BOX(&frequency_spectrum<CpuSpectrum>));
  m.impl("_frequency_spectrum_backward", TORCH_BOX(&frequency_spectrum_backward<CpuSpectrum>));
}

}  // namespace fastcka
