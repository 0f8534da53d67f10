// The backend contract: each op's driver (csrc/ops/*_impl.h) is a template over a backend D, written once; the CPU
// (cpu/*.cpp, cpu/primitives.h), CUDA (cuda/*.cu, cuda/primitives.cuh) and CUDA-emulation (the same .cu sources
// against csrc/emu/cuda_emu.h) backends provide the same static functions, named as below. Tensors stay on the
// input's device; nothing here reads device memory on the host except where a line says "host".
//
// shared reductions (CpuBackend, CudaBackend):
//   center_normalise(x, m, slot) -> xc   column-centred, times an exact power of two stored in m[slot]
//   row_sq(xc) -> float64 [n]            squared row norms
//   dot_into(a, b, m, slot)              m[slot] = Σ a∘b (float64)          sum_into(a, m, slot): m[slot] = Σ a
//   dot_add_into(a, b, m, slot, w)       m[slot] += w·Σ a∘b (float64; w = ±1 or 2, exact)
//   kGramPanel                           column panel width of symmetric Grams (linear_hsic_impl.h: gram_sq_add)
//   linear_combine(m, n, unbiased, noise, out3)     the three linear HSICs from the moments (linear_hsic.h)
//   linear_grad_side(...)                one side's linear-HSIC gradient from its products
// kernel HSIC and the median (CpuKernelHsic, CudaKernelHsic):
//   scale_rows(x) -> ScaledRows          x' = s(x − x₀), norms, s on the device, the original rows
//   shift_row_indices(x) -> int64 [255]  the seeded rows whose column medians are x₀ (built on x's device)
//   hsic_pass(a, b, kx, ky, gamma, ek, el) -> PassOutput    off-diagonal sums, row sums, diagonals, κ, shift
//                                        (tiled_hsic.h); ek, el (float64 n×n, or null): the entries K − c, L − c
//                                        written out too (both triangles; 0 on the diagonal), for small n
//   kernel_combine(m, n, unbiased, noise, out)      the three kernel HSICs
//   hsic_grad_pass(a, b, kx, ky, gamma, o, grad, unbiased) -> (dx, dy)
//   distance_histogram(a, prefix, bits) -> host counts of the next digit      (median.h: pair_digit)
//   distance_window(a, lo, hi) -> host WindowPass    below / inside counts, inside values and pair keys
//   exact_distances(a, keys) -> host values          sample_distances(a, m, seed) -> host values
//   host_norms(a), host_scale(a)         host copies;  scalar_tensor(like, v): a 0-d float64 on like's device
// Gram centring (CpuCenter, CudaCenter): center_apply(k, mode), asymmetric_pairs(k, threshold).
// Fourier spectrum (CpuSpectrum, CudaSpectrum): fourier_basis(x, p), spectrum_fold, spectrum_fold_backward.
#pragma once
