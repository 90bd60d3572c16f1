// Rotary position embedding, and the K/V append into the preallocated cache.
// Angles come from host-built cos/sin tables (tab[pos * half + i], float64 math rounded once) so the
// rotation matches the numpy reference bit-for-bit in its inputs. NeoX layout pairs (i, i + dim/2);
// the original layout pairs (2i, 2i + 1). Dimensions past rot_dim pass through (rf_rope_at, in the
// prelude: attention.hip rotates decode queries and keys with it too).
#include "rf_prelude.h"

RF_DEV void rf_rope_row(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ cs,
                        const float* __restrict__ sn, int hd, int rot_dim, int neox) {
    for (int i = threadIdx.x; i < hd; i += blockDim.x) y[i] = rf_rope_at(x, cs, sn, i, rot_dim, neox);
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

// A layer's whole step before attention, in one launch: q rotated into yq (T, heads_q, hd), contiguous;
// k rotated and written, with v, straight into the cache (layout as above; q, k, v rows ldq / ldk / ldv
// elements apart, slices of a fused projection read in place). Rotation positions pos[n] (the tables'
// rows), cache places (row_slot[n], row_pos[n]). Blocks (row, q head) then (row, kv head). The same
// arithmetic as rope_qk_f32 followed by kv_append_<type>: the same bits.
template <class KV>
RF_DEV void rf_rope_qk_kv_append(const float* __restrict__ q, long long ldq, const float* __restrict__ k,
                                 long long ldk, const float* __restrict__ v, long long ldv, float* __restrict__ yq,
                                 typename KV::T* __restrict__ kc, typename KV::T* __restrict__ vc,
                                 const float* __restrict__ cos_tab, const float* __restrict__ sin_tab,
                                 const int* __restrict__ pos, const int* __restrict__ row_slot,
                                 const int* __restrict__ row_pos, int heads_q, int kv_heads, int hd, int n_ctx,
                                 int rot_dim, int neox) {
    const int per_row = heads_q + kv_heads;
    const int n = blockIdx.x / per_row, h = blockIdx.x % per_row;
    const long long tab = (long long)pos[n] * (rot_dim / 2);
    const float* cs = cos_tab + tab;
    const float* sn = sin_tab + tab;
    if (h < heads_q) {
        rf_rope_row(q + (long long)n * ldq + (long long)h * hd, yq + ((long long)n * heads_q + h) * hd, cs, sn,
                    hd, rot_dim, neox);
        return;
    }
    const int kh = h - heads_q;
    const float* kr = k + (long long)n * ldk + (long long)kh * hd;
    const float* vr = v + (long long)n * ldv + (long long)kh * hd;
    const long long dst = (((long long)row_slot[n] * kv_heads + kh) * n_ctx + row_pos[n]) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        KV::put(kc, dst + i, rf_rope_at(kr, cs, sn, i, rot_dim, neox));
        KV::put(vc, dst + i, vr[i]);
    }
}

#define RF_ROPE_QK_KV_APPEND(S, KV)                                                                     \
    extern "C" __global__ void rope_qk_kv_append_##S(                                                  \
        const float* __restrict__ q, long long ldq, const float* __restrict__ k, long long ldk,         \
        const float* __restrict__ v, long long ldv, float* __restrict__ yq, KV::T* __restrict__ kc,     \
        KV::T* __restrict__ vc, const float* __restrict__ cos_tab, const float* __restrict__ sin_tab,   \
        const int* __restrict__ pos, const int* __restrict__ row_slot, const int* __restrict__ row_pos, \
        int heads_q, int kv_heads, int hd, int n_ctx, int rot_dim, int neox) {                          \
        rf_rope_qk_kv_append<KV>(q, ldq, k, ldk, v, ldv, yq, kc, vc, cos_tab, sin_tab, pos, row_slot,   \
                                 row_pos, heads_q, kv_heads, hd, n_ctx, rot_dim, neox);                 \
    }

RF_ROPE_QK_KV_APPEND(f32, rf_kv_f32)
RF_ROPE_QK_KV_APPEND(f16, rf_kv_f16)
