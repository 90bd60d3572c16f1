"""llama.cpp's CPU arithmetic, reproduced bit for bit in numpy (x86-64 with AVX2 and FMA).

llama.cpp's CPU backend (ggml-cpu) does not compute a matrix product with quantized weights in float:
it first rounds the activations to 8-bit blocks and then sums integer products block by block, in
the lane order of its SIMD kernels. Rounding to 8 bits is discontinuous, so a one-ulp difference in
any earlier value flips a rounding now and then, each flip moves a result by a whole quantization
step, and after a few layers two runs that differ only in float summation order carry independent
quantization noise (measured: layer outputs 1e-7 apart at layer 0 were 4e-3 apart by layer 11 on
SmolLM2). Reproducing llama.cpp's tokens therefore needs its exact roundings, not close ones.

Every function here follows the arithmetic of one ggml-cpu kernel as compiled for AVX2/FMA/F16C
(what llama.cpp builds for this class of machine): which numbers are rounded to float16 or 8 bits,
which products are fused (FMA: one rounding), which SIMD lane accumulates which element, and the
order in which lanes are finally added. The code is our own numpy formulation of that arithmetic.

Fused multiply-add is computed in float64 and rounded to float32: the product of two float32 values
is exact in float64, so only the addition rounds twice; the result differs from a true FMA only when
that first rounding lands exactly on a float32 tie (about one case in 2^29).

The block loops of the matrix products (exact integer sums, then an FMA chain per SIMD lane) are
compiled with numba (`_block_dot`, `_q6_k_lanes`, `_q4_k_acc`): the same arithmetic as the numpy
formulation they replaced, several times faster (the llama.cpp-numerics tests' model runs took ~3.5
minutes of CI's time before). They run on one thread: spread over numba's OpenMP threads they
were 1.5x faster on 2 idle cores, but a test fixture took 296 s instead of 29 s while another job
shared the cores (a decode step is ~200 small products; each parallel region waits for its slowest
thread).
"""

from __future__ import annotations

import numba
import numpy as np

F32, F64 = np.float32, np.float64
# Largest temporary (elements) a matrix product builds at once; bigger products go in row slices.
CHUNK_ELEMENTS = 1 << 23


def f16(x: np.ndarray) -> np.ndarray:
    """Round to float16 (round to nearest even, as F16C's vcvtps2ph) and back to float32."""
    return np.asarray(x, F32).astype(np.float16).astype(F32)


def fma(a, b, c) -> np.ndarray:
    """float32 a * b + c with one rounding (see the module note)."""
    return (np.asarray(a, F32).astype(F64) * np.asarray(b, F32) + np.asarray(c, F32)).astype(F32)


def hsum8(lanes: np.ndarray) -> np.ndarray:
    """Sum of 8 float32 lanes (last axis) in hsum_float_8's order: ((0+4)+(2+6)) + ((1+5)+(3+7))."""
    t = lanes[..., 4:] + lanes[..., :4]
    return (t[..., 0] + t[..., 2]) + (t[..., 1] + t[..., 3])


def hadd8(lanes: np.ndarray) -> np.ndarray:
    """Sum of 8 float32 lanes in GGML_F32x8_REDUCE's order (two hadds): ((0+4)+(1+5)) + ((2+6)+(3+7))."""
    t = lanes[..., :4] + lanes[..., 4:]
    return (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])


# ---- activations rounded to 8 bits ----

def quantize_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q8_0 / q8_1 (AVX2) over blocks of 32 of the last axis.

    Returns the integer values (float32, same shape as x), the block scales as stored (float16
    values of max|x| / 127) and the Q8_1 `s` field (float16 of the float32 scale times the integer
    sum), the last two of shape (..., n / 32).
    """
    blocks = np.asarray(x, F32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1)
    d = amax / F32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, F32(127.0) / amax, F32(0.0)).astype(F32)
    q = np.rint(blocks * inv[..., None])  # round half to even, as _mm256_round_ps
    s = f16(q.sum(axis=-1, dtype=F32) * d)
    return q.reshape(x.shape), f16(d), s


# ---- matrix products with 8-bit activations ----

class BlockMatrix:
    """A weight matrix whose rows are 32-wide integer blocks with one scale (and offset) per block.

    Holds what ggml's dot kernels read from Q8_0, Q5_0 and Q4_1 blocks: the integer weights
    (signed for the _0 types; unsigned 0..15 with an offset m per block for Q4_1) as int8 rows, which
    the compiled _block_dot reads once per product.
    """

    def __init__(self, ints: np.ndarray, scales: np.ndarray, mins: np.ndarray | None):
        n_out, n_in = ints.shape
        self.n_out, self.n_in = n_out, n_in
        self.ints = np.ascontiguousarray(ints, np.int8)  # every type's integers fit: -128..127, 0..15, -16..15
        self.scales = np.ascontiguousarray(scales, F32)          # (n_out, n_in / 32)
        self.mins = None if mins is None else np.ascontiguousarray(mins, F32)

    def rows(self, lo: int, hi: int) -> "BlockMatrix":
        out = object.__new__(BlockMatrix)
        out.n_out, out.n_in = hi - lo, self.n_in
        out.ints = self.ints[lo:hi]
        out.scales = self.scales[lo:hi]
        out.mins = None if self.mins is None else self.mins[lo:hi]
        return out

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (T, n_in) float32 -> (T, n_out), in slices of output rows that bound the temporaries."""
        step = max(8, CHUNK_ELEMENTS // (max(1, x.shape[0]) * self.n_in // 4))
        if step >= self.n_out:
            return self._matmul(x)
        return np.concatenate([self.rows(lo, min(self.n_out, lo + step))._matmul(x)
                               for lo in range(0, self.n_out, step)], axis=1)

    def _matmul(self, x: np.ndarray) -> np.ndarray:
        """ggml_vec_dot_q*_q8_* / tinyBLAS_Q0_AVX, per element.

        Per block: the 32 products are summed as 8 int32 lanes of 4 (exact), each lane converted to
        float and accumulated with one FMA by the float32 product of the two block scales; the 8
        lanes are added at the end (hsum_float_8). Q4_1 adds sum(m * s) over blocks, FMA-chained.
        """
        T = x.shape[0]
        nb = self.n_in // 32
        q, d, s = quantize_q8(x)
        acc = np.empty((8, self.n_out, T), F32)
        _block_dot(self.ints, self.scales, q.astype(np.int8), np.ascontiguousarray(d.reshape(T, nb)), acc)
        out = hsum8(np.moveaxis(acc, 0, -1))  # (n_out, T)
        if self.mins is not None:
            summs = np.empty((self.n_out, T), F32)
            _mins_fma(self.mins, np.ascontiguousarray(s.reshape(T, nb)), summs)
            out = out + summs
        return np.ascontiguousarray(out.T)


@numba.njit(cache=True, nogil=True)
def _block_dot(ints, scales, q, d, acc):  # pragma: no cover - compiled
    """The lane sums and their FMA chain of BlockMatrix._matmul, compiled: for output o, activation
    row t and lane l (8 lanes of 4 elements per 32-block), acc[l, o, t] = FMA over blocks b of the
    float32 scale product scales[o, b] * d[t, b] times the exact integer lane sum (the product exact
    in float64, one rounding to float32 per block). Reads the weights' integers as int8, once.

    The integer lane sums of a row come first, in one loop LLVM vectorizes; the eight FMA chains
    then run in scalars (registers) rather than an array: the same operations in the same order,
    2-3x faster than summing and chaining block by block (measured on Gemma-3's 262144 x 640 output
    matrix, one row: 37 -> 13 ms)."""
    n_out, n_in = ints.shape
    n_t, nb = q.shape[0], n_in // 32
    ls = np.empty(nb * 8, np.int32)
    for o in range(n_out):
        for t in range(n_t):
            for j in range(nb * 8):  # exact: |sum| <= 4 * 128 * 127
                k = j * 4
                ls[j] = (np.int32(ints[o, k]) * np.int32(q[t, k]) + np.int32(ints[o, k + 1]) * np.int32(q[t, k + 1])
                         + np.int32(ints[o, k + 2]) * np.int32(q[t, k + 2])
                         + np.int32(ints[o, k + 3]) * np.int32(q[t, k + 3]))
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float64(0.0)  # float32 values, held as float64
            for b in range(nb):  # eight independent chains, as the SIMD lanes
                sc = np.float64(np.float32(scales[o, b] * d[t, b]))
                j = b * 8
                a0 = np.float64(np.float32(sc * np.float64(ls[j]) + a0))
                a1 = np.float64(np.float32(sc * np.float64(ls[j + 1]) + a1))
                a2 = np.float64(np.float32(sc * np.float64(ls[j + 2]) + a2))
                a3 = np.float64(np.float32(sc * np.float64(ls[j + 3]) + a3))
                a4 = np.float64(np.float32(sc * np.float64(ls[j + 4]) + a4))
                a5 = np.float64(np.float32(sc * np.float64(ls[j + 5]) + a5))
                a6 = np.float64(np.float32(sc * np.float64(ls[j + 6]) + a6))
                a7 = np.float64(np.float32(sc * np.float64(ls[j + 7]) + a7))
            acc[0, o, t], acc[1, o, t], acc[2, o, t], acc[3, o, t] = a0, a1, a2, a3
            acc[4, o, t], acc[5, o, t], acc[6, o, t], acc[7, o, t] = a4, a5, a6, a7


@numba.njit(cache=True, nogil=True)
def _mins_fma(mins, s, out):  # pragma: no cover - compiled
    """out[o, t] = FMA chain over blocks b of mins[o, b] * s[t, b] (Q4_1's offsets), from 0."""
    n_out, nb = mins.shape
    for o in range(n_out):
        for t in range(s.shape[0]):
            a = np.float32(0.0)
            for b in range(nb):
                a = np.float32(np.float64(mins[o, b]) * np.float64(s[t, b]) + np.float64(a))
            out[o, t] = a


def block_matrix(qtype_name: str, raw: np.ndarray, n_out: int, n_in: int) -> BlockMatrix:
    """Unpack the raw bytes of a Q8_0, Q5_0 or Q4_1 tensor (n_out rows of n_in) into a BlockMatrix."""
    nb = n_in // 32
    blocks = np.asarray(raw, np.uint8).reshape(n_out, nb, -1)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(F32)
    mins = None
    if qtype_name == "Q8_0":
        ints = blocks[..., 2:34].view(np.int8).astype(np.int16)
    elif qtype_name == "Q4_1":
        mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(F32)
        qs = blocks[..., 4:20]
        ints = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)  # elements 0..15, 16..31
    elif qtype_name == "Q5_0":
        qh = blocks[..., 2:6].copy().view("<u4")[..., 0]
        qs = blocks[..., 6:22]
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
        high = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int16) << 4
        ints = (low | high) - 16
    else:
        raise ValueError(f"no 32-block integer kernel for {qtype_name}")
    return BlockMatrix(ints.reshape(n_out, n_in), scales, mins)


# ---- elementwise kernels ----

_EXP_R = F32(12582912.0)  # 0x1.8p23


def expf(x: np.ndarray) -> np.ndarray:
    """ggml_v_expf (AVX2): exp by range reduction and a degree-5 polynomial, float32."""
    x = np.asarray(x, F32)
    with np.errstate(over="ignore", invalid="ignore"):
        z = fma(x, F32(float.fromhex("0x1.715476p+0")), _EXP_R)
        n = z - _EXP_R
        b = fma(-n, F32(float.fromhex("0x1.7f7d1cp-20")), fma(-n, F32(float.fromhex("0x1.62e4p-1")), x))
        e = z.view(np.int32) << 23
        k = (e + np.array(1.0, F32).view(np.int32)).view(F32)
        u = b * b
        j = fma(fma(fma(F32(float.fromhex("0x1.0e4020p-7")), b, F32(float.fromhex("0x1.573e2ep-5"))), u,
                    fma(F32(float.fromhex("0x1.555e66p-3")), b, F32(float.fromhex("0x1.fffdb6p-2")))),
                u, F32(float.fromhex("0x1.ffffecp-1")) * b)
        out = fma(j, k, k)
        big = np.abs(n) > F32(126.0)
        if big.any():
            g = np.where(n <= 0, np.int32(-0x7E000000), np.int32(0))  # 0x82000000 as int32
            s1 = (g + np.int32(0x7F000000)).view(F32)
            s2 = (e - g).view(F32)
            huge = np.abs(n) > F32(192.0)
            out = np.where(huge, s1 * s1, np.where(big, fma(s2, j, s2) * s1, out))
    return out


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_vec_swiglu_f32: x / (1 + expf(-x)) * g with ggml_v_expf."""
    gate = np.asarray(gate, F32)
    return (gate / (F32(1.0) + expf(-gate))) * up


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """ggml_compute_forward_rms_norm_f32 then the weight multiply: squares in float32, summed in
    float64 in index order; the mean and 1/sqrt(mean + eps) rounded to float32."""
    x = np.asarray(x, F32)
    ss = np.cumsum(np.square(x).astype(F64), axis=-1)[..., -1:]
    mean = (ss / x.shape[-1]).astype(F32)
    scale = F32(1.0) / np.sqrt(mean + F32(eps))
    return (x * scale) * weight


def rope_rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, partner: np.ndarray, first: np.ndarray) -> np.ndarray:
    """rotate_pairs: (x0 cos - x1 sin, x0 sin + x1 cos), as GCC contracts it: the second product
    of each expression rounded, the first fused (x0 * cos + (-(x1 * sin)) in one FMA)."""
    x = np.asarray(x, F32)
    other = x.take(partner, axis=-1)
    # first member of a pair: fma(x0, cos, -(x1 * sin)); second: fma(x0, sin, x1 * cos)
    lead = np.where(first, x, other)
    trail = np.where(first, other, x)
    c = np.where(first, cos, sin)
    t = np.where(first, -(trail * sin), trail * cos)
    return fma(lead, c, t)


# ---- attention over a float16 KV cache ----

def _chain(prods: np.ndarray, width: int) -> np.ndarray:
    """Accumulate float32 products (..., n) into `width` SIMD lanes in index order: element i goes
    to lane i % width and lanes add their elements one after another. Returns (..., width)."""
    n = prods.shape[-1]
    if n % width:
        pad = np.zeros(prods.shape[:-1] + (width - n % width,), F32)
        prods = np.concatenate([prods, pad], axis=-1)
    chunks = prods.reshape(*prods.shape[:-1], -1, width)
    acc = chunks[..., 0, :].copy()
    for c in range(1, chunks.shape[-2]):
        acc += chunks[..., c, :]
    return acc


def dot_f16_gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """tinyBLAS<8> on float16 operands (prompt processing): a (..., M, k) . b (..., N, k) -> (..., N, M).

    Each product of two float16 values is exact in float32, so the FMA chain of lane i % 8 is a
    plain float32 sum; the 8 lanes are added as hsum. Operands must already be float16-valued.
    """
    prods = a[..., None, :, :] * b[..., :, None, :]  # (..., N, M, k)
    return hsum8(_chain(prods, 8))


def dot_f16_vec(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ggml_vec_dot_f16 (one query, AVX2): four 8-lane accumulators over steps of 32 elements, then
    (acc0 + acc2) + (acc1 + acc3) and the hadd reduction. a (..., M, k) . b (..., k) -> (..., M)."""
    prods = a * b[..., None, :]
    lanes = _chain(prods, 32).reshape(*prods.shape[:-1], 4, 8)
    x = (lanes[..., 0, :] + lanes[..., 2, :]) + (lanes[..., 1, :] + lanes[..., 3, :])
    return hadd8(x)


def softmax_rows(scores: np.ndarray, scale: float, visible: np.ndarray) -> np.ndarray:
    """ggml_compute_forward_soft_max_f32 over rows of cache cells 0..n-1 (last axis): scale, mask,
    ggml_v_expf of (x - max), 8-cell partial sums (hsum) added in float64, times float32(1 / sum).
    Hidden cells come out as exact zeros, as exp(-inf) does."""
    w = scores * F32(scale)
    w = np.where(visible, w, F32(-np.inf))
    top = w.max(axis=-1, keepdims=True)
    e = np.where(visible, expf(np.where(visible, w - top, F32(0.0))), F32(0.0))
    n = e.shape[-1]
    pad = (-n) % 8
    ep = np.concatenate([e, np.zeros(e.shape[:-1] + (pad,), F32)], axis=-1) if pad else e
    partial = hsum8(ep.reshape(*e.shape[:-1], -1, 8)).astype(F64)
    total = np.cumsum(partial, axis=-1)[..., -1:]
    return e * (1.0 / total).astype(F32)


def cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cosf/sinf of float32 angles as ggml's rope cache gets them: from the C library (glibc's are
    not always correctly rounded, and numpy's float32 ones differ from both). Falls back to the
    correctly rounded values where the C library cannot be loaded."""
    angles = np.asarray(angles, F32)
    libm = _libm()
    if libm is None:
        a = angles.astype(F64)
        return np.cos(a).astype(F32), np.sin(a).astype(F32)
    flat = angles.ravel().tolist()
    cos = np.fromiter(map(libm.cosf, flat), F32, len(flat)).reshape(angles.shape)
    sin = np.fromiter(map(libm.sinf, flat), F32, len(flat)).reshape(angles.shape)
    return cos, sin


_LIBM: list = []


def _libm():
    if not _LIBM:
        import ctypes
        import ctypes.util

        lib = None
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
            for fn in (lib.cosf, lib.sinf):
                fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
        except (OSError, AttributeError):
            lib = None
        _LIBM.append(lib)
    return _LIBM[0]


# ---- 256-element super-blocks (Q4_K, Q6_K) with Q8_K activations ----

def quantize_q8_k(x: np.ndarray, positive_ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q8_K over blocks of 256: scale -127 / (the signed value of largest magnitude),
    round half to even, d = 1 / scale kept in float32. Returns integers (T, n) and d (T, n / 256).

    Where +m and -m tie for the largest magnitude, the reference takes the first; the 4-row AVX2
    variant used for matrix-matrix products (ggml_quantize_mat_q8_K_4x8) takes +m (`positive_ties`).
    """
    blocks = np.asarray(x, F32).reshape(x.shape[0], -1, 256)
    amax = np.abs(blocks).max(axis=-1)
    first = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    signed = np.where((blocks == amax[..., None]).any(axis=-1), amax, first) if positive_ties else first
    with np.errstate(divide="ignore"):
        iscale = np.where(amax != 0, F32(-127.0) / signed, F32(0.0)).astype(F32)
        d = np.where(amax != 0, F32(1.0) / iscale, F32(0.0)).astype(F32)
    q = np.minimum(np.rint(blocks * iscale[..., None]), 127)
    return q.reshape(x.shape), d


@numba.njit(cache=True, nogil=True)
def _q6_k_lanes(codes, sub_scales, d, q, d8, bsum16, acc):  # pragma: no cover - compiled
    """ggml_vec_dot_q6_K_q8_K's lanes, compiled: for output o, activation row t and lane l,
    acc[l, o, t] = FMA over super-blocks b of the float32 product d8[t, b] * d[o, b] times the lane's
    exact integer sum (elements 32c + 4l .. +3 of every 32-chunk c: code * sub-block scale * q, minus 32
    times the scaled Q8_K sums of sub-blocks 2l and 2l+1), that sum rounded to float32 first."""
    n_out, n_in = codes.shape
    n_t, nb = q.shape[0], n_in // 256
    a = np.empty(8, np.float32)
    for o in range(n_out):
        for t in range(n_t):
            a[:] = 0.0
            for b in range(nb):
                sc = np.float64(np.float32(d8[t, b] * d[o, b]))
                for lane in range(8):
                    s = np.int64(0)
                    for c in range(8):
                        i0 = b * 256 + c * 32 + lane * 4
                        scale = np.int64(sub_scales[o, b, (c * 32 + lane * 4) // 16])
                        for e in range(4):
                            s += np.int64(codes[o, i0 + e]) * scale * np.int64(q[t, i0 + e])
                    s -= 32 * (np.int64(bsum16[t, b, 2 * lane]) * np.int64(sub_scales[o, b, 2 * lane])
                               + np.int64(bsum16[t, b, 2 * lane + 1]) * np.int64(sub_scales[o, b, 2 * lane + 1]))
                    a[lane] = np.float32(sc * np.float64(np.float32(s)) + np.float64(a[lane]))
            for lane in range(8):
                acc[lane, o, t] = a[lane]


@numba.njit(cache=True, nogil=True)
def _q4_k_acc(codes, sub_scales, sub_mins, d, dmin, q, d8, bsum, per_block, out):  # pragma: no cover - compiled
    """ggml_gemm/gemv_q4_K_8x8_q8_K's accumulation, compiled (see SuperBlockMatrix._q4_k_rows):
    out[t, o] = acc - accm, both FMA chains over the super-blocks' steps of exact integer sums
    rounded to float32."""
    n_out, n_in = codes.shape
    n_t, nb = q.shape[0], n_in // 256
    for o in range(n_out):
        for t in range(n_t):
            acc = np.float32(0.0)
            accm = np.float32(0.0)
            for b in range(nb):
                sc = np.float64(np.float32(d[o, b] * d8[t, b]))
                scm = np.float64(np.float32(dmin[o, b] * d8[t, b]))
                for k in range(8 // per_block):
                    isum = np.int64(0)
                    imin = np.int64(0)
                    for j in range(k * per_block, (k + 1) * per_block):
                        i0 = b * 256 + j * 32
                        dot = np.int64(0)
                        for e in range(32):
                            dot += np.int64(codes[o, i0 + e]) * np.int64(q[t, i0 + e])
                        isum += dot * np.int64(sub_scales[o, b, j])
                        imin += np.int64(bsum[t, b, j]) * np.int64(sub_mins[o, b, j])
                    acc = np.float32(np.float64(np.float32(isum)) * sc + np.float64(acc))
                    accm = np.float32(np.float64(np.float32(imin)) * scm + np.float64(accm))
            out[t, o] = acc - accm


class SuperBlockMatrix:
    """Q4_K or Q6_K weights as the integers ggml's kernels multiply: per 256-element super-block a
    float16 scale d (and dmin for Q4_K), per sub-block an integer scale (and min for Q4_K), and
    per element an unsigned code (Q4_K 0..15; Q6_K 0..63 with an offset of 32)."""

    def __init__(self, kind: str, codes, d, sub_scales, dmin=None, sub_mins=None):
        self.kind = kind
        self.n_out, self.n_in = codes.shape
        self.nb = self.n_in // 256
        self.codes = codes            # (n_out, n_in) int16
        self.d = d                    # (n_out, nb) float32 (float16 values)
        self.sub_scales = sub_scales  # (n_out, nb, 8 or 16) int
        self.dmin, self.sub_mins = dmin, sub_mins
        sub = 32 if kind == "Q4_K" else 16
        # codes times their sub-block scale, grouped by sub-block: one matmul gives every
        # (scaled) sub-block dot product; float64 keeps the integer sums exact
        scaled = codes.reshape(self.n_out, self.nb, -1, sub).astype(F64)
        if kind == "Q6_K":
            scaled = (scaled - 32) * sub_scales[..., None]
        self._groups = np.ascontiguousarray(scaled.reshape(self.n_out, -1, sub).transpose(1, 0, 2))

    def rows(self, lo: int, hi: int) -> "SuperBlockMatrix":
        sl = slice(lo, hi)
        return SuperBlockMatrix(self.kind, self.codes[sl], self.d[sl], self.sub_scales[sl],
                                None if self.dmin is None else self.dmin[sl],
                                None if self.sub_mins is None else self.sub_mins[sl])

    def _sub_dots(self, q: np.ndarray) -> np.ndarray:
        """Integer dot products per sub-block: (n_out, T, nb, n_sub)."""
        T = q.shape[0]
        sub = self._groups.shape[-1]
        dots = np.matmul(self._groups, q.astype(F64).reshape(T, -1, sub).transpose(1, 2, 0))
        return dots.reshape(self.nb, -1, self.n_out, T).transpose(2, 3, 0, 1)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, F32)
        if self.kind == "Q4_K":
            return self._q4_k(x)
        return self._q6_k_tiled(x) if x.shape[0] >= 8 else self._q6_k_vec(x)

    def _q4_k(self, x: np.ndarray) -> np.ndarray:
        """ggml_gemm/gemv_q4_K_8x8_q8_K (weights repacked 8 rows at a time). Integer sums are exact;
        each is converted to float and FMA-accumulated with d * d8 (the mins with dmin * d8), and
        the result is the difference of the two accumulators. Rows come in groups of four (the
        gemm, quantized by the 4-row routine), which accumulate every 64 elements; the remaining
        rows go one by one (the gemv), which accumulates every 256."""
        T = x.shape[0]
        n4 = T - T % 4
        out = np.empty((T, self.n_out), F32)
        if n4:
            out[:n4] = self._q4_k_rows(*quantize_q8_k(x[:n4], positive_ties=True), per_block=2)
        if n4 < T:
            out[n4:] = self._q4_k_rows(*quantize_q8_k(x[n4:]), per_block=8)
        return out

    def _q4_k_rows(self, q: np.ndarray, d8: np.ndarray, per_block: int) -> np.ndarray:
        """Per super-block, 8 // per_block accumulation steps: each step's integer sums (per_block
        sub-blocks' dot products times their scales, and the mins times the Q8_K block sums) go to
        float32 and are FMA-accumulated with d * d8 and dmin * d8 (compiled: _q4_k_acc)."""
        T = q.shape[0]
        qi = q.astype(np.int32)
        bsum = np.ascontiguousarray(qi.reshape(T, self.nb, 8, 32).sum(axis=-1))  # (T, nb, 8)
        out = np.empty((T, self.n_out), F32)
        _q4_k_acc(self.codes, np.ascontiguousarray(self.sub_scales, np.int32),
                  np.ascontiguousarray(self.sub_mins, np.int32), self.d, self.dmin, qi, np.ascontiguousarray(d8),
                  bsum, per_block, out)
        return out

    def _q6_k_vec(self, x: np.ndarray) -> np.ndarray:
        """ggml_vec_dot_q6_K_q8_K (AVX2): eight int32 lanes per super-block, lane l holding elements
        32c + 4l .. 32c + 4l + 3 of every 32-chunk c (codes as unsigned 0..63) minus 32 times the
        scaled Q8_K block sums 2l and 2l+1; each lane converted to float and FMA-accumulated with
        d8 * d; hsum at the end."""
        T = x.shape[0]
        q, d8 = quantize_q8_k(x)
        qi = q.astype(np.int32)
        bsum16 = np.ascontiguousarray(qi.reshape(T, self.nb, 16, 16).sum(axis=-1))  # (T, nb, 16)
        acc = np.empty((8, self.n_out, T), F32)
        _q6_k_lanes(self.codes, np.ascontiguousarray(self.sub_scales, np.int32), self.d, qi, np.ascontiguousarray(d8),
                    bsum16, acc)
        return np.ascontiguousarray(hsum8(np.moveaxis(acc, 0, -1)).T)

    def _q6_k_tiled(self, x: np.ndarray) -> np.ndarray:
        """The tiled kernel (8 or more rows): per super-block the exact integer dot s, then
        out = fma(d * float(s), d8, out) over the super-blocks in order."""
        T = x.shape[0]
        q, d8 = quantize_q8_k(x)
        s = self._sub_dots(q).sum(axis=-1)                                        # (o, T, nb) exact
        out = np.zeros((self.n_out, T), F32)
        for b in range(self.nb):
            out = fma(self.d[:, b, None] * s[..., b].astype(F32), d8[None, :, b], out)
        return np.ascontiguousarray(out.T)


def superblock_matrix(qtype_name: str, raw: np.ndarray, n_out: int, n_in: int) -> SuperBlockMatrix:
    """Unpack the raw bytes of a Q4_K or Q6_K tensor (n_out rows of n_in)."""
    nb = n_in // 256
    blocks = np.asarray(raw, np.uint8).reshape(n_out, nb, -1)
    if qtype_name == "Q4_K":
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(F32)
        dmin = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(F32)
        sc = blocks[..., 4:16].astype(np.int32)
        scales = np.empty((n_out, nb, 8), np.int32)
        mins = np.empty((n_out, nb, 8), np.int32)
        scales[..., :4] = sc[..., 0:4] & 63
        mins[..., :4] = sc[..., 4:8] & 63
        scales[..., 4:] = (sc[..., 8:12] & 0xF) | ((sc[..., 0:4] >> 6) << 4)
        mins[..., 4:] = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)
        qs = blocks[..., 16:144].reshape(n_out, nb, 4, 32)
        codes = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(n_out, n_in).astype(np.int16)
        return SuperBlockMatrix("Q4_K", codes, d, scales, dmin, mins)
    if qtype_name == "Q6_K":
        ql = blocks[..., 0:128].reshape(n_out, nb, 2, 64).astype(np.int16)
        qh = blocks[..., 128:192].reshape(n_out, nb, 2, 32).astype(np.int16)
        scales = blocks[..., 192:208].view(np.int8).astype(np.int32)
        d = blocks[..., 208:210].copy().view(np.float16)[..., 0].astype(F32)
        lo, hi = ql[..., :32], ql[..., 32:]
        codes = np.stack([(lo & 0xF) | ((qh & 3) << 4), (hi & 0xF) | (((qh >> 2) & 3) << 4),
                          (lo >> 4) | (((qh >> 4) & 3) << 4), (hi >> 4) | (((qh >> 6) & 3) << 4)], axis=3)
        return SuperBlockMatrix("Q6_K", codes.reshape(n_out, n_in), d, scales)
    raise ValueError(f"no super-block kernel for {qtype_name}")


_GELU_TABLE: list = []


def gelu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_vec_geglu_f32: GELU(tanh) looked up at the float16 value of x in a float16 table
    (0 for x <= -10, x itself for x >= 10), times up."""
    if not _GELU_TABLE:
        _GELU_TABLE.append(_gelu_table())
    gate = np.asarray(gate, F32)
    y = _GELU_TABLE[0][gate.astype(np.float16).view(np.uint16)]
    return np.where(gate <= F32(-10.0), F32(0.0), np.where(gate >= F32(10.0), gate, y)) * up


def _gelu_table() -> np.ndarray:
    """ggml_gelu_f32 at every float16 value, rounded to float16: 0.5 x (1 + tanhf(sqrt(2/pi) x
    (1 + 0.044715 x x))) with the inner 1 + (0.044715 x) x fused, as GCC compiles it."""
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)
    with np.errstate(all="ignore"):
        arg = F32(0.7978845608028654) * x * fma(F32(0.044715) * x, x, F32(1.0))
        libm = _libm()
        if libm is None or not hasattr(libm, "tanhf"):
            t = np.tanh(arg.astype(F64)).astype(F32)
        else:
            libm.tanhf.restype, libm.tanhf.argtypes = libm.cosf.restype, libm.cosf.argtypes
            t = np.fromiter(map(libm.tanhf, arg.tolist()), F32, len(arg))
        return f16(F32(0.5) * x * (F32(1.0) + t))
