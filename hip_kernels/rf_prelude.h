// rf_prelude.h: the one portability header every kernel file in hip_kernels/ includes first.
//
// The same sources compile under hiprtc and hipcc (AMD), NVRTC (NVIDIA) and, for the CPU tests, a
// plain C++ compiler in "host emulation" (RF_HOST_EMULATION: one thread per block, WARP_SIZE 1).
// The runtime passes -DWARP_SIZE=<the device's warp size>: 64 on CDNA (gfx9), 32 on RDNA and NVIDIA.
// Nothing here or in the kernels may assume 32 lanes.
//
// Half and bfloat16 values are read as raw 16-bit patterns (rf_half / rf_bf16 are uint16 typedefs)
// and converted explicitly. Why not __half / __hip_bfloat16: NVRTC needs -I to the CUDA toolkit's
// headers for cuda_fp16.h, which a pip-only install does not have, and ROCm 5.2 (Debian's hipcc,
// our CI compiler) has no __hip_bfloat16 at all. Weights are only ever converted, never computed
// on in 16 bits, so raw bits plus one conversion instruction lose nothing.
#pragma once

#ifndef WARP_SIZE
#error "WARP_SIZE must be given by the runtime (-DWARP_SIZE=64 on CDNA, 32 on RDNA/NVIDIA)"
#endif

// ---------------------------------------------------------------- platform layer
#if defined(RF_HOST_EMULATION)
// Plain C++: the test harness sets the launch coordinates and calls each block in turn.
#include <stdint.h>
#include <math.h>
#include <string.h>
struct rf_dim3 { unsigned int x, y, z; };
extern "C" {
rf_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() ((void)0)
#define __restrict__ __restrict
#define RF_SHFL_XOR(v, m) (v)
#define RF_SHFL(v, src) (v)
#define rf_expf expf
#define RF_PLATFORM_HOST 1

#elif defined(__HIP__) || defined(__HIPCC_RTC__) || defined(__HIP_PLATFORM_AMD__)
// HIP (hipcc or hiprtc). ROCm >= 6.2's __shfl_xor_sync wants 64-bit masks; the maskless form is the
// one spelling every ROCm version accepts, with the width stated explicitly.
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#endif
#define RF_SHFL_XOR(v, m) __shfl_xor((v), (m), WARP_SIZE)
#define RF_SHFL(v, src) __shfl((v), (src), WARP_SIZE)
#define RF_PLATFORM_HIP 1
#define rf_expf expf  // the accurate one: logits must match the CPU closely

#elif defined(__CUDACC__)
// NVIDIA (NVRTC). Warps are WARP_SIZE lanes; the full-warp member mask is derived from it.
#define RF_FULL_MASK (0xffffffffu >> (32 - WARP_SIZE))
#define RF_SHFL_XOR(v, m) __shfl_xor_sync(RF_FULL_MASK, (v), (m), WARP_SIZE)
#define RF_SHFL(v, src) __shfl_sync(RF_FULL_MASK, (v), (src), WARP_SIZE)
#define RF_PLATFORM_CUDA 1
#define rf_expf expf  // the accurate one: logits must match the CPU closely

#else
#error "rf_prelude.h: unknown compiler (expected hipcc/hiprtc, NVRTC, or RF_HOST_EMULATION)"
#endif

#if !defined(RF_PLATFORM_HOST)
// The run-time compilers have no <stdint.h>: the fixed-width types, spelled out once for both vendors.
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef short int16_t;
typedef unsigned int uint32_t;
typedef int int32_t;
#endif

#if WARP_SIZE < 1 || WARP_SIZE > 64 || (WARP_SIZE & (WARP_SIZE - 1))
#error "WARP_SIZE must be a power of two no larger than 64"
#endif

#define RF_DEV static __device__ __forceinline__

// Full unrolling of a constant-count loop, so arrays indexed by its counter stay in registers.
#if defined(RF_PLATFORM_HOST)
#define RF_UNROLL
#else
#define RF_UNROLL _Pragma("unroll")
#endif

// A "minus infinity" that needs no math header: expf of it minus anything finite is exactly 0.
#define RF_NEG_BIG (-3.0e38f)

// Largest block any kernel is launched with (the runtimes never ask for more).
#define RF_MAX_THREADS 1024
#define RF_MAX_WARPS (RF_MAX_THREADS / WARP_SIZE)

// ---------------------------------------------------------------- 16-bit floats as raw bits
typedef uint16_t rf_half;
typedef uint16_t rf_bf16;

RF_DEV float rf_bits_as_float(uint32_t u) {
#if defined(RF_PLATFORM_HOST)
    float f; memcpy(&f, &u, 4); return f;
#else
    return __uint_as_float(u);
#endif
}

RF_DEV uint32_t rf_float_as_bits(float f) {
#if defined(RF_PLATFORM_HOST)
    uint32_t u; memcpy(&u, &f, 4); return u;
#else
    return __float_as_uint(f);
#endif
}

RF_DEV float rf_half2float(rf_half h) {
#if defined(RF_PLATFORM_CUDA)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#elif defined(RF_PLATFORM_HIP)
    return (float)__builtin_bit_cast(_Float16, h);
#else
    // Portable decode (host emulation): sign, 5-bit exponent, 10-bit mantissa; subnormals scaled.
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return rf_bits_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = (float)man * (1.0f / 16777216.0f);  // man * 2^-24
        return sign ? -v : v;
    }
    return rf_bits_as_float(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}

// float -> f16 bits, rounded to nearest even (the f16 KV cache's store).
RF_DEV rf_half rf_float2half(float f) {
#if defined(RF_PLATFORM_CUDA)
    rf_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#elif defined(RF_PLATFORM_HIP)
    return __builtin_bit_cast(rf_half, (_Float16)f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) return (rf_half)(sign | 0x7e00u);         // NaN
    if (mag >= 0x477ff000u) return (rf_half)(sign | 0x7c00u);        // rounds past 65504: inf
    if (mag < 0x38800000u) {                                         // f16 subnormal or zero
        const float a = rf_bits_as_float(mag) * 16777216.0f;         // in units of 2^-24, exact
        return (rf_half)(sign | (uint32_t)rintf(a));
    }
    const uint32_t e = (mag >> 23) - 112, m = mag & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    const uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;        // to nearest, ties to even
    return (rf_half)(sign | h);
#endif
}

// bfloat16 is the top half of a float32: shifting is exact and works on every compiler.
RF_DEV float rf_bf162float(rf_bf16 b) { return rf_bits_as_float((uint32_t)b << 16); }

// Unaligned little-endian loads from packed GGUF blocks (block sizes like 18 or 34 bytes leave
// 16-bit fields at odd-multiple-of-2 offsets and 32-bit fields unaligned).
RF_DEV rf_half rf_load_u16(const uint8_t* p) { return (rf_half)(p[0] | (p[1] << 8)); }
RF_DEV uint32_t rf_load_u32(const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
RF_DEV float rf_load_half(const uint8_t* p) { return rf_half2float(rf_load_u16(p)); }

// ---------------------------------------------------------------- int8 dot product
// Four int8 lanes of a and b multiplied and added to c. The hardware instruction per target:
// __dp4a on NVIDIA; v_dot4_i32_i8 (sdot4) on GCN5/CDNA (gfx906, gfx908, gfx90a, gfx94x, gfx950) and
// RDNA2 (gfx103x); RDNA3/4 (gfx11xx, gfx12xx) have only the mixed-sign form (sudot4, both signed here).
// A portable byte loop everywhere else (older parts and the host emulation).
#if defined(RF_PLATFORM_HIP) && (defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || \
    defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__) || defined(__gfx950__) ||       \
    defined(__gfx1030__) || defined(__gfx1031__) || defined(__gfx1032__) || defined(__gfx1034__) ||   \
    defined(__gfx1035__) || defined(__gfx1036__))
#define RF_DOT4_SDOT4 1
#elif defined(RF_PLATFORM_HIP) && (defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || \
    defined(__gfx1103__) || defined(__gfx1150__) || defined(__gfx1151__) || defined(__gfx1200__) ||         \
    defined(__gfx1201__))
#define RF_DOT4_SUDOT4 1  // guarded: ROCm 5.2's compiler (our CI) builds neither of these targets
#endif

RF_DEV int rf_dot4_i8(int a, int b, int c) {
#if defined(RF_PLATFORM_CUDA)
    return __dp4a(a, b, c);
#elif defined(RF_DOT4_SDOT4)
    return __builtin_amdgcn_sdot4(a, b, c, false);
#elif defined(RF_DOT4_SUDOT4)
    return __builtin_amdgcn_sudot4(true, a, true, b, c, false);
#else
    for (int i = 0; i < 4; ++i) {
        c += (int)(int8_t)((a >> (8 * i)) & 0xff) * (int)(int8_t)((b >> (8 * i)) & 0xff);
    }
    return c;
#endif
}

// ---------------------------------------------------------------- 16-byte loads
// One 16-byte load per lane is what streams memory at full speed on every vendor; the pointer must be
// 16-byte aligned (the repacked weight layout and the q8 activation rows guarantee it).
struct __attribute__((aligned(16))) rf_u32x4 { uint32_t x, y, z, w; };

RF_DEV rf_u32x4 rf_load16(const void* p) {
#if defined(RF_PLATFORM_HOST)
    rf_u32x4 v; memcpy(&v, p, 16); return v;
#else
    return *(const rf_u32x4*)p;
#endif
}

// Two adjacent floats in one 8-byte load (p 8-byte aligned): e.g. an 8-bit activation block's (d, d * sum).
struct __attribute__((aligned(8))) rf_f32x2 { float x, y; };
RF_DEV rf_f32x2 rf_load_f32x2(const float* p) {
#if defined(RF_PLATFORM_HOST)
    rf_f32x2 v; memcpy(&v, p, 8); return v;
#else
    return *(const rf_f32x2*)p;
#endif
}

// 16 bytes from global to shared memory without a register on the way, where the target can (NVIDIA
// sm_80+: cp.async; `valid` false writes zeros and reads nothing, though src must still be a real
// address). rf_copy16_async issues, rf_copy_async_wait waits for every copy this thread issued; the
// caller's barrier then publishes them to the block. Elsewhere the copy happens at once.
#if defined(RF_PLATFORM_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define RF_CP_ASYNC 1
RF_DEV uint32_t rf_smem_addr(const void* p) {  // a generic pointer into shared memory -> .shared address
    uint32_t a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
RF_DEV void rf_copy16_async(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(rf_smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
RF_DEV void rf_copy_async_wait() { asm volatile("cp.async.wait_all;" ::: "memory"); }
#else
RF_DEV void rf_copy16_async(void* dst, const void* src, bool valid) {
    rf_u32x4 v = {0, 0, 0, 0};
    if (valid) v = rf_load16(src);
    *(rf_u32x4*)dst = v;
}
RF_DEV void rf_copy_async_wait() {}
#endif

RF_DEV uint32_t rf_u4_at(const rf_u32x4& v, int k) {  // k must be a compile-time constant after unrolling
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// ---------------------------------------------------------------- reductions
RF_DEV float rf_warp_sum(float v) {
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v += RF_SHFL_XOR(v, m);
    return v;
}

RF_DEV float rf_warp_max(float v) {
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v = fmaxf(v, RF_SHFL_XOR(v, m));
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds RF_MAX_WARPS floats.
RF_DEV float rf_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = rf_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = 0.0f;
    for (int w = 0; w < n_warps; ++w) v += scratch[w];
    return v;
}

RF_DEV float rf_block_max(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = rf_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < n_warps; ++w) v = fmaxf(v, scratch[w]);
    return v;
}

// ---------------------------------------------------------------- shared weight-reading templates
// Every weight type supplies a decoder struct D with
//     static __device__ void deq(const uint8_t* row, int item, int n_in, float v[32]);
// that unpacks values item*32 .. item*32+31 of one packed row (zero past n_in). The mat-vec and the
// embedding gather below are written once over it, so each GGUF type is only its block decoder.
#define RF_ITEM 32
#define RF_MV_MAXB 4   // activation rows per pass: weights are read once per RF_MV_MAXB rows

// y[r, row] = dot(W[row, :], x[r, :]) (+ bias[row]) for rows r of x. One warp per weight row; lanes
// stride over 32-value items; grid = (ceil(n_out / warps per block), ceil(n_rows / RF_MV_MAXB)).
template <class D>
RF_DEV void rf_matvec(const uint8_t* __restrict__ w, long long row_bytes, const float* __restrict__ x,
                      int ldx, float* __restrict__ y, int ldy, const float* __restrict__ bias,
                      int n_in, int n_out, int n_rows) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    const int r0 = blockIdx.y * RF_MV_MAXB;
    if (row >= n_out) return;  // row is the same for the whole warp: it leaves together
    const int nb = n_rows - r0 < RF_MV_MAXB ? n_rows - r0 : RF_MV_MAXB;
    const uint8_t* wr = w + (long long)row * row_bytes;
    const int n_items = (n_in + RF_ITEM - 1) / RF_ITEM;
    float acc[RF_MV_MAXB];
    for (int b = 0; b < RF_MV_MAXB; ++b) acc[b] = 0.0f;
    for (int it = lane; it < n_items; it += WARP_SIZE) {
        float v[RF_ITEM];
        D::deq(wr, it, n_in, v);
        const int base = it * RF_ITEM;
        const int len = n_in - base < RF_ITEM ? n_in - base : RF_ITEM;
        for (int b = 0; b < RF_MV_MAXB; ++b) {
            if (b >= nb) break;
            const float* xb = x + (long long)(r0 + b) * ldx + base;
            float s = 0.0f;
            if (len == RF_ITEM) {
                for (int i = 0; i < RF_ITEM; ++i) s += v[i] * xb[i];
            } else {
                for (int i = 0; i < RF_ITEM; ++i) s += i < len ? v[i] * xb[i] : 0.0f;
            }
            acc[b] += s;
        }
    }
    for (int b = 0; b < RF_MV_MAXB; ++b) acc[b] = rf_warp_sum(acc[b]);
    if (lane == 0) {
        const float add = bias ? bias[row] : 0.0f;
        for (int b = 0; b < nb; ++b) y[(long long)(r0 + b) * ldy + row] = acc[b] + add;
    }
}

// out[t, :] = W[ids[t], :] * scale: the embedding lookup, one block per token.
template <class D>
RF_DEV void rf_get_rows(const uint8_t* __restrict__ w, long long row_bytes, const int* __restrict__ ids,
                        float* __restrict__ out, int n_cols, float scale) {
    const int t = blockIdx.x;
    const uint8_t* wr = w + (long long)ids[t] * row_bytes;
    float* o = out + (long long)t * n_cols;
    const int n_items = (n_cols + RF_ITEM - 1) / RF_ITEM;
    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        float v[RF_ITEM];
        D::deq(wr, it, n_cols, v);
        const int base = it * RF_ITEM;
        for (int i = 0; i < RF_ITEM; ++i) {
            if (base + i < n_cols) o[base + i] = v[i] * scale;
        }
    }
}

// One mat-vec and one gather entry point per type: mv_<T> and get_rows_<T>.
#define RF_WEIGHT_KERNELS(T, D)                                                                         \
    extern "C" __global__ void mv_##T(const uint8_t* __restrict__ w, long long row_bytes,                \
                                      const float* __restrict__ x, int ldx, float* __restrict__ y,      \
                                      int ldy, const float* __restrict__ bias, int n_in, int n_out,     \
                                      int n_rows) {                                                     \
        rf_matvec<D>(w, row_bytes, x, ldx, y, ldy, bias, n_in, n_out, n_rows);                          \
    }                                                                                                   \
    extern "C" __global__ void get_rows_##T(const uint8_t* __restrict__ w, long long row_bytes,          \
                                            const int* __restrict__ ids, float* __restrict__ out,       \
                                            int n_cols, float scale) {                                  \
        rf_get_rows<D>(w, row_bytes, ids, out, n_cols, scale);                                          \
    }

// ---------------------------------------------------------------- 8-bit activation blocks
// Values are rounded in blocks of 32 to int8 q = rint(v * 127 / max|v|) with d = max|v| / 127, and
// each block keeps (d, d * sum(q)) (what a weight's zero-point or minimum multiplies). On GPUs the
// 32 values of a block are 32 consecutive lanes of one warp (blocks are launched in multiples of 32
// threads and WARP_SIZE is 32 or 64), so a block's max and sum are five xor-shuffles inside its group
// of 32 lanes; the host emulation (one lane) does a block per thread instead.
#define RF_Q8 32
#if WARP_SIZE >= RF_Q8
#define RF_Q8_COOPERATIVE 1
#endif

RF_DEV void rf_quantize_serial(const float* v, int8_t* q, float* ds) {
    float amax = 0.0f;
    for (int i = 0; i < RF_Q8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < RF_Q8; ++i) {
        const int qi = (int)rintf(v[i] * inv);
        q[i] = (int8_t)qi;
        sum += qi;
    }
    ds[0] = amax / 127.0f;
    ds[1] = ds[0] * (float)sum;
}

#if defined(RF_Q8_COOPERATIVE)
// Element `i` of a row held by this lane; every lane of the 32-lane group must call it together.
RF_DEV void rf_quantize_lane(float v, long long i, int8_t* q, float* ds) {
    float amax = fabsf(v);
    for (int m = RF_Q8 / 2; m > 0; m >>= 1) amax = fmaxf(amax, RF_SHFL_XOR(amax, m));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int qi = (int)rintf(v * inv);
    q[i] = (int8_t)qi;
    float sum = (float)qi;  // exact: |sum| <= 32 * 127
    for (int m = RF_Q8 / 2; m > 0; m >>= 1) sum += RF_SHFL_XOR(sum, m);
    if ((i & (RF_Q8 - 1)) == 0) {
        const float d = amax / 127.0f;
        ds[2 * (i / RF_Q8)] = d;
        ds[2 * (i / RF_Q8) + 1] = d * sum;
    }
}
#endif

// ---------------------------------------------------------------- rotary position embedding
// Element i of the rotated row x (rope.hip's kernels and the decode attention's fused rotation: one
// expression, so all of them round alike). cs / sn: the position's row of the cos / sin tables.
RF_DEV float rf_rope_at(const float* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                        int i, int rot_dim, int neox) {
    if (i >= rot_dim) return x[i];
    const int half = rot_dim / 2;
    const int pair = neox ? (i < half ? i : i - half) : i / 2;
    const int first = neox ? (i < half) : (i % 2 == 0);
    const int other = neox ? (first ? i + half : i - half) : (first ? i + 1 : i - 1);
    const float c = cs[pair], s = sn[pair];
    return first ? x[i] * c - x[other] * s : x[i] * c + x[other] * s;
}

// ---------------------------------------------------------------- gated activations (value of one output)
RF_DEV float rf_silu_mul(float g, float u) { return g * (0.5f + 0.5f * tanhf(0.5f * g)) * u; }  // sigmoid via tanh: no overflow

RF_DEV float rf_gelu_mul(float g, float u) {
    const float c0 = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * g * (1.0f + tanhf(c0 * (g + 0.044715f * g * g * g))) * u;
}

// ---------------------------------------------------------------- KV cache element types
// The cache stores keys and values as float32 or as f16 (half the bytes a long context streams per
// token); kernels that read or write it take one of these as a template parameter.
struct rf_kv_f32 {
    typedef float T;
    static __device__ float get(const T* p, long long i) { return p[i]; }
    static __device__ void put(T* p, long long i, float v) { p[i] = v; }
};
struct rf_kv_f16 {
    typedef rf_half T;
    static __device__ float get(const T* p, long long i) { return rf_half2float(p[i]); }
    static __device__ void put(T* p, long long i, float v) { p[i] = rf_float2half(v); }
};

// ---------------------------------------------------------------- matrix tiles (f16 in, f32 out)
// The one tile abstraction of the matrix kernels: a warp multiplies 16 x 16 tiles,
//     C[16][16] += A[16][16] * B[16][16]^T,
// A and B being rows of 16 f16 values in shared memory (row i at p + i * ld, ld even). A fragment is the
// per-target register image of one operand (rf_tile_load_a / _b; rows 16-byte aligned; rf_tile_load_bt
// takes B stored the other way, k-major: element (n, k) at p + k * ld + n, as a value cache's rows
// of keys are); the accumulator is RF_TILE_ACC floats
// per lane and rf_tile_coord(lane, i) says which element of C accumulator i holds. Per target:
//   NVIDIA sm_80+ (NVRTC):        two mma.sync.m16n8k16 f16 -> f32 (inline PTX), ldmatrix fragments;
//   CDNA (gfx908, 90a, 94x, 950):  v_mfma_f32_16x16x16f16 on wave64 (__builtin_amdgcn_mfma_*);
//   RDNA3/4 (gfx11, gfx12):        v_wmma_f32_16x16x16_f16 on wave32 - guarded: ROCm 5.2 (our CI's
//                                  hipcc) cannot build these targets, so this path is not compiled here;
//   everything else (RDNA2 and older parts without matrix cores, NVIDIA before sm_80, the host
//   emulation): each lane computes 256 / WARP_SIZE elements of C from shared memory.
// Every lane of the warp calls these together (the hardware paths are warp-wide instructions).
#define RF_TILE 16
#define RF_TILE_ACC (RF_TILE * RF_TILE / WARP_SIZE)

#if defined(RF_PLATFORM_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && WARP_SIZE == 32
#define RF_TILE_MMA_SYNC 1
#elif defined(RF_PLATFORM_HIP) && (defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || \
    defined(__gfx941__) || defined(__gfx942__) || defined(__gfx950__)) && WARP_SIZE == 64
#define RF_TILE_MFMA 1
#elif defined(RF_PLATFORM_HIP) && (defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || \
    defined(__gfx1103__) || defined(__gfx1150__) || defined(__gfx1151__) || defined(__gfx1200__) ||         \
    defined(__gfx1201__)) && WARP_SIZE == 32
#define RF_TILE_WMMA 1
#endif

#if defined(RF_TILE_MMA_SYNC)
struct rf_frag { uint32_t r[4]; };  // A: rows g / g+8, cols 2t.. / 2t+8..; B: two 8-row halves
// ldmatrix.x4: lane l names row l % 8 of 8x8 matrix l / 8 (16-byte aligned), and receives in r[m] the
// two values at row (lane / 4), columns 2 (lane % 4) .. of matrix m: exactly the mma fragments.
RF_DEV void rf_ldmatrix4(rf_frag& f, const rf_half* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(f.r[0]), "=r"(f.r[1]), "=r"(f.r[2]), "=r"(f.r[3]) : "r"(rf_smem_addr(row)));
}
RF_DEV void rf_tile_load_a(rf_frag& f, const rf_half* a, int lda, int lane) {  // matrices: rows 0-7 / 8-15 x k 0-7 / 8-15
    const int m = lane >> 3;
    rf_ldmatrix4(f, a + ((m & 1) * 8 + (lane & 7)) * lda + (m >> 1) * 8);
}
RF_DEV void rf_tile_load_b(rf_frag& f, const rf_half* b, int ldb, int lane) {  // n 0-7 x k 0-7 / 8-15, then n 8-15
    const int m = lane >> 3;
    rf_ldmatrix4(f, b + ((m >> 1) * 8 + (lane & 7)) * ldb + (m & 1) * 8);
}
// ldmatrix.x4.trans: the same fragments from k-major storage (lane l names k row l % 8 of matrix l / 8).
RF_DEV void rf_ldmatrix4_trans(rf_frag& f, const rf_half* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(f.r[0]), "=r"(f.r[1]), "=r"(f.r[2]), "=r"(f.r[3]) : "r"(rf_smem_addr(row)));
}
RF_DEV void rf_tile_load_bt(rf_frag& f, const rf_half* bt, int ld, int lane) {  // matrices as rf_tile_load_b's
    const int m = lane >> 3;
    rf_ldmatrix4_trans(f, bt + ((m & 1) * 8 + (lane & 7)) * ld + (m >> 1) * 8);
}
RF_DEV void rf_tile_mma(float* c, const rf_frag& a, const rf_frag& b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[4]), "+f"(c[5]), "+f"(c[6]), "+f"(c[7])
                 : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[2]), "r"(b.r[3]));
}
RF_DEV void rf_tile_coord(int lane, int i, int& row, int& col) {
    const int g = lane >> 2, t = lane & 3, j = i & 3;
    row = g + 8 * (j >> 1);
    col = 8 * (i >> 2) + 2 * t + (j & 1);
}

#elif defined(RF_TILE_MFMA)
typedef _Float16 rf_f16x4 __attribute__((ext_vector_type(4)));
typedef float rf_f32x4 __attribute__((ext_vector_type(4)));
struct rf_frag { rf_f16x4 v; };  // lane l: row l % 16, k 4 (l / 16) .. +3
RF_DEV void rf_tile_load_a(rf_frag& f, const rf_half* a, int lda, int lane) {
    f.v = *(const rf_f16x4*)(a + (lane & 15) * lda + 4 * (lane >> 4));
}
RF_DEV void rf_tile_load_b(rf_frag& f, const rf_half* b, int ldb, int lane) { rf_tile_load_a(f, b, ldb, lane); }
RF_DEV void rf_tile_load_bt(rf_frag& f, const rf_half* bt, int ld, int lane) {  // n = lane % 16, 4 k rows
    const rf_half* p = bt + 4 * (lane >> 4) * ld + (lane & 15);
    RF_UNROLL for (int k = 0; k < 4; ++k) f.v[k] = __builtin_bit_cast(_Float16, p[k * ld]);
}
RF_DEV void rf_tile_mma(float* c, const rf_frag& a, const rf_frag& b) {
    rf_f32x4 acc = {c[0], c[1], c[2], c[3]};
    acc = __builtin_amdgcn_mfma_f32_16x16x16f16(a.v, b.v, acc, 0, 0, 0);
    c[0] = acc[0]; c[1] = acc[1]; c[2] = acc[2]; c[3] = acc[3];
}
RF_DEV void rf_tile_coord(int lane, int i, int& row, int& col) {  // lane l: rows 4 (l / 16) + i, col l % 16
    row = 4 * (lane >> 4) + i;
    col = lane & 15;
}

#elif defined(RF_TILE_WMMA)
typedef _Float16 rf_f16x16 __attribute__((ext_vector_type(16)));
typedef float rf_f32x8 __attribute__((ext_vector_type(8)));
struct rf_frag { rf_f16x16 v; };  // lanes l and l + 16 both hold row l % 16, all 16 k
RF_DEV void rf_tile_load_a(rf_frag& f, const rf_half* a, int lda, int lane) {
    const rf_half* p = a + (lane & 15) * lda;
    RF_UNROLL for (int k = 0; k < 16; ++k) f.v[k] = __builtin_bit_cast(_Float16, p[k]);
}
RF_DEV void rf_tile_load_b(rf_frag& f, const rf_half* b, int ldb, int lane) { rf_tile_load_a(f, b, ldb, lane); }
RF_DEV void rf_tile_load_bt(rf_frag& f, const rf_half* bt, int ld, int lane) {
    const rf_half* p = bt + (lane & 15);
    RF_UNROLL for (int k = 0; k < 16; ++k) f.v[k] = __builtin_bit_cast(_Float16, p[k * ld]);
}
RF_DEV void rf_tile_mma(float* c, const rf_frag& a, const rf_frag& b) {
    rf_f32x8 acc;
    RF_UNROLL for (int i = 0; i < 8; ++i) acc[i] = c[i];
    acc = __builtin_amdgcn_wmma_f32_16x16x16_f16_w32(a.v, b.v, acc);
    RF_UNROLL for (int i = 0; i < 8; ++i) c[i] = acc[i];
}
RF_DEV void rf_tile_coord(int lane, int i, int& row, int& col) {  // lane l: rows 2 i + l / 16, col l % 16
    row = 2 * i + (lane >> 4);
    col = lane & 15;
}

#else
// No matrix unit: the fragment is where the rows are (element (i, k) at p + i * si + k * sk).
struct rf_frag { const rf_half* p; int si, sk; };
RF_DEV void rf_tile_load_a(rf_frag& f, const rf_half* a, int lda, int lane) { f.p = a; f.si = lda; f.sk = 1; (void)lane; }
RF_DEV void rf_tile_load_b(rf_frag& f, const rf_half* b, int ldb, int lane) { f.p = b; f.si = ldb; f.sk = 1; (void)lane; }
RF_DEV void rf_tile_load_bt(rf_frag& f, const rf_half* bt, int ld, int lane) { f.p = bt; f.si = 1; f.sk = ld; (void)lane; }
RF_DEV void rf_tile_coord(int lane, int i, int& row, int& col) {
    const int e = i * WARP_SIZE + lane;
    row = e / RF_TILE;
    col = e % RF_TILE;
}
RF_DEV void rf_tile_mma(float* c, const rf_frag& a, const rf_frag& b) {
#if defined(RF_PLATFORM_HOST)
    const int lane = 0;
#else
    const int lane = threadIdx.x % WARP_SIZE;
#endif
    for (int i = 0; i < RF_TILE_ACC; ++i) {
        int row, col;
        rf_tile_coord(lane, i, row, col);
        const rf_half* ar = a.p + row * a.si;
        const rf_half* br = b.p + col * b.si;
        float s = 0.0f;
        for (int k = 0; k < RF_TILE; ++k) s += rf_half2float(ar[k * a.sk]) * rf_half2float(br[k * b.sk]);
        c[i] += s;
    }
}
#endif

// Two floats to a pair of f16 bits (lo in the low half), rounded to nearest even: one instruction on
// NVIDIA sm_80+.
RF_DEV uint32_t rf_pack_half2(float lo, float hi) {
#if defined(RF_PLATFORM_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (uint32_t)rf_float2half(lo) | ((uint32_t)rf_float2half(hi) << 16);
#endif
}

// Launch bounds where the compiler takes them (they let it budget registers for that block size).
#if defined(RF_PLATFORM_HOST)
#define RF_BOUNDS(threads, blocks)
#else
#define RF_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
#endif
