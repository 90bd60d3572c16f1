// Attention of query rows against the KV cache, with GQA and optional sliding window.
// Query row n (of N) sits at position row_pos[n] of slot row_slot[n] and sees cached keys j with
// j <= pos and, with a window, pos - j < window. Serves decode (one row per sequence) and prefill
// (a sequence's rows, each with its own causal limit) alike.
//
// One block per (query head, row). Keys go in tiles of one per lane: each lane scores its own key
// (a whole dot product, 16-byte loads when head_dim % 4 == 0), the tile's max and sum are one warp
// reduction, and then the lanes split head_dim to add the tile's values (every lane's weight
// broadcast in turn). Warps take every n_warps-th tile with an online softmax; their partial (max,
// sum, acc) are merged through shared memory at the end. Scoring a tile at once, rather than one key
// per warp reduction, keeps many independent loads in flight.
#include "rf_prelude.h"

#define RF_ATT_MAX_HD 256
#define RF_ATT_DPL ((RF_ATT_MAX_HD + WARP_SIZE - 1) / WARP_SIZE)  // head dims per lane
#define RF_ATT_WARPS 4

// q . k over hd values (q already scaled), in four independent partial sums; 16-byte loads of the
// key row when its length allows (4 floats or 8 halves).
RF_DEV float rf_att_dot(const float* q, const float* k, int hd) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    if ((hd & 3) == 0) {
        for (int d = 0; d < hd; d += 4) {
            const rf_u32x4 v = rf_load16(k + d);
            s0 += q[d] * rf_bits_as_float(v.x);
            s1 += q[d + 1] * rf_bits_as_float(v.y);
            s2 += q[d + 2] * rf_bits_as_float(v.z);
            s3 += q[d + 3] * rf_bits_as_float(v.w);
        }
    } else {
        for (int d = 0; d < hd; ++d) s0 += q[d] * k[d];
    }
    return (s0 + s1) + (s2 + s3);
}

RF_DEV float rf_half_lo(uint32_t w) { return rf_half2float((rf_half)(w & 0xffffu)); }
RF_DEV float rf_half_hi(uint32_t w) { return rf_half2float((rf_half)(w >> 16)); }

RF_DEV float rf_att_dot(const float* q, const rf_half* k, int hd) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    if ((hd & 7) == 0) {
        for (int d = 0; d < hd; d += 8) {
            const rf_u32x4 v = rf_load16(k + d);
            s0 += q[d] * rf_half_lo(v.x) + q[d + 1] * rf_half_hi(v.x);
            s1 += q[d + 2] * rf_half_lo(v.y) + q[d + 3] * rf_half_hi(v.y);
            s2 += q[d + 4] * rf_half_lo(v.z) + q[d + 5] * rf_half_hi(v.z);
            s3 += q[d + 6] * rf_half_lo(v.w) + q[d + 7] * rf_half_hi(v.w);
        }
    } else {
        for (int d = 0; d < hd; ++d) s0 += q[d] * rf_half2float(k[d]);
    }
    return (s0 + s1) + (s2 + s3);
}

// The online softmax of one query row over keys lo..hi (inclusive) of one cached head. Leaves, for the
// whole block, the largest score in *m_out, the sum of exp(score - m) in *l_out, and
// sum of exp(score - m) * v in s_out[0..hd) (shared memory). Empty range: m = RF_NEG_BIG, l = 0.
template <class KV>
RF_DEV void rf_attn_range(const float* __restrict__ qr, const typename KV::T* __restrict__ kb,
                          const typename KV::T* __restrict__ vb, int lo, int hi, int hd, float scale,
                          float* s_q, float* s_max, float* s_sum, float* s_acc, float* m_out, float* l_out,
                          float* s_out) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = blockDim.x / WARP_SIZE;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) s_q[i] = qr[i] * scale;
    __syncthreads();
    float acc[RF_ATT_DPL];
    RF_UNROLL for (int d = 0; d < RF_ATT_DPL; ++d) acc[d] = 0.0f;
    float m = RF_NEG_BIG, l = 0.0f;
    for (int t0 = lo + warp * WARP_SIZE; t0 <= hi; t0 += n_warps * WARP_SIZE) {
        const int j = t0 + lane;
        float s = RF_NEG_BIG;
        if (j <= hi) s = rf_att_dot(s_q, kb + (long long)j * hd, hd);
        const float m_new = fmaxf(m, rf_warp_max(s));
        const float e = j <= hi ? rf_expf(s - m_new) : 0.0f;
        const float c = rf_expf(m - m_new);
        l = l * c + rf_warp_sum(e);
        RF_UNROLL for (int d = 0; d < RF_ATT_DPL; ++d) acc[d] *= c;
        const int count = hi - t0 + 1 < WARP_SIZE ? hi - t0 + 1 : WARP_SIZE;
        for (int u = 0; u < count; ++u) {
            const float w = RF_SHFL(e, u);
            const typename KV::T* vr = vb + (long long)(t0 + u) * hd;
            RF_UNROLL for (int d = 0; d < RF_ATT_DPL; ++d) {
                const int i = lane + d * WARP_SIZE;
                if (i < hd) acc[d] += w * KV::get(vr, i);
            }
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
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < n_warps; ++w) v += s_acc[w * RF_ATT_MAX_HD + i] * rf_expf(s_max[w] - m_all);
        s_out[i] = v;
    }
    *m_out = m_all;
    *l_out = total;
    __syncthreads();
}

// Write one head's normalized output o[0..hd) (into out's row), quantizing it for the output
// projection when xq is given (hd % 32 == 0 then).
RF_DEV void rf_attn_write(const float* s_out, float inv, float* __restrict__ out, long long row, long long at,
                          int hd, int8_t* __restrict__ xq, float* __restrict__ xd) {
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        const float v = s_out[i] * inv;
        out[row + at + i] = v;
#if defined(RF_Q8_COOPERATIVE)
        if (xq) rf_quantize_lane(v, at + i, xq + row, xd + row / RF_Q8 * 2);
#endif
    }
#if !defined(RF_Q8_COOPERATIVE)
    if (xq) {
        for (int g = threadIdx.x; g < hd / RF_Q8; g += blockDim.x) {
            const long long e = at + (long long)g * RF_Q8;
            rf_quantize_serial(out + row + e, xq + row + e, xd + 2 * ((row + e) / RF_Q8));
        }
    }
#endif
}

#define RF_ATT_SHARED                                                                                   \
    __shared__ float s_q[RF_ATT_MAX_HD], s_out[RF_ATT_MAX_HD];                                        \
    __shared__ float s_max[RF_ATT_WARPS], s_sum[RF_ATT_WARPS];                                         \
    __shared__ float s_acc[RF_ATT_WARPS * RF_ATT_MAX_HD];

// q: (N, heads, hd); kc, vc: one layer's cache (n_slots, kv_heads, n_ctx, hd); out: (N, heads * hd).
// One block per (head, row) over all of the row's keys.
template <class KV>
RF_DEV void rf_attn(const float* __restrict__ q, const typename KV::T* __restrict__ kc,
                                   const typename KV::T* __restrict__ vc, float* __restrict__ out,
                                   const int* __restrict__ row_slot, const int* __restrict__ row_pos,
                                   int heads, int kv_heads, int hd, int n_ctx, float scale, int window,
                                   int8_t* __restrict__ xq, float* __restrict__ xd) {
    RF_ATT_SHARED
    const int h = blockIdx.x, n = blockIdx.y;
    const int p = row_pos[n];
    const int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    const long long head_off = ((long long)row_slot[n] * kv_heads + h / (heads / kv_heads)) * n_ctx * hd;
    float m, l;
    rf_attn_range<KV>(q + ((long long)n * heads + h) * hd, kc + head_off, vc + head_off, lo, p, hd, scale, s_q,
                  s_max, s_sum, s_acc, &m, &l, s_out);
    rf_attn_write(s_out, 1.0f / l, out, (long long)n * heads * hd, (long long)h * hd, hd, xq, xd);
}

// Flash-decoding: the keys of each row split over gridDim.z blocks (chunks of equal size of the
// row's own length, so a graph captured once serves every position). Each block leaves its (max,
// sum) in part_ml (N, heads, splits, 2) and its unnormalized sum of values in part_acc (N, heads,
// splits, hd); attn_combine_f32 merges them.
template <class KV>
RF_DEV void rf_attn_split(const float* __restrict__ q, const typename KV::T* __restrict__ kc,
                                         const typename KV::T* __restrict__ vc, float* __restrict__ part_acc,
                                         float* __restrict__ part_ml, const int* __restrict__ row_slot,
                                         const int* __restrict__ row_pos, int heads, int kv_heads, int hd,
                                         int n_ctx, float scale, int window) {
    RF_ATT_SHARED
    const int h = blockIdx.x, n = blockIdx.y, z = blockIdx.z, splits = gridDim.z;
    const int p = row_pos[n];
    const int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    const int chunk = (p - lo + 1 + splits - 1) / splits;
    const int a = lo + z * chunk, b = a + chunk - 1 < p ? a + chunk - 1 : p;
    const long long head_off = ((long long)row_slot[n] * kv_heads + h / (heads / kv_heads)) * n_ctx * hd;
    float m, l;
    rf_attn_range<KV>(q + ((long long)n * heads + h) * hd, kc + head_off, vc + head_off, a, b, hd, scale, s_q,
                  s_max, s_sum, s_acc, &m, &l, s_out);
    const long long part = ((long long)n * heads + h) * splits + z;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) part_acc[part * hd + i] = s_out[i];
    if (threadIdx.x == 0) {
        part_ml[2 * part] = m;
        part_ml[2 * part + 1] = l;
    }
}

// The kernels per cache element type: attn_<S> and attn_split_<S> (S = f32 or f16).
#define RF_ATTN_KERNELS(S, KV)                                                                          \
    extern "C" __global__ void attn_##S(const float* __restrict__ q, const KV::T* __restrict__ kc,      \
                                       const KV::T* __restrict__ vc, float* __restrict__ out,          \
                                       const int* __restrict__ row_slot, const int* __restrict__ row_pos, \
                                       int heads, int kv_heads, int hd, int n_ctx, float scale, int window, \
                                       int8_t* __restrict__ xq, float* __restrict__ xd) {              \
        rf_attn<KV>(q, kc, vc, out, row_slot, row_pos, heads, kv_heads, hd, n_ctx, scale, window, xq, xd); \
    }                                                                                                   \
    extern "C" __global__ void attn_split_##S(const float* __restrict__ q, const KV::T* __restrict__ kc, \
                                             const KV::T* __restrict__ vc, float* __restrict__ part_acc, \
                                             float* __restrict__ part_ml, const int* __restrict__ row_slot, \
                                             const int* __restrict__ row_pos, int heads, int kv_heads, int hd, \
                                             int n_ctx, float scale, int window) {                     \
        rf_attn_split<KV>(q, kc, vc, part_acc, part_ml, row_slot, row_pos, heads, kv_heads, hd, n_ctx, scale, \
                          window);                                                                      \
    }

RF_ATTN_KERNELS(f32, rf_kv_f32)
RF_ATTN_KERNELS(f16, rf_kv_f16)

// How many of a launch's `splits` key ranges a row of `len` keys fills when no range is to hold fewer
// than `split_keys` keys (0: every split is live): the grid is fixed when a decode step is captured,
// the row's length is not, so a short row leaves the extra blocks idle and needs no merge.
RF_DEV int rf_live_splits(int len, int splits, int split_keys) {
    if (split_keys <= 0) return splits;
    const int want = (len + split_keys - 1) / split_keys;
    return want < 1 ? 1 : want < splits ? want : splits;
}

// Merge the partial results of split attention (attn_split_<S>, attn_gqa_f16_<hd>): one block per
// (head, row), over the row's live splits (rf_live_splits; with one, the attention kernel wrote the
// output itself). Each split's weight exp(m_z - m) is computed once into shared memory; the sum over
// splits of each output value keeps RF_ATT_COMBINE_ILP independent loads in flight (a plain loop over
// 32 splits waited for each L2 load in turn: ~25 us per launch), in a fixed order.
#define RF_ATT_MAX_SPLITS 32
#define RF_ATT_COMBINE_ILP 8
extern "C" __global__ void attn_combine_f32(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                           float* __restrict__ out, int heads, int hd, int n_splits,
                                           int8_t* __restrict__ xq, float* __restrict__ xd,
                                           const int* __restrict__ row_pos, int window, int split_keys) {
    __shared__ float s_out[RF_ATT_MAX_HD];
    __shared__ float s_w[RF_ATT_MAX_SPLITS], s_l[RF_ATT_MAX_SPLITS];
    const int h = blockIdx.x, n = blockIdx.y;
    const int p = row_pos[n];
    const int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    const int splits = rf_live_splits(p - lo + 1, n_splits, split_keys);
    if (splits == 1 && split_keys > 0) return;
    const long long base = ((long long)n * heads + h) * n_splits;
    for (int z = threadIdx.x; z < splits; z += blockDim.x) {
        s_w[z] = part_ml[2 * (base + z)];
        s_l[z] = part_ml[2 * (base + z) + 1];
    }
    __syncthreads();
    float m = RF_NEG_BIG;
    for (int z = 0; z < splits; ++z) m = fmaxf(m, s_w[z]);
    float total = 0.0f;
    for (int z = 0; z < splits; ++z) total += s_l[z] * rf_expf(s_w[z] - m);
    __syncthreads();  // every thread has read the maxima before they become weights
    for (int z = threadIdx.x; z < splits; z += blockDim.x) s_w[z] = rf_expf(s_w[z] - m);
    __syncthreads();
    const float* acc = part_acc + base * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float v[RF_ATT_COMBINE_ILP];
        RF_UNROLL for (int u = 0; u < RF_ATT_COMBINE_ILP; ++u) v[u] = 0.0f;
        int z = 0;
        for (; z + RF_ATT_COMBINE_ILP <= splits; z += RF_ATT_COMBINE_ILP) {
            RF_UNROLL for (int u = 0; u < RF_ATT_COMBINE_ILP; ++u) v[u] += acc[(long long)(z + u) * hd + i] * s_w[z + u];
        }
        for (; z < splits; ++z) v[0] += acc[(long long)z * hd + i] * s_w[z];
        float sum = 0.0f;
        RF_UNROLL for (int u = 0; u < RF_ATT_COMBINE_ILP; ++u) sum += v[u];
        s_out[i] = sum;
    }
    __syncthreads();
    rf_attn_write(s_out, 1.0f / total, out, (long long)n * heads * hd, (long long)h * hd, hd, xq, xd);
}

// ---------------------------------------------------------------- decode attention per KV head (f16 cache)
// A block takes the query heads that share one cached head (up to RF_GQA_G of them, GQA) and one split
// of a row's keys, so each cached key and value is read once for all those heads. A key row of HD f16
// values is HD / 8 chunks of 16 bytes; RF_GQA_LPK lanes hold one key (a chunk or more each), so a
// warp load covers RF_GQA_KPW keys, and every lane has RF_GQA_KI keys' and values' loads in flight
// before it uses the first. Scores are joined across a key's lanes by xor-shuffles; the running max
// is per warp and head; each lane adds the values of its own keys, and the lanes of different keys
// are joined once at the end, then the warps through shared memory. A row with one live split
// (rf_live_splits) writes the normalized output (and its 8-bit copy); more leave partial results
// for attn_combine_f32.
#define RF_GQA_G 4
#define RF_GQA_KI 4
#define RF_GQA_WARPS 4

template <int HD>
struct rf_gqa_shape {
    static const int CH = HD / 8;                            // 16-byte chunks per key row
    static const int LPK = CH < WARP_SIZE ? CH : WARP_SIZE;  // lanes per key
    static const int DPL = CH / LPK;                         // chunks per lane
    static const int KPW = WARP_SIZE / LPK;                  // keys per warp load
    static const int STEP = KPW * RF_GQA_KI;                 // keys per warp step
    static const int VALS = DPL * 8;                         // head dims per lane
};

RF_DEV void rf_gqa_unpack(const rf_u32x4& v, float* out) {
    RF_UNROLL for (int w = 0; w < 4; ++w) {
        const uint32_t u = rf_u4_at(v, w);
        out[2 * w] = rf_half_lo(u);
        out[2 * w + 1] = rf_half_hi(u);
    }
}

// q: (N, heads, HD); kc, vc: one layer's f16 cache (n_slots, kv_heads, n_ctx, HD);
// grid = (kv_heads * ceil(group / RF_GQA_G), N, splits), RF_GQA_WARPS warps (one thread in emulation).
// With ROPE (attn_gqa_rope_f16_<hd>: decode rows, one per sequence) the layer's step before attention
// is done here too, as rope_qk_kv_append_f16 does it: q is read unrotated (rows ldq apart, a slice of
// the fused projection) and rotated at pos[n] as it is loaded; the block whose keys include the row's
// own position rotates that k and writes it and v into the cache before it reads keys (blocks of
// other query-head groups of the same KV head write the same bits).
struct rf_gqa_rope {
    const float* k;
    long long ldq, ldk;
    const float* v;
    long long ldv;
    const float* cos_tab;
    const float* sin_tab;
    const int* pos;
    int rot_dim, neox;
};

template <int HD, bool ROPE>
RF_DEV void rf_attn_gqa(const float* __restrict__ q, const rf_half* kc, const rf_half* vc,
                        float* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
                        const int* __restrict__ row_slot, const int* __restrict__ row_pos, int heads, int kv_heads,
                        int n_ctx, float scale, int window, int8_t* __restrict__ xq, float* __restrict__ xd,
                        int split_keys, const rf_gqa_rope& rp) {
    typedef rf_gqa_shape<HD> S;
    __shared__ float s_m[RF_GQA_WARPS][RF_GQA_G], s_l[RF_GQA_WARPS][RF_GQA_G], s_tot[RF_GQA_G];
    __shared__ float s_acc[RF_GQA_WARPS][RF_GQA_G][HD];
    __shared__ float s_out[RF_GQA_G][HD];
    const int group = heads / kv_heads, tiles = (group + RF_GQA_G - 1) / RF_GQA_G;
    const int kh = blockIdx.x / tiles, h0 = kh * group + (blockIdx.x % tiles) * RF_GQA_G;
    const int ng = kh * group + group - h0 < RF_GQA_G ? kh * group + group - h0 : RF_GQA_G;
    const int n = blockIdx.y, z = blockIdx.z;
    const int p = row_pos[n];
    const int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    const int splits = rf_live_splits(p - lo + 1, gridDim.z, split_keys);
    if (z >= splits) return;  // the whole block: no barrier below is reached
    const int chunk = (p - lo + 1 + splits - 1) / splits;
    const int a = lo + z * chunk, b = a + chunk - 1 < p ? a + chunk - 1 : p;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = blockDim.x / WARP_SIZE > 0 ? blockDim.x / WARP_SIZE : 1;
    const int ks = lane / S::LPK, c = lane % S::LPK;
    const long long head_off = ((long long)row_slot[n] * kv_heads + kh) * n_ctx * HD;
    const rf_half* kb = kc + head_off;
    const rf_half* vb = vc + head_off;
    const float* cs = nullptr;
    const float* sn = nullptr;
    if (ROPE) {
        const long long tab = (long long)rp.pos[n] * (rp.rot_dim / 2);
        cs = rp.cos_tab + tab;
        sn = rp.sin_tab + tab;
        if (a <= p && p <= b) {  // block-uniform
            const float* kr = rp.k + (long long)n * rp.ldk + (long long)kh * HD;
            const float* vr = rp.v + (long long)n * rp.ldv + (long long)kh * HD;
            rf_half* kw = (rf_half*)kb + (long long)p * HD;
            rf_half* vw = (rf_half*)vb + (long long)p * HD;
            for (int i = threadIdx.x; i < HD; i += blockDim.x) {
                rf_kv_f16::put(kw, i, rf_rope_at(kr, cs, sn, i, rp.rot_dim, rp.neox));
                rf_kv_f16::put(vw, i, vr[i]);
            }
            __syncthreads();  // the block's own reads of position p below see these writes
        }
    }

    float qf[RF_GQA_G][S::VALS], acc[RF_GQA_G][S::VALS], m[RF_GQA_G], l[RF_GQA_G];
    RF_UNROLL for (int g = 0; g < RF_GQA_G; ++g) {
        m[g] = RF_NEG_BIG;
        l[g] = 0.0f;
        RF_UNROLL for (int j = 0; j < S::DPL; ++j) {
            RF_UNROLL for (int e = 0; e < 8; ++e) {
                const int d = (c + S::LPK * j) * 8 + e;
                float qv = 0.0f;
                if (g < ng) {
                    qv = ROPE ? rf_rope_at(q + (long long)n * rp.ldq + (long long)(h0 + g) * HD, cs, sn, d, rp.rot_dim,
                                           rp.neox)
                              : q[((long long)n * heads + h0 + g) * HD + d];
                }
                qf[g][j * 8 + e] = qv * scale;
                acc[g][j * 8 + e] = 0.0f;
            }
        }
    }
    for (int k0 = a + warp * S::STEP; k0 <= b; k0 += n_warps * S::STEP) {
        rf_u32x4 kr[RF_GQA_KI][S::DPL], vr[RF_GQA_KI][S::DPL];
        RF_UNROLL for (int i = 0; i < RF_GQA_KI; ++i) {
            const int j = k0 + i * S::KPW + ks;
            const long long at = (long long)(j <= b ? j : b) * HD;
            RF_UNROLL for (int u = 0; u < S::DPL; ++u) {
                kr[i][u] = rf_load16(kb + at + (c + S::LPK * u) * 8);
                vr[i][u] = rf_load16(vb + at + (c + S::LPK * u) * 8);
            }
        }
        float s[RF_GQA_KI][RF_GQA_G];
        RF_UNROLL for (int i = 0; i < RF_GQA_KI; ++i) {
            float kf[S::VALS];
            RF_UNROLL for (int u = 0; u < S::DPL; ++u) rf_gqa_unpack(kr[i][u], kf + 8 * u);
            RF_UNROLL for (int g = 0; g < RF_GQA_G; ++g) {
                float t0 = 0.0f, t1 = 0.0f;
                RF_UNROLL for (int e = 0; e < S::VALS; e += 2) {
                    t0 += qf[g][e] * kf[e];
                    t1 += qf[g][e + 1] * kf[e + 1];
                }
                float t = t0 + t1;
                for (int mm = S::LPK / 2; mm > 0; mm >>= 1) t += RF_SHFL_XOR(t, mm);
                s[i][g] = k0 + i * S::KPW + ks <= b ? t : RF_NEG_BIG;
            }
        }
        RF_UNROLL for (int g = 0; g < RF_GQA_G; ++g) {
            float mx = s[0][g];
            RF_UNROLL for (int i = 1; i < RF_GQA_KI; ++i) mx = fmaxf(mx, s[i][g]);
            for (int mm = S::LPK; mm < WARP_SIZE; mm <<= 1) mx = fmaxf(mx, RF_SHFL_XOR(mx, mm));
            const float m_new = fmaxf(m[g], mx), corr = rf_expf(m[g] - m_new);
            m[g] = m_new;
            l[g] *= corr;
            RF_UNROLL for (int e = 0; e < S::VALS; ++e) acc[g][e] *= corr;
        }
        RF_UNROLL for (int i = 0; i < RF_GQA_KI; ++i) {
            float vf[S::VALS];
            RF_UNROLL for (int u = 0; u < S::DPL; ++u) rf_gqa_unpack(vr[i][u], vf + 8 * u);
            RF_UNROLL for (int g = 0; g < RF_GQA_G; ++g) {
                const float w = s[i][g] > 0.5f * RF_NEG_BIG ? rf_expf(s[i][g] - m[g]) : 0.0f;
                l[g] += w;
                RF_UNROLL for (int e = 0; e < S::VALS; ++e) acc[g][e] += w * vf[e];
            }
        }
    }
    // Join the lanes of different keys (same dims), then the warps.
    RF_UNROLL for (int g = 0; g < RF_GQA_G; ++g) {
        for (int mm = S::LPK; mm < WARP_SIZE; mm <<= 1) {
            l[g] += RF_SHFL_XOR(l[g], mm);
            RF_UNROLL for (int e = 0; e < S::VALS; ++e) acc[g][e] += RF_SHFL_XOR(acc[g][e], mm);
        }
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = l[g];
        }
        if (ks == 0) {
            RF_UNROLL for (int j = 0; j < S::DPL; ++j)
                RF_UNROLL for (int e = 0; e < 8; ++e) s_acc[warp][g][(c + S::LPK * j) * 8 + e] = acc[g][j * 8 + e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < ng * HD; i += blockDim.x) {
        const int g = i / HD, d = i % HD;
        float mg = s_m[0][g];
        for (int w = 1; w < n_warps; ++w) mg = fmaxf(mg, s_m[w][g]);
        float v = 0.0f, tot = 0.0f;
        for (int w = 0; w < n_warps; ++w) {
            const float f = rf_expf(s_m[w][g] - mg);
            v += s_acc[w][g][d] * f;
            tot += s_l[w][g] * f;
        }
        if (splits == 1) {
            s_out[g][d] = v;
            if (d == 0) s_tot[g] = tot;
        } else {
            const long long part = ((long long)n * heads + h0 + g) * gridDim.z + z;
            part_acc[part * HD + d] = v;
            if (d == 0) {
                part_ml[2 * part] = mg;
                part_ml[2 * part + 1] = tot;
            }
        }
    }
    if (splits != 1) return;
    __syncthreads();
    for (int g = 0; g < ng; ++g)
        rf_attn_write(s_out[g], 1.0f / s_tot[g], out, (long long)n * heads * HD, (long long)(h0 + g) * HD, HD, xq, xd);
}

#define RF_ATTN_GQA_KERNEL(HD)                                                                          \
    extern "C" __global__ void attn_gqa_f16_##HD(const float* __restrict__ q, const rf_half* __restrict__ kc, \
                                                const rf_half* __restrict__ vc, float* __restrict__ out, \
                                                float* __restrict__ part_acc, float* __restrict__ part_ml, \
                                                const int* __restrict__ row_slot, const int* __restrict__ row_pos, \
                                                int heads, int kv_heads, int n_ctx, float scale, int window, \
                                                int8_t* __restrict__ xq, float* __restrict__ xd,        \
                                                int split_keys) {                                       \
        const rf_gqa_rope none = {nullptr, 0, 0, nullptr, 0, nullptr, nullptr, nullptr, 0, 0};         \
        rf_attn_gqa<HD, false>(q, kc, vc, out, part_acc, part_ml, row_slot, row_pos, heads, kv_heads, n_ctx, \
                               scale, window, xq, xd, split_keys, none);                                \
    }                                                                                                   \
    extern "C" __global__ void attn_gqa_rope_f16_##HD(                                                  \
        const float* __restrict__ q, long long ldq, const float* __restrict__ k, long long ldk,         \
        const float* __restrict__ v, long long ldv, rf_half* kc, rf_half* vc, float* __restrict__ out,  \
        float* __restrict__ part_acc, float* __restrict__ part_ml, const float* __restrict__ cos_tab,   \
        const float* __restrict__ sin_tab, const int* __restrict__ pos, const int* __restrict__ row_slot, \
        const int* __restrict__ row_pos, int heads, int kv_heads, int n_ctx, float scale, int window,   \
        int8_t* __restrict__ xq, float* __restrict__ xd, int split_keys, int rot_dim, int neox) {       \
        const rf_gqa_rope rp = {k, ldq, ldk, v, ldv, cos_tab, sin_tab, pos, rot_dim, neox};             \
        rf_attn_gqa<HD, true>(q, kc, vc, out, part_acc, part_ml, row_slot, row_pos, heads, kv_heads, n_ctx, \
                              scale, window, xq, xd, split_keys, rp);                                   \
    }

RF_ATTN_GQA_KERNEL(64)
RF_ATTN_GQA_KERNEL(128)
RF_ATTN_GQA_KERNEL(256)
