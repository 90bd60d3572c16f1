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
"""

from __future__ import annotations

import numpy as np

F32, F64 = np.float32, np.float64


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

    Holds what ggml's dot kernels read from Q8_0, Q4_0, Q5_0, Q4_1 and Q5_1 blocks: the integer
    weights (unsigned 0..15/31 with an offset m for the _1 types, signed for the _0 types), laid out
    (n_in / 4, n_out, 4) so that one batched matrix product gives every lane sum at once.
    """

    def __init__(self, ints: np.ndarray, scales: np.ndarray, mins: np.ndarray | None):
        n_out, n_in = ints.shape
        self.n_out, self.n_in = n_out, n_in
        self.lanes = np.ascontiguousarray(ints.astype(F32).reshape(n_out, n_in // 4, 4).transpose(1, 0, 2))
        self.scales = np.ascontiguousarray(scales, F32)          # (n_out, n_in / 32)
        self.mins = None if mins is None else np.ascontiguousarray(mins, F32)

    def rows(self, lo: int, hi: int) -> "BlockMatrix":
        out = object.__new__(BlockMatrix)
        out.n_out, out.n_in = hi - lo, self.n_in
        out.lanes = self.lanes[:, lo:hi]
        out.scales = self.scales[lo:hi]
        out.mins = None if self.mins is None else self.mins[lo:hi]
        return out

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (T, n_in) float32 -> (T, n_out): ggml_vec_dot_q*_q8_* / tinyBLAS_Q0_AVX, per element.

        Per block: the 32 products are summed as 8 int32 lanes of 4 (exact), each lane converted to
        float and accumulated with one FMA by the float32 product of the two block scales; the 8
        lanes are added at the end (hsum_float_8). Q4_1/Q5_1 add sum(m * s) over blocks, FMA-chained.
        """
        T = x.shape[0]
        nb = self.n_in // 32
        q, d, s = quantize_q8(x)
        lane_sums = np.matmul(self.lanes, q.reshape(T, -1, 4).transpose(1, 2, 0))  # (n_in/4, n_out, T)
        lane_sums = lane_sums.reshape(nb, 8, self.n_out, T)
        acc = np.zeros((8, self.n_out, T), F64)
        for b in range(nb):
            scale = (self.scales[:, b, None] * d[None, :, b]).astype(F64)  # float32 product
            acc = (scale * lane_sums[b] + acc).astype(F32).astype(F64)
        out = hsum8(np.moveaxis(acc.astype(F32), 0, -1))  # (n_out, T)
        if self.mins is not None:
            summs = np.zeros((self.n_out, T), F32)
            for b in range(nb):
                summs = fma(self.mins[:, b, None], s[None, :, b], summs)
            out = out + summs
        return np.ascontiguousarray(out.T)


def block_matrix(qtype_name: str, raw: np.ndarray, n_out: int, n_in: int) -> BlockMatrix:
    """Unpack the raw bytes of a Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 tensor (n_out rows of n_in) into a BlockMatrix."""
    nb = n_in // 32
    blocks = np.asarray(raw, np.uint8).reshape(n_out, nb, -1)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(F32)
    mins = None
    if qtype_name == "Q8_0":
        ints = blocks[..., 2:34].view(np.int8).astype(np.int16)
    elif qtype_name in ("Q4_0", "Q4_1"):
        off = 2 if qtype_name == "Q4_0" else 4
        qs = blocks[..., off:off + 16]
        ints = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)  # elements 0..15, 16..31
        if qtype_name == "Q4_0":
            ints -= 8
        else:
            mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(F32)
    elif qtype_name in ("Q5_0", "Q5_1"):
        off = 2 if qtype_name == "Q5_0" else 4
        qh = blocks[..., off:off + 4].copy().view("<u4")[..., 0]
        qs = blocks[..., off + 4:off + 20]
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
        high = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int16) << 4
        ints = low | high
        if qtype_name == "Q5_0":
            ints -= 16
        else:
            mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(F32)
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
