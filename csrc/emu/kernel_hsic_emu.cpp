// The CUDA kernels of kernel_hsic (csrc/ops/cuda/kernel_hsic_kernel.cu), compiled for the CPU emulation (cuda_emu.h).
#include "cuda/kernel_hsic_kernel.cu"
