// Matrix products for many activation rows (prompt processing) on the matrix units: y = x @ W^T.
//
// A block computes a BM x 128 tile of y^T (BM weight rows x 128 activation rows) over the whole input
// in steps of 32: each step, the block decodes its weight rows' 32 values from the split blocks
// (rf_blocks.h) to f16 and copies the activation rows' values (converted to f16 once per product by
// convert_f16) into shared memory, and eight warps multiply 16 x 16 tiles (rf_tile_* in the prelude: mma.sync, MFMA, WMMA or
// the portable loop) accumulating in float32. Shared memory is double-buffered, so one barrier per
// step separates writing the next step from reading this one, and the next step's global reads are
// issued before this step's multiply (weights into registers, activations by cp.async on NVIDIA), so
// their latency hides behind it. The epilogue adds bias and residual.
// Weights are read once per 128 activation rows, so a 512-token prompt reads them 4 times (mostly
// from L2), instead of once per 8 rows as the mat-vec does.
#include "rf_prelude.h"
#include "rf_blocks.h"
#include "rf_gguf.h"

#define RF_MM_BK 32                // input values per step (one f16 row segment per chunk pair)
#define RF_MM_LD (RF_MM_BK + 8)    // shared row stride in halves: 80 bytes keeps fragment loads conflict-free
#define RF_MM_BN 128               // activation rows per block
#define RF_MM_WARPS_M 2
#define RF_MM_WARPS_N 4
#define RF_MM_WARPS (RF_MM_WARPS_M * RF_MM_WARPS_N)  // a block is RF_MM_WARPS warps (1 thread in emulation)
#if defined(RF_PLATFORM_HOST)
#define RF_MM_WT RF_MM_WARPS       // the emulation's one thread plays every warp
#else
#define RF_MM_WT 1
#endif

// Which item of a split row holds the 16 values 16q .. 16q + 15, and which of its two groups.
template <class T>
struct rf_chunks {  // 32-value blocks: an item is a block, its groups the two halves
    static __device__ void at(int q, int& it, int& g) { it = q >> 1; g = q & 1; }
};
template <>
struct rf_chunks<MQ4_K> {  // item 8 sb + 2p + h: values 16h.. of sub-blocks 2p (group 0) and 2p + 1
    static __device__ void at(int q, int& it, int& g) {
        const int s = (q >> 1) & 7;
        it = (q >> 4) * 8 + (s >> 1) * 2 + (q & 1);
        g = s & 1;
    }
};
template <>
struct rf_chunks<MQ5_K> : rf_chunks<MQ4_K> {};
template <>
struct rf_chunks<MQ6_K> {  // item 8 sb + 4n + c: values l0.. of sub-blocks 4n + j (group 0) and 4n + j + 2
    static __device__ void at(int q, int& it, int& g) {
        const int r = q & 15, n = r >> 3, jp = (r >> 1) & 3;
        it = (q >> 4) * 8 + 4 * n + (jp & 1) * 2 + (r & 1);
        g = jp >> 1;
    }
};

RF_DEV void rf_store32(rf_half* dst, const uint32_t* v) {  // 16 halves, dst 16-byte aligned
    rf_u32x4 a = {v[0], v[1], v[2], v[3]}, b = {v[4], v[5], v[6], v[7]};
    *(rf_u32x4*)dst = a;
    *(rf_u32x4*)(dst + 8) = b;
}

#if defined(RF_PLATFORM_HOST)
#define RF_MM_THREADS 1
#else
#define RF_MM_THREADS (RF_MM_WARPS * WARP_SIZE)
#endif

// A step's operands in two halves, so that its memory reads are in flight while the block multiplies
// the previous step: `fetch` issues the reads of step ks - this thread's weight chunks (16 values of
// one row; their bulk bytes into registers, `raw`) and the activation rows' 32 values (copied to
// shared memory asynchronously where the target can) - and `decode` turns the weight chunks into f16
// in shared memory after the multiply. Rows past the last read row 0's bytes and store zeros.
// Chunk c is half c & 1 of row c >> 1. (Measured on the H200: giving the eight lanes of a quarter-warp
// eight different rows removes the 2-way bank conflicts of the shared stores but spreads each load
// instruction over twice the rows - 2-4 % slower.) Weights in the split layout (rf_blocks.h):
template <class T, int BM>
struct rf_split_stage {
    static const int N = (BM * 2 + RF_MM_THREADS - 1) / RF_MM_THREADS;  // weight chunks per thread
    typedef rf_raw raw_t;
    static __device__ void fetch(const uint8_t* __restrict__ w, int n_out, int n_in, long long, int m0, int ks,
                                 raw_t* raw) {
        const long long bulk_row = (long long)(n_in / T::QK) * T::BULK;
        RF_UNROLL for (int u = 0; u < N; ++u) {
            const int c = threadIdx.x + u * RF_MM_THREADS, r = c >> 1, row = m0 + r < n_out ? m0 + r : 0;
            int it, g;
            rf_chunks<T>::at(ks * 2 + (c & 1), it, g);
            if (c < BM * 2) T::load(w + row * bulk_row, it, raw[u]);
        }
    }
    static __device__ void decode(const uint8_t* __restrict__ w, int n_out, int n_in, long long, int m0, int ks,
                                  const raw_t* raw, rf_half* sw) {
        const int nb = n_in / T::QK;
        const long long meta_row = (long long)nb * (T::BLOCK - T::BULK);
        const uint8_t* meta = w + (long long)n_out * nb * T::BULK;
        RF_UNROLL for (int u = 0; u < N; ++u) {
            const int c = threadIdx.x + u * RF_MM_THREADS, r = c >> 1, h = c & 1, row = m0 + r;
            if (c >= BM * 2) continue;
            uint32_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (row < n_out) {
                int it, g;
                rf_chunks<T>::at(ks * 2 + h, it, g);
                rf_item o;
                T::template decode<true>(raw[u], meta + row * meta_row, it, o);
                const float f = g ? o.f[1] : o.f[0], v0 = g ? o.v0[1] : o.v0[0];
                RF_UNROLL for (int k = 0; k < 4; ++k) {
                    const uint32_t q = (uint32_t)(g ? o.w[4 + k] : o.w[k]);
                    v[2 * k] = rf_pack_half2(f * (float)(int8_t)q + v0, f * (float)(int8_t)(q >> 8) + v0);
                    v[2 * k + 1] = rf_pack_half2(f * (float)(int8_t)(q >> 16) + v0, f * (float)(int8_t)(q >> 24) + v0);
                }
            }
            rf_store32(sw + r * RF_MM_LD + 16 * h, v);
        }
    }
};

// Weights in GGUF's own layout (rows row_bytes apart; rf_gguf.h's float decoders, 32 values an item:
// one item per row and step). Nothing to prefetch: a thread decodes a whole row's item after the
// multiply, reading the block directly (these types are rare in prompts: unquantized and 2/3-bit).
template <class D, int BM>
struct rf_gguf_stage {
    static const int N = 1;
    struct raw_t {};
    static __device__ void fetch(const uint8_t*, int, int, long long, int, int, raw_t*) {}
    static __device__ void decode(const uint8_t* __restrict__ w, int n_out, int n_in, long long row_bytes, int m0,
                                  int ks, const raw_t*, rf_half* sw) {
        for (int r = threadIdx.x; r < BM; r += RF_MM_THREADS) {
            uint32_t v[16];
            if (m0 + r < n_out) {
                float f[RF_ITEM];
                D::deq(w + (long long)(m0 + r) * row_bytes, ks, n_in, f);
                RF_UNROLL for (int k = 0; k < 16; ++k) v[k] = rf_pack_half2(f[2 * k], f[2 * k + 1]);
            } else {
                RF_UNROLL for (int k = 0; k < 16; ++k) v[k] = 0;
            }
            rf_store32(sw + r * RF_MM_LD, v);
            rf_store32(sw + r * RF_MM_LD + 16, v + 8);
        }
    }
};

// The activation rows' 32 values of step ks, 8 a copy (zeros past the last row).
RF_DEV void rf_mmf_fetch_x(const rf_half* __restrict__ x, int ldx, int n_rows, int n0, int ks, rf_half* sx) {
    for (int c = threadIdx.x; c < RF_MM_BN * 4; c += RF_MM_THREADS) {
        const int r = c >> 2, tok = n0 + r;
        const rf_half* src = x + (long long)(tok < n_rows ? tok : 0) * ldx + ks * RF_MM_BK + 8 * (c & 3);
        rf_copy16_async(sx + r * RF_MM_LD + 8 * (c & 3), src, tok < n_rows);
    }
}

// y[t, c] = W[c, :] . x[t, :] (+ bias[c]) (+ res[t, c]) for t < n_rows, where the columns c are the
// rows of up to three weights of one type stacked (w0: columns 0..n0-1, w1: the next n1, w2: the next
// n2; absent parts have 0 rows), so a fused projection (q/k/v, gate/up) is one launch that fills the
// card. grid = (sum over parts of ceil(n_p / BM), ceil(n_rows / 128), splits), RF_MM_WARPS warps per
// block; n_in a multiple of the type's block; x f16 rows (convert_f16), 16-byte aligned, ldx a multiple
// of 8. Split over the input (products too small to fill the card): block z sums steps z * k_steps ..
// of k_steps into y + z * split_stride, without bias or residual (mmf_reduce adds the splits up).
// S is the weights' stage (rf_split_stage or rf_gguf_stage); row_bytes is what rf_gguf_stage needs.
template <class S, int BM>
RF_DEV void rf_mmf(const uint8_t* __restrict__ w0, const uint8_t* __restrict__ w1, const uint8_t* __restrict__ w2,
                   int n0, int n1, int n2, int n_in, long long row_bytes, const rf_half* __restrict__ x, int ldx,
                   const float* __restrict__ x_scale, float* __restrict__ y, int ldy, const float* __restrict__ bias,
                   const float* __restrict__ res, int n_rows, int k_steps, long long split_stride) {
    const int MI = BM / (RF_MM_WARPS_M * RF_TILE), NI = RF_MM_BN / (RF_MM_WARPS_N * RF_TILE);
    __shared__ __attribute__((aligned(16))) rf_half sw[2][BM * RF_MM_LD];
    __shared__ __attribute__((aligned(16))) rf_half sx[2][RF_MM_BN * RF_MM_LD];
    // This block's part: its weights, row count and first output column.
    const int t0 = (n0 + BM - 1) / BM, t1 = (n1 + BM - 1) / BM;
    const int bx = blockIdx.x;
    const int part = bx < t0 ? 0 : bx < t0 + t1 ? 1 : 2;
    const uint8_t* w = part == 0 ? w0 : part == 1 ? w1 : w2;
    const int n_out = part == 0 ? n0 : part == 1 ? n1 : n2;
    const int col0 = part == 0 ? 0 : part == 1 ? n0 : n0 + n1;
    const int m0 = (bx - (part == 0 ? 0 : part == 1 ? t0 : t0 + t1)) * BM, n0_tok = blockIdx.y * RF_MM_BN;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int k0 = blockIdx.z * k_steps, n_k = n_in / RF_MM_BK < k0 + k_steps ? n_in / RF_MM_BK : k0 + k_steps;
    y += blockIdx.z * split_stride;
    float acc[RF_MM_WT][MI][NI][RF_TILE_ACC];
    RF_UNROLL for (int u = 0; u < RF_MM_WT; ++u)
        RF_UNROLL for (int mi = 0; mi < MI; ++mi)
            RF_UNROLL for (int ni = 0; ni < NI; ++ni)
                RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) acc[u][mi][ni][i] = 0.0f;

    typename S::raw_t raw[S::N];
    S::fetch(w, n_out, n_in, row_bytes, m0, k0, raw);
    rf_mmf_fetch_x(x, ldx, n_rows, n0_tok, k0, sx[0]);
    S::decode(w, n_out, n_in, row_bytes, m0, k0, raw, sw[0]);
    rf_copy_async_wait();
    __syncthreads();
    for (int ks = k0; ks < n_k; ++ks) {
        const int cur = (ks - k0) & 1;
        // The other buffers were last read in step ks - 1, which every warp finished before the barrier:
        // step ks + 1's reads go out now and land while this step multiplies.
        const bool more = ks + 1 < n_k;
        if (more) {
            S::fetch(w, n_out, n_in, row_bytes, m0, ks + 1, raw);
            rf_mmf_fetch_x(x, ldx, n_rows, n0_tok, ks + 1, sx[cur ^ 1]);
        }
        RF_UNROLL for (int u = 0; u < RF_MM_WT; ++u) {
            const int wt = warp * RF_MM_WT + u, wm = wt % RF_MM_WARPS_M, wn = wt / RF_MM_WARPS_M;
            RF_UNROLL for (int kk = 0; kk < RF_MM_BK / RF_TILE; ++kk) {
                rf_frag fa[MI], fb[NI];
                RF_UNROLL for (int mi = 0; mi < MI; ++mi)
                    rf_tile_load_a(fa[mi], sw[cur] + ((wm * MI + mi) * RF_TILE) * RF_MM_LD + kk * RF_TILE, RF_MM_LD, lane);
                RF_UNROLL for (int ni = 0; ni < NI; ++ni)
                    rf_tile_load_b(fb[ni], sx[cur] + ((wn * NI + ni) * RF_TILE) * RF_MM_LD + kk * RF_TILE, RF_MM_LD, lane);
                RF_UNROLL for (int mi = 0; mi < MI; ++mi)
                    RF_UNROLL for (int ni = 0; ni < NI; ++ni) rf_tile_mma(acc[u][mi][ni], fa[mi], fb[ni]);
            }
        }
        if (more) S::decode(w, n_out, n_in, row_bytes, m0, ks + 1, raw, sw[cur ^ 1]);
        rf_copy_async_wait();
        __syncthreads();
    }

    RF_UNROLL for (int u = 0; u < RF_MM_WT; ++u) {
        const int wt = warp * RF_MM_WT + u, wm = wt % RF_MM_WARPS_M, wn = wt / RF_MM_WARPS_M;
        RF_UNROLL for (int mi = 0; mi < MI; ++mi) {
            RF_UNROLL for (int ni = 0; ni < NI; ++ni) {
                RF_UNROLL for (int i = 0; i < RF_TILE_ACC; ++i) {
                    int r, c;
                    rf_tile_coord(lane, i, r, c);
                    const int row = m0 + (wm * MI + mi) * RF_TILE + r, tok = n0_tok + (wn * NI + ni) * RF_TILE + c;
                    if (row >= n_out || tok >= n_rows) continue;
                    const long long at = (long long)tok * ldy + col0 + row;
                    y[at] = acc[u][mi][ni][i] * x_scale[tok] + (bias ? bias[col0 + row] : 0.0f) + (res ? res[at] : 0.0f);
                }
            }
        }
    }
}

#define RF_MMF_KERNEL(T, S, D, BM)                                                                       \
    extern "C" __global__ void RF_BOUNDS(RF_MM_WARPS * WARP_SIZE, BM == 128 ? 2 : 3)                     \
        mmf_##T##_##BM(const uint8_t* __restrict__ w0, const uint8_t* __restrict__ w1,                   \
                       const uint8_t* __restrict__ w2, int n0, int n1, int n2, int n_in,                 \
                       long long row_bytes, const rf_half* __restrict__ x, int ldx,                      \
                       const float* __restrict__ x_scale, float* __restrict__ y, int ldy,                \
                       const float* __restrict__ bias, const float* __restrict__ res, int n_rows,        \
                       int k_steps, long long split_stride) {                                            \
        rf_mmf<S<D, BM>, BM>(w0, w1, w2, n0, n1, n2, n_in, row_bytes, x, ldx, x_scale, y, ldy, bias, res, \
                             n_rows, k_steps, split_stride);                                             \
    }

// Rows of float32 x (row stride ldx) -> f16 rows of n values (n and ldx multiples of 4, x 16-byte
// aligned): the tile product's activations, converted once for all the parts that read them. Each row
// is first scaled by a power of two that puts its largest magnitude in [2^13, 2^14), so activations
// beyond f16's range (65504) neither overflow nor lose more than f16's own precision; the exact
// inverse goes to x_scale[r] for the product's epilogue. (Rows whose largest value is below 2^-113,
// or not finite, keep scale 1.) grid = (n_rows), one block per row.
extern "C" __global__ void convert_f16(const float* __restrict__ x, int ldx, rf_half* __restrict__ y,
                                       float* __restrict__ x_scale, int n) {
    __shared__ float scratch[RF_MAX_WARPS];
    const long long r = blockIdx.x;
    const float* xr = x + r * ldx;
    float mx = 0.0f;
    for (int i = 4 * threadIdx.x; i < n; i += 4 * blockDim.x) {
        const rf_u32x4 v = rf_load16(xr + i);
        mx = fmaxf(mx, fmaxf(fmaxf(fabsf(rf_bits_as_float(v.x)), fabsf(rf_bits_as_float(v.y))),
                             fmaxf(fabsf(rf_bits_as_float(v.z)), fabsf(rf_bits_as_float(v.w)))));
    }
    mx = rf_block_max(mx, scratch);
    const int e = (int)((rf_float_as_bits(mx) >> 23) & 0xffu);  // mx = 1.f * 2^(e - 127)
    const bool scaled = e >= 14 && e <= 254;
    const float up = scaled ? rf_bits_as_float((uint32_t)(267 - e) << 23) : 1.0f;    // 2^(140 - e)
    const float down = scaled ? rf_bits_as_float((uint32_t)(e - 13) << 23) : 1.0f;   // 2^(e - 140)
    if (threadIdx.x == 0) x_scale[r] = down;
    for (int i = 4 * threadIdx.x; i < n; i += 4 * blockDim.x) {
        const rf_u32x4 v = rf_load16(xr + i);
        uint32_t* out = (uint32_t*)(y + r * n + i);
        out[0] = rf_pack_half2(rf_bits_as_float(v.x) * up, rf_bits_as_float(v.y) * up);
        out[1] = rf_pack_half2(rf_bits_as_float(v.z) * up, rf_bits_as_float(v.w) * up);
    }
}

// y[t, c] = the sum of the splits' partial products ws[s * stride + t * n + c] (s < splits, in order,
// so the result does not depend on timing) + bias[c] + res[t * ldy + c]. grid = (ceil(n / blockDim.x),
// n_rows).
extern "C" __global__ void mmf_reduce(const float* __restrict__ ws, long long stride, int splits, int n, float* y,
                                      int ldy, const float* bias, const float* res) {
    const long long t = blockIdx.y;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += ws[s * stride + t * n + c];
    if (bias) v += bias[c];
    if (res) v += res[t * ldy + c];
    y[t * ldy + c] = v;
}

// One line per instance (no macro calling another): gpu/kernels.py reads the kernel table from here.
RF_MMF_KERNEL(q4_0, rf_split_stage, MQ4_0, 128)
RF_MMF_KERNEL(q4_0, rf_split_stage, MQ4_0, 64)
RF_MMF_KERNEL(q4_1, rf_split_stage, MQ4_1, 128)
RF_MMF_KERNEL(q4_1, rf_split_stage, MQ4_1, 64)
RF_MMF_KERNEL(q5_0, rf_split_stage, MQ5_0, 128)
RF_MMF_KERNEL(q5_0, rf_split_stage, MQ5_0, 64)
RF_MMF_KERNEL(q5_1, rf_split_stage, MQ5_1, 128)
RF_MMF_KERNEL(q5_1, rf_split_stage, MQ5_1, 64)
RF_MMF_KERNEL(q8_0, rf_split_stage, MQ8_0, 128)
RF_MMF_KERNEL(q8_0, rf_split_stage, MQ8_0, 64)
RF_MMF_KERNEL(q4_K, rf_split_stage, MQ4_K, 128)
RF_MMF_KERNEL(q4_K, rf_split_stage, MQ4_K, 64)
RF_MMF_KERNEL(q5_K, rf_split_stage, MQ5_K, 128)
RF_MMF_KERNEL(q5_K, rf_split_stage, MQ5_K, 64)
RF_MMF_KERNEL(q6_K, rf_split_stage, MQ6_K, 128)
RF_MMF_KERNEL(q6_K, rf_split_stage, MQ6_K, 64)
// Types without a split layout: 128-row blocks only (gpu/mmf.py GGUF_TYPES).
RF_MMF_KERNEL(f32, rf_gguf_stage, DecF32, 128)
RF_MMF_KERNEL(f16, rf_gguf_stage, DecF16, 128)
RF_MMF_KERNEL(bf16, rf_gguf_stage, DecBF16, 128)
RF_MMF_KERNEL(q2_K, rf_gguf_stage, DecQ2_K, 128)
RF_MMF_KERNEL(q3_K, rf_gguf_stage, DecQ3_K, 128)
