// Exact median of the n² squared distances (diagonal zeros included, numpy's median: the mean of the two middle
// values for an even count), by radix selection on the bit patterns of the float64 distances, which order like the
// values since they are ≥ 0. Each pass histograms one 16-bit digit of the pairs whose higher bits match the prefix
// found so far; a pass visits the pairs i < j only (each stands for two entries), the n zeros of the diagonal are
// added by the driver. Nothing of size n² is stored. Shared by the CPU and CUDA passes.
//
// A faster first try (the window): a seeded sample of pairs brackets the median's rank, one pass counts the pairs
// below the bracket and collects those inside it, and the rank is read from them when it falls inside. A miss (the
// sample is only a guide) costs one pass and falls back to the radix passes, so the result is exact either way.
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

// Is the distance's bit pattern inside the window [lo, hi]? (A radix bin is the window of its prefix.)
FASTCKA_HD bool in_window(uint64_t bits, uint64_t lo, uint64_t hi) { return bits >= lo && bits <= hi; }

FASTCKA_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The s-th pair (i < j) of the seeded uniform sample of pairs of n ≥ 2 rows (n < 2³²).
FASTCKA_HD void sampled_pair(uint64_t seed, int64_t s, int64_t n, int64_t* i, int64_t* j) {
  const uint64_t r = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(s)));
  const int64_t a = static_cast<int64_t>((r >> 32) % static_cast<uint64_t>(n));
  int64_t b = static_cast<int64_t>((r & 0xFFFFFFFFull) % static_cast<uint64_t>(n - 1));
  if (b >= a) ++b;
  *i = a < b ? a : b;
  *j = a < b ? b : a;
}

// The squared distance of one sampled pair, from the scaled rows (float64 dot) and their float64 squared norms.
template <typename T>
FASTCKA_HD double sampled_distance(const T* xs, const double* norms, int64_t p, int64_t i, int64_t j) {
  double dot = 0.0;
  for (int64_t c = 0; c < p; ++c) dot += static_cast<double>(xs[i * p + c]) * static_cast<double>(xs[j * p + c]);
  return squared_distance(dot, norms[i], norms[j], false);
}

}  // namespace fastcka
