// The CUDA kernels of center_gram (csrc/ops/cuda/center_gram_kernel.cu), compiled for the CPU emulation (cuda_emu.h).
#include "cuda/center_gram_kernel.cu"
