// Host/device qualifiers for the shared math: __host__ __device__ under nvcc, plain inline otherwise.
#pragma once

#if defined(__CUDACC__)
#define FASTCKA_HD __host__ __device__ __forceinline__
#else
#define FASTCKA_HD inline
#endif
