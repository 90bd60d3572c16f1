// Mat-vec over packed weights against 8-bit activations (decode, and prompt rows 8 at a time).
//
// Weights come split into [bulk | meta] (rf_blocks.h). Activations are quantized once per row to blocks
// of 32 int8 values (quantize_q8 / rms_norm_q8): xq holds the int8 values, xd the pair (d, d * sum(q))
// per block, so a weight zero-point or minimum folds in through the block sum and every product is an
// integer dot of 4-byte words (rf_dot4_i8): sum over groups g of f[g] * dx * dot(w_g, xq_g) + c[g] * s.
// The mat-vec is written once over the decoders (rf_mvq).
#include "rf_prelude.h"
#include "rf_blocks.h"

// ---------------------------------------------------------------- the mat-vec
// Two knobs, template parameters, chosen per weight shape at load by timing (gpu/mvq.py tune): U items
// in flight per lane before the first is used, and R weight rows per lane group, whose items sit at
// the same input positions, so their activations are loaded once for R rows (the activation loads per
// weight byte fall as 1/R - what bounds a 4-bit row, whose 16 bytes of quants need 32 bytes of
// activations, and every batched launch). Every (R, U) sums in the same order: equal results.

// y[r, row] = W[row, :] . x[r, :] (+ bias[row]) (+ res[r, row]) for up to NC activation rows r.
// `lpr` lanes (a power of two <= WARP_SIZE) share R consecutive weight rows, so short rows keep every
// lane busy; grid = (ceil(n_out * lpr / (blockDim.x * R)), ceil(n_rows / NC)).
template <class T, int NC, int R, int U>
RF_DEV void rf_mvq(const uint8_t* __restrict__ w, int n_out, int n_in, const int8_t* __restrict__ xq,
                   const float* __restrict__ xd, float* __restrict__ y, int ldy,
                   const float* __restrict__ bias, const float* __restrict__ res, int n_rows, int lpr) {
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    const int row0 = gid / lpr * R, sub = gid % lpr;
    const int r0 = blockIdx.y * NC;
    const int nb = n_in / T::QK, n_items = nb * T::ITEMS, nxb = n_in / RF_Q8;
    const bool live = row0 < n_out;  // dead lanes still join the shuffles below
    const uint8_t* bulk[R];
    const uint8_t* meta[R];
    RF_UNROLL for (int q = 0; q < R; ++q) {
        const int row = row0 + q < n_out ? row0 + q : 0;  // a missing last row reads row 0, never stored
        bulk[q] = w + (long long)row * nb * T::BULK;
        meta[q] = w + (long long)n_out * nb * T::BULK + (long long)row * nb * (T::BLOCK - T::BULK);
    }
    float acc[R][NC];
    RF_UNROLL for (int q = 0; q < R; ++q)
        RF_UNROLL for (int c = 0; c < NC; ++c) acc[q][c] = 0.0f;
    for (int base = sub; live && base < n_items; base += U * lpr) {
        rf_item items[U][R];
        RF_UNROLL for (int u = 0; u < U; ++u) {
            RF_UNROLL for (int q = 0; q < R; ++q)
                if (base + u * lpr < n_items) T::item(bulk[q], meta[q], base + u * lpr, items[u][q]);
        }
        RF_UNROLL for (int u = 0; u < U; ++u) {
            const bool have = base + u * lpr < n_items;
            // Every row's item u sits at the same input positions: its activations are read once.
            const rf_item& o = items[u][0];
            RF_UNROLL for (int c = 0; c < NC; ++c) {
                if (!have || r0 + c >= n_rows) continue;
                const int8_t* xr = xq + (long long)(r0 + c) * n_in;
                const float* dr = xd + 2 * (long long)(r0 + c) * nxb;
                RF_UNROLL for (int g = 0; g < 2; ++g) {
                    const rf_u32x4 xv = rf_load16(xr + o.xb[g] * RF_Q8 + o.xo[g] * 4);
                    const rf_f32x2 ds = rf_load_f32x2(dr + 2 * o.xb[g]);
                    RF_UNROLL for (int q = 0; q < R; ++q) {
                        const rf_item& oq = items[u][q];
                        int sumi = 0;
                        RF_UNROLL for (int k = 0; k < 4; ++k) sumi = rf_dot4_i8(oq.w[4 * g + k], (int)rf_u4_at(xv, k), sumi);
                        acc[q][c] += oq.f[g] * ds.x * (float)sumi + oq.c[g] * ds.y;
                    }
                }
            }
        }
    }
    RF_UNROLL for (int q = 0; q < R; ++q)
        RF_UNROLL for (int c = 0; c < NC; ++c) {
            for (int m = lpr / 2; m > 0; m >>= 1) acc[q][c] += RF_SHFL_XOR(acc[q][c], m);
        }
    if (!live || sub != 0) return;
    RF_UNROLL for (int q = 0; q < R; ++q) {
        const int row = row0 + q;
        if (row >= n_out) continue;
        const float add = bias ? bias[row] : 0.0f;
        RF_UNROLL for (int c = 0; c < NC; ++c) {
            if (r0 + c >= n_rows) continue;
            const long long at = (long long)(r0 + c) * ldy + row;
            y[at] = acc[q][c] + add + (res ? res[at] : 0.0f);
        }
    }
}

#define RF_MVQ_KERNEL(T, D, NC, R, U)                                                                   \
    extern "C" __global__ void mvq_##T##_##NC##_r##R##u##U(const uint8_t* __restrict__ w, int n_out, int n_in,        \
                                              const int8_t* __restrict__ xq, const float* __restrict__ xd, \
                                              float* __restrict__ y, int ldy, const float* __restrict__ bias, \
                                              const float* __restrict__ res, int n_rows, int lpr) {      \
        rf_mvq<D, NC, R, U>(w, n_out, n_in, xq, xd, y, ldy, bias, res, n_rows, lpr);                          \
    }

// RMSNorm of one activation row (as rms_norm_q8: y = x / rms(x) * nw, quantized in blocks of 32) in each
// block's shared memory, then the mat-vec over it: for a short row (a small model's decode) the norm
// costs a 2-4 KB read per block instead of a launch of its own. Variant r1u2 only.
#define RF_MVQ_NORM_MAX 4096  // longest row (gpu/mvq.py NORM_MAX)
template <class T>
RF_DEV void rf_mvq_norm(const uint8_t* __restrict__ w, int n_out, int n_in, const float* __restrict__ x,
                        const float* __restrict__ nw, float eps, float* __restrict__ y, int ldy,
                        const float* __restrict__ bias, const float* __restrict__ res, int lpr) {
    __shared__ int8_t s_xq[RF_MVQ_NORM_MAX];
    __shared__ float s_xd[2 * RF_MVQ_NORM_MAX / RF_Q8];
    __shared__ float scratch[RF_MAX_WARPS];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n_in; i += blockDim.x) ss += x[i] * x[i];
    ss = rf_block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)n_in + eps);
#if defined(RF_Q8_COOPERATIVE)
    for (int i = threadIdx.x; i < n_in; i += blockDim.x) rf_quantize_lane(x[i] * scale * nw[i], i, s_xq, s_xd);
#else
    for (int b = threadIdx.x; b < n_in / RF_Q8; b += blockDim.x) {
        float v[RF_Q8];
        for (int i = 0; i < RF_Q8; ++i) v[i] = x[b * RF_Q8 + i] * scale * nw[b * RF_Q8 + i];
        rf_quantize_serial(v, s_xq + b * RF_Q8, s_xd + 2 * b);
    }
#endif
    __syncthreads();
    rf_mvq<T, 1, 1, 2>(w, n_out, n_in, s_xq, s_xd, y, ldy, bias, res, 1, lpr);
}

#define RF_MVQ_NORM_KERNEL(T, D)                                                                         \
    extern "C" __global__ void mvq_norm_##T(const uint8_t* __restrict__ w, int n_out, int n_in,         \
                                            const float* __restrict__ x, const float* __restrict__ nw,  \
                                            float eps, float* __restrict__ y, int ldy,                  \
                                            const float* __restrict__ bias, const float* __restrict__ res, \
                                            int lpr) {                                                  \
        rf_mvq_norm<D>(w, n_out, n_in, x, nw, eps, y, ldy, bias, res, lpr);                            \
    }

// The gated activation (as swiglu_q8 / geglu_q8: y = act(gate) * up over gate|up (2 n_in values),
// quantized in blocks of 32) in each block's shared memory, then the mat-vec over it with its residual:
// the down projection of a small model's decode without the activation's launch. Variant r1u2.
template <class T, bool GELU>
RF_DEV void rf_mvq_glu(const uint8_t* __restrict__ w, int n_out, int n_in, const float* __restrict__ gu,
                       float* __restrict__ y, int ldy, const float* __restrict__ bias, const float* __restrict__ res,
                       int lpr) {
    __shared__ int8_t s_xq[RF_MVQ_NORM_MAX];
    __shared__ float s_xd[2 * RF_MVQ_NORM_MAX / RF_Q8];
#if defined(RF_Q8_COOPERATIVE)
    for (int i = threadIdx.x; i < n_in; i += blockDim.x)
        rf_quantize_lane(GELU ? rf_gelu_mul(gu[i], gu[n_in + i]) : rf_silu_mul(gu[i], gu[n_in + i]), i, s_xq, s_xd);
#else
    for (int b = threadIdx.x; b < n_in / RF_Q8; b += blockDim.x) {
        float v[RF_Q8];
        for (int k = 0; k < RF_Q8; ++k) {
            const int c = b * RF_Q8 + k;
            v[k] = GELU ? rf_gelu_mul(gu[c], gu[n_in + c]) : rf_silu_mul(gu[c], gu[n_in + c]);
        }
        rf_quantize_serial(v, s_xq + b * RF_Q8, s_xd + 2 * b);
    }
#endif
    __syncthreads();
    rf_mvq<T, 1, 1, 2>(w, n_out, n_in, s_xq, s_xd, y, ldy, bias, res, 1, lpr);
}

#define RF_MVQ_GLU_KERNEL(T, D, ACT, GELU)                                                               \
    extern "C" __global__ void mvq_##ACT##_##T(const uint8_t* __restrict__ w, int n_out, int n_in,      \
                                               const float* __restrict__ gu, float* __restrict__ y,    \
                                               int ldy, const float* __restrict__ bias,                 \
                                               const float* __restrict__ res, int lpr) {               \
        rf_mvq_glu<D, GELU>(w, n_out, n_in, gu, y, ldy, bias, res, lpr);                               \
    }

// GGUF blocks -> [bulk of every block | meta of every block]: bulk = bytes [at, at + bulk_len) of a
// block, meta = the others in order. One thread per block; block b's parts go to bulk + b * bulk_len
// and meta + b * (block_bytes - bulk_len), so several tensors can fill one split array in turn.
extern "C" __global__ void repack_blocks(const uint8_t* __restrict__ src, uint8_t* __restrict__ bulk_dst,
                                         uint8_t* __restrict__ meta_dst, long long n_blocks, int block_bytes,
                                         int at, int bulk_len) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const uint8_t* s = src + b * block_bytes;
    uint8_t* bulk = bulk_dst + b * bulk_len;
    const int meta_len = block_bytes - bulk_len;
    uint8_t* meta = meta_dst + b * meta_len;
    for (int i = 0; i < bulk_len; ++i) bulk[i] = s[at + i];
    for (int i = 0; i < meta_len; ++i) meta[i] = s[i < at ? i : i + bulk_len];
}

// out[t, :] = W[ids[t], :] * scale from the split layout: the embedding lookup of a table that is
// also the output projection (tied). One block per token; each item's bytes decoded as f * q + v0.
template <class T>
RF_DEV void rf_get_rows_split(const uint8_t* __restrict__ w, int n_vocab, int n_in, const int* __restrict__ ids,
                              float* __restrict__ out, float scale) {
    const int nb = n_in / T::QK, n_items = nb * T::ITEMS;
    const long long row = ids[blockIdx.x];
    const uint8_t* bulk = w + row * nb * T::BULK;
    const uint8_t* meta = w + (long long)n_vocab * nb * T::BULK + row * nb * (T::BLOCK - T::BULK);
    float* o = out + (long long)blockIdx.x * n_in;
    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        rf_item item;
        T::item(bulk, meta, it, item);
        RF_UNROLL for (int g = 0; g < 2; ++g) {
            RF_UNROLL for (int k = 0; k < 4; ++k) {
                const uint32_t v = (uint32_t)item.w[4 * g + k];
                const int at = item.xb[g] * RF_Q8 + (item.xo[g] + k) * 4;
                RF_UNROLL for (int b = 0; b < 4; ++b) {
                    o[at + b] = (item.f[g] * (float)(int8_t)(v >> (8 * b)) + item.v0[g]) * scale;
                }
            }
        }
    }
}

#define RF_SPLIT_GATHER(T, D)                                                                           \
    extern "C" __global__ void get_rows_split_##T(const uint8_t* __restrict__ w, int n_vocab, int n_in,  \
                                                  const int* __restrict__ ids, float* __restrict__ out, \
                                                  float scale) {                                        \
        rf_get_rows_split<D>(w, n_vocab, n_in, ids, out, scale);                                        \
    }

// One line per instance (no macro calling another): gpu/kernels.py reads the kernel table from here.
RF_SPLIT_GATHER(q4_0, MQ4_0)
RF_MVQ_NORM_KERNEL(q4_0, MQ4_0)
RF_MVQ_GLU_KERNEL(q4_0, MQ4_0, swiglu, false)
RF_MVQ_GLU_KERNEL(q4_0, MQ4_0, geglu, true)
RF_MVQ_KERNEL(q4_0, MQ4_0, 1, 1, 2)
RF_MVQ_KERNEL(q4_0, MQ4_0, 1, 2, 2)
RF_MVQ_KERNEL(q4_0, MQ4_0, 1, 2, 1)
RF_MVQ_KERNEL(q4_0, MQ4_0, 2, 1, 2)
RF_MVQ_KERNEL(q4_0, MQ4_0, 2, 2, 1)
RF_MVQ_KERNEL(q4_0, MQ4_0, 4, 2, 1)
RF_MVQ_KERNEL(q4_0, MQ4_0, 4, 4, 1)
RF_MVQ_KERNEL(q4_0, MQ4_0, 8, 2, 1)
RF_MVQ_KERNEL(q4_0, MQ4_0, 8, 4, 1)
RF_SPLIT_GATHER(q4_1, MQ4_1)
RF_MVQ_NORM_KERNEL(q4_1, MQ4_1)
RF_MVQ_GLU_KERNEL(q4_1, MQ4_1, swiglu, false)
RF_MVQ_GLU_KERNEL(q4_1, MQ4_1, geglu, true)
RF_MVQ_KERNEL(q4_1, MQ4_1, 1, 1, 2)
RF_MVQ_KERNEL(q4_1, MQ4_1, 1, 2, 2)
RF_MVQ_KERNEL(q4_1, MQ4_1, 1, 2, 1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 2, 1, 2)
RF_MVQ_KERNEL(q4_1, MQ4_1, 2, 2, 1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 4, 2, 1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 4, 4, 1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 8, 2, 1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 8, 4, 1)
RF_SPLIT_GATHER(q5_0, MQ5_0)
RF_MVQ_NORM_KERNEL(q5_0, MQ5_0)
RF_MVQ_GLU_KERNEL(q5_0, MQ5_0, swiglu, false)
RF_MVQ_GLU_KERNEL(q5_0, MQ5_0, geglu, true)
RF_MVQ_KERNEL(q5_0, MQ5_0, 1, 1, 2)
RF_MVQ_KERNEL(q5_0, MQ5_0, 1, 2, 2)
RF_MVQ_KERNEL(q5_0, MQ5_0, 1, 2, 1)
RF_MVQ_KERNEL(q5_0, MQ5_0, 2, 1, 2)
RF_MVQ_KERNEL(q5_0, MQ5_0, 2, 2, 1)
RF_MVQ_KERNEL(q5_0, MQ5_0, 4, 2, 1)
RF_MVQ_KERNEL(q5_0, MQ5_0, 4, 4, 1)
RF_MVQ_KERNEL(q5_0, MQ5_0, 8, 2, 1)
RF_MVQ_KERNEL(q5_0, MQ5_0, 8, 4, 1)
RF_SPLIT_GATHER(q5_1, MQ5_1)
RF_MVQ_NORM_KERNEL(q5_1, MQ5_1)
RF_MVQ_GLU_KERNEL(q5_1, MQ5_1, swiglu, false)
RF_MVQ_GLU_KERNEL(q5_1, MQ5_1, geglu, true)
RF_MVQ_KERNEL(q5_1, MQ5_1, 1, 1, 2)
RF_MVQ_KERNEL(q5_1, MQ5_1, 1, 2, 2)
RF_MVQ_KERNEL(q5_1, MQ5_1, 1, 2, 1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 2, 1, 2)
RF_MVQ_KERNEL(q5_1, MQ5_1, 2, 2, 1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 4, 2, 1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 4, 4, 1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 8, 2, 1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 8, 4, 1)
RF_SPLIT_GATHER(q8_0, MQ8_0)
RF_MVQ_NORM_KERNEL(q8_0, MQ8_0)
RF_MVQ_GLU_KERNEL(q8_0, MQ8_0, swiglu, false)
RF_MVQ_GLU_KERNEL(q8_0, MQ8_0, geglu, true)
RF_MVQ_KERNEL(q8_0, MQ8_0, 1, 1, 2)
RF_MVQ_KERNEL(q8_0, MQ8_0, 1, 2, 2)
RF_MVQ_KERNEL(q8_0, MQ8_0, 1, 2, 1)
RF_MVQ_KERNEL(q8_0, MQ8_0, 2, 1, 2)
RF_MVQ_KERNEL(q8_0, MQ8_0, 2, 2, 1)
RF_MVQ_KERNEL(q8_0, MQ8_0, 4, 2, 1)
RF_MVQ_KERNEL(q8_0, MQ8_0, 4, 4, 1)
RF_MVQ_KERNEL(q8_0, MQ8_0, 8, 2, 1)
RF_MVQ_KERNEL(q8_0, MQ8_0, 8, 4, 1)
RF_SPLIT_GATHER(q4_K, MQ4_K)
RF_MVQ_NORM_KERNEL(q4_K, MQ4_K)
RF_MVQ_GLU_KERNEL(q4_K, MQ4_K, swiglu, false)
RF_MVQ_GLU_KERNEL(q4_K, MQ4_K, geglu, true)
RF_MVQ_KERNEL(q4_K, MQ4_K, 1, 1, 2)
RF_MVQ_KERNEL(q4_K, MQ4_K, 1, 2, 2)
RF_MVQ_KERNEL(q4_K, MQ4_K, 1, 2, 1)
RF_MVQ_KERNEL(q4_K, MQ4_K, 2, 1, 2)
RF_MVQ_KERNEL(q4_K, MQ4_K, 2, 2, 1)
RF_MVQ_KERNEL(q4_K, MQ4_K, 4, 2, 1)
RF_MVQ_KERNEL(q4_K, MQ4_K, 4, 4, 1)
RF_MVQ_KERNEL(q4_K, MQ4_K, 8, 2, 1)
RF_MVQ_KERNEL(q4_K, MQ4_K, 8, 4, 1)
RF_SPLIT_GATHER(q5_K, MQ5_K)
RF_MVQ_NORM_KERNEL(q5_K, MQ5_K)
RF_MVQ_GLU_KERNEL(q5_K, MQ5_K, swiglu, false)
RF_MVQ_GLU_KERNEL(q5_K, MQ5_K, geglu, true)
RF_MVQ_KERNEL(q5_K, MQ5_K, 1, 1, 2)
RF_MVQ_KERNEL(q5_K, MQ5_K, 1, 2, 2)
RF_MVQ_KERNEL(q5_K, MQ5_K, 1, 2, 1)
RF_MVQ_KERNEL(q5_K, MQ5_K, 2, 1, 2)
RF_MVQ_KERNEL(q5_K, MQ5_K, 2, 2, 1)
RF_MVQ_KERNEL(q5_K, MQ5_K, 4, 2, 1)
RF_MVQ_KERNEL(q5_K, MQ5_K, 4, 4, 1)
RF_MVQ_KERNEL(q5_K, MQ5_K, 8, 2, 1)
RF_MVQ_KERNEL(q5_K, MQ5_K, 8, 4, 1)
RF_SPLIT_GATHER(q6_K, MQ6_K)
RF_MVQ_NORM_KERNEL(q6_K, MQ6_K)
RF_MVQ_GLU_KERNEL(q6_K, MQ6_K, swiglu, false)
RF_MVQ_GLU_KERNEL(q6_K, MQ6_K, geglu, true)
RF_MVQ_KERNEL(q6_K, MQ6_K, 1, 1, 2)
RF_MVQ_KERNEL(q6_K, MQ6_K, 1, 2, 2)
RF_MVQ_KERNEL(q6_K, MQ6_K, 1, 2, 1)
RF_MVQ_KERNEL(q6_K, MQ6_K, 2, 1, 2)
RF_MVQ_KERNEL(q6_K, MQ6_K, 2, 2, 1)
RF_MVQ_KERNEL(q6_K, MQ6_K, 4, 2, 1)
RF_MVQ_KERNEL(q6_K, MQ6_K, 4, 4, 1)
RF_MVQ_KERNEL(q6_K, MQ6_K, 8, 2, 1)
RF_MVQ_KERNEL(q6_K, MQ6_K, 8, 4, 1)

// ---------------------------------------------------------------- activations to 8 bits
// Rows of x (row stride ldx) -> xq (n_rows, n) int8, xd (n_rows, n / 32, 2); n a multiple of 32.
// grid = (ceil(n / (blockDim.x * per_thread)), n_rows): per_thread 1 value on GPUs, a block of 32
// in the host emulation (rf_prelude.h, 8-bit activation blocks).
extern "C" __global__ void quantize_q8(const float* __restrict__ x, int ldx, int8_t* __restrict__ xq,
                                       float* __restrict__ xd, int n) {
    const long long r = blockIdx.y;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
#if defined(RF_Q8_COOPERATIVE)
    if (i >= n) return;  // whole groups of 32 leave together (n % 32 == 0)
    rf_quantize_lane(x[r * ldx + i], i, xq + r * n, xd + r * (n / RF_Q8) * 2);
#else
    if (i * RF_Q8 >= n) return;
    rf_quantize_serial(x + r * ldx + i * RF_Q8, xq + r * n + i * RF_Q8, xd + 2 * (r * (n / RF_Q8) + i));
#endif
}

// RMSNorm (as rms_norm_f32) whose output is also quantized for the mat-vec that reads it next.
// One block per row, blockDim a multiple of 32.
extern "C" __global__ void rms_norm_q8(const float* __restrict__ x, float* __restrict__ y,
                                       const float* __restrict__ w, int n, float eps,
                                       int8_t* __restrict__ xq, float* __restrict__ xd) {
    __shared__ float scratch[RF_MAX_WARPS];
    const long long r = blockIdx.x;
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = rf_block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
#if defined(RF_Q8_COOPERATIVE)
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i] * scale * w[i];
        yr[i] = v;
        rf_quantize_lane(v, i, xq + r * n, xd + r * (n / RF_Q8) * 2);
    }
#else
    for (int b = threadIdx.x; b < n / RF_Q8; b += blockDim.x) {
        float v[RF_Q8];
        for (int i = 0; i < RF_Q8; ++i) {
            v[i] = xr[b * RF_Q8 + i] * scale * w[b * RF_Q8 + i];
            yr[b * RF_Q8 + i] = v[i];
        }
        rf_quantize_serial(v, xq + r * n + b * RF_Q8, xd + 2 * (r * (n / RF_Q8) + b));
    }
#endif
}
