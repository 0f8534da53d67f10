// The CUDA kernels of linear_hsic (csrc/ops/cuda/linear_hsic_kernel.cu), compiled for the CPU emulation (cuda_emu.h).
#include "cuda/linear_hsic_kernel.cu"
