// CUDA kernels and registration of the fused kernel-HSIC pass and the exact distance median.
//
// Scheme: one block per 32×32 tile pair (ti ≤ tj for the sums and the median passes, all pairs for the gradient).
// Row tiles of X' and Y' are staged through shared memory 32 features at a time to form the tile's dot products;
// the epilogue (kernel values, weights, distance digits) is the header math the CPU pass uses. Scalars are reduced
// per block in float64 and added with one atomic per block; row and column sums go through shared memory first.
#include <vector>

#include "cuda/primitives.cuh"
#include "kernel_hsic_impl.h"

namespace fastcka {
namespace cuda {

constexpr int kTile = 32;
constexpr int kTileThreads = 256;
constexpr int kPerThread = kTile * kTile / kTileThreads;  // 4 entries of the tile per thread

// dot[r] = x'_{ti·32+ii} · x'_{tj·32+jj} for this thread's entries (ii, jj) = divmod(tid + 256·r, 32).
template <typename T>
__device__ void tile_dots(const T* x, int64_t n, int64_t p, int64_t ti, int64_t tj, T* dot) {
  __shared__ T si[kTile][kTile + 1];
  __shared__ T sj[kTile][kTile + 1];
  for (int r = 0; r < kPerThread; ++r) dot[r] = T(0);
  for (int64_t c0 = 0; c0 < p; c0 += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
      const int row = e / kTile, col = e % kTile;
      const int64_t gi = ti * kTile + row, gj = tj * kTile + row, c = c0 + col;
      si[row][col] = (gi < n && c < p) ? x[gi * p + c] : T(0);
      sj[row][col] = (gj < n && c < p) ? x[gj * p + c] : T(0);
    }
    __syncthreads();
    for (int r = 0; r < kPerThread; ++r) {
      const int e = threadIdx.x + kTileThreads * r, ii = e / kTile, jj = e % kTile;
      T acc = dot[r];
#pragma unroll 8
      for (int c = 0; c < kTile; ++c) acc += si[ii][c] * sj[jj][c];
      dot[r] = acc;
    }
    __syncthreads();
  }
}

__device__ inline void tile_of_block(int64_t tiles, int64_t* ti, int64_t* tj) {
  __shared__ int64_t s_ti, s_tj;
  if (threadIdx.x == 0) triangle_tile(blockIdx.x, tiles, &s_ti, &s_tj);
  __syncthreads();
  *ti = s_ti;
  *tj = s_tj;
}

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

// The shift vote of one side (tiled_hsic.h), one block of kTileThreads threads: m[slot] = c, and the side's κ.
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

// The shifted entry of pair (gi, gj) of one side from its tile dot product.
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

template <typename T>
__global__ void hsic_pass_kernel(const T* xs, const T* ys, DistanceRows<T> rx, DistanceRows<T> ry, int64_t n,
                                 int64_t p, int64_t q, int kx, int ky, const double* gamma, const double* scale_x,
                                 const double* scale_y, double* m, double* rk, double* rl, double* dk, double* dl) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  int64_t ti, tj;
  tile_of_block(tiles, &ti, &tj);
  T gx[kPerThread], gy[kPerThread];
  tile_dots(xs, n, p, ti, tj, gx);
  tile_dots(ys, n, q, ti, tj, gy);
  const KernelSpec spx = device_spec(kx, gamma, 0, scale_x, m), spy = device_spec(ky, gamma, 1, scale_y, m);
  rx = device_rows(rx, scale_x);
  ry = device_rows(ry, scale_y);
  __shared__ double row_k[kTile], row_l[kTile], col_k[kTile], col_l[kTile];
  if (threadIdx.x < kTile) row_k[threadIdx.x] = row_l[threadIdx.x] = col_k[threadIdx.x] = col_l[threadIdx.x] = 0.0;
  __syncthreads();
  double skl = 0, skk = 0, sll = 0;
  for (int r = 0; r < kPerThread; ++r) {
    const int e = threadIdx.x + kTileThreads * r, ii = e / kTile, jj = e % kTile;
    const int64_t gi = ti * kTile + ii, gj = tj * kTile + jj;
    if (gi >= n || gj >= n || gj < gi) continue;
    const double k = device_entry(spx, rx, gx[r], gi, gj);
    const double l = device_entry(spy, ry, gy[r], gi, gj);
    if (gi == gj) {  // the diagonal is kept apart from every sum (tiled_hsic.h)
      dk[gi] = k;
      dl[gi] = l;
      continue;
    }
    skl += 2.0 * k * l;  // entries j > i stand for (i, j) and (j, i)
    skk += 2.0 * k * k;
    sll += 2.0 * l * l;
    atomicAdd(&row_k[ii], k);
    atomicAdd(&row_l[ii], l);
    atomicAdd(&col_k[jj], k);
    atomicAdd(&col_l[jj], l);
  }
  skl = block_sum(skl);
  if (threadIdx.x == 0) atomicAdd(m + kmKL, skl);
  skk = block_sum(skk);
  if (threadIdx.x == 0) atomicAdd(m + kmKK, skk);
  sll = block_sum(sll);
  if (threadIdx.x == 0) atomicAdd(m + kmLL, sll);
  __syncthreads();
  if (threadIdx.x < kTile) {
    const int64_t gi = ti * kTile + threadIdx.x, gj = tj * kTile + threadIdx.x;
    if (gi < n) {
      atomicAdd(rk + gi, row_k[threadIdx.x]);
      atomicAdd(rl + gi, row_l[threadIdx.x]);
    }
    if (gj < n) {
      atomicAdd(rk + gj, col_k[threadIdx.x]);
      atomicAdd(rl + gj, col_l[threadIdx.x]);
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

__device__ inline double rho(const double* r, const double* d, int64_t i, double kappa, bool unbiased) {
  return kernel_grad_rho(r[i], d[i], unbiased) * kappa;
}

// All tile pairs: W tiles in shared memory, then acc_x[gi, :] += Σ_j W^x_ij x'_j (float64 atomics) and W row sums.
template <typename T>
__global__ void hsic_grad_kernel(const T* xs, const T* ys, DistanceRows<T> rx, DistanceRows<T> ry, int64_t n, int64_t p,
                                 int64_t q, int kx, int ky, const double* gamma, const double* scale_x,
                                 const double* scale_y, const double* m, const double* rk, const double* rl,
                                 const double* dk, const double* dl, const double* g, bool unbiased, double* acc_x,
                                 double* acc_y, double* wsum_x, double* wsum_y) {
  const int64_t ti = blockIdx.y, tj = blockIdx.x;
  T gx[kPerThread], gy[kPerThread];
  tile_dots(xs, n, p, ti, tj, gx);
  tile_dots(ys, n, q, ti, tj, gy);
  const KernelSpec spx = device_spec(kx, gamma, 0, scale_x, m), spy = device_spec(ky, gamma, 1, scale_y, m);
  rx = device_rows(rx, scale_x);
  ry = device_rows(ry, scale_y);
  const KernelGradCoef cx = side_coef(g, m, true, n, unbiased), cy = side_coef(g, m, false, n, unbiased);
  const double kapx = m[kmKappaX], kapy = m[kmKappaY];
  __shared__ double wx[kTile][kTile + 1], wy[kTile][kTile + 1];
  for (int r = 0; r < kPerThread; ++r) {
    const int e = threadIdx.x + kTileThreads * r, ii = e / kTile, jj = e % kTile;
    const int64_t gi = ti * kTile + ii, gj = tj * kTile + jj;
    double vx = 0.0, vy = 0.0;
    if (gi < n && gj < n) {
      const bool diag = gi == gj;
      const double k = device_entry(spx, rx, gx[r], gi, gj);
      const double l = device_entry(spy, ry, gy[r], gi, gj);
      const double rki = rho(rk, dk, gi, kapx, unbiased), rkj = rho(rk, dk, gj, kapx, unbiased);
      const double rli = rho(rl, dl, gi, kapy, unbiased), rlj = rho(rl, dl, gj, kapy, unbiased);
      vx = kernel_grad_weight(cx, kx, spx.shift, k, l, cx.u_other * rli + cx.u_own * rki,
                              cx.u_other * rlj + cx.u_own * rkj, diag);
      vy = kernel_grad_weight(cy, ky, spy.shift, l, k, cy.u_other * rki + cy.u_own * rli,
                              cy.u_other * rkj + cy.u_own * rlj, diag);
    }
    wx[ii][jj] = vx;
    wy[ii][jj] = vy;
  }
  __syncthreads();
  if (threadIdx.x < kTile) {
    const int64_t gi = ti * kTile + threadIdx.x;
    double a = 0.0, b = 0.0;
    for (int jj = 0; jj < kTile; ++jj) {
      a += wx[threadIdx.x][jj];
      b += wy[threadIdx.x][jj];
    }
    if (gi < n) {
      atomicAdd(wsum_x + gi, a);
      atomicAdd(wsum_y + gi, b);
    }
  }
  for (int64_t e = threadIdx.x; e < kTile * p; e += blockDim.x) {
    const int ii = static_cast<int>(e / p);
    const int64_t c = e % p, gi = ti * kTile + ii;
    if (gi >= n) continue;
    double acc = 0.0;
    for (int jj = 0; jj < kTile && tj * kTile + jj < n; ++jj) acc += wx[ii][jj] * static_cast<double>(xs[(tj * kTile + jj) * p + c]);
    atomicAdd(acc_x + gi * p + c, acc);
  }
  for (int64_t e = threadIdx.x; e < kTile * q; e += blockDim.x) {
    const int ii = static_cast<int>(e / q);
    const int64_t c = e % q, gi = ti * kTile + ii;
    if (gi >= n) continue;
    double acc = 0.0;
    for (int jj = 0; jj < kTile && tj * kTile + jj < n; ++jj) acc += wy[ii][jj] * static_cast<double>(ys[(tj * kTile + jj) * q + c]);
    atomicAdd(acc_y + gi * q + c, acc);
  }
}

// out = scale·(acc − [rbf] wsum_i·x'_i), scale from kernel_grad_scale (read on the device).
template <typename T>
__global__ void grad_finish_kernel(const double* acc, const double* wsum, const T* xs, int64_t n, int64_t p, int type,
                                   const double* gamma, int side, const double* scale, const double* m, int kappa_slot,
                                   T* out) {
  const double s = scale[0];
  const double sc = kernel_grad_scale(type, gamma[side] / (s * s), m[kappa_slot], s);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n * p;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double diag = type == kKernelRbf ? wsum[k / p] * static_cast<double>(xs[k]) : 0.0;
    out[k] = static_cast<T>(sc * (acc[k] - diag));
  }
}

// A radix pass over the pairs i < j of this tile pair: the histogram of the next digit of the distances that carry
// the prefix.
template <typename T>
__global__ void distance_histogram_kernel(const T* xs, DistanceRows<T> rx, const double* scale, int64_t n, int64_t p,
                                          uint64_t prefix, int bits, unsigned long long* hist) {
  rx = device_rows(rx, scale);
  const int64_t tiles = (n + kTile - 1) / kTile;
  int64_t ti, tj;
  tile_of_block(tiles, &ti, &tj);
  T gx[kPerThread];
  tile_dots(xs, n, p, ti, tj, gx);
  for (int r = 0; r < kPerThread; ++r) {
    const int e = threadIdx.x + kTileThreads * r, ii = e / kTile, jj = e % kTile;
    const int64_t gi = ti * kTile + ii, gj = tj * kTile + jj;
    if (gi >= n || gj >= n || gj <= gi) continue;
    const int64_t digit = pair_digit(rx, static_cast<double>(gx[r]), gi, gj, prefix, bits);
    if (digit >= 0) atomicAdd(hist + digit, 1ull);
  }
}

// A window pass: counts the pairs i < j below [lo, hi] (one atomic per block) and collects those inside it while
// they fit; count[1] keeps counting past the buffer, so the host sees an overflow.
template <typename T>
__global__ void distance_window_kernel(const T* xs, DistanceRows<T> rx, const double* scale, int64_t n, int64_t p,
                                       uint64_t lo, uint64_t hi, double* collect, int64_t* keys,
                                       unsigned long long* count) {
  rx = device_rows(rx, scale);
  __shared__ unsigned long long block_below;
  if (threadIdx.x == 0) block_below = 0;
  const int64_t tiles = (n + kTile - 1) / kTile;
  int64_t ti, tj;
  tile_of_block(tiles, &ti, &tj);  // its __syncthreads publishes block_below = 0
  T gx[kPerThread];
  tile_dots(xs, n, p, ti, tj, gx);
  unsigned long long below = 0;
  for (int r = 0; r < kPerThread; ++r) {
    const int e = threadIdx.x + kTileThreads * r, ii = e / kTile, jj = e % kTile;
    const int64_t gi = ti * kTile + ii, gj = tj * kTile + jj;
    if (gi >= n || gj >= n || gj <= gi) continue;
    double d = 0.0;
    bool exact = false;
    const int where = pair_window(rx, static_cast<double>(gx[r]), gi, gj, lo, hi, &d, &exact);
    below += where < 0;
    if (where == 0) {
      const unsigned long long slot = atomicAdd(count + 1, 1ull);
      if (slot < static_cast<unsigned long long>(kCollectCapacity)) {
        collect[slot] = d;
        keys[slot] = exact ? -1 : gi * n + gj;
      }
    }
  }
  if (below) atomicAdd(&block_below, below);
  __syncthreads();
  if (threadIdx.x == 0 && block_below) atomicAdd(count, block_below);
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

// One launch covers at most 65,535 row tiles: the tiles·(tiles + 1)/2 tile pairs then fit gridDim.x (< 2³¹) and the
// gradient's tiles fit gridDim.y (≤ 65,535), so n ≤ 2,097,120. A larger n is refused here, not launched on a grid
// that wraps (the cast to unsigned covered a fraction of the tiles for n ≥ 2,965,793) or fails.
constexpr int64_t kMaxTiles = 65535;

inline int64_t checked_tiles(int64_t n) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  STD_TORCH_CHECK(tiles <= kMaxTiles, "fastcka CUDA kernel HSIC: n = ", n, " rows, more than the ", kMaxTiles * kTile,
                  " one launch covers");
  return tiles;
}

inline unsigned triangle_blocks(int64_t n) {
  const int64_t tiles = checked_tiles(n);
  return static_cast<unsigned>(tiles * (tiles + 1) / 2);
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

  static void kernel_combine(const Tensor& m, int64_t n, bool unbiased, double noise, Tensor& out);

  static PassOutput hsic_pass(const ScaledRows& a, const ScaledRows& b, int64_t kx, int64_t ky, const Tensor& gamma) {
    const int64_t n = a.xs.size(0);
    PassOutput o = zeroed_pass_output(a.xs, n);
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "kernel_hsic_pass", [&] {
      const cudaStream_t s = cuda::current_stream(a.xs);
      FASTCKA_LAUNCH(1, cuda::kTileThreads, 0, s, cuda::shift_vote_kernel)(
          a.x.const_data_ptr<scalar_t>(), n, a.xs.size(1), static_cast<int>(kx), gamma.const_data_ptr<double>(), 0,
          a.scale.const_data_ptr<double>(), o.m.mutable_data_ptr<double>());
      FASTCKA_LAUNCH(1, cuda::kTileThreads, 0, s, cuda::shift_vote_kernel)(
          b.x.const_data_ptr<scalar_t>(), n, b.xs.size(1), static_cast<int>(ky), gamma.const_data_ptr<double>(), 1,
          b.scale.const_data_ptr<double>(), o.m.mutable_data_ptr<double>());
      FASTCKA_LAUNCH(cuda::triangle_blocks(n), cuda::kTileThreads, 0, s, cuda::hsic_pass_kernel)(
          a.xs.const_data_ptr<scalar_t>(), b.xs.const_data_ptr<scalar_t>(), distance_rows<scalar_t>(a, 0.0),
          distance_rows<scalar_t>(b, 0.0), n, a.xs.size(1), b.xs.size(1), static_cast<int>(kx), static_cast<int>(ky),
          gamma.const_data_ptr<double>(), a.scale.const_data_ptr<double>(), b.scale.const_data_ptr<double>(),
          o.m.mutable_data_ptr<double>(), o.rk.mutable_data_ptr<double>(), o.rl.mutable_data_ptr<double>(),
          o.dk.mutable_data_ptr<double>(), o.dl.mutable_data_ptr<double>());
      cuda::check_launch("kernel_hsic_pass");
    });
    return o;
  }

  static std::tuple<Tensor, Tensor> hsic_grad_pass(const ScaledRows& a, const ScaledRows& b, int64_t kx, int64_t ky,
                                                   const Tensor& gamma, PassOutput& o, const Tensor& grad,
                                                   bool unbiased) {
    const int64_t n = a.xs.size(0), p = a.xs.size(1), q = b.xs.size(1);
    const cudaStream_t s = cuda::current_stream(a.xs);
    sum_into(o.rk, o.m, kmSk);
    sum_into(o.rl, o.m, kmSl);
    sum_into(o.dk, o.m, kmTk);
    sum_into(o.dl, o.m, kmTl);
    Tensor acc_x = zeros_f64(a.xs, n * p), acc_y = zeros_f64(a.xs, n * q);
    Tensor ws_x = zeros_f64(a.xs, n), ws_y = zeros_f64(a.xs, n);
    Tensor dx = empty_like_shape(a.xs, {n, p}, a.xs.scalar_type());
    Tensor dy = empty_like_shape(b.xs, {n, q}, b.xs.scalar_type());
    const int64_t tiles = cuda::checked_tiles(n);
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "kernel_hsic_grad", [&] {
      FASTCKA_LAUNCH(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles)), cuda::kTileThreads, 0, s,
                     cuda::hsic_grad_kernel)(
          a.xs.const_data_ptr<scalar_t>(), b.xs.const_data_ptr<scalar_t>(), distance_rows<scalar_t>(a, 0.0),
          distance_rows<scalar_t>(b, 0.0), n, p, q, static_cast<int>(kx), static_cast<int>(ky),
          gamma.const_data_ptr<double>(), a.scale.const_data_ptr<double>(), b.scale.const_data_ptr<double>(),
          o.m.const_data_ptr<double>(), o.rk.const_data_ptr<double>(), o.rl.const_data_ptr<double>(),
          o.dk.const_data_ptr<double>(), o.dl.const_data_ptr<double>(), grad.const_data_ptr<double>(), unbiased,
          acc_x.mutable_data_ptr<double>(), acc_y.mutable_data_ptr<double>(), ws_x.mutable_data_ptr<double>(),
          ws_y.mutable_data_ptr<double>());
      FASTCKA_LAUNCH(cuda::blocks_for(n * p, cuda::kThreads), cuda::kThreads, 0, s, cuda::grad_finish_kernel)(
          acc_x.const_data_ptr<double>(), ws_x.const_data_ptr<double>(), a.xs.const_data_ptr<scalar_t>(), n, p,
          static_cast<int>(kx), gamma.const_data_ptr<double>(), 0, a.scale.const_data_ptr<double>(),
          o.m.const_data_ptr<double>(), kmKappaX, dx.mutable_data_ptr<scalar_t>());
      FASTCKA_LAUNCH(cuda::blocks_for(n * q, cuda::kThreads), cuda::kThreads, 0, s, cuda::grad_finish_kernel)(
          acc_y.const_data_ptr<double>(), ws_y.const_data_ptr<double>(), b.xs.const_data_ptr<scalar_t>(), n, q,
          static_cast<int>(ky), gamma.const_data_ptr<double>(), 1, b.scale.const_data_ptr<double>(),
          o.m.const_data_ptr<double>(), kmKappaY, dy.mutable_data_ptr<scalar_t>());
      cuda::check_launch("kernel_hsic_grad");
    });
    return std::make_tuple(dx, dy);
  }

  static std::vector<int64_t> distance_histogram(const ScaledRows& a, uint64_t prefix, int bits) {
    const int64_t n = a.xs.size(0);
    Tensor hist = zeros_f64(a.xs, kDigitBins);  // 64-bit counters in float64-sized slots
    FASTCKA_DISPATCH_FLOATING(a.xs.scalar_type(), "distance_histogram", [&] {
      FASTCKA_LAUNCH(cuda::triangle_blocks(n), cuda::kTileThreads, 0, cuda::current_stream(a.xs),
                     cuda::distance_histogram_kernel)(
          a.xs.const_data_ptr<scalar_t>(), distance_rows<scalar_t>(a, 0.0), a.scale.const_data_ptr<double>(), n,
          a.xs.size(1), prefix, bits,
          reinterpret_cast<unsigned long long*>(hist.mutable_data_ptr<double>()));
      cuda::check_launch("distance_histogram");
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
      FASTCKA_LAUNCH(cuda::triangle_blocks(n), cuda::kTileThreads, 0, cuda::current_stream(a.xs),
                     cuda::distance_window_kernel)(
          a.xs.const_data_ptr<scalar_t>(), distance_rows<scalar_t>(a, 0.0), a.scale.const_data_ptr<double>(), n,
          a.xs.size(1), lo, hi,
          buf.mutable_data_ptr<double>(), keys.mutable_data_ptr<int64_t>(),
          reinterpret_cast<unsigned long long*>(count.mutable_data_ptr<double>()));
      cuda::check_launch("distance_window");
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

FASTCKA_CUDA_LIBRARY_IMPL(m) {
  m.impl("kernel_hsic", TORCH_BOX(&kernel_hsic_cuda));
  m.impl("_kernel_hsic_backward", TORCH_BOX(&kernel_hsic_backward_cuda));
  m.impl("median_sq_dist", TORCH_BOX(&median_sq_dist_cuda));
}

}  // namespace fastcka
