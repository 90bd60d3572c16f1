// Mat-vec and embedding gather for unquantized weights: F32, F16, BF16 rows of n_in values.
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

RF_WEIGHT_KERNELS(f32, DecF32)
RF_WEIGHT_KERNELS(f16, DecF16)
RF_WEIGHT_KERNELS(bf16, DecBF16)
