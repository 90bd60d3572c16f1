// Mat-vec over packed weights against 8-bit activations (decode, and prompt rows 8 at a time).
//
// Weights are repacked at load (repack_blocks) from GGUF's array of blocks into two arrays of the same
// total size: the "bulk" bytes of every block (quants, 16-byte multiples, so each lane reads them with
// 16-byte loads and a warp reads consecutive memory) and the "meta" bytes (scales, mins, high bits).
// Activations are quantized once per row to blocks of 32 int8 values (quantize_q8 / rms_norm_q8):
// xq holds the int8 values, xd the pair (d, d * sum(q)) per block, so a weight zero-point or minimum
// folds in through the block sum and every product is an integer dot of 4-byte words (rf_dot4_i8).
//
// Each weight type is one decoder struct whose `item` unpacks 16 or 32 bytes of quants into eight
// 32-bit words of bytes in two groups of four, with the activation block and word offset each group
// multiplies and the float factors: sum over groups g of f[g] * dx * dot(w_g, xq_g) + c[g] * s.
// The mat-vec is written once over that (rf_mvq).
#include "rf_prelude.h"


struct rf_item {
    int w[8];      // bytes to multiply, groups of 4 words
    int xb[2];     // activation block of each group (within the row)
    int xo[2];     // first word (0 or 4) within that block
    float f[2];    // weight scale of the group
    float c[2];    // factor of the activation block's sum (zero-point or minimum), 0 if none
    float v0[2];   // the offset every value of the group has: value = f * (int8)byte + v0
};

// Bits b0..b3 of h moved to bit 4 of bytes 0..3 (a 5-bit quant's high bit over four values).
RF_DEV int rf_spread4(uint32_t h) {
    return (int)(((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25));
}

// Four bytes in 0..63 shifted by -32 into signed bytes, without borrows between bytes.
RF_DEV int rf_sub32x4(uint32_t v) { return (int)(((v | 0x80808080u) - 0x20202020u) ^ 0x80808080u); }

// ---------------------------------------------------------------- 32-value block types

// Q4_0 (18 bytes): f16 d | 16 bytes of nibbles (low = values 0..15, high = 16..31); value (q - 8) d.
struct MQ4_0 {
    static const int QK = 32, BLOCK = 18, BULK_AT = 2, BULK = 16, ITEMS = 1;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = rf_load16(bulk + it * 16);
        const float d = rf_load_half(meta + it * 2);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(q, k);
            o.w[k] = (int)(v & 0x0f0f0f0fu);
            o.w[4 + k] = (int)((v >> 4) & 0x0f0f0f0fu);
        }
        o.xb[0] = o.xb[1] = it; o.xo[0] = 0; o.xo[1] = 4;
        o.f[0] = o.f[1] = d; o.c[0] = -8.0f * d; o.c[1] = 0.0f; o.v0[0] = o.v0[1] = -8.0f * d;
    }
};

// Q4_1 (20 bytes): f16 d, f16 m | nibbles; value q d + m.
struct MQ4_1 {
    static const int QK = 32, BLOCK = 20, BULK_AT = 4, BULK = 16, ITEMS = 1;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = rf_load16(bulk + it * 16);
        const float d = rf_load_half(meta + it * 4), m = rf_load_half(meta + it * 4 + 2);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(q, k);
            o.w[k] = (int)(v & 0x0f0f0f0fu);
            o.w[4 + k] = (int)((v >> 4) & 0x0f0f0f0fu);
        }
        o.xb[0] = o.xb[1] = it; o.xo[0] = 0; o.xo[1] = 4;
        o.f[0] = o.f[1] = d; o.c[0] = m; o.c[1] = 0.0f; o.v0[0] = o.v0[1] = m;
    }
};

// Q5_0 (22 bytes): f16 d, u32 high bits | nibbles; value ((q | h << 4) - 16) d.
struct MQ5_0 {
    static const int QK = 32, BLOCK = 22, BULK_AT = 6, BULK = 16, ITEMS = 1;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = rf_load16(bulk + it * 16);
        const float d = rf_load_half(meta + it * 6);
        const uint32_t qh = rf_load_u32(meta + it * 6 + 2);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(q, k);
            o.w[k] = (int)(v & 0x0f0f0f0fu) | rf_spread4(qh >> (4 * k));
            o.w[4 + k] = (int)((v >> 4) & 0x0f0f0f0fu) | rf_spread4(qh >> (16 + 4 * k));
        }
        o.xb[0] = o.xb[1] = it; o.xo[0] = 0; o.xo[1] = 4;
        o.f[0] = o.f[1] = d; o.c[0] = -16.0f * d; o.c[1] = 0.0f; o.v0[0] = o.v0[1] = -16.0f * d;
    }
};

// Q5_1 (24 bytes): f16 d, f16 m, u32 high bits | nibbles; value (q | h << 4) d + m.
struct MQ5_1 {
    static const int QK = 32, BLOCK = 24, BULK_AT = 8, BULK = 16, ITEMS = 1;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = rf_load16(bulk + it * 16);
        const float d = rf_load_half(meta + it * 8), m = rf_load_half(meta + it * 8 + 2);
        const uint32_t qh = rf_load_u32(meta + it * 8 + 4);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(q, k);
            o.w[k] = (int)(v & 0x0f0f0f0fu) | rf_spread4(qh >> (4 * k));
            o.w[4 + k] = (int)((v >> 4) & 0x0f0f0f0fu) | rf_spread4(qh >> (16 + 4 * k));
        }
        o.xb[0] = o.xb[1] = it; o.xo[0] = 0; o.xo[1] = 4;
        o.f[0] = o.f[1] = d; o.c[0] = m; o.c[1] = 0.0f; o.v0[0] = o.v0[1] = m;
    }
};

// Q8_0 (34 bytes): f16 d | 32 int8 values.
struct MQ8_0 {
    static const int QK = 32, BLOCK = 34, BULK_AT = 2, BULK = 32, ITEMS = 1;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 a = rf_load16(bulk + it * 32), b = rf_load16(bulk + it * 32 + 16);
        const float d = rf_load_half(meta + it * 2);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            o.w[k] = (int)rf_u4_at(a, k);
            o.w[4 + k] = (int)rf_u4_at(b, k);
        }
        o.xb[0] = o.xb[1] = it; o.xo[0] = 0; o.xo[1] = 4;
        o.f[0] = o.f[1] = d; o.c[0] = o.c[1] = 0.0f; o.v0[0] = o.v0[1] = 0.0f;
    }
};

// ---------------------------------------------------------------- K-quants (256-value super-blocks)
// An item is 16 bytes of a super-block's quants: 16 values of each of two 32-value sub-blocks.

RF_DEV void rf_scale_min6(const uint8_t* s, int k, float* sc, float* m) {  // Q4_K / Q5_K 6-bit pairs
    int a, b;
    if (k < 4) {
        a = s[k] & 63; b = s[k + 4] & 63;
    } else {
        a = (s[k + 4] & 0xf) | ((s[k - 4] >> 6) << 4);
        b = (s[k + 4] >> 4) | ((s[k] >> 6) << 4);
    }
    *sc = (float)a; *m = (float)b;
}

// (Measured on the H200, 8B Q4_K_M shapes: reading the 16-byte super-block head as one load and
// picking bytes out of registers ran 20 % slower than these byte loads, which hit L1.)

// Q4_K (144 bytes): f16 d, f16 dmin, scales[12] | qs[128]. Bytes 32p..32p+31 hold sub-block 2p in the
// low nibbles and 2p+1 in the high nibbles; value d sc q - dmin m.
struct MQ4_K {
    static const int QK = 256, BLOCK = 144, BULK_AT = 16, BULK = 128, ITEMS = 8;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const int sb = it >> 3, c = it & 7, p = c >> 1, h = c & 1;
        const rf_u32x4 q = rf_load16(bulk + it * 16);
        const uint8_t* mb = meta + sb * 16;
        const float d = rf_load_half(mb), dmin = rf_load_half(mb + 2);
        float sc0, m0, sc1, m1;
        rf_scale_min6(mb + 4, 2 * p, &sc0, &m0);
        rf_scale_min6(mb + 4, 2 * p + 1, &sc1, &m1);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(q, k);
            o.w[k] = (int)(v & 0x0f0f0f0fu);
            o.w[4 + k] = (int)((v >> 4) & 0x0f0f0f0fu);
        }
        o.xb[0] = sb * 8 + 2 * p; o.xb[1] = sb * 8 + 2 * p + 1; o.xo[0] = o.xo[1] = 4 * h;
        o.f[0] = d * sc0; o.f[1] = d * sc1;
        o.c[0] = h ? 0.0f : -dmin * m0;  // the minimum multiplies the whole sub-block: once, at h == 0
        o.c[1] = h ? 0.0f : -dmin * m1;
        o.v0[0] = -dmin * m0; o.v0[1] = -dmin * m1;
    }
};

// Q5_K (176 bytes): f16 d, f16 dmin, scales[12], qh[32] | qs[128]; qh[l] bit j = fifth bit of value l
// of sub-block j. Meta is 48 bytes per super-block, so its qh half-rows are 16-byte aligned too.
struct MQ5_K {
    static const int QK = 256, BLOCK = 176, BULK_AT = 48, BULK = 128, ITEMS = 8;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const int sb = it >> 3, c = it & 7, p = c >> 1, h = c & 1;
        const rf_u32x4 q = rf_load16(bulk + it * 16);
        const uint8_t* mb = meta + sb * 48;
        const rf_u32x4 qh = rf_load16(mb + 16 + 16 * h);
        const float d = rf_load_half(mb), dmin = rf_load_half(mb + 2);
        float sc0, m0, sc1, m1;
        rf_scale_min6(mb + 4, 2 * p, &sc0, &m0);
        rf_scale_min6(mb + 4, 2 * p + 1, &sc1, &m1);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(q, k), hb = rf_u4_at(qh, k);
            o.w[k] = (int)((v & 0x0f0f0f0fu) | (((hb >> (2 * p)) & 0x01010101u) << 4));
            o.w[4 + k] = (int)(((v >> 4) & 0x0f0f0f0fu) | (((hb >> (2 * p + 1)) & 0x01010101u) << 4));
        }
        o.xb[0] = sb * 8 + 2 * p; o.xb[1] = sb * 8 + 2 * p + 1; o.xo[0] = o.xo[1] = 4 * h;
        o.f[0] = d * sc0; o.f[1] = d * sc1;
        o.c[0] = h ? 0.0f : -dmin * m0;
        o.c[1] = h ? 0.0f : -dmin * m1;
        o.v0[0] = -dmin * m0; o.v0[1] = -dmin * m1;
    }
};

// Q6_K (210 bytes): ql[128], qh[64] | int8 scales[16], f16 d. Value 128n + 32j + l (n half, j 0..3,
// l 0..31): low 4 bits from ql[64n + 32(j&1) + l] (high nibble when j >= 2), top 2 bits from
// qh[32n + l] >> 2j; minus 32; times d * scales[8n + 2j + l/16]. An item is one 16-byte ql chunk:
// 16 values of sub-blocks j and j + 2 of one half.
struct MQ6_K {
    static const int QK = 256, BLOCK = 210, BULK_AT = 0, BULK = 192, ITEMS = 8;
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        const int sb = it >> 3, c = it & 7, n = c >> 2, off = (c & 3) * 16;
        const int j = off >> 5, l0 = off & 31;
        const uint8_t* b = bulk + sb * 192;
        const rf_u32x4 ql = rf_load16(b + 64 * n + off);
        const rf_u32x4 qh = rf_load16(b + 128 + 32 * n + l0);
        const uint8_t* mb = meta + sb * 18;
        const float d = rf_load_half(mb + 16);
        RF_UNROLL for (int k = 0; k < 4; ++k) {
            const uint32_t v = rf_u4_at(ql, k), hb = rf_u4_at(qh, k);
            o.w[k] = rf_sub32x4((v & 0x0f0f0f0fu) | (((hb >> (2 * j)) & 0x03030303u) << 4));
            o.w[4 + k] = rf_sub32x4(((v >> 4) & 0x0f0f0f0fu) | (((hb >> (2 * j + 4)) & 0x03030303u) << 4));
        }
        o.xb[0] = sb * 8 + 4 * n + j; o.xb[1] = sb * 8 + 4 * n + j + 2; o.xo[0] = o.xo[1] = l0 >> 2;
        o.f[0] = d * (float)(int8_t)mb[8 * n + 2 * j + (l0 >> 4)];
        o.f[1] = d * (float)(int8_t)mb[8 * n + 2 * (j + 2) + (l0 >> 4)];
        o.c[0] = o.c[1] = 0.0f; o.v0[0] = o.v0[1] = 0.0f;
    }
};

// ---------------------------------------------------------------- the mat-vec
#define RF_MVQ_UNROLL 2  // items in flight per lane before the first is used (4 and 8 measured slower:
                          // the registers they take cost more warps than their loads gain)

// y[r, row] = W[row, :] . x[r, :] (+ bias[row]) (+ res[r, row]) for up to NC activation rows r.
// `lpr` lanes (a power of two <= WARP_SIZE) share one weight row, so short rows keep every lane busy;
// grid = (ceil(n_out * lpr / blockDim.x), ceil(n_rows / NC)).
template <class T, int NC>
RF_DEV void rf_mvq(const uint8_t* __restrict__ w, int n_out, int n_in, const int8_t* __restrict__ xq,
                   const float* __restrict__ xd, float* __restrict__ y, int ldy,
                   const float* __restrict__ bias, const float* __restrict__ res, int n_rows, int lpr) {
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = gid / lpr, sub = gid % lpr;
    const int r0 = blockIdx.y * NC;
    const int nb = n_in / T::QK, n_items = nb * T::ITEMS, nxb = n_in / RF_Q8;
    const bool live = row < n_out;  // dead lanes still join the shuffles below
    const uint8_t* bulk = w + (long long)(live ? row : 0) * nb * T::BULK;
    const uint8_t* meta = w + (long long)n_out * nb * T::BULK + (long long)(live ? row : 0) * nb * (T::BLOCK - T::BULK);
    float acc[NC];
    RF_UNROLL for (int c = 0; c < NC; ++c) acc[c] = 0.0f;
    for (int base = sub; live && base < n_items; base += RF_MVQ_UNROLL * lpr) {
        rf_item items[RF_MVQ_UNROLL];
        RF_UNROLL for (int u = 0; u < RF_MVQ_UNROLL; ++u) {
            if (base + u * lpr < n_items) T::item(bulk, meta, base + u * lpr, items[u]);
        }
        RF_UNROLL for (int u = 0; u < RF_MVQ_UNROLL; ++u) {
            const rf_item& o = items[u];
            const bool have = base + u * lpr < n_items;
            RF_UNROLL for (int c = 0; c < NC; ++c) {
                if (!have || r0 + c >= n_rows) continue;
                const int8_t* xr = xq + (long long)(r0 + c) * n_in;
                const float* dr = xd + 2 * (long long)(r0 + c) * nxb;
                float s = 0.0f;
                RF_UNROLL for (int g = 0; g < 2; ++g) {
                    const rf_u32x4 xv = rf_load16(xr + o.xb[g] * RF_Q8 + o.xo[g] * 4);
                    int sumi = 0;
                    RF_UNROLL for (int k = 0; k < 4; ++k) sumi = rf_dot4_i8(o.w[4 * g + k], (int)rf_u4_at(xv, k), sumi);
                    s += o.f[g] * dr[2 * o.xb[g]] * (float)sumi + o.c[g] * dr[2 * o.xb[g] + 1];
                }
                acc[c] += s;
            }
        }
    }
    RF_UNROLL for (int c = 0; c < NC; ++c) {
        for (int m = lpr / 2; m > 0; m >>= 1) acc[c] += RF_SHFL_XOR(acc[c], m);
    }
    if (!live || sub != 0) return;
    const float add = bias ? bias[row] : 0.0f;
    RF_UNROLL for (int c = 0; c < NC; ++c) {
        if (r0 + c >= n_rows) continue;
        const long long at = (long long)(r0 + c) * ldy + row;
        y[at] = acc[c] + add + (res ? res[at] : 0.0f);
    }
}

#define RF_MVQ_KERNEL(T, D, NC)                                                                         \
    extern "C" __global__ void mvq_##T##_##NC(const uint8_t* __restrict__ w, int n_out, int n_in,        \
                                              const int8_t* __restrict__ xq, const float* __restrict__ xd, \
                                              float* __restrict__ y, int ldy, const float* __restrict__ bias, \
                                              const float* __restrict__ res, int n_rows, int lpr) {      \
        rf_mvq<D, NC>(w, n_out, n_in, xq, xd, y, ldy, bias, res, n_rows, lpr);                          \
    }

// GGUF blocks -> [bulk of every block | meta of every block]: bulk = bytes [at, at + bulk_len) of a
// block, meta = the others in order. One thread per block.
extern "C" __global__ void repack_blocks(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst,
                                         long long n_blocks, int block_bytes, int at, int bulk_len) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const uint8_t* s = src + b * block_bytes;
    uint8_t* bulk = dst + b * bulk_len;
    const int meta_len = block_bytes - bulk_len;
    uint8_t* meta = dst + n_blocks * bulk_len + b * meta_len;
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
RF_MVQ_KERNEL(q4_0, MQ4_0, 1)
RF_MVQ_KERNEL(q4_0, MQ4_0, 2)
RF_MVQ_KERNEL(q4_0, MQ4_0, 4)
RF_MVQ_KERNEL(q4_0, MQ4_0, 8)
RF_SPLIT_GATHER(q4_1, MQ4_1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 1)
RF_MVQ_KERNEL(q4_1, MQ4_1, 2)
RF_MVQ_KERNEL(q4_1, MQ4_1, 4)
RF_MVQ_KERNEL(q4_1, MQ4_1, 8)
RF_SPLIT_GATHER(q5_0, MQ5_0)
RF_MVQ_KERNEL(q5_0, MQ5_0, 1)
RF_MVQ_KERNEL(q5_0, MQ5_0, 2)
RF_MVQ_KERNEL(q5_0, MQ5_0, 4)
RF_MVQ_KERNEL(q5_0, MQ5_0, 8)
RF_SPLIT_GATHER(q5_1, MQ5_1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 1)
RF_MVQ_KERNEL(q5_1, MQ5_1, 2)
RF_MVQ_KERNEL(q5_1, MQ5_1, 4)
RF_MVQ_KERNEL(q5_1, MQ5_1, 8)
RF_SPLIT_GATHER(q8_0, MQ8_0)
RF_MVQ_KERNEL(q8_0, MQ8_0, 1)
RF_MVQ_KERNEL(q8_0, MQ8_0, 2)
RF_MVQ_KERNEL(q8_0, MQ8_0, 4)
RF_MVQ_KERNEL(q8_0, MQ8_0, 8)
RF_SPLIT_GATHER(q4_K, MQ4_K)
RF_MVQ_KERNEL(q4_K, MQ4_K, 1)
RF_MVQ_KERNEL(q4_K, MQ4_K, 2)
RF_MVQ_KERNEL(q4_K, MQ4_K, 4)
RF_MVQ_KERNEL(q4_K, MQ4_K, 8)
RF_SPLIT_GATHER(q5_K, MQ5_K)
RF_MVQ_KERNEL(q5_K, MQ5_K, 1)
RF_MVQ_KERNEL(q5_K, MQ5_K, 2)
RF_MVQ_KERNEL(q5_K, MQ5_K, 4)
RF_MVQ_KERNEL(q5_K, MQ5_K, 8)
RF_SPLIT_GATHER(q6_K, MQ6_K)
RF_MVQ_KERNEL(q6_K, MQ6_K, 1)
RF_MVQ_KERNEL(q6_K, MQ6_K, 2)
RF_MVQ_KERNEL(q6_K, MQ6_K, 4)
RF_MVQ_KERNEL(q6_K, MQ6_K, 8)

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
