// Prompt attention on the matrix units (flash attention): a block takes 32 consecutive query rows of
// one head of one sequence (two warps of 16 rows) and walks the cached keys in tiles of 32 with an
// online softmax, so the scores never leave the chip:
//   S = Q K^T (16 x 32 per warp: tiles of rf_tile_mma over head_dim), masked (causal, window) into
//   shared memory; each row's running max m and sum l update there, P = exp(S - m) as f16;
//   O = O * exp(m_old - m) + P V (V staged as the cache holds it, keys as rows: the tile's B operand
//   read k-major, rf_tile_load_bt). Keys and values go to shared memory in 16-byte stores.
// Key tiles past every row's position are never loaded (the causal part skipped); with a window, nor
// are those before every row's window. head_dim <= RF_FA_MAX_HD and a multiple of 16; the rows of
// one launch belong to one cache slot (the host checks both).
#include "rf_prelude.h"

#define RF_FA_MAX_HD 128
#define RF_FA_ROWS 32                  // query rows per block
#define RF_FA_KEYS 32                  // keys per tile
#define RF_FA_WARPS (RF_FA_ROWS / RF_TILE)
#define RF_FA_LDQ (RF_FA_MAX_HD + 8)   // shared row strides in halves (16-byte multiples, off the banks)
#define RF_FA_LDP (RF_FA_KEYS + 8)
#define RF_FA_LDS (RF_FA_KEYS + 1)
#define RF_FA_NT (RF_FA_MAX_HD / RF_TILE)  // output tiles per warp (of head_dim)
#if defined(RF_PLATFORM_HOST)
#define RF_FA_WT RF_FA_WARPS             // the emulation's one thread plays both warps
#define RF_FA_THREADS 1
#else
#define RF_FA_WT 1
#define RF_FA_THREADS (RF_FA_WARPS * WARP_SIZE)
#endif
// 16-byte chunks of a key tile (keys x head_dim / 8) each thread carries between tiles.
#define RF_FA_CPT ((RF_FA_KEYS * (RF_FA_MAX_HD / 8) + RF_FA_THREADS - 1) / RF_FA_THREADS)

// Lanes per row in the softmax: every thread of the block busy (blockDim = RF_FA_WARPS * WARP_SIZE =
// RF_FA_ROWS * RF_FA_SPLIT on GPUs; one lane does whole rows in the host emulation).
#if defined(RF_PLATFORM_HOST)
#define RF_FA_SPLIT 1
#else
#define RF_FA_SPLIT (RF_FA_WARPS * WARP_SIZE / RF_FA_ROWS)
#endif

// Eight cached values from element i as eight f16 in 16 bytes (zeros for i < 0): from an f16 cache
// one 16-byte load.
RF_DEV rf_u32x4 rf_fa_load8(const float* p, long long i) {
    if (i < 0) return rf_u32x4{0, 0, 0, 0};
    return rf_u32x4{rf_pack_half2(p[i], p[i + 1]), rf_pack_half2(p[i + 2], p[i + 3]),
                    rf_pack_half2(p[i + 4], p[i + 5]), rf_pack_half2(p[i + 6], p[i + 7])};
}
RF_DEV rf_u32x4 rf_fa_load8(const rf_half* p, long long i) {
    return i < 0 ? rf_u32x4{0, 0, 0, 0} : rf_load16(p + i);
}

// q: (N, heads, hd) float32; kc, vc: one layer's cache (n_slots, kv_heads, n_ctx, hd); out: (N, heads * hd).
// grid = (ceil(N / 32), heads), RF_FA_WARPS warps per block (one thread in the host emulation).
template <class KV>
RF_DEV void rf_fattn(const float* __restrict__ q, const typename KV::T* __restrict__ kc,
                     const typename KV::T* __restrict__ vc, float* __restrict__ out,
                     const int* __restrict__ row_slot, const int* __restrict__ row_pos, int n_rows,
                     int heads, int kv_heads, int hd, int n_ctx, float scale, int window) {
    __shared__ __attribute__((aligned(16))) rf_half s_q[RF_FA_ROWS * RF_FA_LDQ];
    __shared__ __attribute__((aligned(16))) rf_half s_k[RF_FA_KEYS * RF_FA_LDQ];
    __shared__ __attribute__((aligned(16))) rf_half s_v[RF_FA_KEYS * RF_FA_LDQ];
    __shared__ __attribute__((aligned(16))) rf_half s_p[RF_FA_ROWS * RF_FA_LDP];
    __shared__ float s_s[RF_FA_ROWS * RF_FA_LDS];
    __shared__ float s_m[RF_FA_ROWS], s_l[RF_FA_ROWS], s_c[RF_FA_ROWS];
    __shared__ int s_pos[RF_FA_ROWS];
    const int r0 = blockIdx.x * RF_FA_ROWS, h = blockIdx.y;
    const int rows = n_rows - r0 < RF_FA_ROWS ? n_rows - r0 : RF_FA_ROWS;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const long long head_off = ((long long)row_slot[r0] * kv_heads + h / (heads / kv_heads)) * n_ctx * hd;
    const typename KV::T* kb = kc + head_off;
    const typename KV::T* vb = vc + head_off;
    const int n_dt = hd / RF_TILE;

    // The block's rows: scaled queries as f16, positions, softmax state. Rows past the end repeat the
    // last row's position (so they add no key tiles) and are never written.
    for (int i = threadIdx.x; i < RF_FA_ROWS * hd; i += blockDim.x) {
        const int r = i / hd, d = i % hd;
        const float v = r < rows ? q[((long long)(r0 + r) * heads + h) * hd + d] * scale : 0.0f;
        s_q[r * RF_FA_LDQ + d] = rf_float2half(v);
    }
    for (int r = threadIdx.x; r < RF_FA_ROWS; r += blockDim.x) {
        s_pos[r] = row_pos[r0 + (r < rows ? r : rows - 1)];
        s_m[r] = RF_NEG_BIG;
        s_l[r] = 0.0f;
    }
    __syncthreads();
    int lo = s_pos[0], hi = s_pos[0];
    for (int r = 1; r < RF_FA_ROWS; ++r) {
        lo = s_pos[r] < lo ? s_pos[r] : lo;
        hi = s_pos[r] > hi ? s_pos[r] : hi;
    }
    lo = window > 0 && lo - window + 1 > 0 ? lo - window + 1 : 0;

    float o[RF_FA_WT][RF_FA_NT][RF_TILE_ACC];
    RF_UNROLL for (int u = 0; u < RF_FA_WT; ++u)
        RF_UNROLL for (int t = 0; t < RF_FA_NT; ++t)
            RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) o[u][t][i] = 0.0f;

    // A tile's keys and values travel through registers, eight values per 16-byte load: the next
    // tile's loads are issued right after this one is in shared memory, so they land while this tile
    // is multiplied (zeros past the cache's filled end).
    const int chunks = RF_FA_KEYS * (hd / 8);
    rf_u32x4 kr[RF_FA_CPT], vr[RF_FA_CPT];
    const int first = lo / RF_FA_KEYS * RF_FA_KEYS;
    RF_UNROLL for (int c = 0; c < RF_FA_CPT; ++c) {
        const int i = threadIdx.x + c * blockDim.x, j = i / (hd / 8), d = (i % (hd / 8)) * 8;
        const long long at = i < chunks && first + j <= hi ? (long long)(first + j) * hd + d : -1;
        kr[c] = rf_fa_load8(kb, at);
        vr[c] = rf_fa_load8(vb, at);
    }
    for (int j0 = first; j0 <= hi; j0 += RF_FA_KEYS) {
        RF_UNROLL for (int c = 0; c < RF_FA_CPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x, j = i / (hd / 8), d = (i % (hd / 8)) * 8;
            if (i >= chunks) break;
            *(rf_u32x4*)(s_k + j * RF_FA_LDQ + d) = kr[c];
            *(rf_u32x4*)(s_v + j * RF_FA_LDQ + d) = vr[c];
        }
        __syncthreads();
        const int next = j0 + RF_FA_KEYS;
        if (next <= hi) {
            RF_UNROLL for (int c = 0; c < RF_FA_CPT; ++c) {
                const int i = threadIdx.x + c * blockDim.x, j = i / (hd / 8), d = (i % (hd / 8)) * 8;
                const long long at = i < chunks && next + j <= hi ? (long long)(next + j) * hd + d : -1;
                kr[c] = rf_fa_load8(kb, at);
                vr[c] = rf_fa_load8(vb, at);
            }
        }
        RF_UNROLL for (int u = 0; u < RF_FA_WT; ++u) {
            const int wr = (warp * RF_FA_WT + u) * RF_TILE;  // this warp's first row in the block
            float s[RF_FA_KEYS / RF_TILE][RF_TILE_ACC];
            RF_UNROLL for (int t = 0; t < RF_FA_KEYS / RF_TILE; ++t)
                RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) s[t][i] = 0.0f;
            for (int kd = 0; kd < n_dt; ++kd) {
                rf_frag fa;
                rf_tile_load_a(fa, s_q + wr * RF_FA_LDQ + kd * RF_TILE, RF_FA_LDQ, lane);
                RF_UNROLL for (int t = 0; t < RF_FA_KEYS / RF_TILE; ++t) {
                    rf_frag fb;
                    rf_tile_load_b(fb, s_k + t * RF_TILE * RF_FA_LDQ + kd * RF_TILE, RF_FA_LDQ, lane);
                    rf_tile_mma(s[t], fa, fb);
                }
            }
            RF_UNROLL for (int t = 0; t < RF_FA_KEYS / RF_TILE; ++t) {
                RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) {
                    int r, c;
                    rf_tile_coord(lane, i, r, c);
                    const int j = j0 + t * RF_TILE + c, p = s_pos[wr + r];
                    const bool seen = j <= p && (window <= 0 || p - j < window);
                    s_s[(wr + r) * RF_FA_LDS + t * RF_TILE + c] = seen ? s[t][i] : RF_NEG_BIG;
                }
            }
        }
        __syncthreads();
        // The online softmax: RF_FA_SPLIT adjacent lanes per row, each over an equal share of the keys,
        // joined by xor-shuffles (the host emulation's one lane takes whole rows).
        for (int t = threadIdx.x; t < RF_FA_ROWS * RF_FA_SPLIT; t += blockDim.x) {
            const int r = t / RF_FA_SPLIT, c0 = (t % RF_FA_SPLIT) * (RF_FA_KEYS / RF_FA_SPLIT);
            const float* sr = s_s + r * RF_FA_LDS + c0;
            float mx = s_m[r];
            for (int c = 0; c < RF_FA_KEYS / RF_FA_SPLIT; ++c) mx = fmaxf(mx, sr[c]);
            for (int m = RF_FA_SPLIT / 2; m > 0; m >>= 1) mx = fmaxf(mx, RF_SHFL_XOR(mx, m));
            float sum = 0.0f;
            for (int c = 0; c < RF_FA_KEYS / RF_FA_SPLIT; ++c) {
                const float e = sr[c] > 0.5f * RF_NEG_BIG ? rf_expf(sr[c] - mx) : 0.0f;
                sum += e;
                s_p[r * RF_FA_LDP + c0 + c] = rf_float2half(e);
            }
            for (int m = RF_FA_SPLIT / 2; m > 0; m >>= 1) sum += RF_SHFL_XOR(sum, m);
            if (t % RF_FA_SPLIT == 0) {
                const float corr = rf_expf(s_m[r] - mx);
                s_c[r] = corr;
                s_l[r] = s_l[r] * corr + sum;
                s_m[r] = mx;
            }
        }
        __syncthreads();
        RF_UNROLL for (int u = 0; u < RF_FA_WT; ++u) {
            const int wr = (warp * RF_FA_WT + u) * RF_TILE;
            RF_UNROLL for (int t = 0; t < RF_FA_NT; ++t) {
                if (t >= n_dt) break;
                RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) {
                    int r, c;
                    rf_tile_coord(lane, i, r, c);
                    o[u][t][i] *= s_c[wr + r];
                }
            }
            RF_UNROLL for (int kk = 0; kk < RF_FA_KEYS / RF_TILE; ++kk) {
                rf_frag fa;
                rf_tile_load_a(fa, s_p + wr * RF_FA_LDP + kk * RF_TILE, RF_FA_LDP, lane);
                RF_UNROLL for (int t = 0; t < RF_FA_NT; ++t) {
                    if (t >= n_dt) break;
                    rf_frag fb;  // B[n = dim][k = key] = V[key][dim]: the value rows read k-major
                    rf_tile_load_bt(fb, s_v + kk * RF_TILE * RF_FA_LDQ + t * RF_TILE, RF_FA_LDQ, lane);
                    rf_tile_mma(o[u][t], fa, fb);
                }
            }
        }
        __syncthreads();  // the next tile overwrites s_k, s_v, s_p
    }

    RF_UNROLL for (int u = 0; u < RF_FA_WT; ++u) {
        const int wr = (warp * RF_FA_WT + u) * RF_TILE;
        RF_UNROLL for (int t = 0; t < RF_FA_NT; ++t) {
            if (t >= n_dt) break;
            RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) {
                int r, c;
                rf_tile_coord(lane, i, r, c);
                if (wr + r >= rows) continue;
                out[(long long)(r0 + wr + r) * heads * hd + (long long)h * hd + t * RF_TILE + c] =
                    o[u][t][i] / s_l[wr + r];
            }
        }
    }
}

#define RF_FATTN_KERNEL(S, KV)                                                                          \
    extern "C" __global__ void fattn_##S(const float* __restrict__ q, const KV::T* __restrict__ kc,     \
                                        const KV::T* __restrict__ vc, float* __restrict__ out,         \
                                        const int* __restrict__ row_slot, const int* __restrict__ row_pos, \
                                        int n_rows, int heads, int kv_heads, int hd, int n_ctx, float scale, \
                                        int window) {                                                   \
        rf_fattn<KV>(q, kc, vc, out, row_slot, row_pos, n_rows, heads, kv_heads, hd, n_ctx, scale, window); \
    }

RF_FATTN_KERNEL(f32, rf_kv_f32)
RF_FATTN_KERNEL(f16, rf_kv_f16)
