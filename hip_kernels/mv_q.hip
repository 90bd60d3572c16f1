// Mat-vec and embedding gather for the 32-value block quants: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
// One item is exactly one block, read straight from the packed GGUF bytes (layouts: ggml-common.h).
#include "rf_prelude.h"

// Q4_0 (18 bytes): f16 d, 16 bytes of nibbles; value j = (low nibble - 8) * d, j + 16 = high nibble.
struct DecQ4_0 {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + item * 18;
        const float d = rf_load_half(b);
        for (int j = 0; j < 16; ++j) {
            v[j] = ((int)(b[2 + j] & 0xf) - 8) * d;
            v[j + 16] = ((int)(b[2 + j] >> 4) - 8) * d;
        }
    }
};

// Q4_1 (20 bytes): f16 d, f16 m, nibbles; value = q * d + m.
struct DecQ4_1 {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + item * 20;
        const float d = rf_load_half(b), m = rf_load_half(b + 2);
        for (int j = 0; j < 16; ++j) {
            v[j] = (float)(b[4 + j] & 0xf) * d + m;
            v[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
    }
};

// Q5_0 (22 bytes): f16 d, 32 high bits, nibbles; value = (nibble | high bit << 4) - 16, times d.
struct DecQ5_0 {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + item * 22;
        const float d = rf_load_half(b);
        const uint32_t qh = rf_load_u32(b + 2);
        for (int j = 0; j < 16; ++j) {
            const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
            v[j] = ((int)((b[6 + j] & 0xf) | (h0 << 4)) - 16) * d;
            v[j + 16] = ((int)((b[6 + j] >> 4) | (h1 << 4)) - 16) * d;
        }
    }
};

// Q5_1 (24 bytes): f16 d, f16 m, 32 high bits, nibbles; value = 5-bit q * d + m.
struct DecQ5_1 {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + item * 24;
        const float d = rf_load_half(b), m = rf_load_half(b + 2);
        const uint32_t qh = rf_load_u32(b + 4);
        for (int j = 0; j < 16; ++j) {
            const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
            v[j] = (float)((b[8 + j] & 0xf) | (h0 << 4)) * d + m;
            v[j + 16] = (float)((b[8 + j] >> 4) | (h1 << 4)) * d + m;
        }
    }
};

// Q8_0 (34 bytes): f16 d, 32 int8 values.
struct DecQ8_0 {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + item * 34;
        const float d = rf_load_half(b);
        for (int j = 0; j < 32; ++j) v[j] = (float)(int8_t)b[2 + j] * d;
    }
};

RF_WEIGHT_KERNELS(q4_0, DecQ4_0)
RF_WEIGHT_KERNELS(q4_1, DecQ4_1)
RF_WEIGHT_KERNELS(q5_0, DecQ5_0)
RF_WEIGHT_KERNELS(q5_1, DecQ5_1)
RF_WEIGHT_KERNELS(q8_0, DecQ8_0)

// Q8_0 rows against int8-quantized activations: the int8 dot path (rf_dot4_i8). The activation x is
// given as Q8_0-style blocks too (xq: 32 int8 per block, xd: one float scale per block), so each
// block's product is an integer dot of 8 packed words times d_w * d_x.
// y[r, row] for one activation row r = blockIdx.y; one warp per weight row.
extern "C" __global__ void mv_q8_0_q8(const uint8_t* __restrict__ w, long long row_bytes,
                                      const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                      float* __restrict__ y, int ldy, int n_in, int n_out) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    const int r = blockIdx.y;
    if (row >= n_out) return;
    const int n_blocks = n_in / 32;
    const uint8_t* wr = w + (long long)row * row_bytes;
    const int8_t* xr = xq + (long long)r * n_in;
    const float* dr = xd + (long long)r * n_blocks;
    float acc = 0.0f;
    for (int blk = lane; blk < n_blocks; blk += WARP_SIZE) {
        const uint8_t* b = wr + blk * 34;
        int sum = 0;
        for (int k = 0; k < 8; ++k) {
            const uint8_t* wq = b + 2 + 4 * k;  // 2-byte aligned only: assemble the word bytewise
            const int wv = (int)rf_load_u32(wq);
            const uint8_t* xv = (const uint8_t*)(xr + blk * 32 + 4 * k);
            sum = rf_dot4_i8(wv, (int)rf_load_u32(xv), sum);
        }
        acc += (float)sum * rf_load_half(b) * dr[blk];
    }
    acc = rf_warp_sum(acc);
    if (lane == 0) y[(long long)r * ldy + row] = acc;
}

// Quantize activation rows to the blocks mv_q8_0_q8 reads: per 32 values, d = max|x| / 127.
// One thread per block; grid covers n_rows * n_in / 32 blocks.
extern "C" __global__ void quantize_q8(const float* __restrict__ x, int8_t* __restrict__ xq,
                                       float* __restrict__ xd, int n_blocks_total) {
    const int blk = blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= n_blocks_total) return;
    const float* xb = x + (long long)blk * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(xb[i]));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; ++i) xq[(long long)blk * 32 + i] = (int8_t)rintf(xb[i] * inv);
    xd[blk] = d;
}
