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

// Index of the largest value; ties go to the lowest index, as numpy.argmax. Each thread scans a
// stride of the row, then (value, index) pairs are reduced by xor-shuffles within warps and once more
// over the warps' winners.
RF_DEV void rf_argmax_merge(float& best, int& idx, float v, int i) {
    if (v > best || (v == best && i < idx)) {
        best = v;
        idx = i;
    }
}

extern "C" __global__ void argmax_f32(const float* __restrict__ x, int* __restrict__ out, int n) {
    __shared__ float s_val[RF_MAX_WARPS];
    __shared__ int s_idx[RF_MAX_WARPS];
    const float* xr = x + (long long)blockIdx.x * n;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    float best = RF_NEG_BIG;
    int idx = n;  // sentinel larger than any index
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (xr[i] > best) {  // strictly greater: keeps this thread's first maximum
            best = xr[i];
            idx = i;
        }
    }
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) {
        const float v = RF_SHFL_XOR(best, m);
        const int i = RF_SHFL_XOR(idx, m);
        rf_argmax_merge(best, idx, v, i);
    }
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < n_warps; ++w) rf_argmax_merge(best, idx, s_val[w], s_idx[w]);
        out[blockIdx.x] = idx;
    }
}
