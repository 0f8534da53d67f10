// CUDA kernels and registration of the fused kernel-HSIC pass and the exact distance median.
//
// Scheme. The kernel-HSIC forward and backward passes walk row blocks, as the CPU pass does: each block's dot
// products come from one cuBLAS GEMM per side (blas.cuh: the input precision, never TF32), then a fused epilogue
// kernel evaluates the kernels with the header math the CPU pass uses and reduces in float64 without atomics; the
// gradient multiplies its W blocks by X' in a second GEMM (details above block_rows). The median's distance passes
// (radix histogram, window) walk the same row blocks of the triangle's GEMM dots.
#include <vector>

#include "cuda/blas.cuh"
#include "cuda/primitives.cuh"
#include "kernel_hsic_impl.h"

namespace fastcka {
namespace cuda {

// A side's kernel: γ' from gamma and the shift c the vote kernel wrote into the moments (slot kmShiftX/Y).
__device__ inline KernelSpec device_spec(int type, const double* gamma, int side, const double* scale,
                                         const double* m) {
  KernelSpec k;
  k.type = type;
  k.gamma = gamma[side] / (scale[0] * scale[0]);
  k.shift = m[side == 0 ? kmShiftX : kmShiftY];
  return k;
}

// The distance view with s² read on the device.
template <typename T>
__device__ inline DistanceRows<T> device_rows(DistanceRows<T> r, const double* scale) {
  r.s2 = scale[0] * scale[0];
  return r;
}

// The shift vote of one side (tiled_hsic.h), one block: m[slot] = c, and the side's κ.
template <typename T>
__global__ void shift_vote_kernel(const T* x, int64_t n, int64_t p, int type, const double* gamma, int side,
                                  const double* scale, double* m) {
  const double s2 = scale[0] * scale[0], g = gamma[side] / s2;
  double votes = 0.0;
  if (type == kKernelRbf)
    for (int64_t v = threadIdx.x; v < kShiftVotePairs; v += blockDim.x) votes += sampled_shift_vote(x, n, p, s2, g, v);
  votes = block_sum(votes);
  if (threadIdx.x == 0) {
    m[side == 0 ? kmShiftX : kmShiftY] =
        type == kKernelRbf ? kernel_shift_from_votes(static_cast<int64_t>(votes), kShiftVotePairs) : 0.0;
    m[side == 0 ? kmKappaX : kmKappaY] = type == kKernelLinear ? 1.0 / s2 : 1.0;
  }
}

// The shifted entry of pair (gi, gj) of one side from its GEMM dot product.
template <typename T>
__device__ inline double device_entry(const KernelSpec& k, const DistanceRows<T>& r, T dot, int64_t gi, int64_t gj) {
  const bool diag = gi == gj;
  const double d = static_cast<double>(dot);
  return kernel_entry(k, d, k.type == kKernelRbf && !diag ? kernel_sq_dist(r, d, gi, gj) : 0.0, diag);
}

template <typename T>
__global__ void shift_normalise_kernel(const T* x, const T* shift, int64_t n, int64_t p, T* out,
                                       unsigned long long* maxabs_bits) {
  double m = 0.0;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n * p;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T v = static_cast<T>(static_cast<double>(x[k]) - static_cast<double>(shift[k % p]));
    out[k] = v;
    m = fmax(m, fabs(static_cast<double>(v)));
  }
  m = block_max(m);
  if (threadIdx.x == 0) atomicMax(maxabs_bits, static_cast<unsigned long long>(__double_as_longlong(m)));
}

// --- the row-block passes: GEMM blocks (blas.cuh), then fused epilogues ---------------------------------------------
// A pass walks row blocks of B rows on the host (no device value is read back). Block I = rows [i0, i0 + rows): its
// dots X'_I X'_Jᵀ come from one cuBLAS GEMM per side into a rows×w scratch (forward: the columns j ≥ i0 of the
// triangle, w = n − i0; gradient: all n columns), in the input precision (float32 input → IEEE float32 GEMM, float64
// → float64; TF32 never, whatever the global setting: blas.cuh). An epilogue kernel then evaluates the kernel entries
// from the dots with the header math the CPU pass uses (tiled_hsic.h, median.h: kernel_entry, kernel_sq_dist with
// its guard recompute, kernel_grad_weight).
// Scratch: B·n entries per side with B = min(n, max(kMinBlockRows, kBlockEntries / n)), i.e. at most 2²⁴ entries (64
// MB per side at float32, 128 MB at float64) while n ≤ 2¹⁸ (B ≥ 64); beyond that B = 64 rows: 64·n entries per side
// (n = 10⁶: 256 MB per side at float32). The gradient writes its W blocks over the dots in place, so it needs no
// more; the median's passes use one side's. The forward's float64 partials add 2n·⌈B/kEpiRows⌉ + 2B·⌈n/kEpiCols⌉
// entries (n = 65,536, B = 256: 9 MB).
// Determinism: an epilogue block (kEpiRows rows × kEpiCols columns, one thread per column) reduces its rows with warp
// shuffles and its columns in-thread, in float64, and writes its partials to slots of its own; a finishing kernel adds
// the slots in a fixed order with one writer per output. No atomics: results do not depend on block scheduling.
#ifdef FASTCKA_CUDA_EMU
// The emulation's tests use n ≤ 300: small blocks and tiles, so that they cover several row blocks (a partial last
// one, n < B, n = B), several epilogue tiles per block in both directions, and more than one warp per tile.
constexpr int64_t kBlockEntries = 1024, kMinBlockRows = 8;
constexpr int kEpiCols = 64, kEpiRows = 4;
#else
constexpr int64_t kBlockEntries = int64_t(1) << 24, kMinBlockRows = 64;
constexpr int kEpiCols = 256, kEpiRows = 32;
#endif
static_assert(kEpiCols % 32 == 0 && kEpiRows <= kEpiCols, "epilogue tiles are whole warps wide");

inline int64_t block_rows(int64_t n) {
  return std::min(n, std::max(kMinBlockRows, kBlockEntries / std::max<int64_t>(n, 1)));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Σ over the 32 lanes (every lane gets the same total: the butterfly adds the same two values on both sides).
__device__ inline double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// A tile's per-row partials (two sums per row, one entry per warp: row_part[row][warp][0..1]) added in a fixed
// order into rowpart[(r0 + row, tile)] (the forward's K and L row sums, the gradient's W row sums).
__device__ inline void store_row_partials(const double (*row_part)[kEpiCols / 32][2], int64_t r0, int64_t rows,
                                          double* rowpart) {
  if (threadIdx.x < kEpiRows && r0 + threadIdx.x < rows) {
    double a = 0.0, b = 0.0;
    for (int v = 0; v < kEpiCols / 32; ++v) {
      a += row_part[threadIdx.x][v][0];
      b += row_part[threadIdx.x][v][1];
    }
    double* rp = rowpart + 2 * ((r0 + threadIdx.x) * gridDim.x + blockIdx.x);
    rp[0] = a;
    rp[1] = b;
  }
}

// One tile of the forward block: the shifted entries K', L' of the pairs (gi, gj), gj ≥ gi, from the dots gx, gy
// (rows × w, column jj is gj = i0 + jj). Diagonal entries go to dk, dl; off-diagonal ones to the tile's Σ K∘L, Σ K∘K,
// Σ L∘L (tilepart), its column sums (colpart[tile row][jj]) and its row sums (rowpart[row][tile column]).
template <typename T>
__global__ void __launch_bounds__(kEpiCols)
    hsic_block_kernel(const T* gx, const T* gy, DistanceRows<T> rx, DistanceRows<T> ry, int64_t i0, int64_t rows,
                      int64_t w, int kx, int ky, const double* gamma, const double* scale_x, const double* scale_y,
                      const double* m, double* dk, double* dl, double* colpart, double* rowpart, double* tilepart,
                      double* ek, double* el) {
  const int64_t jj = blockIdx.x * static_cast<int64_t>(kEpiCols) + threadIdx.x, gj = i0 + jj;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kEpiRows);
  const KernelSpec spx = device_spec(kx, gamma, 0, scale_x, m), spy = device_spec(ky, gamma, 1, scale_y, m);
  rx = device_rows(rx, scale_x);
  ry = device_rows(ry, scale_y);
  __shared__ double row_part[kEpiRows][kEpiCols / 32][2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double skl = 0.0, skk = 0.0, sll = 0.0, col_k = 0.0, col_l = 0.0;
  for (int r = 0; r < kEpiRows; ++r) {  // the same trip count in every thread: the shuffles need all 32 lanes
    const int64_t i = r0 + r, gi = i0 + i;
    double k = 0.0, l = 0.0;
    if (i < rows && jj < w && gj >= gi) {
      k = device_entry(spx, rx, gx[i * w + jj], gi, gj);
      l = device_entry(spy, ry, gy[i * w + jj], gi, gj);
      if (gj == gi) {  // the diagonal is kept apart from every sum (tiled_hsic.h)
        dk[gi] = k;
        dl[gi] = l;
        k = l = 0.0;
      }
      if (ek) {  // small n: the entries themselves (u_centred.h), both triangles; each pair has one writer
        const int64_t n = i0 + w;
        ek[gi * n + gj] = ek[gj * n + gi] = k;
        el[gi * n + gj] = el[gj * n + gi] = l;
      }
      skl += k * l;
      skk += k * k;
      sll += l * l;
      col_k += k;
      col_l += l;
    }
    k = warp_sum(k);
    l = warp_sum(l);
    if (lane == 0) {
      row_part[r][warp][0] = k;
      row_part[r][warp][1] = l;
    }
  }
  if (jj < w) {
    colpart[2 * (blockIdx.y * w + jj)] = col_k;
    colpart[2 * (blockIdx.y * w + jj) + 1] = col_l;
  }
  skl = block_sum(skl);  // its barriers also publish row_part
  skk = block_sum(skk);
  sll = block_sum(sll);
  if (threadIdx.x == 0) {
    double* t = tilepart + 3 * (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x);
    t[0] = skl;
    t[1] = skk;
    t[2] = sll;
  }
  store_row_partials(row_part, r0, rows, rowpart);
}

// *a += Σₜ part[t·stride], *b += Σₜ part[t·stride + 1] over t < count, in order: the (K, L) or (W_x, W_y) partials
// of tiles, added the same way by every finishing kernel.
__device__ inline void add_pairs(const double* part, int64_t count, int64_t stride, double* a, double* b) {
  for (int64_t t = 0; t < count; ++t) {
    *a += part[t * stride];
    *b += part[t * stride + 1];
  }
}

// The forward block's partials, in a fixed order: index i0 + j gets the column sums of its tile rows and, for the
// block's own rows (j < rows; the triangle's columns start at i0), the row sums of its tiles; one thread per index.
// Block 0 adds the tiles' Σ to the moments (entries j > i stand for (i, j) and (j, i)).
__global__ void hsic_block_finish_kernel(const double* colpart, const double* rowpart, const double* tilepart,
                                         int64_t i0, int64_t rows, int64_t w, int64_t row_tiles, int64_t col_tiles,
                                         double* rk, double* rl, double* m) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < w;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double k = 0.0, l = 0.0;
    add_pairs(colpart + 2 * j, row_tiles, 2 * w, &k, &l);
    if (j < rows) add_pairs(rowpart + 2 * j * col_tiles, col_tiles, 2, &k, &l);
    rk[i0 + j] += k;
    rl[i0 + j] += l;
  }
  if (blockIdx.x == 0) {  // block-uniform: every thread of block 0 takes part in the block sums
    double s[3] = {0.0, 0.0, 0.0};
    for (int64_t t = threadIdx.x; t < row_tiles * col_tiles; t += blockDim.x)
      for (int c = 0; c < 3; ++c) s[c] += tilepart[3 * t + c];
    for (int c = 0; c < 3; ++c) s[c] = block_sum(s[c]);
    if (threadIdx.x == 0) {
      m[kmKL] += 2.0 * s[0];
      m[kmKK] += 2.0 * s[1];
      m[kmLL] += 2.0 * s[2];
    }
  }
}

// Coefficients of one side's gradient weights, from the moments already reduced on the device.
__device__ inline KernelGradCoef side_coef(const double* g, const double* m, bool x_side, int64_t n, bool unbiased) {
  const double kx = m[kmKappaX], ky = m[kmKappaY];
  const double sk = m[kmSk] * kx, sl = m[kmSl] * ky, tk = m[kmTk] * kx, tl = m[kmTl] * ky;
  return x_side ? kernel_grad_coef(g[0], g[1], kx, ky, sk, sl, tk, tl, n, unbiased)
                : kernel_grad_coef(g[0], g[2], ky, kx, sl, sk, tl, tk, n, unbiased);
}

// uᵢ of both sides (tiled_hsic.h: uᵢ = u_other·ρ_other,ᵢ + u_own·ρ_own,ᵢ), one thread per row.
__global__ void grad_u_kernel(const double* rk, const double* rl, const double* dk, const double* dl, const double* m,
                              const double* g, int64_t n, bool unbiased, double* ux, double* uy) {
  const KernelGradCoef cx = side_coef(g, m, true, n, unbiased), cy = side_coef(g, m, false, n, unbiased);
  const double kapx = m[kmKappaX], kapy = m[kmKappaY];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double rho_k = kernel_grad_rho(rk[i], dk[i], unbiased) * kapx;
    const double rho_l = kernel_grad_rho(rl[i], dl[i], unbiased) * kapy;
    ux[i] = cx.u_other * rho_l + cx.u_own * rho_k;
    uy[i] = cy.u_other * rho_k + cy.u_own * rho_l;
  }
}

// One tile of a gradient block: W of both sides (kernel_grad_weight) written over the dots gx, gy (rows × n) in place
// (each entry is read and written by one thread only), and W's row sums per tile (rowpart[row][tile column]).
template <typename T>
__global__ void __launch_bounds__(kEpiCols)
    hsic_grad_block_kernel(T* gx, T* gy, DistanceRows<T> rx, DistanceRows<T> ry, int64_t i0, int64_t rows,
                           int64_t n, int kx, int ky, const double* gamma, const double* scale_x,
                           const double* scale_y, const double* m, const double* g, bool unbiased, const double* ux,
                           const double* uy, double* rowpart) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kEpiCols) + threadIdx.x;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kEpiRows);
  const KernelSpec spx = device_spec(kx, gamma, 0, scale_x, m), spy = device_spec(ky, gamma, 1, scale_y, m);
  rx = device_rows(rx, scale_x);
  ry = device_rows(ry, scale_y);
  const KernelGradCoef cx = side_coef(g, m, true, n, unbiased), cy = side_coef(g, m, false, n, unbiased);
  __shared__ double row_part[kEpiRows][kEpiCols / 32][2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const double ux_j = j < n ? ux[j] : 0.0, uy_j = j < n ? uy[j] : 0.0;
  for (int r = 0; r < kEpiRows; ++r) {
    const int64_t i = r0 + r, gi = i0 + i;
    double vx = 0.0, vy = 0.0;
    if (i < rows && j < n) {
      const int64_t e = i * n + j;
      const bool diag = gi == j;
      const double k = device_entry(spx, rx, gx[e], gi, j), l = device_entry(spy, ry, gy[e], gi, j);
      vx = kernel_grad_weight(cx, kx, spx.shift, k, l, ux[gi], ux_j, diag);
      vy = kernel_grad_weight(cy, ky, spy.shift, l, k, uy[gi], uy_j, diag);
      gx[e] = static_cast<T>(vx);
      gy[e] = static_cast<T>(vy);
    }
    vx = warp_sum(vx);
    vy = warp_sum(vy);
    if (lane == 0) {
      row_part[r][warp][0] = vx;
      row_part[r][warp][1] = vy;
    }
  }
  __syncthreads();
  store_row_partials(row_part, r0, rows, rowpart);
}

// W's row sums of the block (both sides, interleaved), from the tiles' partials in a fixed order.
__global__ void grad_row_sums_kernel(const double* rowpart, int64_t rows, int64_t col_tiles, double* wsum) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double a = 0.0, b = 0.0;
    add_pairs(rowpart + 2 * i * col_tiles, col_tiles, 2, &a, &b);
    wsum[2 * i] = a;
    wsum[2 * i + 1] = b;
  }
}

// A block's rows of one side's gradient: out = scale·(W X' − [rbf] diag(W1) X'), from the product prod = W X'
// (rows × p), the row sums wsum[2i + side] and the block's scaled rows xs; scale from kernel_grad_scale.
template <typename T>
__global__ void grad_finish_kernel(const T* prod, const double* wsum, const T* xs, int64_t rows, int64_t p, int type,
                                   const double* gamma, int side, const double* scale, const double* m, T* out) {
  const double s = scale[0];
  const double sc = kernel_grad_scale(type, gamma[side] / (s * s), m[side == 0 ? kmKappaX : kmKappaY], s);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < rows * p;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double diag = type == kKernelRbf ? wsum[2 * (k / p) + side] * static_cast<double>(xs[k]) : 0.0;
    out[k] = static_cast<T>(sc * (static_cast<double>(prod[k]) - diag));
  }
}

// The median's passes run over the same row blocks of the triangle's dots (for_each_triangle_block), row i of the
// block in blockIdx.y, its columns jj > i (the pairs i < j) strided over blockIdx.x.

// A radix pass over one row block: the histogram of the next digit of the distances that carry the prefix (integer
// atomics: the counts do not depend on the order).
template <typename T>
__global__ void distance_histogram_kernel(const T* gx, DistanceRows<T> rx, const double* scale, int64_t i0, int64_t w,
                                          uint64_t prefix, int bits, unsigned long long* hist) {
  rx = device_rows(rx, scale);
  const int64_t i = blockIdx.y, gi = i0 + i;
  for (int64_t jj = i + 1 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; jj < w;
       jj += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t digit = pair_digit(rx, static_cast<double>(gx[i * w + jj]), gi, i0 + jj, prefix, bits);
    if (digit >= 0) atomicAdd(hist + digit, 1ull);
  }
}

// A window pass over one row block: counts the pairs below [lo, hi] (one atomic per block) and collects those
// inside it while they fit; count[1] keeps counting past the buffer, so the host sees an overflow. (The collected
// order depends on scheduling; the ranks read from them do not.)
template <typename T>
__global__ void distance_window_kernel(const T* gx, DistanceRows<T> rx, const double* scale, int64_t i0, int64_t w,
                                       int64_t n, uint64_t lo, uint64_t hi, double* collect, int64_t* keys,
                                       unsigned long long* count) {
  rx = device_rows(rx, scale);
  const int64_t i = blockIdx.y, gi = i0 + i;
  double below = 0.0;  // a count, exact in float64, for block_sum
  for (int64_t jj = i + 1 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; jj < w;
       jj += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t gj = i0 + jj;
    double d = 0.0;
    bool exact = false;
    const int where = pair_window(rx, static_cast<double>(gx[i * w + jj]), gi, gj, lo, hi, &d, &exact);
    below += where < 0;
    if (where == 0) {
      const unsigned long long slot = atomicAdd(count + 1, 1ull);
      if (slot < static_cast<unsigned long long>(kCollectCapacity)) {
        collect[slot] = d;
        keys[slot] = exact ? -1 : gi * n + gj;
      }
    }
  }
  below = block_sum(below);
  if (threadIdx.x == 0 && below > 0.0) atomicAdd(count, static_cast<unsigned long long>(below));
}

// The exact distances of the pairs keys[t] = i·n + j, one thread per pair.
template <typename T>
__global__ void exact_distances_kernel(const T* x, const double* scale, int64_t n, int64_t p, const int64_t* keys,
                                       int64_t m, double* out) {
  const double s2 = scale[0] * scale[0];
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < m;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = exact_sq_dist(x, p, keys[t] / n, keys[t] % n, s2);
}

// The exact distances of the seeded sample of pairs, one thread per pair (from the original rows).
template <typename T>
__global__ void sample_distances_kernel(const T* x, const double* scale, int64_t n, int64_t p, int64_t m,
                                        uint64_t seed, double* out) {
  const double s2 = scale[0] * scale[0];
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < m;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i, j;
    sampled_pair(seed, s, n, &i, &j);
    out[s] = exact_sq_dist(x, p, i, j, s2);
  }
}

// The shift's row subset, on the device (kernel_hsic_impl.h: shift_row).
__global__ void shift_rows_kernel(int64_t n, int64_t* out) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < kShiftRows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[r] = shift_row(r, n);
}

// Calls f(i0, rows, w, gx) for each row block of the triangle: gx = X'_I X'_{i0:}ᵀ (rows × w, w = n − i0), from a
// cuBLAS GEMM in the input precision into one B·n scratch (block_rows), on the current stream.
template <typename T, class F>
void for_each_triangle_block(const Tensor& xs, F&& f) {
  const int64_t n = xs.size(0), p = xs.size(1), B = block_rows(n);
  Tensor gx = empty_like_shape(xs, {B * n}, xs.scalar_type());
  const cublasHandle_t h = blas_handle(xs);
  const cudaStream_t s = current_stream(xs);
  const T* x = xs.const_data_ptr<T>();
  T* g = gx.mutable_data_ptr<T>();
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    const int64_t rows = std::min(B, n - i0), w = n - i0;
    gemm_rowmajor(h, s, true, rows, w, p, x + i0 * p, x + i0 * p, g);
    f(i0, rows, w, static_cast<const T*>(g));
  }
}

// The grid of a median pass over one row block: a row per blockIdx.y (rows ≤ B ≤ 4096), its columns over blockIdx.x.
inline dim3 row_block_grid(int64_t rows, int64_t w) {
  return dim3(static_cast<unsigned>(blocks_for(w, kThreads, 1024)), static_cast<unsigned>(rows));
}

inline Tensor to_cpu(const Tensor& t) {
  return torch::stable::to(t, torch::stable::Device(torch::headeronly::DeviceType::CPU));
}

}  // namespace cuda

struct CudaKernelHsic : CudaBackend {
  static Tensor shift_row_indices(const Tensor& x) {
    Tensor idx = empty_like_shape(x, {kShiftRows}, ScalarType::Long);
    FASTCKA_LAUNCH(1, cuda::kThreads, 0, cuda::current_stream(x), cuda::shift_rows_kernel)(
        x.size(0), idx.mutable_data_ptr<int64_t>());
    cuda::check_launch("shift_rows");
    return idx;
  }

  static ScaledRows scale_rows(const Tensor& x) {
    const int64_t n = x.size(0), p = x.size(1);
    const cudaStream_t s = cuda::current_stream(x);
    ScaledRows a;
    a.xs = empty_like_shape(x, {n, p}, x.scalar_type());
    a.scale = empty_like_shape(x, {1}, ScalarType::Double);
    Tensor bits = zeros_f64(x, 1);
    FASTCKA_DISPATCH_FLOATING(x.scalar_type(), "scale_rows", [&] {
      const int blocks = cuda::blocks_for(n * p, cuda::kThreads);
      auto* b = reinterpret_cast<unsigned long long*>(bits.mutable_data_ptr<double>());
      const Tensor med = column_medians<CudaKernelHsic>(x);
      FASTCKA_LAUNCH(blocks, cuda::kThreads, 0, s, cuda::shift_normalise_kernel)(
          x.const_data_ptr<scalar_t>(), med.const_data_ptr<scalar_t>(), n, p, a.xs.mutable_data_ptr<scalar_t>(), b);
      FASTCKA_LAUNCH(blocks, cuda::kThreads, 0, s, cuda::normalise_kernel)(
          a.xs.mutable_data_ptr<scalar_t>(), n * p, b, a.scale.mutable_data_ptr<double>());
      cuda::check_launch("scale_rows");
    });
    a.norms = cuda::row_sq(a.xs);
    a.x = x;
    return a;
  }

  static double host_scale(const ScaledRows& a) { return cuda::to_cpu(a.scale).const_data_ptr<double>()[0]; }

  static Tensor scalar_tensor(const Tensor& like, double v) {
    Tensor t = torch::stable::full({}, v, ScalarType::Double);
    return torch::stable::to(t, like.device());
  }

  static Tensor host_vector_tensor(const Tensor& like, const std::vector<double>& v) {
    Tensor t = empty_like_shape(like, {static_cast<int64_t>(v.size())}, ScalarType::Double);
    for (size_t i = 0; i < v.size(); ++i) {  // a few layers: one small copy each
      Tensor dst = narrowed(t, 0, static_cast<int64_t>(i), 1);
      torch::stable::copy_(dst, reshaped(scalar_tensor(like, v[i]), {1}));
    }
    return t;
  }

  // One GPU: the layers' medians in turn (each already fills the device).
  template <class F>
  static void for_each_median(int64_t count, int64_t, F&& f) {
    for (int64_t i = 0; i < count; ++i) f(i);
  }

  static void kernel_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out);

  // The fused forward pass over the triangle j ≥ i, row block by row block (see the comment above block_rows).
  static PassOutput hsic_pass(const ScaledRows& a, const ScaledRows& b, int64_t kx, int64_t ky, const Tensor& gamma,
                              Tensor* entries_k = nullptr, Tensor* entries_l = nullptr) {
    const int64_t n = a.xs.size(0), p = a.xs.size(1), q = b.xs.size(1);
    PassOutput o = zeroed_pass_output(a.xs, n);
    double* ek = entries_k ? entries_k->mutable_data_ptr<double>() : nullptr;
    double* el = entries_l ? entries_l->mutable_data_ptr<double>() : nullptr;
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "kernel_hsic_pass", [&] {
      const cudaStream_t s = cuda::current_stream(a.xs);
      double* m = o.m.mutable_data_ptr<double>();
      FASTCKA_LAUNCH(1, cuda::kThreads, 0, s, cuda::shift_vote_kernel)(
          a.x.const_data_ptr<scalar_t>(), n, p, static_cast<int>(kx), gamma.const_data_ptr<double>(), 0,
          a.scale.const_data_ptr<double>(), m);
      FASTCKA_LAUNCH(1, cuda::kThreads, 0, s, cuda::shift_vote_kernel)(
          b.x.const_data_ptr<scalar_t>(), n, q, static_cast<int>(ky), gamma.const_data_ptr<double>(), 1,
          b.scale.const_data_ptr<double>(), m);
      const int64_t B = cuda::block_rows(n), row_tiles_max = cuda::ceil_div(B, cuda::kEpiRows);
      const int64_t col_tiles_max = cuda::ceil_div(n, cuda::kEpiCols);
      Tensor gx = empty_like_shape(a.xs, {B * n}, a.xs.scalar_type()), gy = empty_like_shape(a.xs, {B * n}, a.xs.scalar_type());
      Tensor colpart = empty_like_shape(a.xs, {2 * row_tiles_max * n}, ScalarType::Double);
      Tensor rowpart = empty_like_shape(a.xs, {2 * B * col_tiles_max}, ScalarType::Double);
      Tensor tilepart = empty_like_shape(a.xs, {3 * row_tiles_max * col_tiles_max}, ScalarType::Double);
      const cublasHandle_t h = cuda::blas_handle(a.xs);
      const scalar_t *xs = a.xs.const_data_ptr<scalar_t>(), *ys = b.xs.const_data_ptr<scalar_t>();
      scalar_t *gxp = gx.mutable_data_ptr<scalar_t>(), *gyp = gy.mutable_data_ptr<scalar_t>();
      for (int64_t i0 = 0; i0 < n; i0 += B) {
        const int64_t rows = std::min(B, n - i0), w = n - i0;
        cuda::gemm_rowmajor(h, s, true, rows, w, p, xs + i0 * p, xs + i0 * p, gxp);  // X'_I X'_{i0:}ᵀ
        cuda::gemm_rowmajor(h, s, true, rows, w, q, ys + i0 * q, ys + i0 * q, gyp);
        const int64_t col_tiles = cuda::ceil_div(w, cuda::kEpiCols), row_tiles = cuda::ceil_div(rows, cuda::kEpiRows);
        FASTCKA_LAUNCH(dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles)), cuda::kEpiCols, 0, s,
                       cuda::hsic_block_kernel)(
            gx.const_data_ptr<scalar_t>(), gy.const_data_ptr<scalar_t>(), distance_rows<scalar_t>(a, 0.0),
            distance_rows<scalar_t>(b, 0.0), i0, rows, w, static_cast<int>(kx), static_cast<int>(ky),
            gamma.const_data_ptr<double>(), a.scale.const_data_ptr<double>(), b.scale.const_data_ptr<double>(),
            o.m.const_data_ptr<double>(), o.dk.mutable_data_ptr<double>(), o.dl.mutable_data_ptr<double>(),
            colpart.mutable_data_ptr<double>(), rowpart.mutable_data_ptr<double>(),
            tilepart.mutable_data_ptr<double>(), ek, el);
        FASTCKA_LAUNCH(cuda::blocks_for(w, cuda::kThreads), cuda::kThreads, 0, s, cuda::hsic_block_finish_kernel)(
            colpart.const_data_ptr<double>(), rowpart.const_data_ptr<double>(), tilepart.const_data_ptr<double>(), i0,
            rows, w, row_tiles, col_tiles, o.rk.mutable_data_ptr<double>(), o.rl.mutable_data_ptr<double>(), m);
        cuda::check_launch("kernel_hsic_pass");
      }
    });
    return o;
  }

  // Both sides' gradients, row block by row block: the full rows of dots (GEMM), W over them (epilogue), then
  // scale·(W X' − [rbf] diag(W1) X') with W X' from a second GEMM, as the CPU pass does.
  static std::tuple<Tensor, Tensor> hsic_grad_pass(const ScaledRows& a, const ScaledRows& b, int64_t kx, int64_t ky,
                                                   const Tensor& gamma, PassOutput& o, const Tensor& grad,
                                                   bool unbiased) {
    const int64_t n = a.xs.size(0), p = a.xs.size(1), q = b.xs.size(1);
    const cudaStream_t s = cuda::current_stream(a.xs);
    sum_into(o.rk, o.m, kmSk);
    sum_into(o.rl, o.m, kmSl);
    sum_into(o.dk, o.m, kmTk);
    sum_into(o.dl, o.m, kmTl);
    Tensor ux = empty_like_shape(a.xs, {n}, ScalarType::Double), uy = empty_like_shape(a.xs, {n}, ScalarType::Double);
    Tensor dx = empty_like_shape(a.xs, {n, p}, a.xs.scalar_type());
    Tensor dy = empty_like_shape(b.xs, {n, q}, b.xs.scalar_type());
    FASTCKA_LAUNCH(cuda::blocks_for(n, cuda::kThreads), cuda::kThreads, 0, s, cuda::grad_u_kernel)(
        o.rk.const_data_ptr<double>(), o.rl.const_data_ptr<double>(), o.dk.const_data_ptr<double>(),
        o.dl.const_data_ptr<double>(), o.m.const_data_ptr<double>(), grad.const_data_ptr<double>(), n, unbiased,
        ux.mutable_data_ptr<double>(), uy.mutable_data_ptr<double>());
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "kernel_hsic_grad", [&] {
      const int64_t B = cuda::block_rows(n), col_tiles = cuda::ceil_div(n, cuda::kEpiCols);
      Tensor gx = empty_like_shape(a.xs, {B * n}, a.xs.scalar_type()), gy = empty_like_shape(a.xs, {B * n}, a.xs.scalar_type());
      Tensor px = empty_like_shape(a.xs, {B * p}, a.xs.scalar_type()), py = empty_like_shape(a.xs, {B * q}, a.xs.scalar_type());
      Tensor rowpart = empty_like_shape(a.xs, {2 * B * col_tiles}, ScalarType::Double);
      Tensor wsum = empty_like_shape(a.xs, {2 * B}, ScalarType::Double);
      const cublasHandle_t h = cuda::blas_handle(a.xs);
      const scalar_t *xs = a.xs.const_data_ptr<scalar_t>(), *ys = b.xs.const_data_ptr<scalar_t>();
      scalar_t *gxp = gx.mutable_data_ptr<scalar_t>(), *gyp = gy.mutable_data_ptr<scalar_t>();
      scalar_t *pxp = px.mutable_data_ptr<scalar_t>(), *pyp = py.mutable_data_ptr<scalar_t>();
      scalar_t *ox = dx.mutable_data_ptr<scalar_t>(), *oy = dy.mutable_data_ptr<scalar_t>();
      for (int64_t i0 = 0; i0 < n; i0 += B) {
        const int64_t rows = std::min(B, n - i0), row_tiles = cuda::ceil_div(rows, cuda::kEpiRows);
        cuda::gemm_rowmajor(h, s, true, rows, n, p, xs + i0 * p, xs, gxp);  // X'_I X'ᵀ
        cuda::gemm_rowmajor(h, s, true, rows, n, q, ys + i0 * q, ys, gyp);
        FASTCKA_LAUNCH(dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles)), cuda::kEpiCols, 0, s,
                       cuda::hsic_grad_block_kernel)(
            gxp, gyp, distance_rows<scalar_t>(a, 0.0), distance_rows<scalar_t>(b, 0.0), i0, rows, n,
            static_cast<int>(kx), static_cast<int>(ky), gamma.const_data_ptr<double>(),
            a.scale.const_data_ptr<double>(), b.scale.const_data_ptr<double>(), o.m.const_data_ptr<double>(),
            grad.const_data_ptr<double>(), unbiased, ux.const_data_ptr<double>(), uy.const_data_ptr<double>(),
            rowpart.mutable_data_ptr<double>());
        FASTCKA_LAUNCH(cuda::blocks_for(rows, cuda::kThreads), cuda::kThreads, 0, s, cuda::grad_row_sums_kernel)(
            rowpart.const_data_ptr<double>(), rows, col_tiles, wsum.mutable_data_ptr<double>());
        cuda::gemm_rowmajor(h, s, false, rows, p, n, gx.const_data_ptr<scalar_t>(), xs, pxp);  // W^x_I X'
        cuda::gemm_rowmajor(h, s, false, rows, q, n, gy.const_data_ptr<scalar_t>(), ys, pyp);
        FASTCKA_LAUNCH(cuda::blocks_for(rows * p, cuda::kThreads), cuda::kThreads, 0, s, cuda::grad_finish_kernel)(
            px.const_data_ptr<scalar_t>(), wsum.const_data_ptr<double>(), xs + i0 * p, rows, p, static_cast<int>(kx),
            gamma.const_data_ptr<double>(), 0, a.scale.const_data_ptr<double>(), o.m.const_data_ptr<double>(),
            ox + i0 * p);
        FASTCKA_LAUNCH(cuda::blocks_for(rows * q, cuda::kThreads), cuda::kThreads, 0, s, cuda::grad_finish_kernel)(
            py.const_data_ptr<scalar_t>(), wsum.const_data_ptr<double>(), ys + i0 * q, rows, q, static_cast<int>(ky),
            gamma.const_data_ptr<double>(), 1, b.scale.const_data_ptr<double>(), o.m.const_data_ptr<double>(),
            oy + i0 * q);
        cuda::check_launch("kernel_hsic_grad");
      }
    });
    return std::make_tuple(dx, dy);
  }

  static std::vector<int64_t> distance_histogram(const ScaledRows& a, uint64_t prefix, int bits) {
    Tensor hist = zeros_f64(a.xs, kDigitBins);  // 64-bit counters in float64-sized slots
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "distance_histogram", [&] {
      const cudaStream_t s = cuda::current_stream(a.xs);
      auto* h = reinterpret_cast<unsigned long long*>(hist.mutable_data_ptr<double>());
      cuda::for_each_triangle_block<scalar_t>(a.xs, [&](int64_t i0, int64_t rows, int64_t w, const scalar_t* gx) {
        FASTCKA_LAUNCH(cuda::row_block_grid(rows, w), cuda::kThreads, 0, s, cuda::distance_histogram_kernel)(
            gx, distance_rows<scalar_t>(a, 0.0), a.scale.const_data_ptr<double>(), i0, w, prefix, bits, h);
        cuda::check_launch("distance_histogram");
      });
    });
    const Tensor h = cuda::to_cpu(hist);
    const auto* c = reinterpret_cast<const unsigned long long*>(h.const_data_ptr<double>());
    return std::vector<int64_t>(c, c + kDigitBins);
  }

  static WindowPass distance_window(const ScaledRows& a, uint64_t lo, uint64_t hi) {
    const int64_t n = a.xs.size(0);
    Tensor buf = empty_like_shape(a.xs, {kCollectCapacity}, ScalarType::Double);
    Tensor keys = empty_like_shape(a.xs, {kCollectCapacity}, ScalarType::Long);
    Tensor count = zeros_f64(a.xs, 2);  // [below, inside] as 64-bit counters
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "distance_window", [&] {
      const cudaStream_t s = cuda::current_stream(a.xs);
      cuda::for_each_triangle_block<scalar_t>(a.xs, [&](int64_t i0, int64_t rows, int64_t w, const scalar_t* gx) {
        FASTCKA_LAUNCH(cuda::row_block_grid(rows, w), cuda::kThreads, 0, s, cuda::distance_window_kernel)(
            gx, distance_rows<scalar_t>(a, 0.0), a.scale.const_data_ptr<double>(), i0, w, n, lo, hi,
            buf.mutable_data_ptr<double>(), keys.mutable_data_ptr<int64_t>(),
            reinterpret_cast<unsigned long long*>(count.mutable_data_ptr<double>()));
        cuda::check_launch("distance_window");
      });
    });
    const Tensor c = cuda::to_cpu(count);
    const auto* cc = reinterpret_cast<const unsigned long long*>(c.const_data_ptr<double>());
    WindowPass w;
    w.below = static_cast<int64_t>(cc[0]);
    w.inside = static_cast<int64_t>(cc[1]);
    if (w.inside == 0 || w.inside > kCollectCapacity) return w;
    const Tensor v = cuda::to_cpu(narrowed(buf, 0, 0, w.inside));  // only the values found, not the whole buffer
    w.values.assign(v.const_data_ptr<double>(), v.const_data_ptr<double>() + w.inside);
    const Tensor k = cuda::to_cpu(narrowed(keys, 0, 0, w.inside));
    w.keys.assign(k.const_data_ptr<int64_t>(), k.const_data_ptr<int64_t>() + w.inside);
    return w;
  }

  static std::vector<double> host_norms(const ScaledRows& a) {
    const Tensor v = cuda::to_cpu(a.norms);
    return std::vector<double>(v.const_data_ptr<double>(), v.const_data_ptr<double>() + v.numel());
  }

  // The exact distances of the pairs keys[t] = i·n + j.
  static std::vector<double> exact_distances(const ScaledRows& a, const std::vector<int64_t>& keys) {
    const int64_t m = static_cast<int64_t>(keys.size());
    if (m == 0) return {};
    Tensor host_keys = torch::stable::empty({m}, ScalarType::Long);
    std::copy(keys.begin(), keys.end(), host_keys.mutable_data_ptr<int64_t>());
    const Tensor dev_keys = torch::stable::to(host_keys, a.x.device());
    Tensor out = empty_like_shape(a.xs, {m}, ScalarType::Double);
    FASTCKA_DISPATCH_FLOATING(a.x.scalar_type(), "exact_distances", [&] {
      FASTCKA_LAUNCH(cuda::blocks_for(m, cuda::kThreads), cuda::kThreads, 0, cuda::current_stream(a.xs),
                     cuda::exact_distances_kernel)(
          a.x.const_data_ptr<scalar_t>(), a.scale.const_data_ptr<double>(), a.xs.size(0), a.xs.size(1),
          dev_keys.const_data_ptr<int64_t>(), m, out.mutable_data_ptr<double>());
      cuda::check_launch("exact_distances");
    });
    const Tensor v = cuda::to_cpu(out);
    return std::vector<double>(v.const_data_ptr<double>(), v.const_data_ptr<double>() + m);
  }

  static std::vector<double> sample_distances(const ScaledRows& a, int64_t m, uint64_t seed) {
    Tensor out = empty_like_shape(a.xs, {m}, ScalarType::Double);
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "sample_distances", [&] {
      FASTCKA_LAUNCH(cuda::blocks_for(m, cuda::kThreads), cuda::kThreads, 0, cuda::current_stream(a.xs),
                     cuda::sample_distances_kernel)(
          a.x.const_data_ptr<scalar_t>(), a.scale.const_data_ptr<double>(), a.xs.size(0), a.xs.size(1), m, seed,
          out.mutable_data_ptr<double>());
      cuda::check_launch("sample_distances");
    });
    const Tensor v = cuda::to_cpu(out);
    return std::vector<double>(v.const_data_ptr<double>(), v.const_data_ptr<double>() + m);
  }
};

__global__ void kernel_combine_kernel(const double* m, int64_t n, bool unbiased, double noise, double* out) {
  kernel_hsic_combine(m, n, unbiased, noise, out);
}

void CudaKernelHsic::kernel_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out) {
  FASTCKA_LAUNCH(1, 1, 0, cuda::current_stream(m), kernel_combine_kernel)(
      m.const_data_ptr<double>(), n, unbiased, noise, out.mutable_data_ptr<double>());
  cuda::check_launch("kernel_combine");
}

Tensor kernel_hsic_cuda(const Tensor& x, const Tensor& y, const Tensor& gamma, int64_t kx, int64_t ky, bool unbiased) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return kernel_hsic<CudaKernelHsic>(x, y, gamma, kx, ky, unbiased);
}

std::tuple<Tensor, Tensor> kernel_hsic_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& y,
                                                     const Tensor& gamma, int64_t kx, int64_t ky, bool unbiased) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return kernel_hsic_backward<CudaKernelHsic>(grad, x, y, gamma, kx, ky, unbiased);
}

Tensor median_sq_dist_cuda(const Tensor& x, int64_t method) {
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return median_sq_dist<CudaKernelHsic>(x, method);
}

Tensor median_sq_dists_cuda(const std::vector<Tensor>& xs, int64_t method) {
  STD_TORCH_CHECK(!xs.empty(), "fastcka::median_sq_dists: xs is empty");
  torch::stable::accelerator::DeviceGuard guard(xs[0].get_device_index());
  return median_sq_dists<CudaKernelHsic>(xs, method);
}

FASTCKA_CUDA_LIBRARY_IMPL(m) {
  m.impl("kernel_hsic", TORCH_BOX(&kernel_hsic_cuda));
  m.impl("_kernel_hsic_backward", TORCH_BOX(&kernel_hsic_backward_cuda));
  m.impl("median_sq_dist", TORCH_BOX(&median_sq_dist_cuda));
  m.impl("median_sq_dists", TORCH_BOX(&median_sq_dists_cuda));
}

}  // namespace fastcka
