// Gated feed-forward activations over gate|up fused along the last axis: (rows, 2F) -> (rows, F).
// SwiGLU: silu(gate) * up; GeGLU: gelu_tanh(gate) * up. Formulas match the numpy reference.
#include "rf_prelude.h"

// rf_silu_mul and rf_gelu_mul are in the prelude (the int8 mat-vec's fused form uses them too).

extern "C" __global__ void swiglu_f32(const float* __restrict__ gu, float* __restrict__ y, int rows, int f) {
    const long long n = (long long)rows * f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long r = i / f, c = i % f;
        const float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
        y[i] = rf_silu_mul(g, u);
    }
}

extern "C" __global__ void geglu_f32(const float* __restrict__ gu, float* __restrict__ y, int rows, int f) {
    const long long n = (long long)rows * f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long r = i / f, c = i % f;
        const float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
        y[i] = rf_gelu_mul(g, u);
    }
}

// The same activations, their output also quantized for the down projection (f a multiple of 32).
// grid = (ceil(f / (blockDim.x * per_thread)), rows), as quantize_q8 in mmvq.hip.
template <bool GELU>
RF_DEV void rf_gated_q8(const float* __restrict__ gu, float* __restrict__ y, int f, int8_t* __restrict__ xq,
                        float* __restrict__ xd) {
    const long long r = blockIdx.y;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const float* g = gu + r * 2 * f;
#if defined(RF_Q8_COOPERATIVE)
    if (i >= f) return;  // whole groups of 32 leave together
    const float v = GELU ? rf_gelu_mul(g[i], g[f + i]) : rf_silu_mul(g[i], g[f + i]);
    y[r * f + i] = v;
    rf_quantize_lane(v, i, xq + r * f, xd + r * (f / RF_Q8) * 2);
#else
    if (i * RF_Q8 >= f) return;
    float v[RF_Q8];
    for (int k = 0; k < RF_Q8; ++k) {
        const long long c = i * RF_Q8 + k;
        v[k] = GELU ? rf_gelu_mul(g[c], g[f + c]) : rf_silu_mul(g[c], g[f + c]);
        y[r * f + c] = v[k];
    }
    rf_quantize_serial(v, xq + r * f + i * RF_Q8, xd + 2 * (r * (f / RF_Q8) + i));
#endif
}

extern "C" __global__ void swiglu_q8(const float* __restrict__ gu, float* __restrict__ y, int f,
                                     int8_t* __restrict__ xq, float* __restrict__ xd) {
    rf_gated_q8<false>(gu, y, f, xq, xd);
}

extern "C" __global__ void geglu_q8(const float* __restrict__ gu, float* __restrict__ y, int f,
                                    int8_t* __restrict__ xq, float* __restrict__ xd) {
    rf_gated_q8<true>(gu, y, f, xq, xd);
}
