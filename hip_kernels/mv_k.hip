// Mat-vec and embedding gather for the K-quants Q2_K .. Q6_K (256-value super-blocks).
// One item is 32 values of a super-block (8 items each); the decoders follow ggml's reference
// dequantization (ggml-quants.c) order, so item i holds values 32*i .. 32*i+31 of its super-block.
// (Q2_K and Q3_K, which the tile product reads too, are in rf_gguf.h.)
#include "rf_prelude.h"
#include "rf_gguf.h"

// The 6-bit (scale, min) pair k of Q4_K / Q5_K's 12 packed bytes.
RF_DEV void rf_scale_min_k4(const uint8_t* s, int k, int* sc, int* m) {
    if (k < 4) {
        *sc = s[k] & 63;
        *m = s[k + 4] & 63;
    } else {
        *sc = (s[k + 4] & 0xf) | ((s[k - 4] >> 6) << 4);
        *m = (s[k + 4] >> 4) | ((s[k] >> 6) << 4);
    }
}

// Q4_K (144 bytes): f16 d, f16 dmin, scales[12], qs[128] nibbles (low nibbles first per 64 values).
struct DecQ4_K {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + (item / 8) * 144;
        const int i = item % 8, p = i / 2, hi = i % 2;
        int sc, m;
        rf_scale_min_k4(b + 4, i, &sc, &m);
        const float d = rf_load_half(b) * (float)sc, mn = rf_load_half(b + 2) * (float)m;
        for (int l = 0; l < 32; ++l) {
            const int q = hi ? (b[16 + 32 * p + l] >> 4) : (b[16 + 32 * p + l] & 0xf);
            v[l] = d * (float)q - mn;
        }
    }
};

// Q5_K (176 bytes): f16 d, f16 dmin, scales[12], qh[32] (bit i = fifth bit of item i), qs[128].
struct DecQ5_K {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + (item / 8) * 176;
        const int i = item % 8, p = i / 2, hi = i % 2;
        int sc, m;
        rf_scale_min_k4(b + 4, i, &sc, &m);
        const float d = rf_load_half(b) * (float)sc, mn = rf_load_half(b + 2) * (float)m;
        for (int l = 0; l < 32; ++l) {
            const int low = hi ? (b[48 + 32 * p + l] >> 4) : (b[48 + 32 * p + l] & 0xf);
            const int q = low | (((b[16 + l] >> i) & 1) << 4);
            v[l] = d * (float)q - mn;
        }
    }
};

// Q6_K (210 bytes): ql[128] low nibbles, qh[64] 2-bit highs, int8 scales[16], f16 d.
struct DecQ6_K {
    static __device__ void deq(const uint8_t* row, int item, int, float* v) {
        const uint8_t* b = row + (item / 8) * 210;
        const int i = item % 8, n = i / 4, j = i % 4;
        const float d = rf_load_half(b + 208);
        for (int l = 0; l < 32; ++l) {
            const int lq = b[64 * n + l + 32 * (j & 1)];
            const int low = j >= 2 ? (lq >> 4) : (lq & 0xf);
            const int q = (low | (((b[128 + 32 * n + l] >> (2 * j)) & 3) << 4)) - 32;
            v[l] = d * (float)(int8_t)b[192 + 8 * n + l / 16 + 2 * j] * (float)q;
        }
    }
};

RF_WEIGHT_KERNELS(q2_K, DecQ2_K)
RF_WEIGHT_KERNELS(q3_K, DecQ3_K)
RF_WEIGHT_KERNELS(q4_K, DecQ4_K)
RF_WEIGHT_KERNELS(q5_K, DecQ5_K)
RF_WEIGHT_KERNELS(q6_K, DecQ6_K)
