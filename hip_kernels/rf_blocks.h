// rf_blocks.h: the packed weight blocks of the int8 and matrix-tile kernels, one decoder per GGUF type.
//
// Weights are repacked at load (repack_blocks in mmvq.hip) from GGUF's array of blocks into two arrays
// of the same total size: the "bulk" bytes of every block (quants, 16-byte multiples, read with 16-byte
// loads) and the "meta" bytes (scales, mins, high bits). Each type is one decoder struct whose `item`
// unpacks 16 or 32 bytes of quants into eight 32-bit words of bytes in two groups of four (16 values
// each, consecutive in the row), with the activation block and word offset each group covers and the
// float factors: value = f[g] * (int8)byte + v0[g]. The mat-vec (mmvq.hip) multiplies the bytes as
// integers; the tile product (mmf.hip) turns them into f16 values.
#pragma once
#include "rf_prelude.h"

struct rf_item {
    int w[8];      // bytes to multiply, groups of 4 words
    int xb[2];     // activation block of each group (within the row)
    int xo[2];     // first word (0 or 4) within that block
    float f[2];    // weight scale of the group
    float c[2];    // factor of the activation block's sum (zero-point or minimum), 0 if none
    float v0[2];   // the offset every value of the group has: value = f * (int8)byte + v0
};

// The quants of one item as loaded from the bulk array: `load` is the item's only read of the bulk
// bytes, `decode` the rest (meta reads and unpacking), so the tile product can issue a step's loads
// before it multiplies the previous step and unpack them after. `item` is the two together.
struct rf_raw { rf_u32x4 a, b; };

template <class T>
struct rf_decoder {
    static __device__ void item(const uint8_t* bulk, const uint8_t* meta, int it, rf_item& o) {
        rf_raw r;
        T::load(bulk, it, r);
        T::decode(r, meta, it, o);
    }
};

// Meta fields of the split layout are aligned to their size (a row's meta is a whole number of blocks'
// meta, an even size, and 16-bit fields sit at even offsets, 32-bit ones at multiples of 4), so each is
// one load - GGUF's own packing (rf_load_u16/_u32 in the prelude) needs a load per byte.
RF_DEV uint32_t rf_meta_u16(const uint8_t* p) {
#if defined(RF_PLATFORM_HOST)
    uint16_t v; memcpy(&v, p, 2); return v;
#else
    return *(const uint16_t*)p;
#endif
}
RF_DEV uint32_t rf_meta_u32(const uint8_t* p) {
#if defined(RF_PLATFORM_HOST)
    uint32_t v; memcpy(&v, p, 4); return v;
#else
    return *(const uint32_t*)p;
#endif
}
RF_DEV float rf_meta_half(const uint8_t* p) { return rf_half2float((rf_half)rf_meta_u16(p)); }
RF_DEV float rf_lo_half(uint32_t v) { return rf_half2float((rf_half)(v & 0xffffu)); }
RF_DEV float rf_hi_half(uint32_t v) { return rf_half2float((rf_half)(v >> 16)); }

// Bits b0..b3 of h moved to bit 4 of bytes 0..3 (a 5-bit quant's high bit over four values).
RF_DEV int rf_spread4(uint32_t h) {
    return (int)(((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25));
}

// Four bytes in 0..63 shifted by -32 into signed bytes, without borrows between bytes.
RF_DEV int rf_sub32x4(uint32_t v) { return (int)(((v | 0x80808080u) - 0x20202020u) ^ 0x80808080u); }

// ---------------------------------------------------------------- 32-value block types

// Q4_0 (18 bytes): f16 d | 16 bytes of nibbles (low = values 0..15, high = 16..31); value (q - 8) d.
struct MQ4_0 : rf_decoder<MQ4_0> {
    static const int QK = 32, BLOCK = 18, BULK_AT = 2, BULK = 16, ITEMS = 1;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) { r.a = rf_load16(bulk + it * 16); }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = r.a;
        const float d = rf_meta_half(meta + it * 2);
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
struct MQ4_1 : rf_decoder<MQ4_1> {
    static const int QK = 32, BLOCK = 20, BULK_AT = 4, BULK = 16, ITEMS = 1;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) { r.a = rf_load16(bulk + it * 16); }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = r.a;
        const uint32_t dm = rf_meta_u32(meta + it * 4);
        const float d = rf_lo_half(dm), m = rf_hi_half(dm);
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
struct MQ5_0 : rf_decoder<MQ5_0> {
    static const int QK = 32, BLOCK = 22, BULK_AT = 6, BULK = 16, ITEMS = 1;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) { r.a = rf_load16(bulk + it * 16); }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = r.a;
        const float d = rf_meta_half(meta + it * 6);
        const uint32_t qh = rf_meta_u16(meta + it * 6 + 2) | (rf_meta_u16(meta + it * 6 + 4) << 16);
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
struct MQ5_1 : rf_decoder<MQ5_1> {
    static const int QK = 32, BLOCK = 24, BULK_AT = 8, BULK = 16, ITEMS = 1;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) { r.a = rf_load16(bulk + it * 16); }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 q = r.a;
        const uint32_t dm = rf_meta_u32(meta + it * 8);
        const float d = rf_lo_half(dm), m = rf_hi_half(dm);
        const uint32_t qh = rf_meta_u32(meta + it * 8 + 4);
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
struct MQ8_0 : rf_decoder<MQ8_0> {
    static const int QK = 32, BLOCK = 34, BULK_AT = 2, BULK = 32, ITEMS = 1;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) {
        r.a = rf_load16(bulk + it * 32);
        r.b = rf_load16(bulk + it * 32 + 16);
    }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const rf_u32x4 a = r.a, b = r.b;
        const float d = rf_meta_half(meta + it * 2);
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

// Scale/minimum pair k of a 16-byte Q4_K / Q5_K head already in registers (h1, h2, h3: bytes 4-15).
RF_DEV void rf_scale_min6_regs(uint32_t h1, uint32_t h2, uint32_t h3, int k, float* sc, float* m) {
    const int j = 8 * (k & 3);
    const uint32_t a = (h1 >> j) & 0xffu, b = (h2 >> j) & 0xffu, c = (h3 >> j) & 0xffu;
    *sc = (float)(k < 4 ? a & 63u : (c & 0xfu) | ((a >> 6) << 4));
    *m = (float)(k < 4 ? b & 63u : (c >> 4) | ((b >> 6) << 4));
}

// The factors of sub-blocks 2p and 2p + 1 from a Q4_K / Q5_K head (f16 d, f16 dmin, 12 scale bytes).
// HEAD: the head as one 16-byte load, bytes picked out of registers - what the tile product wants,
// whose threads each read a different row (every load instruction costs one L1 wavefront per row).
// Otherwise byte loads of just the scales needed: measured on the H200 (8B Q4_K_M shapes), the
// mat-vec ran 20 % slower with the 16-byte head.
template <bool HEAD>
RF_DEV void rf_k_head(const uint8_t* mb, int p, float* d, float* dmin, float* sc0, float* m0, float* sc1, float* m1) {
    if (HEAD) {
        const rf_u32x4 h = rf_load16(mb);
        *d = rf_lo_half(h.x); *dmin = rf_hi_half(h.x);
        rf_scale_min6_regs(h.y, h.z, h.w, 2 * p, sc0, m0);
        rf_scale_min6_regs(h.y, h.z, h.w, 2 * p + 1, sc1, m1);
    } else {
        const uint32_t dm = rf_meta_u32(mb);
        *d = rf_lo_half(dm); *dmin = rf_hi_half(dm);
        rf_scale_min6(mb + 4, 2 * p, sc0, m0);
        rf_scale_min6(mb + 4, 2 * p + 1, sc1, m1);
    }
}

// Q4_K (144 bytes): f16 d, f16 dmin, scales[12] | qs[128]. Bytes 32p..32p+31 hold sub-block 2p in the
// low nibbles and 2p+1 in the high nibbles; value d sc q - dmin m.
struct MQ4_K : rf_decoder<MQ4_K> {
    static const int QK = 256, BLOCK = 144, BULK_AT = 16, BULK = 128, ITEMS = 8;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) { r.a = rf_load16(bulk + it * 16); }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const int sb = it >> 3, c = it & 7, p = c >> 1, h = c & 1;
        const rf_u32x4 q = r.a;
        const uint8_t* mb = meta + sb * 16;
        float d, dmin, sc0, m0, sc1, m1;
        rf_k_head<HEAD>(mb, p, &d, &dmin, &sc0, &m0, &sc1, &m1);
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
struct MQ5_K : rf_decoder<MQ5_K> {
    static const int QK = 256, BLOCK = 176, BULK_AT = 48, BULK = 128, ITEMS = 8;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) { r.a = rf_load16(bulk + it * 16); }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const int sb = it >> 3, c = it & 7, p = c >> 1, h = c & 1;
        const rf_u32x4 q = r.a;
        const uint8_t* mb = meta + sb * 48;
        const rf_u32x4 qh = rf_load16(mb + 16 + 16 * h);
        float d, dmin, sc0, m0, sc1, m1;
        rf_k_head<HEAD>(mb, p, &d, &dmin, &sc0, &m0, &sc1, &m1);
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
struct MQ6_K : rf_decoder<MQ6_K> {
    static const int QK = 256, BLOCK = 210, BULK_AT = 0, BULK = 192, ITEMS = 8;
    static __device__ void load(const uint8_t* bulk, int it, rf_raw& r) {
        const int c = it & 7, n = c >> 2, off = (c & 3) * 16;
        const uint8_t* b = bulk + (it >> 3) * 192;
        r.a = rf_load16(b + 64 * n + off);
        r.b = rf_load16(b + 128 + 32 * n + (off & 31));
    }
    template <bool HEAD = false>
    static __device__ void decode(const rf_raw& r, const uint8_t* meta, int it, rf_item& o) {
        const int sb = it >> 3, c = it & 7, n = c >> 2, off = (c & 3) * 16;
        const int j = off >> 5, l0 = off & 31;
        const rf_u32x4 ql = r.a, qh = r.b;
        const uint8_t* mb = meta + sb * 18;
        const float d = rf_meta_half(mb + 16);
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
