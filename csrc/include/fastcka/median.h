// Exact median of the n² squared distances (diagonal zeros included, numpy's median: the mean of the two middle
// values for an even count), by radix selection on the bit patterns of the float64 distances, which order like the
// values since they are ≥ 0. Each pass histograms one 16-bit digit of the pairs whose higher bits match the prefix
// found so far; a pass visits the pairs i < j only (each stands for two entries), the n zeros of the diagonal are
// added by the driver. Nothing of size n² is stored. Shared by the CPU and CUDA passes.
#pragma once

#include <cstdint>
#include <cstring>

#include "fastcka/macros.h"

namespace fastcka {

constexpr int kDigitBits = 16;
constexpr int64_t kDigitBins = int64_t(1) << kDigitBits;
// Once the pairs i < j left in the selected bin are at most this many (64 MB of float64), one pass collects them and
// the selection finishes in memory; the CUDA collect buffer has this size.
constexpr int64_t kCollectCapacity = int64_t(1) << 23;

FASTCKA_HD uint64_t distance_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t b;
  std::memcpy(&b, &d, sizeof(b));
  return b;
#endif
}

// Squared distance from the dot product and the row norms: ≥ 0, +0 on the diagonal, in float64.
FASTCKA_HD double squared_distance(double dot, double norm_i, double norm_j, bool diagonal) {
  if (diagonal) return 0.0;
  const double d = norm_i + norm_j - 2.0 * dot;
  return d > 0.0 ? d : 0.0;
}

// Does the distance carry the prefix (its top `prefix_bits` bits)? Then which digit comes next?
FASTCKA_HD bool has_prefix(uint64_t bits, uint64_t prefix, int prefix_bits) {
  return prefix_bits == 0 || (bits >> (64 - prefix_bits)) == prefix;
}

FASTCKA_HD int64_t next_digit(uint64_t bits, int prefix_bits) {
  return static_cast<int64_t>((bits >> (64 - prefix_bits - kDigitBits)) & (kDigitBins - 1));
}

}  // namespace fastcka
