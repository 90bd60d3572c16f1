// Attention of query rows against the KV cache, with GQA and optional sliding window.
// Query row n (of N) sits at position row_pos[n] of slot row_slot[n] and sees cached keys j with
// j <= pos and, with a window, pos - j < window. Serves decode (one row per sequence) and prefill
// (a sequence's rows, each with its own causal limit) alike.
//
// One block per (query head, row); each warp walks every n_warps-th key with an online softmax, lanes
// split head_dim; the warps' partial (max, sum, acc) are merged through shared memory at the end.
#include "rf_prelude.h"

#define RF_ATT_MAX_HD 256
#define RF_ATT_DPL ((RF_ATT_MAX_HD + WARP_SIZE - 1) / WARP_SIZE)  // head dims per lane
#define RF_ATT_WARPS 4

// q: (N, heads, hd); kc, vc: one layer's cache (n_slots, kv_heads, n_ctx, hd); out: (N, heads * hd).
extern "C" __global__ void attn_f32(const float* __restrict__ q, const float* __restrict__ kc,
                                   const float* __restrict__ vc, float* __restrict__ out,
                                   const int* __restrict__ row_slot, const int* __restrict__ row_pos,
                                   int heads, int kv_heads, int hd, int n_ctx, float scale, int window) {
    __shared__ float s_max[RF_ATT_WARPS], s_sum[RF_ATT_WARPS];
    __shared__ float s_acc[RF_ATT_WARPS * RF_ATT_MAX_HD];
    const int h = blockIdx.x, n = blockIdx.y;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = blockDim.x / WARP_SIZE;
    const int kvh = h / (heads / kv_heads);
    const int p = row_pos[n];
    const int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    const float* qr = q + ((long long)n * heads + h) * hd;
    const long long head_off = ((long long)row_slot[n] * kv_heads + kvh) * n_ctx * hd;
    const float* kb = kc + head_off;
    const float* vb = vc + head_off;

    float qv[RF_ATT_DPL], acc[RF_ATT_DPL];
    for (int d = 0; d < RF_ATT_DPL; ++d) {
        const int i = lane + d * WARP_SIZE;
        qv[d] = i < hd ? qr[i] : 0.0f;
        acc[d] = 0.0f;
    }
    float m = RF_NEG_BIG, l = 0.0f;
    for (int j = lo + warp; j <= p; j += n_warps) {
        const float* kr = kb + (long long)j * hd;
        float s = 0.0f;
        for (int d = 0; d < RF_ATT_DPL; ++d) {
            const int i = lane + d * WARP_SIZE;
            if (i < hd) s += qv[d] * kr[i];
        }
        s = rf_warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float c = rf_expf(m - m_new), e = rf_expf(s - m_new);
        l = l * c + e;
        const float* vr = vb + (long long)j * hd;
        for (int d = 0; d < RF_ATT_DPL; ++d) {
            const int i = lane + d * WARP_SIZE;
            if (i < hd) acc[d] = acc[d] * c + e * vr[i];
        }
        m = m_new;
    }
    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = l;
    }
    for (int d = 0; d < RF_ATT_DPL; ++d) {
        const int i = lane + d * WARP_SIZE;
        if (i < hd) s_acc[warp * RF_ATT_MAX_HD + i] = acc[d];
    }
    __syncthreads();
    float m_all = s_max[0];
    for (int w = 1; w < n_warps; ++w) m_all = fmaxf(m_all, s_max[w]);
    float total = 0.0f;
    for (int w = 0; w < n_warps; ++w) total += s_sum[w] * rf_expf(s_max[w] - m_all);
    float* o = out + ((long long)n * heads + h) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < n_warps; ++w) v += s_acc[w * RF_ATT_MAX_HD + i] * rf_expf(s_max[w] - m_all);
        o[i] = v / total;
    }
}
