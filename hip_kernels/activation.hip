// Gated feed-forward activations over gate|up fused along the last axis: (rows, 2F) -> (rows, F).
// SwiGLU: silu(gate) * up; GeGLU: gelu_tanh(gate) * up. Formulas match the numpy reference.
#include "rf_prelude.h"

extern "C" __global__ void swiglu_f32(const float* __restrict__ gu, float* __restrict__ y, int rows, int f) {
    const long long n = (long long)rows * f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long r = i / f, c = i % f;
        const float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
        y[i] = g * (0.5f + 0.5f * tanhf(0.5f * g)) * u;  // sigmoid through tanh: no overflow
    }
}

extern "C" __global__ void geglu_f32(const float* __restrict__ gu, float* __restrict__ y, int rows, int f) {
    const long long n = (long long)rows * f;
    const float c0 = 0.7978845608028654f;  // sqrt(2 / pi)
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long r = i / f, c = i % f;
        const float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
        y[i] = 0.5f * g * (1.0f + tanhf(c0 * (g + 0.044715f * g * g * g))) * u;
    }
}
