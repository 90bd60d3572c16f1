// RMSNorm over rows of n: y = x / sqrt(mean(x^2) + eps) * w. One block per row; also used per
// attention head (rows = tokens * heads, n = head_dim) for the q/k norms of qwen3 and gemma3.
// x is read as (tokens, heads, n) with tokens ldx elements apart, so the heads of a column slice of a
// fused projection are read in place (heads = 1, ldx = n: plain contiguous rows); y is contiguous.
#include "rf_prelude.h"

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, long long ldx, int heads,
                                        float* __restrict__ y, const float* __restrict__ w, int n,
                                        float eps) {
    __shared__ float scratch[RF_MAX_WARPS];
    const float* xr = x + (long long)(blockIdx.x / heads) * ldx + (long long)(blockIdx.x % heads) * n;
    float* yr = y + (long long)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = rf_block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}
