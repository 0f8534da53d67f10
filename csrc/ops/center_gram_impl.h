// Fused Gram centring, device-generic driver: sums (float64), coefficients, one element-wise pass.
#pragma once

#include "fastcka/center_gram.h"
#include "backend.h"  // the contract every backend D fulfils
#include "stable_common.h"

namespace fastcka {

template <class D>
Tensor center_gram(const Tensor& k_, int64_t mode) {
  STD_TORCH_CHECK(k_.dim() == 2 && k_.size(0) == k_.size(1), "fastcka::center_gram: k must be square");
  STD_TORCH_CHECK(mode >= 0 && mode <= 2, "fastcka::center_gram: bad mode");
  const int64_t n = k_.size(0);
  STD_TORCH_CHECK(n >= 1, "fastcka::center_gram: k is empty (n = 0)");
  STD_TORCH_CHECK(mode == kCenterBiased || n >= 3, "fastcka::center_gram: unbiased centring needs n >= 3");
  const Tensor k = as_contiguous(k_);
  return D::center_apply(k, static_cast<int>(mode));
}

template <class D>
Tensor gram_asymmetric_pairs(const Tensor& k_, const Tensor& threshold) {
  STD_TORCH_CHECK(k_.dim() == 2 && k_.size(0) == k_.size(1), "fastcka::gram_asymmetric_pairs: k must be square");
  STD_TORCH_CHECK(threshold.numel() == 1 && threshold.scalar_type() == ScalarType::Double,
                  "fastcka::gram_asymmetric_pairs: threshold must be a float64 scalar tensor");
  STD_TORCH_CHECK(threshold.get_device_index() == k_.get_device_index(),
                  "fastcka::gram_asymmetric_pairs: threshold must be on k's device");
  return D::asymmetric_pairs(as_contiguous(k_), threshold);
}

}  // namespace fastcka
