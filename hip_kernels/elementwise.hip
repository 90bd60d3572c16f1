// Element-wise helpers of the decoder: residual add, scaling, logit soft-capping, sub-matrix copy
// (a strided view made contiguous, for ops whose kernels read contiguous rows only) and row gathers
// of float32 activations. Grid-stride loops.
#include "rf_prelude.h"

#define RF_GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, long long n) {
    RF_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

extern "C" __global__ void scale_f32(const float* __restrict__ x, float* __restrict__ y, long long n,
                                     float s) {
    RF_GRID_STRIDE(i, n) y[i] = x[i] * s;
}

extern "C" __global__ void softcap_f32(const float* __restrict__ x, float* __restrict__ y, long long n,
                                       float cap) {
    RF_GRID_STRIDE(i, n) y[i] = tanhf(x[i] / cap) * cap;
}

// dst[r, c] = src[r, c] for a rows x cols window; leading dimensions in elements. One block per row.
extern "C" __global__ void copy2d_f32(const float* __restrict__ src, long long lds, float* __restrict__ dst,
                                      long long ldd, int cols) {
    const long long r = blockIdx.x;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[r * ldd + c] = src[r * lds + c];
}

// dst[t, :] = src[ids[t], :]; one block per output row.
extern "C" __global__ void gather_rows_f32(const float* __restrict__ src, const int* __restrict__ ids,
                                           float* __restrict__ dst, int cols) {
    const float* s = src + (long long)ids[blockIdx.x] * cols;
    float* d = dst + (long long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

// out[i] = sum over 4-byte words of the int8 dot of a[i*n4..] and b[i*n4..]: exercises rf_dot4_i8.
extern "C" __global__ void dot4_i8_rows(const int* __restrict__ a, const int* __restrict__ b,
                                        int* __restrict__ out, int n4, int rows) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    int acc = 0;
    for (int k = 0; k < n4; ++k) acc = rf_dot4_i8(a[(long long)r * n4 + k], b[(long long)r * n4 + k], acc);
    out[r] = acc;
}
