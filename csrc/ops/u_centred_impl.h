// The small-n unbiased HSIC (csrc/include/fastcka/u_centred.h), device-generic: the U-centred Grams come from the
// center_gram op (its CPU or CUDA kernel, center_gram.h's math), the float64 reductions from the backend D, and
// everything stays on the device (no host sync).
#pragma once

#include <vector>

#include "fastcka/center_gram.h"
#include "fastcka/u_centred.h"
#include "stable_common.h"

namespace fastcka {

// Ũ of a symmetric float64 n×n Gram k (its diagonal is ignored), with max|k| into m[abs_slot]: the entry size
// u_centred_numerator's noise rule reads.
inline Tensor u_centred_gram(const Tensor& k, Tensor& m, int abs_slot) {
  const Tensor u = call_aten("fastcka::center_gram", "", k, int64_t(kCenterUnbiased));
  Tensor dst = narrowed(m, 0, abs_slot, 1);
  torch::stable::copy_(dst, call_aten("aten::amax", "", call_aten("aten::abs", "", k), std::vector<int64_t>{}, false));
  return u;
}

// The inner products of Ũ_K and Ũ_L into the slots from m[base] on, and the slots marked filled; the entry sizes
// come from u_centred_gram.
template <class D>
void u_centred_products(const Tensor& uk, const Tensor& ul, Tensor& m, int base) {
  D::dot_into(uk, ul, m, base + kuKL);
  D::dot_into(uk, uk, m, base + kuKK);
  D::dot_into(ul, ul, m, base + kuLL);
  Tensor on = narrowed(m, 0, base + kuOn, 1);
  torch::stable::fill_(on, 1.0);
}

// A float64 copy of a float32 or float64 matrix (exact).
inline Tensor as_f64(const Tensor& t) {
  if (t.scalar_type() == ScalarType::Double) return t;
  Tensor out = empty_like_shape(t, {t.size(0), t.size(1)}, ScalarType::Double);
  torch::stable::copy_(out, t);
  return out;
}

}  // namespace fastcka
