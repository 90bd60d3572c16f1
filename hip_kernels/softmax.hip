// Row-wise softmax and argmax over logits (rows, n): the sampling helpers that let a step return
// only the chosen token id. One block per row.
#include "rf_prelude.h"

extern "C" __global__ void softmax_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ float scratch[RF_MAX_WARPS];
    const float* xr = x + (long long)blockIdx.x * n;
    float* yr = y + (long long)blockIdx.x * n;
    float m = RF_NEG_BIG;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = rf_block_max(m, scratch);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += rf_expf(xr[i] - m);
    s = rf_block_sum(s, scratch);
    const float inv = 1.0f / s;
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = rf_expf(xr[i] - m) * inv;
}

// Index of the largest value; ties go to the lowest index, as numpy.argmax.
extern "C" __global__ void argmax_f32(const float* __restrict__ x, int* __restrict__ out, int n) {
    __shared__ float s_val[RF_MAX_THREADS];
    __shared__ int s_idx[RF_MAX_THREADS];
    const float* xr = x + (long long)blockIdx.x * n;
    float best = RF_NEG_BIG;
    int idx = n;  // sentinel larger than any index
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (xr[i] > best) {  // strictly greater: keeps this thread's first maximum
            best = xr[i];
            idx = i;
        }
    }
    s_val[threadIdx.x] = best;
    s_idx[threadIdx.x] = idx;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int t = 1; t < (int)blockDim.x; ++t) {
            if (s_val[t] > best || (s_val[t] == best && s_idx[t] < idx)) {
                best = s_val[t];
                idx = s_idx[t];
            }
        }
        out[blockIdx.x] = idx < n ? idx : 0;
    }
}
