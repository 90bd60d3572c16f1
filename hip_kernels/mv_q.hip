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
