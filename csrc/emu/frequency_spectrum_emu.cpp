// The CUDA kernels of frequency_spectrum (csrc/ops/cuda/frequency_spectrum_kernel.cu), compiled for the CPU emulation (cuda_emu.h).
#include "cuda/frequency_spectrum_kernel.cu"
