// CPU kernels and registration of the fused kernel-HSIC pass and the exact distance median.
//
// Scheme: row blocks of B rows (B·n ≤ 4M entries per side, so memory stays O(n) plus two B×n blocks). Each block's
// dot products come from one BLAS GEMM (X'_I X'_{I0:}ᵀ: only the columns j ≥ I0 of the triangle), then a fused
// epilogue, parallel over column chunks, evaluates the kernels and accumulates: per tile the sums run in float64
// over values computed in the input precision; column sums go straight to their owner chunk's slots and row sums to
// per-chunk partials that are added in a fixed order, so results do not depend on the thread count.
#include <cmath>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <tuple>
#include <vector>

#include "cpu/primitives.h"
#include "kernel_hsic_impl.h"

namespace fastcka {
namespace {

constexpr int64_t kChunkCols = 256;

// Rows per block: at most 512 and 2²² entries per block, and at least 8 blocks, so the triangle's GEMMs waste at most
// a sixteenth of the full product below the diagonal (with 4 blocks, n = 2048, they computed 62.5 % of it; now 56 %).
int64_t block_rows(int64_t n) {
  return std::max<int64_t>(16, std::min<int64_t>({512, (int64_t(1) << 22) / std::max<int64_t>(n, 1), n / 8}));
}

inline double host_s(const ScaledRows& a) { return a.scale.const_data_ptr<double>()[0]; }

// A side's kernel from gamma (γ' in scaled units), with no shift yet.
inline KernelSpec spec_of(int64_t type, const Tensor& gamma, int side, double s) {
  KernelSpec k;
  k.type = static_cast<int>(type);
  k.gamma = gamma.const_data_ptr<double>()[side] / (s * s);
  k.shift = 0.0;
  return k;
}

// The shift c of a side's rbf kernel, voted by the seeded pair sample (tiled_hsic.h); 0 for the linear kernel.
inline double voted_shift(const KernelSpec& k, const ScaledRows& a) {
  if (k.type != kKernelRbf) return 0.0;
  const int64_t n = a.x.size(0), p = a.x.size(1);
  const double s = host_s(a);
  int64_t votes = 0;
  FASTCKA_DISPATCH_FLOATING(a.x.scalar_type(), "kernel_shift", [&] {
    for (int64_t v = 0; v < kShiftVotePairs; ++v)
      votes += sampled_shift_vote(a.x.const_data_ptr<scalar_t>(), n, p, s * s, k.gamma, v);
  });
  return kernel_shift_from_votes(votes, kShiftVotePairs);
}

// Calls f(I0, rows, c0, w, gx, gy) for each row block; gx = X'_I X'_{c0:}ᵀ (rows × w), c0 = I0 on the triangle.
template <class F>
void for_each_row_block(const Tensor& xs, const Tensor* ys, bool triangle, F&& f) {
  const int64_t n = xs.size(0), B = block_rows(n);
  // bfloat16 GEMMs run through oneDNN, which caches one primitive (and its buffers) per shape: the triangle's widths,
  // one per block, kept 1.2 GB alive at n = 10⁵. Widths rounded up to eighths of n leave ≤ 9 shapes, for ≤ 1/16 more
  // GEMM work on average (the callers skip the columns j ≤ i of a block anyway).
  const int64_t quantum = xs.scalar_type() == ScalarType::BFloat16 ? ((n + 7) / 8 + 255) / 256 * 256 : 1;
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    const int64_t rows = std::min(B, n - i0);
    const int64_t c0 = triangle ? std::max<int64_t>(0, n - (n - i0 + quantum - 1) / quantum * quantum) : 0;
    const int64_t w = n - c0;
    const Tensor gx = mm(narrowed(xs, 0, i0, rows), transposed(narrowed(xs, 0, c0, w)));
    Tensor gy;
    if (ys) gy = mm(narrowed(*ys, 0, i0, rows), transposed(narrowed(*ys, 0, c0, w)));
    f(i0, rows, c0, w, gx, gy);
  }
}

// The per-pair p-term loops (median.h) compiled for AVX2 and AVX-512 too: the window's undecided pairs and the
// sampled and candidate pairs spend most of their time there.
template <typename T>
FASTCKA_CPU_CLONES double cpu_row_dot(const T* a, const T* b, int64_t p) {
  return row_dot(a, b, p);
}

template <typename T>
FASTCKA_CPU_CLONES double cpu_exact_sq_dist(const T* x, int64_t p, int64_t i, int64_t j, double s2) {
  return exact_sq_dist(x, p, i, j, s2);
}

// The rbf entries e^{−γ'd} − c of one row against len columns from its GEMM dots, in one branch-free loop the
// compiler vectorises (tiled_hsic.h: exp_minus); `open` marks where kernel_sq_dist's guard wants the exact distance.
template <typename T>
FASTCKA_CPU_CLONES void rbf_row(const T* g, const double* nj, double ni, double guard, double gamma, double shift,
                                   int64_t len, double* out, uint8_t* open) {
  for (int64_t j = 0; j < len; ++j) {
    const double raw = ni + nj[j] - 2.0 * static_cast<double>(g[j]), d = raw > 0.0 ? raw : 0.0;
    open[j] = guard * (ni + nj[j]) > d;
    out[j] = exp_minus(-gamma * d, shift);
  }
}

// One side's entries K − c (off the diagonal; the caller overwrites a diagonal slot) of row gi against columns
// gj0 … gj0 + len − 1: the vectorised loop, then the rare guarded pairs again from their exact distance.
template <typename T>
void row_entries(const KernelSpec& k, const DistanceRows<T>& r, const T* g, int64_t gi, int64_t gj0, int64_t len,
                 double* out, uint8_t* open) {
  if (k.type == kKernelLinear) {
    for (int64_t j = 0; j < len; ++j) out[j] = static_cast<double>(g[j]);
    return;
  }
  rbf_row(g, r.norms + gj0, r.norms[gi], r.guard, k.gamma, k.shift, len, out, open);
  for (int64_t j = 0; j < len; ++j)
    if (open[j] && gj0 + j != gi) out[j] = kernel_entry(k, 0.0, exact_sq_dist(r.x, r.p, gi, gj0 + j, r.s2), false);
}

// Σ k∘l, Σ k∘k, Σ l∘l, Σ k, Σ l over a row segment into sums[0..4], and k, l added to the column sums ck, cl: four
// lanes of partial sums in a fixed order (vectorised; the result does not depend on the thread count).
FASTCKA_CPU_CLONES void accumulate_row(const double* k, const double* l, int64_t len, double* ck, double* cl,
                                          double* sums) {
  double a[5][4] = {};
  int64_t j = 0;
  for (; j + 4 <= len; j += 4)
    for (int u = 0; u < 4; ++u) {
      const double kv = k[j + u], lv = l[j + u];
      a[0][u] += kv * lv;
      a[1][u] += kv * kv;
      a[2][u] += lv * lv;
      a[3][u] += kv;
      a[4][u] += lv;
      ck[j + u] += kv;
      cl[j + u] += lv;
    }
  for (; j < len; ++j) {
    const double kv = k[j], lv = l[j];
    a[0][0] += kv * lv;
    a[1][0] += kv * kv;
    a[2][0] += lv * lv;
    a[3][0] += kv;
    a[4][0] += lv;
    ck[j] += kv;
    cl[j] += lv;
  }
  for (int t = 0; t < 5; ++t) sums[t] = (a[t][0] + a[t][1]) + (a[t][2] + a[t][3]);
}

// The entry (shifted) of pair (gi, gj) of one side from its GEMM dot product.
template <typename T>
inline double entry_of(const KernelSpec& k, const DistanceRows<T>& r, double dot, int64_t gi, int64_t gj) {
  const bool diag = gi == gj;
  return kernel_entry(k, dot, k.type == kKernelRbf && !diag ? kernel_sq_dist(r, dot, gi, gj) : 0.0, diag);
}

// The rows rounded to bfloat16 (round to nearest even; float64 rows through float32), as a bf16 tensor.
inline Tensor bf16_rows(const Tensor& xs) {
  const int64_t n = xs.size(0), p = xs.size(1);
  Tensor out = empty_like_shape(xs, {n, p}, ScalarType::BFloat16);
  uint16_t* o = static_cast<uint16_t*>(out.mutable_data_ptr());
  FASTCKA_DISPATCH_FLOATING(xs.scalar_type(), "bf16_rows", [&] {
    const scalar_t* x = xs.const_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, n * p, 1 << 16, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) o[e] = bf16_bits(static_cast<float>(x[e]));
    });
  });
  return out;
}

// The window pass's error bound along a row (median.h): the full-precision pass has e = β(nᵢ + nⱼ) (t = r = null,
// out = 0); the reduced pass reduced_error_at with the per-row terms.
struct WindowBound {
  ReducedBound coef;
  const double* norms;
  const double* t;  // ‖ã‖ per row, or null
  const double* r;  // ‖ã − a‖ per row, or null
};

// One row's pairs against columns [0, len) of its GEMM block: returns how many lie wholly below [lo_d, hi_d] and marks
// in `open` those neither below nor above (undecided by this bound, or NaN). Branch-free and in doubles (they order
// like the bit patterns, being ≥ 0), so the compiler vectorises it; compiled for AVX-512 and AVX2 too and picked at
// load time where the CPU has them (the bits on which the answer depends never come from here: `open` pairs are
// decided by the caller).
template <typename G, bool kReduced>
FASTCKA_CPU_CLONES int64_t
classify_row(const G* g, int64_t len, const double* nj, const double* tj, const double* rj, double ni,
             ReducedRowTerms row, ReducedBound coef, double lo_d, double hi_d, uint8_t* open) {
  int64_t below = 0;
  for (int64_t j = 0; j < len; ++j) {
    double dot;
    if constexpr (std::is_same_v<G, uint16_t>) {
      const uint32_t u = static_cast<uint32_t>(g[j]) << 16;
      float v;
      std::memcpy(&v, &u, sizeof(v));
      dot = static_cast<double>(v);
    } else {
      dot = static_cast<double>(g[j]);
    }
    const double raw = ni + nj[j] - 2.0 * dot, f = raw > 0.0 ? raw : 0.0;
    double e = row.a + coef.beta * nj[j];
    if constexpr (kReduced) e += row.b * tj[j] + row.c * rj[j] + coef.out * std::fabs(dot);
    const double down = f - e, up = f + e, f_lo = down > 0.0 ? down : 0.0;
    const bool is_below = up < lo_d, is_above = f_lo > hi_d;
    below += is_below;
    open[j] = !(is_below || is_above);
  }
  return below;
}

// The window pass's loop over the triangle (pairs i < j), from row-block GEMMs of `rows` (elements G): classify_row
// sorts what the bound decides; decide(g, gi, gj, &d, &exact) returns −1 / 0 / +1 as pair_window does for the rest.
// Column chunks in parallel; below counted, inside pairs collected (value, and key gi·n + gj or −1 where exact) while
// they fit in kCollectCapacity.
// With `bins` (bins.count > 0) the inside pairs are not collected but counted per bin of [lo, hi] (median.h:
// window_bin), from d̂ where its error interval falls in one bin, else from exact_of(gi, gj): the first pass of the
// two-window median.
template <typename G, bool kReduced, class Decide, class Exact>
WindowPass window_pass(const Tensor& rows, int64_t n, const WindowBound& bound, uint64_t lo, uint64_t hi,
                       Decide&& decide, const WindowBins& bins, Exact&& exact_of) {
  WindowPass out;
  const bool binned = bins.count > 0;
  if (binned) out.hist.assign(bins.count, 0);
  std::mutex hist_lock;
  double lo_d, hi_d;
  std::memcpy(&lo_d, &lo, sizeof(lo_d));
  std::memcpy(&hi_d, &hi, sizeof(hi_d));
  if (hi >= distance_bits(INFINITY)) hi_d = INFINITY;  // ~0: everything is below the top
  const double* norms = bound.norms;
  for_each_row_block(rows, nullptr, true, [&](int64_t i0, int64_t nrows, int64_t c0, int64_t w, const Tensor& gxt,
                                              const Tensor&) {
    const G* gx = static_cast<const G*>(gxt.const_data_ptr());
    // chunks of kChunkCols columns: the rows j an undecided pair reads (decide) stay in L2 while the block's rows
    // i sweep them
    const int64_t chunks = (w + kChunkCols - 1) / kChunkCols, step = kChunkCols;
    std::vector<std::vector<double>> part(chunks);
    std::vector<std::vector<int64_t>> part_keys(chunks);
    std::vector<int64_t> below(chunks, 0);
    torch::stable::parallel_for(0, chunks, 1, [&](int64_t q0, int64_t q1) {
      std::vector<uint8_t> open(step);
      std::vector<int64_t> hist(binned ? bins.count : 0, 0);
      for (int64_t q = q0; q < q1; ++q) {
        int64_t nb = 0;
        for (int64_t i = 0; i < nrows; ++i) {
          const int64_t gi = i0 + i, j0 = std::max(q * step, gi + 1 - c0), j1 = std::min(w, (q + 1) * step);
          if (j0 >= j1) continue;
          const double ni = norms[gi];
          const ReducedRowTerms row = kReduced ? reduced_row_terms(bound.coef, ni, bound.t[gi], bound.r[gi])
                                               : ReducedRowTerms{bound.coef.beta * ni, 0.0, 0.0};
          const G* g = gx + i * w + j0;
          const int64_t cj = c0 + j0;
          nb += classify_row<G, kReduced>(g, j1 - j0, norms + cj, kReduced ? bound.t + cj : nullptr,
                                          kReduced ? bound.r + cj : nullptr, ni, row, bound.coef, lo_d, hi_d,
                                          open.data());
          const int64_t len = j1 - j0;
          for (int64_t jj = 0; jj < len; ++jj) {
            if (jj + 8 <= len) {  // eight flags at a time: most words are all zero (few pairs stay undecided)
              uint64_t word;
              std::memcpy(&word, open.data() + jj, sizeof(word));
              if (word == 0) {
                jj += 7;
                continue;
              }
            }
            if (!open[jj]) continue;
            double d = 0.0;
            bool exact = false;
            const int where = decide(g + jj, gi, cj + jj, &d, &exact);
            nb += where < 0;
            if (where == 0 && binned) {
              int64_t b = window_bin(d, bins.lo, bins.scale, bins.count);
              if (!exact) {
                const double e = bound.coef.beta * (ni + norms[cj + jj]);
                if (window_bin(d - e > 0.0 ? d - e : 0.0, bins.lo, bins.scale, bins.count) != b ||
                    window_bin(d + e, bins.lo, bins.scale, bins.count) != b)
                  b = window_bin(exact_of(gi, cj + jj), bins.lo, bins.scale, bins.count);
              }
              ++hist[b];
            } else if (where == 0) {
              part[q].push_back(d);
              part_keys[q].push_back(exact ? -1 : gi * n + cj + jj);
            }
          }
        }
        below[q] = nb;
      }
      if (binned) {  // integer counts: the order of these additions changes nothing
        std::lock_guard<std::mutex> guard(hist_lock);
        for (int64_t b = 0; b < bins.count; ++b) out.hist[b] += hist[b];
      }
    });
    for (int64_t q = 0; q < chunks; ++q) {
      out.below += below[q];
      out.inside += static_cast<int64_t>(part[q].size());
      if (out.inside <= kCollectCapacity) {
        out.values.insert(out.values.end(), part[q].begin(), part[q].end());
        out.keys.insert(out.keys.end(), part_keys[q].begin(), part_keys[q].end());
      }
    }
  });
  if (binned)
    for (int64_t c : out.hist) out.inside += c;
  if (out.inside > kCollectCapacity) {
    std::vector<double>().swap(out.values);
    std::vector<int64_t>().swap(out.keys);
  }
  return out;
}

// column_medians<D>'s shift (the same rows, the same lower median, NaN ordered last as aten::sort does) by one
// selection per column instead of a sort: the sort was ~8 % of an exact-median RBF CKA at n = 2048.
template <typename T>
std::vector<double> cpu_column_medians(const T* x, int64_t n, int64_t p) {
  const int64_t rows = std::min(n, kShiftRows), mid = (rows - 1) / 2;
  std::vector<T> cols(static_cast<size_t>(rows * p));  // column-major copy of the subset
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + (n > kShiftRows ? shift_row(r, n) : r) * p;
    for (int64_t c = 0; c < p; ++c) cols[c * rows + r] = row[c];
  }
  auto nan_last = [](T a, T b) { return a < b || (b != b && a == a); };
  std::vector<double> out(p);
  for (int64_t c = 0; c < p; ++c) {
    T* col = cols.data() + c * rows;
    std::nth_element(col, col + mid, col + rows, nan_last);
    out[c] = static_cast<double>(col[mid]);
  }
  return out;
}

}  // namespace

struct CpuKernelHsic : CpuBackend {
  static Tensor shift_row_indices(const Tensor& x) {
    Tensor idx = torch::stable::empty({kShiftRows}, ScalarType::Long);
    int64_t* ip = idx.mutable_data_ptr<int64_t>();
    for (int64_t r = 0; r < kShiftRows; ++r) ip[r] = shift_row(r, x.size(0));
    return idx;
  }

  static ScaledRows scale_rows(const Tensor& x) {
    const int64_t n = x.size(0), p = x.size(1);
    ScaledRows a;
    a.xs = empty_like_shape(x, {n, p}, x.scalar_type());
    a.scale = empty_like_shape(x, {1}, ScalarType::Double);
    FASTCKA_DISPATCH_FLOATING(x.scalar_type(), "scale_rows", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const std::vector<double> shift = cpu_column_medians(xp, n, p);
      scalar_t* o = a.xs.mutable_data_ptr<scalar_t>();
      const double s = pow2_normaliser(cpu::subtract_means(xp, shift, n, p, o));
      cpu::scale_inplace(o, n * p, s);
      a.scale.mutable_data_ptr<double>()[0] = s;
    });
    a.norms = cpu::row_sq(a.xs);
    a.x = x;
    return a;
  }

  static double host_scale(const ScaledRows& a) { return host_s(a); }

  static Tensor scalar_tensor(const Tensor& like, double v) {
    Tensor t = empty_like_shape(like, {}, ScalarType::Double);
    t.mutable_data_ptr<double>()[0] = v;
    return t;
  }

  static Tensor host_vector_tensor(const Tensor& like, const std::vector<double>& v) {
    Tensor t = empty_like_shape(like, {static_cast<int64_t>(v.size())}, ScalarType::Double);
    std::copy(v.begin(), v.end(), t.mutable_data_ptr<double>());
    return t;
  }

  // Several layers' medians at once, one thread each (their own parallel loops and GEMMs then run on that thread):
  // at n = 2048, p = 256 a median took 19.6 ms on one thread and 14.6 ms on two (loaded machine), so two medians side
  // by side beat two in a row. Above n = 2¹⁴ one median uses both threads well, and two at once would hold two
  // medians' scratch (143 MB each at n = 10⁵): there they run in turn.
  template <class F>
  static void for_each_median(int64_t count, int64_t n_max, F&& f) {
    if (count < 2 || n_max > (int64_t(1) << 14)) {
      for (int64_t i = 0; i < count; ++i) f(i);
      return;
    }
    torch::stable::parallel_for(0, count, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) f(i);
    });
  }

  static void kernel_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out) {
    kernel_hsic_combine(m.const_data_ptr<double>(), n, unbiased, noise, out.mutable_data_ptr<double>());
  }

  static PassOutput hsic_pass(const ScaledRows& a, const ScaledRows& b, int64_t kx, int64_t ky, const Tensor& gamma,
                              Tensor* entries_k = nullptr, Tensor* entries_l = nullptr) {
    const int64_t n = a.xs.size(0);
    PassOutput o = zeroed_pass_output(a.xs, n);
    double* ek = entries_k ? entries_k->mutable_data_ptr<double>() : nullptr;
    double* el = entries_l ? entries_l->mutable_data_ptr<double>() : nullptr;
    const double sx = host_s(a), sy = host_s(b);
    KernelSpec spx = spec_of(kx, gamma, 0, sx), spy = spec_of(ky, gamma, 1, sy);
    spx.shift = voted_shift(spx, a);
    spy.shift = voted_shift(spy, b);
    double* m = o.m.mutable_data_ptr<double>();
    m[kmKappaX] = kx == kKernelLinear ? 1.0 / (sx * sx) : 1.0;
    m[kmKappaY] = ky == kKernelLinear ? 1.0 / (sy * sy) : 1.0;
    m[kmShiftX] = spx.shift;
    m[kmShiftY] = spy.shift;
    double *rk = o.rk.mutable_data_ptr<double>(), *rl = o.rl.mutable_data_ptr<double>();
    double *dk = o.dk.mutable_data_ptr<double>(), *dl = o.dl.mutable_data_ptr<double>();
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "kernel_hsic_pass", [&] {
      const DistanceRows<scalar_t> ra = distance_rows<scalar_t>(a, sx * sx), rb = distance_rows<scalar_t>(b, sy * sy);
      for_each_row_block(a.xs, &b.xs, true, [&](int64_t i0, int64_t rows, int64_t c0, int64_t w, const Tensor& gxt,
                                                const Tensor& gyt) {
        const scalar_t *gx = gxt.const_data_ptr<scalar_t>(), *gy = gyt.const_data_ptr<scalar_t>();
        const int64_t chunks = (w + kChunkCols - 1) / kChunkCols, stride = 3 + 2 * rows;
        std::vector<double> part(chunks * stride, 0.0);
        torch::stable::parallel_for(0, chunks, 1, [&](int64_t q0, int64_t q1) {
          double kb[kChunkCols], lb[kChunkCols], sums[5];
          uint8_t open[kChunkCols];
          for (int64_t q = q0; q < q1; ++q) {
            double* pp = part.data() + q * stride;
            const int64_t j0 = q * kChunkCols, j1 = std::min(w, j0 + kChunkCols);
            for (int64_t i = 0; i < rows; ++i) {
              const int64_t gi = i0 + i, js = std::max(j0, gi - c0), len = j1 - js;
              pp[3 + 2 * i] = pp[4 + 2 * i] = 0.0;
              if (len <= 0) continue;
              row_entries(spx, ra, gx + i * w + js, gi, c0 + js, len, kb, open);
              row_entries(spy, rb, gy + i * w + js, gi, c0 + js, len, lb, open);
              if (c0 + js == gi) {  // the diagonal is kept apart from every sum (tiled_hsic.h)
                dk[gi] = kernel_entry(spx, gx[i * w + js], 0.0, true);
                dl[gi] = kernel_entry(spy, gy[i * w + js], 0.0, true);
                kb[0] = lb[0] = 0.0;
              }
              if (ek) {  // small n: the entries themselves (u_centred.h), both triangles; each pair has one writer
                for (int64_t t = 0; t < len; ++t) {
                  const int64_t gj = c0 + js + t;
                  ek[gi * n + gj] = ek[gj * n + gi] = kb[t];
                  el[gi * n + gj] = el[gj * n + gi] = lb[t];
                }
              }
              // columns c0 + js… are owned by this chunk: their sums take the entries directly
              accumulate_row(kb, lb, len, rk + c0 + js, rl + c0 + js, sums);
              pp[0] += 2.0 * sums[0];  // entries j > i stand for (i, j) and (j, i)
              pp[1] += 2.0 * sums[1];
              pp[2] += 2.0 * sums[2];
              pp[3 + 2 * i] = sums[3];
              pp[4 + 2 * i] = sums[4];
            }
          }
        });
        for (int64_t q = 0; q < chunks; ++q) {
          const double* pp = part.data() + q * stride;
          m[kmKL] += pp[0];
          m[kmKK] += pp[1];
          m[kmLL] += pp[2];
          for (int64_t i = 0; i < rows; ++i) {
            rk[i0 + i] += pp[3 + 2 * i];
            rl[i0 + i] += pp[4 + 2 * i];
          }
        }
      });
    });
    return o;
  }

  // One side's gradient: W from the shared coefficients, then scale·(W X' − [rbf] diag(W1) X').
  static std::tuple<Tensor, Tensor> hsic_grad_pass(const ScaledRows& a, const ScaledRows& b, int64_t kx, int64_t ky,
                                                   const Tensor& gamma, const PassOutput& o, const Tensor& grad,
                                                   bool unbiased) {
    const int64_t n = a.xs.size(0);
    const double* m = o.m.const_data_ptr<double>();
    const double* g = grad.const_data_ptr<double>();
    const double sx = host_s(a), sy = host_s(b), kapx = m[kmKappaX], kapy = m[kmKappaY];
    KernelSpec spx = spec_of(kx, gamma, 0, sx), spy = spec_of(ky, gamma, 1, sy);
    spx.shift = m[kmShiftX];  // the forward pass's vote
    spy.shift = m[kmShiftY];
    const double *rk = o.rk.const_data_ptr<double>(), *rl = o.rl.const_data_ptr<double>();
    const double *dk = o.dk.const_data_ptr<double>(), *dl = o.dl.const_data_ptr<double>();
    // ρ (true units) per side and the sums S (off-diagonal), T the coefficients need.
    std::vector<double> rho_k(n), rho_l(n);
    double s_k = 0, s_l = 0, t_k = 0, t_l = 0;
    for (int64_t i = 0; i < n; ++i) {
      s_k += rk[i] * kapx;
      s_l += rl[i] * kapy;
      t_k += dk[i] * kapx;
      t_l += dl[i] * kapy;
      rho_k[i] = kernel_grad_rho(rk[i], dk[i], unbiased) * kapx;
      rho_l[i] = kernel_grad_rho(rl[i], dl[i], unbiased) * kapy;
    }
    const KernelGradCoef cx = kernel_grad_coef(g[0], g[1], kapx, kapy, s_k, s_l, t_k, t_l, n, unbiased);
    const KernelGradCoef cy = kernel_grad_coef(g[0], g[2], kapy, kapx, s_l, s_k, t_l, t_k, n, unbiased);
    std::vector<double> ux(n), uy(n);
    for (int64_t i = 0; i < n; ++i) {
      ux[i] = cx.u_other * rho_l[i] + cx.u_own * rho_k[i];
      uy[i] = cy.u_other * rho_k[i] + cy.u_own * rho_l[i];
    }
    const double scale_x = kernel_grad_scale(static_cast<int>(kx), spx.gamma, kapx, sx);
    const double scale_y = kernel_grad_scale(static_cast<int>(ky), spy.gamma, kapy, sy);
    const int64_t p = a.xs.size(1), q = b.xs.size(1);
    Tensor dx = empty_like_shape(a.xs, {n, p}, a.xs.scalar_type());
    Tensor dy = empty_like_shape(b.xs, {n, q}, b.xs.scalar_type());
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "kernel_hsic_grad", [&] {
      const DistanceRows<scalar_t> ra = distance_rows<scalar_t>(a, sx * sx), rb = distance_rows<scalar_t>(b, sy * sy);
      const scalar_t *xs = a.xs.const_data_ptr<scalar_t>(), *ys = b.xs.const_data_ptr<scalar_t>();
      scalar_t *ox = dx.mutable_data_ptr<scalar_t>(), *oy = dy.mutable_data_ptr<scalar_t>();
      for_each_row_block(a.xs, &b.xs, false, [&](int64_t i0, int64_t rows, int64_t, int64_t w, const Tensor& gxt,
                                                 const Tensor& gyt) {
        const scalar_t *gx = gxt.const_data_ptr<scalar_t>(), *gy = gyt.const_data_ptr<scalar_t>();
        Tensor wx = empty_like_shape(a.xs, {rows, w}, a.xs.scalar_type());
        Tensor wy = empty_like_shape(a.xs, {rows, w}, a.xs.scalar_type());
        std::vector<double> sum_wx(rows), sum_wy(rows);
        scalar_t *wxp = wx.mutable_data_ptr<scalar_t>(), *wyp = wy.mutable_data_ptr<scalar_t>();
        torch::stable::parallel_for(0, rows, 4, [&](int64_t r0, int64_t r1) {
          for (int64_t i = r0; i < r1; ++i) {
            const int64_t gi = i0 + i;
            double sx_ = 0, sy_ = 0;
            for (int64_t j = 0; j < w; ++j) {
              const bool diag = gi == j;
              const double k = entry_of(spx, ra, gx[i * w + j], gi, j);
              const double l = entry_of(spy, rb, gy[i * w + j], gi, j);
              const double vx = kernel_grad_weight(cx, static_cast<int>(kx), spx.shift, k, l, ux[gi], ux[j], diag);
              const double vy = kernel_grad_weight(cy, static_cast<int>(ky), spy.shift, l, k, uy[gi], uy[j], diag);
              wxp[i * w + j] = static_cast<scalar_t>(vx);
              wyp[i * w + j] = static_cast<scalar_t>(vy);
              sx_ += vx;
              sy_ += vy;
            }
            sum_wx[i] = sx_;
            sum_wy[i] = sy_;
          }
        });
        const Tensor px = mm(wx, a.xs), py = mm(wy, b.xs);
        const scalar_t *pxp = px.const_data_ptr<scalar_t>(), *pyp = py.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t gi = i0 + i;
          const double cxr = kx == kKernelRbf ? sum_wx[i] : 0.0, cyr = ky == kKernelRbf ? sum_wy[i] : 0.0;
          for (int64_t c = 0; c < p; ++c)
            ox[gi * p + c] = static_cast<scalar_t>(scale_x * (pxp[i * p + c] - cxr * xs[gi * p + c]));
          for (int64_t c = 0; c < q; ++c)
            oy[gi * q + c] = static_cast<scalar_t>(scale_y * (pyp[i * q + c] - cyr * ys[gi * q + c]));
        }
      });
    });
    return std::make_tuple(dx, dy);
  }

  // Histogram of the next 16-bit digit over the pairs i < j whose distance carries the prefix.
  static std::vector<int64_t> distance_histogram(const ScaledRows& a, uint64_t prefix, int bits) {
    std::vector<int64_t> total(kDigitBins, 0);
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "distance_histogram", [&] {
      const double s = host_s(a);
      const DistanceRows<scalar_t> ra = distance_rows<scalar_t>(a, s * s);
      for_each_row_block(a.xs, nullptr, true, [&](int64_t i0, int64_t rows, int64_t c0, int64_t w, const Tensor& gxt,
                                                 const Tensor&) {
        const scalar_t* gx = gxt.const_data_ptr<scalar_t>();
        const int64_t chunks = std::min<int64_t>(8, (w + kChunkCols - 1) / kChunkCols), step = (w + chunks - 1) / chunks;
        std::vector<int64_t> part(chunks * kDigitBins, 0);
        torch::stable::parallel_for(0, chunks, 1, [&](int64_t q0, int64_t q1) {
          for (int64_t q = q0; q < q1; ++q) {
            int64_t* h = part.data() + q * kDigitBins;
            for (int64_t i = 0; i < rows; ++i)
              for (int64_t jj = std::max(q * step, i0 + i + 1 - c0); jj < std::min(w, (q + 1) * step); ++jj) {
                const int64_t digit = pair_digit(ra, gx[i * w + jj], i0 + i, c0 + jj, prefix, bits);
                if (digit >= 0) ++h[digit];
              }
          }
        });
        for (int64_t q = 0; q < chunks; ++q)
          for (int64_t d = 0; d < kDigitBins; ++d) total[d] += part[q * kDigitBins + d];
      });
    });
    return total;
  }

  // The pairs i < j below the window [lo, hi] (counted) and inside it (counted, and collected while they fit);
  // column chunks in parallel as in the histogram. Full precision: the GEMM in the input precision, pair_window.
  static WindowPass distance_window(const ScaledRows& a, uint64_t lo, uint64_t hi) {
    return window_full(a, lo, hi, WindowBins{});
  }

  static WindowPass distance_window_reduced(const ScaledRows& a, uint64_t lo, uint64_t hi) {
    return window_reduced(a, lo, hi, WindowBins{});
  }

  // The binned window (the first pass of the two-window median): below counted, inside counted per bin.
  static WindowPass distance_window_binned(const ScaledRows& a, uint64_t lo, uint64_t hi, bool reduced,
                                           const WindowBins& bins) {
    return reduced ? window_reduced(a, lo, hi, bins) : window_full(a, lo, hi, bins);
  }

  static WindowPass window_full(const ScaledRows& a, uint64_t lo, uint64_t hi, const WindowBins& bins) {
    WindowPass out;
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "distance_window", [&] {
      const double s = host_s(a);
      const DistanceRows<scalar_t> ra = distance_rows<scalar_t>(a, s * s);
      const WindowBound bound{ReducedBound{ra.beta, 0.0, 0.0, 0.0}, ra.norms, nullptr, nullptr};
      out = window_pass<scalar_t, false>(
          a.xs, a.xs.size(0), bound, lo, hi,
          [&](const scalar_t* g, int64_t gi, int64_t gj, double* d, bool* exact) {
            return pair_window(ra, *g, gi, gj, lo, hi, d, exact);
          },
          bins, [&](int64_t gi, int64_t gj) { return cpu_exact_sq_dist(ra.x, ra.p, gi, gj, ra.s2); });
    });
    return out;
  }

  // The CPU has bf16 dot instructions (AVX512-BF16 or AMX): torch's bf16 GEMM then runs at 3–5× float32's speed.
  // Elsewhere it is emulated and no faster, and auto keeps the full-precision pass.
  static bool reduced_pass_fast() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    static const bool fast = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
    return fast;
#else
    return false;
#endif
  }

  // The window pass from a bfloat16 GEMM (median.h: the reduced-precision window pass and its bound): pairs whose
  // error interval lies wholly on one side are counted; the rest take pair_window with the dot recomputed in the
  // rows' precision (row_dot), which decides nearly all of them and recomputes the others exactly.
  static WindowPass window_reduced(const ScaledRows& a, uint64_t lo, uint64_t hi, const WindowBins& bins) {
    const int64_t n = a.xs.size(0), p = a.xs.size(1);
    const Tensor xb = bf16_rows(a.xs);
    const uint16_t* xbp = static_cast<const uint16_t*>(xb.const_data_ptr());
    const double* norms = a.norms.const_data_ptr<double>();
    std::vector<double> t(n), r(n);  // ‖ã‖ and ‖ã − a‖ per row, float64
    WindowPass out;
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "distance_window_reduced", [&] {
      const scalar_t* xs = a.xs.const_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          double tt = 0.0, rr = 0.0;
          for (int64_t c = 0; c < p; ++c) {
            const double v = bf16_value(xbp[i * p + c]), dv = v - static_cast<double>(xs[i * p + c]);
            tt += v * v;
            rr += dv * dv;
          }
          t[i] = std::sqrt(tt);
          r[i] = std::sqrt(rr);
        }
      });
      const double s = host_s(a);
      const DistanceRows<scalar_t> ra = distance_rows<scalar_t>(a, s * s);
      const WindowBound bound{reduced_bound(p, ra.beta), norms, t.data(), r.data()};
      out = window_pass<uint16_t, true>(
          xb, n, bound, lo, hi,
          [&](const uint16_t*, int64_t gi, int64_t gj, double* d, bool* exact) {
            return pair_window(ra, cpu_row_dot(xs + gi * p, xs + gj * p, p), gi, gj, lo, hi, d, exact);
          },
          bins, [&](int64_t gi, int64_t gj) { return cpu_exact_sq_dist(ra.x, p, gi, gj, ra.s2); });
    });
    return out;
  }

  static std::vector<double> host_norms(const ScaledRows& a) {
    const double* p = a.norms.const_data_ptr<double>();
    return std::vector<double>(p, p + a.norms.numel());
  }

  // The exact distances of the pairs keys[t] = i·n + j.
  static std::vector<double> exact_distances(const ScaledRows& a, const std::vector<int64_t>& keys) {
    const int64_t n = a.x.size(0), p = a.x.size(1), m = static_cast<int64_t>(keys.size());
    const double s = host_s(a);
    std::vector<double> out(m);
    FASTCKA_DISPATCH_FLOATING(a.x.scalar_type(), "exact_distances", [&] {
      const scalar_t* x = a.x.const_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, m, 1024, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) out[t] = cpu_exact_sq_dist(x, p, keys[t] / n, keys[t] % n, s * s);
      });
    });
    return out;
  }

  // The exact distances of the seeded sample of pairs.
  static std::vector<double> sample_distances(const ScaledRows& a, int64_t m, uint64_t seed) {
    const int64_t n = a.x.size(0), p = a.x.size(1);
    const double s = host_s(a);
    std::vector<double> out(m);
    FASTCKA_DISPATCH_FLOATING(a.x.scalar_type(), "sample_distances", [&] {
      const scalar_t* x = a.x.const_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, m, 4096, [&](int64_t s0, int64_t s1) {
        for (int64_t t = s0; t < s1; ++t) {
          int64_t i, j;
          sampled_pair(seed, t, n, &i, &j);
          out[t] = cpu_exact_sq_dist(x, p, i, j, s * s);
        }
      });
    });
    return out;
  }
};

Tensor kernel_hsic_cpu(const Tensor& x, const Tensor& y, const Tensor& gamma, int64_t kx, int64_t ky, bool unbiased) {
  return kernel_hsic<CpuKernelHsic>(x, y, gamma, kx, ky, unbiased);
}

std::tuple<Tensor, Tensor> kernel_hsic_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& y,
                                                    const Tensor& gamma, int64_t kx, int64_t ky, bool unbiased) {
  return kernel_hsic_backward<CpuKernelHsic>(grad, x, y, gamma, kx, ky, unbiased);
}

STABLE_TORCH_LIBRARY_IMPL(fastcka, CPU, m) {
  m.impl("kernel_hsic", TORCH_BOX(&kernel_hsic_cpu));
  m.impl("_kernel_hsic_backward", TORCH_BOX(&kernel_hsic_backward_cpu));
  m.impl("median_sq_dist", TORCH_BOX(&median_sq_dist<CpuKernelHsic>));
  m.impl("median_sq_dists", TORCH_BOX(&median_sq_dists<CpuKernelHsic>));
}

}  // namespace fastcka
