// Linear HSIC, device-generic: centring and float64 reductions come from the backend (CPU or CUDA kernels), the
// Grams from ATen's matmul (MKL/OpenBLAS or cuBLAS), the symmetric ones (XcᵀXc, YcᵀYc) as block-triangle panels.
// Returns float64 [HSIC(K,L), HSIC(K,K), HSIC(L,L)]; the Python layer forms CKA from it.
#pragma once

#include <tuple>

#include "fastcka/linear_hsic.h"
#include "backend.h"  // the contract every backend D fulfils
#include "stable_common.h"
#include "u_centred_impl.h"

namespace fastcka {

struct LinearPrepared {
  Tensor xc, yc, m, dk, dl;
  bool sample;
};

// Centre and normalise both sides, fill the row-norm moments the unbiased estimator needs.
template <class D>
LinearPrepared linear_prepare(const Tensor& x_, const Tensor& y_, bool unbiased, int64_t method) {
  STD_TORCH_CHECK(method >= kPathAuto && method <= kPathSample, "fastcka::linear_hsic: method must be 0 (auto), "
                  "1 (feature) or 2 (sample)");
  LinearPrepared s;
  const Tensor x = as_contiguous(x_), y = as_contiguous(y_);
  s.m = zeros_f64(x, kNumLinearMoments);
  s.xc = D::center_normalise(x, s.m, kScaleX);
  s.yc = D::center_normalise(y, s.m, kScaleY);
  s.sample = use_sample_space(method, x.size(0), x.size(1), y.size(1), D::kGramPanel);
  if (!unbiased) {  // the biased estimator never reads the row norms
    s.dk = zeros_f64(x, x.size(0));
    s.dl = s.dk;
    return s;
  }
  s.dk = D::row_sq(s.xc);
  s.dl = D::row_sq(s.yc);
  D::sum_into(s.dk, s.m, kTrK);
  D::sum_into(s.dl, s.m, kTrL);
  {
    D::dot_into(s.dk, s.dl, s.m, kDkDl);
    D::dot_into(s.dk, s.dk, s.m, kDkDk);
    D::dot_into(s.dl, s.dl, s.m, kDlDl);
  }
  return s;
}

// m[slot] += ‖ZᵀZ‖²_F from the block upper triangle of the symmetric ZᵀZ. With Z = [Z₁ Z₂], Z₁ a panel of b
// columns: ‖ZᵀZ‖² = 2‖Z₁ᵀZ‖² − ‖Z₁ᵀZ₁‖² + ‖Z₂ᵀZ₂‖² (the block Z₁ᵀZ₂ stands for itself and its mirror), then Z₂
// the same way: (p²/2 + pb/2)·n multiply-adds instead of p²·n. The weights are powers of two on float64 sums and
// the subtracted block is part of the doubled one, so no digit is lost. A column range of a row-major matrix is a
// BLAS operand as it is (leading dimension p): the panels are not copied.
template <class D>
void gram_sq_add(const Tensor& z, Tensor& m, int slot) {
  const int64_t p = z.size(1);
  if (p == 0) return;  // no features: the Gram is empty
  const int64_t panels = (p + D::kGramPanel - 1) / D::kGramPanel;
  // near-equal widths rounded up to 8 columns (MKL, one thread: 64-column panels ran ~20 % faster than 43)
  const int64_t b = ((p + panels - 1) / panels + 7) / 8 * 8;
  for (int64_t c0 = 0;; c0 += b) {
    const Tensor rest = narrowed(z, 1, c0, p - c0);
    if (p - c0 <= b) {  // the last panel: its whole Gram, weight 1
      const Tensor g = mm(transposed(rest), rest);
      D::dot_add_into(g, g, m, slot, 1.0);
      return;
    }
    const Tensor row = mm(transposed(narrowed(z, 1, c0, b)), rest);  // b × (p − c0): [Z₁ᵀZ₁  Z₁ᵀZ₂]
    D::dot_add_into(row, row, m, slot, 2.0);
    const Tensor diag = as_contiguous(narrowed(row, 1, 0, b));
    D::dot_add_into(diag, diag, m, slot, -1.0);
  }
}

// The three HSICs and, in *moments, the moment vector they came from; force_u_centred: the U-centred numerators
// (u_centred.h) above kUCentredMaxN rows too (linear_hsic_repaired).
template <class D>
Tensor linear_hsic_pass(const Tensor& x, const Tensor& y, bool unbiased, int64_t method, Tensor* moments,
                        bool force_u_centred = false) {
  LinearPrepared s = linear_prepare<D>(x, y, unbiased, method);
  const bool u_centred = unbiased && (x.size(0) <= kUCentredMaxN || force_u_centred);
  Tensor k, l;  // the n×n Grams, in the input precision: the sample path's, or at small n for u_centred
  if (s.sample) {
    k = mm(s.xc, transposed(s.xc));
    l = mm(s.yc, transposed(s.yc));
    D::dot_into(k, l, s.m, kKL);
    D::dot_into(k, k, s.m, kKK);
    D::dot_into(l, l, s.m, kLL);
  } else {
    const Tensor c = mm(transposed(s.xc), s.yc);
    D::dot_into(c, c, s.m, kKL);
    gram_sq_add<D>(s.xc, s.m, kKK);  // the self terms from half of each symmetric Gram
    gram_sq_add<D>(s.yc, s.m, kLL);
  }
  if (u_centred) {  // small n: the numerators from the U-centred Grams (u_centred.h), centred in float64
    if (!s.sample) {  // the feature path is taken where n exceeds about p + q: these cost at most n³ = 2M products
      k = mm(s.xc, transposed(s.xc));
      l = mm(s.yc, transposed(s.yc));
    }
    const Tensor uk = u_centred_gram(as_f64(k), s.m, kUCentred + kuAbsK);
    const Tensor ul = u_centred_gram(as_f64(l), s.m, kUCentred + kuAbsL);
    u_centred_products<D>(uk, ul, s.m, kUCentred);
  }
  Tensor out = empty_like_shape(x, {3}, ScalarType::Double);
  const bool both_double = x.scalar_type() == ScalarType::Double && y.scalar_type() == ScalarType::Double;
  D::linear_combine(s.m, x.size(0), unbiased, hsic_noise_coef(both_double), out);
  *moments = s.m;
  return out;
}

// Host-side repairs of an unbiased pass on a backend whose moments are on the host (the CPU; on CUDA the check
// would be a host sync), where its one-pass value is too coarse for CKA (linear_hsic.h: one_pass_too_coarse): float32
// input is recomputed from float64 copies, and then, at kUCentredMaxN < n ≤ kUCentredHostMaxN, a float64 pass still
// too coarse takes its numerators from the U-centred Grams (u_centred.h: float64 n×n, at most 8 MB each; one row 10⁶
// spreads from 199 others had left 4e-6). `moments`: the host moments of `out`'s pass, all three HSICs' terms.
constexpr int64_t kUCentredHostMaxN = 1024;

template <class D>
bool may_repair(const Tensor& x, bool unbiased) {
  const int64_t n = x.size(0);
  return D::kHostMoments && unbiased &&
         (x.scalar_type() == ScalarType::Float || (n > kUCentredMaxN && n <= kUCentredHostMaxN));
}

// `out`, or where its float64 pass is too coarse at kUCentredMaxN < n ≤ kUCentredHostMaxN, the U-centred pass.
template <class D>
Tensor u_centred_if_coarse(const Tensor& x, const Tensor& y, bool unbiased, int64_t method, Tensor out,
                           const double* moments) {
  const int64_t n = x.size(0);
  if (n <= kUCentredMaxN || n > kUCentredHostMaxN || !one_pass_too_coarse(moments, n, kFloat64Coarse)) return out;
  Tensor m;
  return linear_hsic_pass<D>(x, y, unbiased, method, &m, true);
}

// The float64 pass of a pair found too coarse in float32, repaired in turn.
template <class D>
Tensor linear_hsic_from_f64(const Tensor& x64, const Tensor& y64, bool unbiased, int64_t method) {
  Tensor m;
  const Tensor out = linear_hsic_pass<D>(x64, y64, unbiased, method, &m);
  return u_centred_if_coarse<D>(x64, y64, unbiased, method, out, m.const_data_ptr<double>());
}

template <class D>
Tensor linear_hsic_repaired(const Tensor& x, const Tensor& y, bool unbiased, int64_t method, Tensor out,
                            const double* moments) {
  if (!may_repair<D>(x, unbiased)) return out;
  if (x.scalar_type() != ScalarType::Float) return u_centred_if_coarse<D>(x, y, unbiased, method, out, moments);
  if (!one_pass_too_coarse(moments, x.size(0), kFloat32Coarse)) return out;
  return linear_hsic_from_f64<D>(as_f64(x), as_f64(y), unbiased, method);
}

template <class D>
Tensor linear_hsic(const Tensor& x, const Tensor& y, bool unbiased, int64_t method) {
  check_pair_inputs(x, y, unbiased, "fastcka::linear_hsic");
  Tensor m;
  const Tensor out = linear_hsic_pass<D>(x, y, unbiased, method, &m);
  if (!may_repair<D>(x, unbiased)) return out;
  return linear_hsic_repaired<D>(x, y, unbiased, method, out, m.const_data_ptr<double>());
}

// grad: float64 [3], the gradient of the loss with respect to linear_hsic's output.
template <class D>
std::tuple<Tensor, Tensor> linear_hsic_backward(const Tensor& grad, const Tensor& x, const Tensor& y, bool unbiased,
                                                int64_t method) {
  check_pair_inputs(x, y, unbiased, "fastcka::_linear_hsic_backward");
  check_grad(grad, x, 3, "fastcka::_linear_hsic_backward");
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

namespace fastcka {

// Layer-by-layer linear HSIC: every layer is centred and normalised once, each pair then costs one Gram product
// (XcᵢᵀXcⱼ or the n×n pair) and a float64 reduction. Returns float64 (L, M) cross HSICs; with ys empty the
// symmetric (L, L) matrix of xs against itself, upper triangle computed and mirrored. Self terms are the diagonal
// (symmetric case) or are computed once per layer by the caller's second call.
template <class D>
Tensor linear_hsic_matrix(const std::vector<Tensor>& xs, const std::vector<Tensor>& ys_in, bool unbiased,
                          int64_t method) {
  STD_TORCH_CHECK(!xs.empty(), "fastcka::linear_hsic_matrix: xs is empty");
  STD_TORCH_CHECK(method >= kPathAuto && method <= kPathSample, "fastcka::linear_hsic_matrix: method must be 0 "
                  "(auto), 1 (feature) or 2 (sample)");
  const bool symmetric = ys_in.empty();
  const std::vector<Tensor>& ys = symmetric ? xs : ys_in;
  const int64_t L = static_cast<int64_t>(xs.size()), M = static_cast<int64_t>(ys.size()), n = xs[0].size(0);
  for (const Tensor& t : xs) check_pair_inputs(t, xs[0], unbiased, "fastcka::linear_hsic_matrix");
  for (const Tensor& t : ys) check_pair_inputs(t, xs[0], unbiased, "fastcka::linear_hsic_matrix");
  // Per layer: a moment row whose scale and row-norm slots describe that layer alone; at small n (unbiased) also its
  // U-centred Gram, with max|K| and ⟨Ũ, Ũ⟩ in the row's kuAbsK, kuKK slots (u_centred.h).
  const bool u_centred = unbiased && n <= kUCentredMaxN;
  auto prepare = [&](const std::vector<Tensor>& zs, std::vector<Tensor>& zc, std::vector<Tensor>& dz,
                     std::vector<Tensor>& uz, Tensor& mom) {
    mom = zeros_f64(zs[0], static_cast<int64_t>(zs.size()) * kNumLinearMoments);
    for (size_t i = 0; i < zs.size(); ++i) {
      Tensor row = narrowed(mom, 0, static_cast<int64_t>(i) * kNumLinearMoments, kNumLinearMoments);
      zc.push_back(D::center_normalise(as_contiguous(zs[i]), row, kScaleX));
      if (!unbiased) continue;
      dz.push_back(D::row_sq(zc.back()));
      D::sum_into(dz.back(), row, kTrK);
      const int64_t pz = zc.back().size(1);
      const bool check = may_repair<D>(zs[i], unbiased), sample = use_sample_space(method, n, pz, pz, D::kGramPanel);
      Tensor gram;  // the layer's n×n Gram in the input precision, where needed
      if (u_centred || (check && sample)) gram = mm(zc.back(), transposed(zc.back()));
      if (check) {  // the self terms' moments, for linear_hsic_repaired's check, whichever way costs less
        if (sample) D::dot_into(gram, gram, row, kKK);
        else gram_sq_add<D>(zc.back(), row, kKK);
        D::dot_into(dz.back(), dz.back(), row, kDkDk);
      }
      if (u_centred) {  // the Gram centred in float64
        uz.push_back(u_centred_gram(as_f64(gram), row, kUCentred + kuAbsK));
        D::dot_into(uz.back(), uz.back(), row, kUCentred + kuKK);
      }
    }
  };
  std::vector<Tensor> xc, dx, ux, yc, dy, uy;
  Tensor mx, my;
  prepare(xs, xc, dx, ux, mx);
  if (symmetric) {
    yc = xc;
    dy = dx;
    uy = ux;
    my = mx;
  } else {
    prepare(ys, yc, dy, uy, my);
  }
  Tensor pair_m = zeros_f64(xs[0], L * M * kNumLinearMoments);
  Tensor out3 = empty_like_shape(xs[0], {L * M, 3}, ScalarType::Double);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = symmetric ? i : 0; j < M; ++j) {
      const int64_t k = i * M + j;
      Tensor m = narrowed(pair_m, 0, k * kNumLinearMoments, kNumLinearMoments);
      Tensor sx = narrowed(mx, 0, i * kNumLinearMoments + kScaleX, 1), sy = narrowed(my, 0, j * kNumLinearMoments + kScaleX, 1);
      Tensor tx = narrowed(mx, 0, i * kNumLinearMoments + kTrK, 1), ty = narrowed(my, 0, j * kNumLinearMoments + kTrK, 1);
      Tensor dst;
      dst = narrowed(m, 0, kScaleX, 1); torch::stable::copy_(dst, sx);
      dst = narrowed(m, 0, kScaleY, 1); torch::stable::copy_(dst, sy);
      dst = narrowed(m, 0, kTrK, 1); torch::stable::copy_(dst, tx);
      dst = narrowed(m, 0, kTrL, 1); torch::stable::copy_(dst, ty);
      if (unbiased) D::dot_into(dx[i], dy[j], m, kDkDl);
      if (u_centred) {  // the pair's slots from the layers' (only HSIC(K, L) is read: column 0 of the output)
        const int64_t bx = i * kNumLinearMoments + kUCentred, by = j * kNumLinearMoments + kUCentred;
        dst = narrowed(m, 0, kUCentred + kuAbsK, 1); torch::stable::copy_(dst, narrowed(mx, 0, bx + kuAbsK, 1));
        dst = narrowed(m, 0, kUCentred + kuKK, 1); torch::stable::copy_(dst, narrowed(mx, 0, bx + kuKK, 1));
        dst = narrowed(m, 0, kUCentred + kuAbsL, 1); torch::stable::copy_(dst, narrowed(my, 0, by + kuAbsK, 1));
        dst = narrowed(m, 0, kUCentred + kuLL, 1); torch::stable::copy_(dst, narrowed(my, 0, by + kuKK, 1));
        D::dot_into(ux[i], uy[j], m, kUCentred + kuKL);
        dst = narrowed(m, 0, kUCentred + kuOn, 1); torch::stable::fill_(dst, 1.0);
      }
      if (use_sample_space(method, n, xc[i].size(1), yc[j].size(1), D::kGramPanel))
        D::dot_into(mm(xc[i], transposed(xc[i])), mm(yc[j], transposed(yc[j])), m, kKL);
      else if (symmetric && i == j)  // a layer against itself: its Gram is symmetric
        gram_sq_add<D>(xc[i], m, kKL);
      else {
        const Tensor c = mm(transposed(xc[i]), yc[j]);
        D::dot_into(c, c, m, kKL);
      }
      Tensor o = narrowed(out3, 0, k, 1);
      const bool both_double = xs[i].scalar_type() == ScalarType::Double && ys[j].scalar_type() == ScalarType::Double;
      D::linear_combine(m, n, unbiased, hsic_noise_coef(both_double), o);
      if (may_repair<D>(xs[i], unbiased)) {  // the pair's moments with the layers' self terms (host memory)
        const double *pm = m.const_data_ptr<double>(), *lx = mx.const_data_ptr<double>() + i * kNumLinearMoments,
                     *ly = my.const_data_ptr<double>() + j * kNumLinearMoments;
        double c[kNumLinearMoments] = {};
        c[kKL] = pm[kKL], c[kDkDl] = pm[kDkDl], c[kTrK] = pm[kTrK], c[kTrL] = pm[kTrL];
        c[kKK] = lx[kKK], c[kDkDk] = lx[kDkDk], c[kLL] = ly[kKK], c[kDlDl] = ly[kDkDk];
        const bool f32 = xs[i].scalar_type() == ScalarType::Float;
        if (one_pass_too_coarse(c, n, f32 ? kFloat32Coarse : kFloat64Coarse)) {  // this pair again, repaired
          const Tensor xi = as_contiguous(xs[i]), yj = as_contiguous(ys[j]);
          Tensor full;
          const Tensor fixed = f32 ? linear_hsic_from_f64<D>(as_f64(xi), as_f64(yj), unbiased, method)
                                   : linear_hsic_pass<D>(xi, yj, unbiased, method, &full, true);
          torch::stable::copy_(o, reshaped(fixed, {1, 3}));
        }
      }
      if (symmetric && j != i) {  // mirror
        Tensor mirror = narrowed(out3, 0, j * M + i, 1);
        torch::stable::copy_(mirror, o);
      }
    }
  return as_contiguous(reshaped(torch::stable::select(out3, 1, 0), {L, M}));
}

}  // namespace fastcka
