// Rotary position embedding, and the K/V append into the preallocated cache.
// Angles come from host-built cos/sin tables (tab[pos * half + i], float64 math rounded once) so the
// rotation matches the numpy reference bit-for-bit in its inputs. NeoX layout pairs (i, i + dim/2);
// the original layout pairs (2i, 2i + 1). Dimensions past rot_dim pass through.
#include "rf_prelude.h"

RF_DEV void rf_rope_row(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ cs,
                        const float* __restrict__ sn, int hd, int rot_dim, int neox) {
    const int half = rot_dim / 2;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        if (i >= rot_dim) {
            y[i] = x[i];
            continue;
        }
        const int pair = neox ? (i < half ? i : i - half) : i / 2;
        const int first = neox ? (i < half) : (i % 2 == 0);
        const int other = neox ? (first ? i + half : i - half) : (first ? i + 1 : i - 1);
        const float c = cs[pair], s = sn[pair];
        y[i] = first ? x[i] * c - x[other] * s : x[i] * c + x[other] * s;
    }
}

// x: (T, heads, hd) with tokens ldx elements apart (a column slice of a fused projection is read in
// place); y: (T, heads, hd) contiguous, not aliasing x; pos: (T,). One block per (token, head).
extern "C" __global__ void rope_f32(const float* __restrict__ x, long long ldx, float* __restrict__ y,
                                   const float* __restrict__ cos_tab, const float* __restrict__ sin_tab,
                                   const int* __restrict__ pos, int heads, int hd, int rot_dim, int neox) {
    const int t = blockIdx.x / heads, h = blockIdx.x % heads;
    const long long tab = (long long)pos[t] * (rot_dim / 2);
    rf_rope_row(x + (long long)t * ldx + (long long)h * hd, y + (long long)blockIdx.x * hd, cos_tab + tab,
                sin_tab + tab, hd, rot_dim, neox);
}

// q and k of the same tokens in one launch (each as rope_f32): blocks (token, q head) then (token, k
// head); yq (T, heads_q, hd) and yk (T, heads_k, hd) contiguous.
extern "C" __global__ void rope_qk_f32(const float* __restrict__ q, long long ldq, const float* __restrict__ k,
                                      long long ldk, float* __restrict__ yq, float* __restrict__ yk,
                                      const float* __restrict__ cos_tab, const float* __restrict__ sin_tab,
                                      const int* __restrict__ pos, int heads_q, int heads_k, int hd,
                                      int rot_dim, int neox) {
    const int per_token = heads_q + heads_k;
    const int t = blockIdx.x / per_token, h = blockIdx.x % per_token;
    const long long tab = (long long)pos[t] * (rot_dim / 2);
    const float* x = h < heads_q ? q + (long long)t * ldq + (long long)h * hd
                                 : k + (long long)t * ldk + (long long)(h - heads_q) * hd;
    float* y = h < heads_q ? yq + ((long long)t * heads_q + h) * hd : yk + ((long long)t * heads_k + h - heads_q) * hd;
    rf_rope_row(x, y, cos_tab + tab, sin_tab + tab, hd, rot_dim, neox);
}

// Cache layout per layer: (n_slots, kv_heads, n_ctx, hd) of KV::T. Row n of k/v (N, kv_heads, hd;
// rows ldk and ldv elements apart, so slices of a fused projection are read in place) goes to slot
// row_slot[n], position row_pos[n]. One block per (row, kv head).
template <class KV>
RF_DEV void rf_kv_append(const float* __restrict__ k, long long ldk, const float* __restrict__ v, long long ldv,
                         typename KV::T* __restrict__ kc, typename KV::T* __restrict__ vc,
                         const int* __restrict__ row_slot, const int* __restrict__ row_pos, int kv_heads, int hd,
                         int n_ctx) {
    const int n = blockIdx.x / kv_heads, h = blockIdx.x % kv_heads;
    const float* kr = k + (long long)n * ldk + (long long)h * hd;
    const float* vr = v + (long long)n * ldv + (long long)h * hd;
    const long long dst = (((long long)row_slot[n] * kv_heads + h) * n_ctx + row_pos[n]) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        KV::put(kc, dst + i, kr[i]);
        KV::put(vc, dst + i, vr[i]);
    }
}

#define RF_KV_APPEND(S, KV)                                                                             \
    extern "C" __global__ void kv_append_##S(const float* __restrict__ k, long long ldk,                 \
                                            const float* __restrict__ v, long long ldv,                 \
                                            KV::T* __restrict__ kc, KV::T* __restrict__ vc,             \
                                            const int* __restrict__ row_slot,                          \
                                            const int* __restrict__ row_pos, int kv_heads, int hd,     \
                                            int n_ctx) {                                               \
        rf_kv_append<KV>(k, ldk, v, ldv, kc, vc, row_slot, row_pos, kv_heads, hd, n_ctx);              \
    }

RF_KV_APPEND(f32, rf_kv_f32)
RF_KV_APPEND(f16, rf_kv_f16)

// The fused form: rotate k and write it, with v, straight into the cache (one pass, no k copy).
extern "C" __global__ void rope_kv_append_f32(const float* __restrict__ k, long long ldk,
                                             const float* __restrict__ v, long long ldv,
                                             float* __restrict__ kc, float* __restrict__ vc,
                                             const float* __restrict__ cos_tab,
                                             const float* __restrict__ sin_tab,
                                             const int* __restrict__ row_slot,
                                             const int* __restrict__ row_pos, int kv_heads, int hd,
                                             int n_ctx, int rot_dim, int neox) {
    const int n = blockIdx.x / kv_heads, h = blockIdx.x % kv_heads;
    const float* vr = v + (long long)n * ldv + (long long)h * hd;
    const long long dst = (((long long)row_slot[n] * kv_heads + h) * n_ctx + row_pos[n]) * hd;
    const long long tab = (long long)row_pos[n] * (rot_dim / 2);
    rf_rope_row(k + (long long)n * ldk + (long long)h * hd, kc + dst, cos_tab + tab, sin_tab + tab, hd,
                rot_dim, neox);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) vc[dst + i] = vr[i];
}
