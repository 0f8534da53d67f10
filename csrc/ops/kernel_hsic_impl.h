// Kernel HSIC through the fused tiled pass, and the exact median of squared distances, device-generic.
// The backend D supplies the passes (CPU: BLAS row blocks + fused epilogue; CUDA: cuBLAS row blocks + fused epilogue
// kernels), the float64 reductions and the combine; the math is in csrc/include/fastcka/{tiled_hsic,median}.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastcka/median.h"
#include "fastcka/tiled_hsic.h"
#include "backend.h"  // the contract every backend D fulfils
#include "stable_common.h"
#include "u_centred_impl.h"

namespace fastcka {

// Scaled rows x' = s(x − x₀) (s a power of two), their float64 squared norms, s as a float64 [1] tensor on the
// device (the CUDA kernels read it there: no host sync), and the original rows x for the exact distances.
struct ScaledRows {
  Tensor xs, norms, scale, x;
};

// The distance view of a side for the header's passes; s² is read from `s2` (the CPU reads s on the host, a CUDA
// kernel from the device).
template <typename T>
DistanceRows<T> distance_rows(const ScaledRows& a, double s2) {
  DistanceRows<T> r;
  r.x = a.x.const_data_ptr<T>();
  r.norms = a.norms.const_data_ptr<double>();
  r.p = a.xs.size(1);
  r.s2 = s2;
  r.beta = distance_bound_coef(r.p, unit_roundoff<T>());
  r.guard = kernel_guard_coef(r.p, unit_roundoff<T>());
  return r;
}

// What a window pass returns: the pairs i < j below the window, inside it, and the inside values (only when they
// fit in kCollectCapacity; in any order). keys[i] = gi·n + gj where values[i] is the fast d̂ (its exact value lies
// within ±β(n_gi + n_gj), inside the window), −1 where it is the exact distance.
struct WindowPass {
  int64_t below = 0, inside = 0;
  std::vector<double> values;
  std::vector<int64_t> keys;
  std::vector<int64_t> hist;  // a binned pass: the inside pairs per bin (and nothing collected)
};

// The bins of a binned window pass: window_bin(d, lo, scale, count) (median.h).
struct WindowBins {
  double lo = 0.0, scale = 0.0;
  int64_t count = 0;
};

// The r0-th and r1-th smallest (0-based, r0 ≤ r1) exact distances among a window pass's inside pairs. Each lies
// between the r-th smallest lower end L and the r-th smallest upper end H of the pairs' intervals [d̂ − e, d̂ + e]
// (e = 0 where exact): every pair whose interval ends below L(r0) is below both, every pair whose interval starts
// above H(r1) is above both, and only the pairs whose interval meets [L(r0), H(r1)] are recomputed exactly
// (D::exact_distances) and selected. One call serves both middle ranks of an even count (they are usually equal or
// adjacent), so the candidates are found and recomputed once.
template <class D>
std::pair<double, double> exact_ranks(const ScaledRows& a, const WindowPass& w, const std::vector<double>& norms,
                                      int64_t r0, int64_t r1) {
  const int64_t m = static_cast<int64_t>(w.values.size()), n = a.xs.size(0);
  const double beta = a.xs.scalar_type() == ScalarType::Double
                          ? distance_bound_coef(a.xs.size(1), unit_roundoff<double>())
                          : distance_bound_coef(a.xs.size(1), unit_roundoff<float>());
  std::vector<double> lo(m), hi(m);
  for (int64_t t = 0; t < m; ++t) {
    const int64_t key = w.keys[t];
    const double e = key < 0 ? 0.0 : beta * (norms[key / n] + norms[key % n]);
    lo[t] = std::max(w.values[t] - e, 0.0);
    hi[t] = w.values[t] + e;
  }
  auto nth = [](std::vector<double>& v, int64_t r) {  // v is scratch from here on
    std::nth_element(v.begin(), v.begin() + r, v.end());
    return v[r];
  };
  const double L = nth(lo, r0), H = nth(hi, r1);
  int64_t below = 0;
  std::vector<double> exact;
  std::vector<int64_t> todo;
  for (int64_t t = 0; t < m; ++t) {
    const int64_t key = w.keys[t];
    const double e = key < 0 ? 0.0 : beta * (norms[key / n] + norms[key % n]);
    const double t_lo = std::max(w.values[t] - e, 0.0), t_hi = w.values[t] + e;
    if (t_hi < L) {
      ++below;
    } else if (t_lo <= H) {
      if (key < 0) exact.push_back(w.values[t]);
      else todo.push_back(key);
    }
  }
  const std::vector<double> more = D::exact_distances(a, todo);
  exact.insert(exact.end(), more.begin(), more.end());
  const int64_t at0 = r0 - below, at1 = r1 - below;
  STD_TORCH_CHECK(at0 >= 0 && at1 < static_cast<int64_t>(exact.size()), "fastcka median: rank outside its bracket");
  const double v0 = nth(exact, at0);
  if (at1 == at0) return {v0, v0};
  // after nth_element everything past at0 is ≥ v0: rank at1 > at0 is selected among them
  std::nth_element(exact.begin() + at0 + 1, exact.begin() + at1, exact.end());
  return {v0, exact[at1]};
}

// Entries k and k+1 (when want_next; else k twice) of a bin or window whose first `zeros` entries are diagonal
// zeros and whose entries from `offset` on are the collected pairs of w, each twice (i < j and j < i).
template <class D>
std::pair<double, double> window_entries(const ScaledRows& a, const WindowPass& w, const std::vector<double>& norms,
                                         int64_t zeros, int64_t offset, int64_t k, bool want_next) {
  const int64_t k1 = want_next ? k + 1 : k;
  if (k1 < zeros) return {0.0, 0.0};
  if (k < zeros) return {0.0, exact_ranks<D>(a, w, norms, (k1 - offset) / 2, (k1 - offset) / 2).first};
  return exact_ranks<D>(a, w, norms, (k - offset) / 2, (k1 - offset) / 2);
}

// The shift x₀ the kernels subtract: the column-wise (lower) medians of a seeded pseudo-random subset of at most 255
// rows. A median is a value of its column, so the shift is exact for data a test checks exactly (small integers),
// and it sits in the bulk of the data, so far outlier rows (a transformer's attention-sink token, say) cost no
// digits: shifting by the first row, as before, lost 67 % of a float32 RBF CKA when that row was 750 spreads away.
// The subset is random, not strided, because a stride can line up with a period of the rows (the first token of
// every sequence, flattened batch-major). The median comes from a sort along rows, not torch.median, whose CUDA
// kernel is flagged non-deterministic (its indices) and would make every op raise under deterministic algorithms.
constexpr int64_t kShiftRows = 255;
constexpr uint64_t kShiftSeed = 0x5A17F00Dull;

// Row r of the subset (r < kShiftRows, repeats possible). Each backend fills the indices on x's device with this one
// formula (D::shift_row_indices): filled on the CPU and copied, they cost the CUDA ops a host sync on every call.
FASTCKA_HD int64_t shift_row(int64_t r, int64_t n) {
  return static_cast<int64_t>(splitmix64(kShiftSeed + static_cast<uint64_t>(r)) % static_cast<uint64_t>(n));
}

template <class D>
Tensor column_medians(const Tensor& x) {
  const int64_t n = x.size(0), p = x.size(1);
  Tensor rows = x;
  if (n > kShiftRows) rows = call_aten("aten::index_select", "", x, int64_t(0), D::shift_row_indices(x));
  const Tensor sorted = call_aten<2>("aten::sort", "", rows, int64_t(0), false);  // (values, indices)
  return as_contiguous(reshaped(narrowed(sorted, 0, (rows.size(0) - 1) / 2, 1), {p}));
}

// Float64 vectors a pass fills: r (row sums), d (diagonal) per side, and the three Σ entries.
struct PassOutput {
  Tensor rk, rl, dk, dl, m;  // m: kNumKernelMoments, slots kmKL, kmKK, kmLL filled by the pass
};

// Zeroed accumulators of one pass, on the input's device.
inline PassOutput zeroed_pass_output(const Tensor& like, int64_t n) {
  PassOutput o;
  o.m = zeros_f64(like, kNumKernelMoments);
  o.rk = zeros_f64(like, n);
  o.rl = zeros_f64(like, n);
  o.dk = zeros_f64(like, n);
  o.dl = zeros_f64(like, n);
  return o;
}

// gamma is read per side (gamma[0] for x, gamma[1] for y): anything else would read out of bounds.
inline void check_kernel_args(const Tensor& x, const Tensor& gamma, int64_t kx, int64_t ky, const char* op) {
  STD_TORCH_CHECK(gamma.dim() == 1 && gamma.numel() == 2 && gamma.scalar_type() == ScalarType::Double, op,
                  ": gamma must be a float64 tensor of shape (2,): (gamma_x, gamma_y)");
  STD_TORCH_CHECK(gamma.get_device_index() == x.get_device_index(), op, ": gamma must be on x's device");
  STD_TORCH_CHECK(kx >= kKernelLinear && kx <= kKernelRbf && ky >= kKernelLinear && ky <= kKernelRbf, op,
                  ": kernel codes must be 0 (linear) or 1 (rbf)");
}

template <class D>
Tensor kernel_hsic(const Tensor& x_, const Tensor& y_, const Tensor& gamma_, int64_t kx, int64_t ky, bool unbiased) {
  check_pair_inputs(x_, y_, unbiased, "fastcka::kernel_hsic");
  check_kernel_args(x_, gamma_, kx, ky, "fastcka::kernel_hsic");
  const Tensor gamma = as_contiguous(gamma_);
  const ScaledRows a = D::scale_rows(as_contiguous(x_)), b = D::scale_rows(as_contiguous(y_));
  const int64_t n = x_.size(0);
  // small n, unbiased: the pass also writes out its entries K − c, L − c, whose U-centred Grams give the numerators
  // (u_centred.h); the shifts c do not matter there, U-centring removes a constant
  const bool u_centred = unbiased && n <= kUCentredMaxN;
  Tensor ek, el;
  if (u_centred) {
    ek = zeros_f64(x_, n * n);
    el = zeros_f64(x_, n * n);
  }
  PassOutput o = D::hsic_pass(a, b, kx, ky, gamma, u_centred ? &ek : nullptr, u_centred ? &el : nullptr);
  if (u_centred) {
    const Tensor uk = u_centred_gram(reshaped(ek, {n, n}), o.m, kmUCentred + kuAbsK);
    const Tensor ul = u_centred_gram(reshaped(el, {n, n}), o.m, kmUCentred + kuAbsL);
    u_centred_products<D>(uk, ul, o.m, kmUCentred);
  }
  D::dot_into(o.rk, o.rl, o.m, kmRkRl);
  D::dot_into(o.rk, o.rk, o.m, kmRkRk);
  D::dot_into(o.rl, o.rl, o.m, kmRlRl);
  D::sum_into(o.rk, o.m, kmSk);
  D::sum_into(o.rl, o.m, kmSl);
  D::dot_into(o.dk, o.dl, o.m, kmDkDl);
  D::dot_into(o.dk, o.dk, o.m, kmDkDk);
  D::dot_into(o.dl, o.dl, o.m, kmDlDl);
  D::sum_into(o.dk, o.m, kmTk);
  D::sum_into(o.dl, o.m, kmTl);
  D::dot_into(o.rk, o.dl, o.m, kmRkDl);
  D::dot_into(o.dk, o.rl, o.m, kmDkRl);
  D::dot_into(o.rk, o.dk, o.m, kmRkDk);
  D::dot_into(o.rl, o.dl, o.m, kmRlDl);
  Tensor out = empty_like_shape(x_, {3}, ScalarType::Double);
  // RBF entries are float64 functions of distances that are exact wherever they could lose digits, so their
  // cancellation noise is float64's whatever the input: float32 noise dropped a clustered pair's HSIC₁ at 6e-8 of
  // its terms (CKA 0 for 0.82, which float32 itself resolves). Linear entries are float32 GEMM dots.
  const bool f64_noise = x_.scalar_type() == ScalarType::Double || (kx == kKernelRbf && ky == kKernelRbf);
  D::kernel_combine(o.m, n, unbiased, hsic_noise_coef(f64_noise), out);
  return out;
}

template <class D>
std::tuple<Tensor, Tensor> kernel_hsic_backward(const Tensor& grad, const Tensor& x_, const Tensor& y_,
                                                const Tensor& gamma_, int64_t kx, int64_t ky, bool unbiased) {
  check_pair_inputs(x_, y_, unbiased, "fastcka::_kernel_hsic_backward");
  check_grad(grad, x_, 3, "fastcka::_kernel_hsic_backward");
  check_kernel_args(x_, gamma_, kx, ky, "fastcka::_kernel_hsic_backward");
  const Tensor gamma = as_contiguous(gamma_);
  const ScaledRows a = D::scale_rows(as_contiguous(x_)), b = D::scale_rows(as_contiguous(y_));
  PassOutput o = D::hsic_pass(a, b, kx, ky, gamma);  // row sums and diagonals the gradient weights need
  return D::hsic_grad_pass(a, b, kx, ky, gamma, o, as_contiguous(grad), unbiased);
}

// --- exact median of squared distances -------------------------------------------------------------------------------

// The k-th and (k+1)-th smallest (0-based) of the n² squared distances, by radix selection over the bit patterns.
// Histograms are cached by prefix, so the second rank reuses the passes of the first; once the bin holding rank k is
// small enough its values are collected in one pass and both ranks are read from them (they are adjacent, so the
// second is almost always in the same bin).
template <class D>
std::pair<double, double> select_squared_distances(const ScaledRows& a, int64_t k, bool want_next,
                                                   std::map<std::pair<uint64_t, int>, std::vector<int64_t>>& cache) {
  const int64_t n = a.xs.size(0);
  uint64_t prefix = 0;
  int bits = 0;
  const int64_t k_global = k;
  int64_t in_bin = 0;
  while (bits < 64) {
    auto key = std::make_pair(prefix, bits);
    auto it = cache.find(key);
    if (it == cache.end()) {
      std::vector<int64_t> h = D::distance_histogram(a, prefix, bits);  // counts pairs i < j
      for (auto& c : h) c *= 2;
      if (prefix == 0) h[0] += n;  // the diagonal zeros (bit pattern 0)
      it = cache.emplace(key, std::move(h)).first;
    }
    const std::vector<int64_t>& h = it->second;
    int64_t digit = 0;
    while (digit < kDigitBins && k >= h[digit]) k -= h[digit++];
    STD_TORCH_CHECK(digit < kDigitBins, "fastcka median: rank beyond the histogram (passes disagree)");
    in_bin = h[digit];
    prefix = (prefix << kDigitBits) | static_cast<uint64_t>(digit);
    bits += kDigitBits;
    const bool next_in_bin = k + 1 < in_bin;
    if (bits < 64 && in_bin / 2 <= kCollectCapacity && (next_in_bin || !want_next)) {
      // the bin's entries: the collected pairs twice each (i < j and j < i), after the n diagonal zeros if prefix 0
      const uint64_t lo_bits = prefix << (64 - bits), hi_bits = lo_bits | (~uint64_t(0) >> bits);
      const WindowPass w = D::distance_window(a, lo_bits, hi_bits);
      const std::vector<double> norms = D::host_norms(a);
      const int64_t zeros = prefix == 0 ? n : 0;
      STD_TORCH_CHECK(2 * static_cast<int64_t>(w.values.size()) + zeros == in_bin,
                      "fastcka median: pass counts disagree");
      return window_entries<D>(a, w, norms, zeros, zeros, k, want_next);
    }
    if (bits < 64 && in_bin / 2 <= kCollectCapacity && want_next) {  // rank k+1 lies in a later bin
      const double lo = select_squared_distances<D>(a, k_global, false, cache).first;
      return {lo, select_squared_distances<D>(a, k_global + 1, false, cache).first};
    }
  }
  double out;
  std::memcpy(&out, &prefix, sizeof(out));
  // all 64 bits fixed: rank k is this value; rank k+1 is too if it shares the bin, else found by its own walk
  if (!want_next || k + 1 < in_bin) return {out, out};
  return {out, select_squared_distances<D>(a, k_global + 1, false, cache).first};
}

// How median_sq_dist finds the ranks. Auto: the window where it pays (enough pairs, a sample that fits), else or on
// a miss the radix passes. The last two exist for the tests: the window alone (an error if it misses), and a window
// placed at a tenth of the rank, so that on spread data it misses and the fallback runs.
// Methods 2 and 4 force the window's full-precision and reduced-precision passes (4 falls back to 2 on a backend
// without a reduced pass); auto picks between them (reduced_undecided_share). Method 5 forces the two-window path.
enum MedianMethod : int64_t {
  kMedianAuto = 0,
  kMedianRadix = 1,
  kMedianWindowOnly = 2,
  kMedianWindowMiss = 3,
  kMedianWindowReduced = 4,
  kMedianTwoWindows = 5  // the large-n path (select_by_two_windows) at any n, an error if it misses (CPU only)
};

// Does the backend have a reduced-precision window pass (D::distance_window_reduced, D::reduced_pass_fast)?
template <class D, class = void>
struct HasReducedWindow : std::false_type {};
template <class D>
struct HasReducedWindow<D, std::void_t<decltype(&D::distance_window_reduced)>> : std::true_type {};

// Does the backend have a binned window pass (D::distance_window_binned)? Then auto's window also serves large n,
// where the bracket holds more pairs than the collect buffer: select_by_two_windows.
template <class D, class = void>
struct HasWindowBinned : std::false_type {};
template <class D>
struct HasWindowBinned<D, std::void_t<decltype(&D::distance_window_binned)>> : std::true_type {};

constexpr int64_t kWindowBins = 1024;

// Auto takes the reduced pass when the sampled pairs predict that at most this share of all pairs falls in its
// error band around the window (each such pair is recomputed exactly, at ~3× the per-pair cost the bf16 GEMM saves).
constexpr double kReducedMaxUndecided = 0.25;

// The share of the sampled pairs (exact distances `sample`, in sample order) that the reduced pass could not sort
// against [lo, hi]: the estimate of the share of all pairs it would recompute.
template <class D>
double reduced_undecided_share(const ScaledRows& a, const std::vector<double>& sample, uint64_t seed, uint64_t lo,
                               uint64_t hi) {
  const int64_t n = a.xs.size(0), p = a.xs.size(1), ms = static_cast<int64_t>(sample.size());
  const std::vector<double> norms = D::host_norms(a);
  const double beta = a.xs.scalar_type() == ScalarType::Double ? distance_bound_coef(p, unit_roundoff<double>())
                                                               : distance_bound_coef(p, unit_roundoff<float>());
  const ReducedBound rb = reduced_bound(p, beta);
  int64_t undecided = 0;
  for (int64_t t = 0; t < ms; ++t) {
    int64_t i, j;
    sampled_pair(seed, t, n, &i, &j);
    // an estimate, not the bound: t ≈ √n and r ≈ 0.4·2⁻⁸·t (a uniform rounding error within the binade)
    const double ni = norms[i], nj = norms[j], d = sample[t], ti = std::sqrt(ni), tj = std::sqrt(nj);
    const double e = reduced_error(rb, ni, nj, ti, tj, 0.0015625 * ti, 0.0015625 * tj, 0.5 * (ni + nj - d));
    undecided += interval_side(d, e, lo, hi) == 0;
  }
  return ms > 0 ? static_cast<double>(undecided) / static_cast<double>(ms) : 1.0;
}

constexpr int64_t kWindowMinPairs = int64_t(1) << 17;  // below this the radix passes cost little anyway
constexpr int64_t kWindowMinSample = int64_t(1) << 13;
constexpr int64_t kWindowMaxSample = int64_t(1) << 22;
constexpr double kWindowZ = 6.0;  // the bracket's half-width in standard errors of the sample quantile
constexpr uint64_t kWindowSeed = 0xC4A5EED5ull;

// The window's bracket [lo, hi] holds more pairs than the collect buffer (large n): a first, binned pass counts the
// pairs below it and the pairs inside per bin; the bins holding ranks k and k + 1 are mapped back to bit-pattern
// ends (window_bin is monotone, so by bisection) and a second window pass over them collects and selects as usual.
// Two passes where the radix fallback needs three or four. Returns false (the caller falls back to radix) when a rank
// is outside the bracket or the bins are too full.
template <class D>
bool select_by_two_windows(const ScaledRows& a, int64_t k, bool want_next, uint64_t lo_bits, uint64_t hi_bits,
                           bool reduced, std::pair<double, double>* out) {
  const int64_t n = a.xs.size(0), k_last = k + (want_next ? 1 : 0);
  if (k_last < n) {
    *out = {0.0, 0.0};
    return true;
  }
  double lo_d, hi_d;
  std::memcpy(&lo_d, &lo_bits, sizeof(lo_d));
  std::memcpy(&hi_d, &hi_bits, sizeof(hi_d));
  if (!(lo_d >= 0.0) || !(hi_d > lo_d) || !(hi_d < INFINITY)) return false;
  WindowBins bins;
  bins.count = kWindowBins;
  bins.lo = lo_d;
  bins.scale = static_cast<double>(kWindowBins) / (hi_d - lo_d);
  if (!(bins.scale < INFINITY)) return false;
  const WindowPass w = D::distance_window_binned(a, lo_bits, hi_bits, reduced, bins);
  const int64_t offset = n + 2 * w.below;
  const int64_t kk = std::max(k, n);  // entries below n are the diagonal zeros (window_entries returns them)
  if (kk < offset || k_last >= offset + 2 * w.inside) return false;
  const int64_t r0 = (kk - offset) / 2, r1 = (k_last - offset) / 2;
  int64_t acc = 0, b0 = -1, b1 = -1, before = 0, within = 0;
  for (int64_t b = 0; b < bins.count && b1 < 0; ++b) {
    if (b0 < 0 && r0 < acc + w.hist[b]) {
      b0 = b;
      before = acc;
    }
    if (r1 < acc + w.hist[b]) b1 = b;
    acc += w.hist[b];
  }
  STD_TORCH_CHECK(b0 >= 0 && b1 >= b0, "fastcka median: binned window counts disagree");
  for (int64_t b = b0; b <= b1; ++b) within += w.hist[b];
  if (within > kCollectCapacity) return false;
  auto bin_of = [&](uint64_t bits) {
    double d;
    std::memcpy(&d, &bits, sizeof(d));
    return window_bin(d, bins.lo, bins.scale, bins.count);
  };
  auto first_with_bin_above = [&](int64_t b) {  // the smallest pattern in [lo, hi + 1] whose bin exceeds b
    uint64_t l = lo_bits, h = hi_bits + 1;
    while (l < h) {
      const uint64_t mid = l + (h - l) / 2;
      if (bin_of(mid) > b) h = mid;
      else l = mid + 1;
    }
    return l;
  };
  const uint64_t lo2 = b0 == 0 ? lo_bits : first_with_bin_above(b0 - 1);
  const uint64_t hi2 = first_with_bin_above(b1) - 1;
  const WindowPass w2 = reduced ? D::distance_window_reduced(a, lo2, hi2) : D::distance_window(a, lo2, hi2);
  STD_TORCH_CHECK(w2.below == w.below + before && w2.inside == within,
                  "fastcka median: the two window passes disagree");
  *out = window_entries<D>(a, w2, D::host_norms(a), n, n + 2 * w2.below, k, want_next);
  return true;
}

// The window try: fills *out and returns true when every wanted rank (k, and k+1 if want_next) lies in the window.
template <class D>
bool select_by_window(const ScaledRows& a, int64_t k, bool want_next, int64_t method, std::pair<double, double>* out) {
  const int64_t n = a.xs.size(0), pairs = n * (n - 1) / 2, k_last = k + (want_next ? 1 : 0);
  if (pairs < 1) {  // one row: its single entry is the diagonal zero
    *out = {0.0, 0.0};
    return true;
  }
  if (method == kMedianAuto && pairs < kWindowMinPairs) return false;
  // sample size: the window's undecided pairs (~6·pairs/√m of them, each a p-term dot) against the sample's exact
  // distances (m of them, each ~2× a dot's cost) balance near m = (1.5·pairs)^(2/3); and at least enough that the
  // bracket's expected content fits in half the collect buffer
  const double need = 2.0 * kWindowZ * static_cast<double>(pairs) / static_cast<double>(kCollectCapacity / 2);
  const int64_t balanced =
      std::min<int64_t>(int64_t(1) << 18, static_cast<int64_t>(std::cbrt(2.25 * double(pairs) * double(pairs))));
  const int64_t m = std::max({kWindowMinSample, balanced, static_cast<int64_t>(need * need) + 1});
  if (m > kWindowMaxSample && method == kMedianAuto && !HasWindowBinned<D>::value) return false;
  std::vector<double> sample = D::sample_distances(a, std::min(m, kWindowMaxSample), kWindowSeed);
  const int64_t ms = static_cast<int64_t>(sample.size());
  bool reduced = false;
  std::vector<double> in_order;  // the sample in pair order, for the reduced pass's estimate (selection reorders it)
  if constexpr (HasReducedWindow<D>::value) {
    reduced = method == kMedianWindowReduced ||
              ((method == kMedianAuto || method == kMedianTwoWindows) && D::reduced_pass_fast());
    if (method == kMedianAuto && reduced) in_order = sample;
  }
  // ranks of the entries → quantiles among the pairs (each pair is 2 entries, after the n diagonal zeros); the
  // test-only miss puts the bracket at a tenth of the rank, which misses unless the data are nearly all ties
  auto pair_quantile = [&](int64_t r) {
    const double q = static_cast<double>(std::max<int64_t>(0, (r - n) / 2)) / static_cast<double>(pairs);
    return std::min(1.0, method == kMedianWindowMiss ? 0.1 * q : q);
  };
  const double q_lo = pair_quantile(k), q_hi = pair_quantile(k_last);
  auto half = [&](double q) { return kWindowZ * std::sqrt(static_cast<double>(ms) * q * (1.0 - q)) + 2.0; };
  const int64_t r_lo = static_cast<int64_t>(std::floor(q_lo * ms - half(q_lo)));
  const int64_t r_hi = static_cast<int64_t>(std::ceil(q_hi * ms + half(q_hi)));
  auto sample_at = [&](int64_t r) {  // the r-th smallest sampled distance (two selections, no full sort)
    std::nth_element(sample.begin(), sample.begin() + r, sample.end());
    return sample[r];
  };
  const uint64_t lo_bits = r_lo <= 0 ? 0 : distance_bits(sample_at(r_lo));
  const uint64_t hi_bits = r_hi >= ms - 1 ? ~uint64_t(0) : distance_bits(sample_at(r_hi));
  const double expected = static_cast<double>(std::min(r_hi, ms) - std::max<int64_t>(r_lo, 0)) / ms * pairs;
  const bool too_full = method == kMedianAuto && expected > static_cast<double>(kCollectCapacity / 2);
  if ((too_full || method == kMedianTwoWindows) && lo_bits != hi_bits && hi_bits < distance_bits(INFINITY)) {
    if constexpr (HasWindowBinned<D>::value) {
      if (reduced)
        reduced = reduced_undecided_share<D>(a, in_order, kWindowSeed, lo_bits, hi_bits) <= kReducedMaxUndecided;
      return select_by_two_windows<D>(a, k, want_next, lo_bits, hi_bits, reduced, out);
    }
    return false;
  }
  WindowPass w;
  if constexpr (HasReducedWindow<D>::value) {
    if (reduced && method == kMedianAuto)
      reduced = reduced_undecided_share<D>(a, in_order, kWindowSeed, lo_bits, hi_bits) <= kReducedMaxUndecided;
    w = reduced ? D::distance_window_reduced(a, lo_bits, hi_bits) : D::distance_window(a, lo_bits, hi_bits);
  } else {
    w = D::distance_window(a, lo_bits, hi_bits);
  }
  const int64_t offset = n + 2 * w.below;  // entries below the window: the diagonal zeros and the pairs below, twice
  auto inside = [&](int64_t r) { return r < n || (r >= offset && r < offset + 2 * w.inside); };
  // a window of one tied value needs no values: its count alone places the ranks (heavily tied data overflow it)
  const bool one_value = lo_bits == hi_bits;
  if ((w.inside > kCollectCapacity && !one_value) || !inside(k) || !inside(k_last)) return false;
  if (one_value) {  // the diagonal zeros are the n smallest entries (distances are ≥ 0), then the tied value
    double v;
    std::memcpy(&v, &lo_bits, sizeof(v));
    *out = {k < n ? 0.0 : v, (want_next ? k + 1 : k) < n ? 0.0 : v};
    return true;
  }
  *out = window_entries<D>(a, w, D::host_norms(a), n, offset, k, want_next);
  return true;
}

inline void check_median_args(const Tensor& x, int64_t method, const char* op) {
  check_matrix(x, op, "x");
  STD_TORCH_CHECK(x.size(0) >= 1, op, ": x needs at least one row, got 0");
  STD_TORCH_CHECK(method >= kMedianAuto && method <= kMedianTwoWindows, op, ": method must be 0-5");
}

// numpy's median of the n² squared distances of the rows of x (diagonal zeros included), in x's units, on the host.
template <class D>
double median_value(const Tensor& x_, int64_t method) {
  const ScaledRows a = D::scale_rows(as_contiguous(x_));
  const int64_t n = x_.size(0), total = n * n;
  // numpy's median: the middle entry for an odd count, the mean of the two middle ones for an even count
  const int64_t k = (total - 1) / 2;
  const bool want_next = total % 2 == 0;
  std::pair<double, double> ranks;
  const bool found = method != kMedianRadix && select_by_window<D>(a, k, want_next, method, &ranks);
  STD_TORCH_CHECK(found || method == kMedianAuto || method == kMedianRadix || method == kMedianWindowMiss,
                  "fastcka::median_sq_dist: the window missed (method ", method, ")");
  if (!found) {
    std::map<std::pair<uint64_t, int>, std::vector<int64_t>> cache;
    ranks = select_squared_distances<D>(a, k, want_next, cache);
  }
  const auto [lo, hi] = ranks;
  const double s = D::host_scale(a);
  return 0.5 * (lo + hi) / (s * s);  // back to x's units (s is a power of two: exact)
}

// median_value as a float64 0-d tensor on x's device.
template <class D>
Tensor median_sq_dist(const Tensor& x, int64_t method) {
  check_median_args(x, method, "fastcka::median_sq_dist");
  return D::scalar_tensor(x, median_value<D>(x, method));
}

// The medians of several layers (float64 [L], entry i that of xs[i], the same bits as median_sq_dist), which are
// independent: D::for_each_median may run them at once (the CPU backend does, one thread each, at small n).
template <class D>
Tensor median_sq_dists(const std::vector<Tensor>& xs, int64_t method) {
  STD_TORCH_CHECK(!xs.empty(), "fastcka::median_sq_dists: xs is empty");
  int64_t n_max = 0;
  for (const Tensor& x : xs) {
    check_median_args(x, method, "fastcka::median_sq_dists");
    check_on_device_of(x, xs[0], "fastcka::median_sq_dists", "every layer");
    n_max = std::max(n_max, x.size(0));
  }
  std::vector<double> med(xs.size());
  D::for_each_median(static_cast<int64_t>(xs.size()), n_max,
                     [&](int64_t i) { med[i] = median_value<D>(xs[i], method); });
  return D::host_vector_tensor(xs[0], med);
}

}  // namespace fastcka
