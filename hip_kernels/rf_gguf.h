// rf_gguf.h: float decoders of GGUF's own block layouts for the weight types that have no split
// layout (rf_blocks.h): the unquantized F32 / F16 / BF16 rows and the K-quants Q2_K and Q3_K. An item
// is 32 consecutive values of a row (`deq(row, item, n_in, v)`; values past n_in are 0). The float
// mat-vec and gather (mv_float.hip, mv_k.hip) and the tile product's prompts (mmf.hip) read them.
#pragma once
#include "rf_prelude.h"

struct DecF32 {
    static __device__ void deq(const uint8_t* row, int item, int n_in, float* v) {
        const float* r = (const float*)row;
        const int base = item * RF_ITEM;
        for (int i = 0; i < RF_ITEM; ++i) v[i] = base + i < n_in ? r[base + i] : 0.0f;
    }
};

struct DecF16 {
    static __device__ void deq(const uint8_t* row, int item, int n_in, float* v) {
        const rf_half* r = (const rf_half*)row;
        const int base = item * RF_ITEM;
        for (int i = 0; i < RF_ITEM; ++i) v[i] = base + i < n_in ? rf_half2float(r[base + i]) : 0.0f;
    }
};

struct DecBF16 {
    static __device__ void deq(const uint8_t* row, int item, int n_in, float* v) {
        const rf_bf16* r = (const rf_bf16*)row;
        const int base = item * RF_ITEM;
        for (int i = 0; i < RF_ITEM; ++i) v[i] = base + i < n_in ? rf_bf162float(r[base + i]) : 0.0f;
    }
};

// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64] 2-bit, f16 d, f16 dmin.
struct DecQ2_K {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + (item / 8) * 84;
        const int i = item % 8, n = i / 4, shift = 2 * (i % 4);
        const float d = rf_load_half(b + 80), dmin = rf_load_half(b + 82);
        for (int l = 0; l < 32; ++l) {
            const int sc = b[8 * n + 2 * (i % 4) + l / 16];
            const int q = (b[16 + 32 * n + l] >> shift) & 3;
            v[l] = d * (float)(sc & 0xf) * (float)q - dmin * (float)(sc >> 4);
        }
    }
};

// Q3_K (110 bytes): hmask[32], qs[64] 2-bit, scales[12] (16 packed 6-bit scales), f16 d.
struct DecQ3_K {
    static __device__ int scale6(const uint8_t* s, int k) {
        const int low = k < 8 ? (s[k] & 0xf) : (s[k - 8] >> 4);
        const int high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        return (low | (high << 4)) - 32;
    }
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + (item / 8) * 110;
        const int i = item % 8, n = i / 4, j = i % 4;
        const float d = rf_load_half(b + 108);
        const float d0 = d * (float)scale6(b + 96, 8 * n + 2 * j);
        const float d1 = d * (float)scale6(b + 96, 8 * n + 2 * j + 1);
        const int hbit = 1 << (4 * n + j);
        for (int l = 0; l < 32; ++l) {
            const int q = ((b[32 + 32 * n + l] >> (2 * j)) & 3) - ((b[l] & hbit) ? 0 : 4);
            v[l] = (l < 16 ? d0 : d1) * (float)q;
        }
    }
};
