"""Compiled (numba) kernels of the packed CPU backend: mat-vec on GGUF blocks with integer activations.

Each weight row is read in its file's block format straight from the memory map. The activations are
rounded to integers per 32 values (scale = max |x| / QMAX), so that the inner loops are integer dot
products of 32 (or 16) quants, which LLVM turns into AVX2 `vpmaddwd` (16 int16 products summed in
pairs to int32); each block's integer sum then takes the block's float scales, as llama.cpp's CPU
kernels do. The activations are int16, not llama.cpp's int8: `vpmaddwd` multiplies int16 anyway
(int8 needs a widening step first), so int16 measured faster (Q4_1 11.3 against 6.0 Gelem/s on 2
threads) and its rounding is 256 times finer. With int8 the greedy text of SmolLM2 left the float32
reference's at a 1.5 % logit gap. Output rows are spread over numba's threads (`set_threads`).
Float weights (F32, F16, BF16) multiply float activations.

These are the portable kernels. On a CPU with AVX2, `kernel()` hands out the ones of
cpu_kernels_avx2.py instead where it has one (the same integer sums, built as explicit vector code);
ROCMFORGE_CPU_KERNELS=portable keeps these.

Two numba settings are deliberate. SLP vectorization (off by default in numba since a miscompile in
its issue #8705) is switched on here: the block dots are straight-line code after unrolling, which
only the SLP vectorizer turns into vector instructions (measured: 0.9 -> 2.7 Gelem/s on one core);
the kernel tests compare every type with the float32 reference. `cache=True` keeps the machine code
under __pycache__ (or NUMBA_CACHE_DIR), so only a first start compiles.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

numba.config.SLP_VECTORIZE = 1  # read when each function is compiled (see the module docstring)
# OpenMP first: a parallel region costs ~3 us there against ~190 us in numba's own workqueue pool
# (measured on this 2-core EPYC), and a decode step runs ~150 of them. tbb is not a dependency.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_OPTS = dict(cache=True, fastmath=True, boundscheck=False, nogil=True)
I3, I4, I15, I16, I8, I32 = (np.int32(v) for v in (3, 4, 15, 16, 8, 32))
# fp16 bits -> float32: numba has no float16 arithmetic on the CPU; a 256 KB table stays in L2.
QMAX = np.float32(32767.0)  # activations round to int16 per 32 values (see the module docstring)
F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def set_threads(n: int) -> None:
    """Spread the kernels over n threads (at most numba's pool, NUMBA_NUM_THREADS)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def threads() -> int:
    return numba.get_num_threads()


def _host_isa() -> str:
    """"avx2" when the code numba generates may use AVX2 (the host has it and NUMBA_CPU_NAME, if set,
    allows it) and ROCMFORGE_CPU_KERNELS does not say "portable"; else "portable"."""
    if os.environ.get("ROCMFORGE_CPU_KERNELS", "").strip().lower() == "portable":
        return "portable"
    if numba.config.CPU_NAME and numba.config.CPU_NAME != "host":  # a cache built for another CPU
        return "avx2" if "+avx2" in (numba.config.CPU_FEATURES or "") else "portable"
    try:
        from llvmlite import binding
        return "avx2" if binding.get_host_cpu_features().get("avx2", False) else "portable"
    except RuntimeError:  # no feature list on this host
        return "portable"


ISA = _host_isa()


def kernel(qtype_name: str, isa: str | None = None):
    """The decode kernel matvec_<type> for this host (or for `isa`): cpu_kernels_avx2's where the ISA
    is "avx2" and it has one, else this module's portable one."""
    name = "matvec_" + qtype_name.lower()
    if (isa or ISA) == "avx2":
        from rocmforge_core.backends import cpu_kernels_avx2

        fn = getattr(cpu_kernels_avx2, name, None)
        if fn is not None:
            return fn
    return globals()[name]


# ---- activations ----------------------------------------------------------------------------------

@njit(inline="always", **_OPTS)
def _quantize_into(x, xq, xd, xs):
    B, n = x.shape
    nb = n // 32
    for b in range(B):
        for k in range(nb):
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[b, k * 32 + j]))
            d = amax / QMAX
            inv = QMAX / amax if amax > 0 else np.float32(0.0)
            s0 = np.int32(0)
            s1 = np.int32(0)
            for j in range(32):
                q = np.int32(np.rint(x[b, k * 32 + j] * inv))
                xq[b, k, j] = q
                if j < 16:
                    s0 += q
                else:
                    s1 += q
            xd[b, k] = d
            xs[b, 2 * k] = d * np.float32(s0)
            xs[b, 2 * k + 1] = d * np.float32(s1)


@njit(inline="always", **_OPTS)
def _quantized(x):
    B, n = x.shape
    xq = np.empty((B, n // 32, 32), np.int16)
    xd = np.empty((B, n // 32), np.float32)
    xs = np.empty((B, n // 16), np.float32)
    _quantize_into(x, xq, xd, xs)
    return xq, xd, xs


@njit(**_OPTS)
def quantize_rows(x, xq, xd, xs):
    """x (B, n) float32 -> xq (B, n/32, 32) int16, xd (B, n/32) scales, xs (B, n/16): each 16 quants'
    sum times its scale (what a block offset m multiplies)."""
    _quantize_into(x, xq, xd, xs)


# ---- block dots (inlined into the row kernels; straight-line code for the SLP vectorizer) ----------

@njit(inline="always", **_OPTS)
def _f16(bl, i, f16):
    return f16[np.int32(bl[i]) | (np.int32(bl[i + 1]) << I8)]


@njit(inline="always", **_OPTS)
def _dot_nibbles(bl, off, xb):
    """16 bytes from bl[off]: low nibbles times xb[0:16], high nibbles times xb[16:32].

    Every kernel multiplies unsigned quants (a type's offset, such as Q4_0's -8, is taken off
    afterwards through the activations' block sums) and keeps all integer arithmetic in int32:
    numba types integer expressions as int64, which LLVM would not pack into `vpmaddwd`."""
    s = np.int32(0)
    for j in range(16):
        v = np.int32(bl[off + j])
        s = np.int32(s + (v & I15) * np.int32(xb[j]) + (v >> I4) * np.int32(xb[16 + j]))
    return s


# Q5_0/Q5_1: bit i of a byte of qh, as the value 16 it adds to a quant: HB5[byte, i]. Reading the fifth
# bits through this table (8 adjacent bytes per qh byte) rather than shifting qh by each quant's index
# lets LLVM keep the quants in 16-bit lanes and use vpmaddwd: 3.9 -> 6.5 Gelem/s on one core, the
# rate of Q4_0 (measured on a 4,096 x 640 weight).
HB5 = np.array([[16 * ((b >> i) & 1) for i in range(8)] for b in range(256)], np.uint8)


@njit(inline="always", **_OPTS)
def _dot_nibbles5(bl, off, qh_off, xb):
    """Q5_0/Q5_1: as _dot_nibbles, with bit j of the 32-bit qh at bl[qh_off] as bit 4 of quant j."""
    s = np.int32(0)
    for j in range(16):
        v = np.int32(bl[off + j])
        lo = (v & I15) | np.int32(HB5[np.int32(bl[qh_off + (j >> 3)]), j & 7])
        hi = (v >> I4) | np.int32(HB5[np.int32(bl[qh_off + 2 + (j >> 3)]), j & 7])
        s = np.int32(s + lo * np.int32(xb[j]) + hi * np.int32(xb[16 + j]))
    return s


@njit(inline="always", **_OPTS)
def _dot_bytes(bl, off, xb):
    s = np.int32(0)
    for j in range(32):
        s = np.int32(s + np.int32(np.int8(bl[off + j])) * np.int32(xb[j]))
    return s


@njit(inline="always", **_OPTS)
def _dot_low32(bl, off, xb):
    """32 bytes from bl[off]: their low nibbles times xb[0:32]."""
    s = np.int32(0)
    for j in range(32):
        s = np.int32(s + (np.int32(bl[off + j]) & I15) * np.int32(xb[j]))
    return s


@njit(inline="always", **_OPTS)
def _dot_high32(bl, off, xb):
    """32 bytes from bl[off]: their high nibbles times xb[0:32]."""
    s = np.int32(0)
    for j in range(32):
        s = np.int32(s + (np.int32(bl[off + j]) >> I4) * np.int32(xb[j]))
    return s


@njit(inline="always", **_OPTS)
def _dot_q5k(bl, sub, xb):
    """Q5_K sub-block `sub` of 32: 4 bits from qs (as Q4_K), bit 4 from bit `sub` of qh[j]."""
    off = 48 + 32 * (sub >> 1)
    shift = np.int32((sub & 1) * 4)
    hb = np.int32(sub)
    s = np.int32(0)
    for j in range(32):
        q = ((np.int32(bl[off + j]) >> shift) & I15) | (((np.int32(bl[16 + j]) >> hb) & 1) << I4)
        s = np.int32(s + q * np.int32(xb[j]))
    return s


@njit(inline="always", **_OPTS)
def _dot_q6k(bl, h, x0, x1, x2, x3, lo):
    """Q6_K half h (0..1), quants lo..lo + 15 of each of its 4 groups of 32: the 4 sums.

    A group's 4 low bits are the low or high nibbles of ql[0:32] or ql[32:64] of the half, its 2 high
    bits a 2-bit field of qh[0:32]; one pass reads each byte once for all four groups, with constant
    shifts (1.3x the rate of one group at a time)."""
    ql = 64 * h
    qh = 128 + 32 * h
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    for j in range(lo, lo + 16):
        a = np.int32(bl[ql + j])
        c = np.int32(bl[ql + 32 + j])
        hb = np.int32(bl[qh + j])
        s0 = np.int32(s0 + ((a & I15) | ((hb & I3) << I4)) * np.int32(x0[j]))
        s1 = np.int32(s1 + ((c & I15) | (((hb >> 2) & I3) << I4)) * np.int32(x1[j]))
        s2 = np.int32(s2 + ((a >> I4) | (((hb >> I4) & I3) << I4)) * np.int32(x2[j]))
        s3 = np.int32(s3 + ((c >> I4) | ((hb >> 6) << I4)) * np.int32(x3[j]))
    return s0, s1, s2, s3


@njit(inline="always", **_OPTS)
def _dot_2bit(bl, off, shift, xb):
    """Q2_K: 32 two-bit quants (bits `shift` of bl[off + j]); the sums of both halves of 16."""
    sh = np.int32(shift)
    s0 = np.int32(0)
    s1 = np.int32(0)
    for j in range(16):
        s0 = np.int32(s0 + ((np.int32(bl[off + j]) >> sh) & I3) * np.int32(xb[j]))
    for j in range(16, 32):
        s1 = np.int32(s1 + ((np.int32(bl[off + j]) >> sh) & I3) * np.int32(xb[j]))
    return s0, s1


@njit(inline="always", **_OPTS)
def _dot_3bit(bl, off, shift, hbit, xb):
    """Q3_K: 2 low bits as Q2_K plus bit `hbit` of hmask[j] (bl[0:32]) as bit 2: unsigned 0..7."""
    sh = np.int32(shift)
    hb = np.int32(hbit)
    s0 = np.int32(0)
    s1 = np.int32(0)
    for j in range(16):
        q = ((np.int32(bl[off + j]) >> sh) & I3) | (((np.int32(bl[j]) >> hb) & 1) << 2)
        s0 = np.int32(s0 + q * np.int32(xb[j]))
    for j in range(16, 32):
        q = ((np.int32(bl[off + j]) >> sh) & I3) | (((np.int32(bl[j]) >> hb) & 1) << 2)
        s1 = np.int32(s1 + q * np.int32(xb[j]))
    return s0, s1


@njit(inline="always", **_OPTS)
def _k_scale_min(sc, j):
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes sc."""
    if j < 4:
        return np.int32(sc[j]) & 63, np.int32(sc[j + 4]) & 63
    a = np.int32(sc[j + 4])
    return (a & I15) | ((np.int32(sc[j - 4]) >> 6) << I4), (a >> I4) | ((np.int32(sc[j]) >> 6) << I4)


@njit(inline="always", **_OPTS)
def _q3k_scale(bl, i):
    """Q3_K: signed 6-bit scale i (0..15) of the 12 bytes at bl[96:108]."""
    lo = (np.int32(bl[96 + (i & 7)]) >> np.int32(4 * (i >> 3))) & I15
    hi = (np.int32(bl[104 + (i & 3)]) >> np.int32(2 * (i >> 2))) & I3
    return (lo | (hi << I4)) - I32


# ---- one weight row times one activation row, per type (sums: int16 quants stay below 2**31) ---------------------------------------------
# xd[k]: the activation scale of 32-block k; xs[2k], xs[2k + 1]: its halves' sums times that scale.

@njit(inline="always", **_OPTS)
def _row_q4_0(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        s += _f16(bl, 0, f16) * (xd[k] * np.float32(_dot_nibbles(bl, 2, xq[k]))
                                 - np.float32(8.0) * (xs[2 * k] + xs[2 * k + 1]))
    return s


@njit(inline="always", **_OPTS)
def _row_q4_1(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        s += (_f16(bl, 0, f16) * xd[k] * np.float32(_dot_nibbles(bl, 4, xq[k]))
              + _f16(bl, 2, f16) * (xs[2 * k] + xs[2 * k + 1]))
    return s


@njit(inline="always", **_OPTS)
def _qh(bl, off):
    return (np.int32(bl[off]) | (np.int32(bl[off + 1]) << I8) | (np.int32(bl[off + 2]) << I16)
            | (np.int32(bl[off + 3]) << np.int32(24)))


@njit(inline="always", **_OPTS)
def _row_q5_0(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        s += _f16(bl, 0, f16) * (xd[k] * np.float32(_dot_nibbles5(bl, 6, 2, xq[k]))
                                 - np.float32(16.0) * (xs[2 * k] + xs[2 * k + 1]))
    return s


@njit(inline="always", **_OPTS)
def _row_q5_1(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        s += (_f16(bl, 0, f16) * xd[k] * np.float32(_dot_nibbles5(bl, 8, 4, xq[k]))
              + _f16(bl, 2, f16) * (xs[2 * k] + xs[2 * k + 1]))
    return s


@njit(inline="always", **_OPTS)
def _row_q8_0(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        s += _f16(bl, 0, f16) * xd[k] * np.float32(_dot_bytes(bl, 2, xq[k]))
    return s


@njit(inline="always", **_OPTS)
def _row_q4_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        sc = bl[4:16]
        acc = np.float32(0.0)
        mins = np.float32(0.0)
        for pair in range(4):
            b = 8 * k + 2 * pair
            sc0, mn0 = _k_scale_min(sc, 2 * pair)
            sc1, mn1 = _k_scale_min(sc, 2 * pair + 1)
            acc += (xd[b] * np.float32(sc0) * np.float32(_dot_low32(bl, 16 + 32 * pair, xq[b]))
                    + xd[b + 1] * np.float32(sc1) * np.float32(_dot_high32(bl, 16 + 32 * pair, xq[b + 1])))
            mins += (np.float32(mn0) * (xs[2 * b] + xs[2 * b + 1])
                     + np.float32(mn1) * (xs[2 * b + 2] + xs[2 * b + 3]))
        s += _f16(bl, 0, f16) * acc - _f16(bl, 2, f16) * mins
    return s


@njit(inline="always", **_OPTS)
def _row_q5_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        sc = bl[4:16]
        acc = np.float32(0.0)
        mins = np.float32(0.0)
        for sub in range(8):
            scale, mn = _k_scale_min(sc, sub)
            b = 8 * k + sub
            acc += xd[b] * np.float32(scale) * np.float32(_dot_q5k(bl, sub, xq[b]))
            mins += np.float32(mn) * (xs[2 * b] + xs[2 * b + 1])
        s += _f16(bl, 0, f16) * acc - _f16(bl, 2, f16) * mins
    return s


@njit(inline="always", **_OPTS)
def _row_q6_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        acc = np.float32(0.0)
        offset = np.float32(0.0)  # the quants' -32, through the activation sums
        for h in range(2):
            b = 8 * k + 4 * h  # the activation block of the half's group 0
            for half in range(2):  # quants 0..15, then 16..31 of every group: one scale each
                t = _dot_q6k(bl, h, xq[b], xq[b + 1], xq[b + 2], xq[b + 3], 16 * half)
                for g in range(4):
                    sc = np.float32(np.int8(bl[192 + 8 * h + 2 * g + half]))
                    acc += xd[b + g] * np.float32(t[g]) * sc
                    offset += sc * xs[2 * (b + g) + half]
        s += _f16(bl, 208, f16) * (acc - np.float32(32.0) * offset)
    return s


@njit(inline="always", **_OPTS)
def _row_q2_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        acc = np.float32(0.0)
        mins = np.float32(0.0)
        for h in range(2):
            for g in range(4):
                c = 8 * h + 2 * g
                b = 8 * k + 4 * h + g
                s0, s1 = _dot_2bit(bl, 16 + 32 * h, 2 * g, xq[b])
                acc += xd[b] * np.float32(np.int32(s0 * (np.int32(bl[c]) & I15) + s1 * (np.int32(bl[c + 1]) & I15)))
                mins += (np.float32(np.int32(bl[c]) >> I4) * xs[2 * b]
                         + np.float32(np.int32(bl[c + 1]) >> I4) * xs[2 * b + 1])
        s += _f16(bl, 80, f16) * acc - _f16(bl, 82, f16) * mins
    return s


@njit(inline="always", **_OPTS)
def _row_q3_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        bl = w[k]
        acc = np.float32(0.0)
        offset = np.float32(0.0)  # the quants' -4, through the activation sums
        for h in range(2):
            for g in range(4):
                c = 8 * h + 2 * g
                b = 8 * k + 4 * h + g
                sc0, sc1 = _q3k_scale(bl, c), _q3k_scale(bl, c + 1)
                s0, s1 = _dot_3bit(bl, 32 + 32 * h, 2 * g, 4 * h + g, xq[b])
                acc += xd[b] * np.float32(np.int32(s0 * sc0 + s1 * sc1))
                offset += np.float32(sc0) * xs[2 * b] + np.float32(sc1) * xs[2 * b + 1]
        s += _f16(bl, 108, f16) * (acc - np.float32(4.0) * offset)
    return s


# The threaded kernels, one per type: out[b, col0 + r] = w[r] . x[b] for every weight row r of the
# parts ws (a tuple of MAX_PARTS arrays (rows, blocks per row, bytes per block) uint8: up to three
# tensors of one type and width stacked along the output, such as Q|K|V, computed in one call and one
# parallel region; unused places hold empty arrays) and the activations x (B, n_in) float32, which
# each call rounds to int16 itself before its parallel loop (one call from Python, not two). ends[i] is
# the last output row + 1 of part i. (One function per type rather than a factory: numba cannot
# cache a closure over another compiled function.)
MAX_PARTS = 3


@njit(inline="always", **_OPTS)
def _part_row(ends, r):
    """(part, row within it) of stacked row r (prange counts unsigned: int64 keeps the index integer)."""
    r = np.int64(r)
    if r < ends[0]:
        return 0, r
    if r < ends[1]:
        return 1, r - ends[0]
    return 2, r - ends[1]


@njit(parallel=True, **_OPTS)
def matvec_q4_0(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q4_0(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q4_1(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q4_1(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q5_0(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q5_0(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q5_1(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q5_1(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q8_0(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q8_0(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q2_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q2_k(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q3_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q3_k(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q4_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q4_k(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q5_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q5_k(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q6_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q6_k(w, xq[b], xd[b], xs[b], f16)


# ---- float weights: float activations --------------------------------------------------------------

@njit(parallel=True, **_OPTS)
def matvec_f16(w, x, f16, out, col0):
    """w (n_out, n_in) uint16 bits of fp16 times float32 activations x (B, n_in)."""
    for r in prange(w.shape[0]):
        for b in range(x.shape[0]):
            s = np.float32(0.0)
            for j in range(w.shape[1]):
                s += f16[w[r, j]] * x[b, j]
            out[b, col0 + r] = s


# ---- dequantization into float32 (the prompt path: sgemm reads the result) -------------------------
# w (rows, blocks per row, bytes per block) uint8 -> out (rows, n_in) float32, the same values as
# quants.dequantize (each element is scale * q + offset, as there). On one thread, deliberately: BLAS
# sgemm runs on its own thread pool right after each slice, and OpenMP's workers spinning after a
# threaded dequantization took the cores from it (SmolLM2 pp512 fell to ~35 tok/s; measured 2026-12-01).

@njit(inline="always", **_OPTS)
def _put_nibbles(bl, off, a, b, out, o):
    """out[o + j] = a * (low nibble j) + b, out[o + 16 + j] = a * (high nibble j) + b, j < 16."""
    for j in range(16):
        v = np.int32(bl[off + j])
        out[o + j] = np.float32(v & I15) * a + b
        out[o + 16 + j] = np.float32(v >> I4) * a + b


@njit(inline="always", **_OPTS)
def _put_nibbles5(bl, off, qh, a, b, out, o):
    for j in range(16):
        v = np.int32(bl[off + j])
        lo = (v & I15) | (((qh >> np.int32(j)) & 1) << I4)
        hi = (v >> I4) | (((qh >> np.int32(j + 16)) & 1) << I4)
        out[o + j] = np.float32(lo) * a + b
        out[o + 16 + j] = np.float32(hi) * a + b


@njit(**_OPTS)
def dequant_q4_0(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d = _f16(bl, 0, f16)
            _put_nibbles(bl, 2, d, np.float32(-8.0) * d, o, 32 * k)


@njit(**_OPTS)
def dequant_q4_1(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            _put_nibbles(bl, 4, _f16(bl, 0, f16), _f16(bl, 2, f16), o, 32 * k)


@njit(**_OPTS)
def dequant_q5_0(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d = _f16(bl, 0, f16)
            _put_nibbles5(bl, 6, _qh(bl, 2), d, np.float32(-16.0) * d, o, 32 * k)


@njit(**_OPTS)
def dequant_q5_1(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            _put_nibbles5(bl, 8, _qh(bl, 4), _f16(bl, 0, f16), _f16(bl, 2, f16), o, 32 * k)


@njit(**_OPTS)
def dequant_q8_0(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d = _f16(bl, 0, f16)
            for j in range(32):
                o[32 * k + j] = np.float32(np.int8(bl[2 + j])) * d


@njit(**_OPTS)
def dequant_q2_k(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d, dmin = _f16(bl, 80, f16), _f16(bl, 82, f16)
            for h in range(2):
                for g in range(4):
                    base = 256 * k + 128 * h + 32 * g
                    sh = np.int32(2 * g)
                    for half in range(2):
                        sc = np.int32(bl[8 * h + 2 * g + half])
                        a = d * np.float32(sc & I15)
                        b = -(dmin * np.float32(sc >> I4))
                        for j in range(16 * half, 16 * half + 16):
                            o[base + j] = np.float32((np.int32(bl[16 + 32 * h + j]) >> sh) & I3) * a + b


@njit(**_OPTS)
def dequant_q3_k(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d = _f16(bl, 108, f16)
            for h in range(2):
                for g in range(4):
                    base = 256 * k + 128 * h + 32 * g
                    sh = np.int32(2 * g)
                    hb = np.int32(4 * h + g)
                    for half in range(2):
                        a = d * np.float32(_q3k_scale(bl, 8 * h + 2 * g + half))
                        for j in range(16 * half, 16 * half + 16):
                            q = (((np.int32(bl[32 + 32 * h + j]) >> sh) & I3)
                                 - ((((np.int32(bl[j]) >> hb) & 1) ^ 1) << 2))
                            o[base + j] = np.float32(q) * a


@njit(**_OPTS)
def dequant_q4_k(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d, dmin = _f16(bl, 0, f16), _f16(bl, 2, f16)
            sc = bl[4:16]
            for pair in range(4):
                sc0, mn0 = _k_scale_min(sc, 2 * pair)
                sc1, mn1 = _k_scale_min(sc, 2 * pair + 1)
                a0, b0 = d * np.float32(sc0), -(dmin * np.float32(mn0))
                a1, b1 = d * np.float32(sc1), -(dmin * np.float32(mn1))
                base = 256 * k + 64 * pair
                for j in range(32):
                    v = np.int32(bl[16 + 32 * pair + j])
                    o[base + j] = np.float32(v & I15) * a0 + b0
                    o[base + 32 + j] = np.float32(v >> I4) * a1 + b1


@njit(**_OPTS)
def dequant_q5_k(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d, dmin = _f16(bl, 0, f16), _f16(bl, 2, f16)
            sc = bl[4:16]
            for sub in range(8):
                scale, mn = _k_scale_min(sc, sub)
                a, b = d * np.float32(scale), -(dmin * np.float32(mn))
                off = 48 + 32 * (sub >> 1)
                shift = np.int32((sub & 1) * 4)
                hb = np.int32(sub)
                for j in range(32):
                    q = ((np.int32(bl[off + j]) >> shift) & I15) | (((np.int32(bl[16 + j]) >> hb) & 1) << I4)
                    o[256 * k + 32 * sub + j] = np.float32(q) * a + b


@njit(**_OPTS)
def dequant_q6_k(w, f16, out):
    for r in range(w.shape[0]):
        o = out[r]
        for k in range(w.shape[1]):
            bl = w[r, k]
            d = _f16(bl, 208, f16)
            for h in range(2):
                for g in range(4):
                    ql = 64 * h + 32 * (g & 1)
                    shift = np.int32(4 * (g >> 1))
                    qshift = np.int32(2 * g)
                    base = 256 * k + 128 * h + 32 * g
                    for half in range(2):
                        a = d * np.float32(np.int8(bl[192 + 8 * h + 2 * g + half]))
                        for j in range(16 * half, 16 * half + 16):
                            q = (((np.int32(bl[ql + j]) >> shift) & I15)
                                 | (((np.int32(bl[128 + 32 * h + j]) >> qshift) & I3) << I4)) - I32
                            o[base + j] = np.float32(q) * a


# ---- the small ops of a decode step: one compiled call each instead of several numpy passes -------
# A decode step of a 30-layer model runs ~15 of these per layer on one row; in numpy each costs a few
# microseconds of dispatch per pass, more than the arithmetic (see BENCHMARKS.md, packed CPU backend).

@njit(**_OPTS)
def rms_norm_rows(x, w, eps, out):
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, the mean of squares summed in float64 (as the
    reference sums it)."""
    rows, n = x.shape
    for r in range(rows):
        ss = 0.0
        for j in range(n):
            v = np.float64(x[r, j])
            ss += v * v
        scale = np.float32(1.0) / np.sqrt(np.float32(ss / n) + np.float32(eps))
        for j in range(n):
            out[r, j] = x[r, j] * scale * w[j]


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (one LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline="always", **_OPTS)
def _exp(x):
    """exp(x) for float32 in plain arithmetic, so that LLVM vectorizes the loops that call it (numba
    calls libm's scalar expf/tanhf: ~20 ns each, a quarter of Gemma-3's prompt time went to tanh).
    x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so r is exact), e^r by its degree-7
    minimax polynomial (the Cephes expf coefficients), 2^n through the exponent bits. Relative error
    <= 1.2e-7 on [-87, 88] (measured against float64 exp); inputs outside are clamped to it, which
    leaves exp(x) for x < -87 at 1.6e-38 instead of 0 and for x > 88 at 1.7e38 instead of inf:
    both give the same silu, sigmoid and tanh as the exact values at float32 precision."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.float32(np.rint(x * np.float32(1.4426950408889634)))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


# The gated activations take two passes per row, the exponentials into a row buffer and then the
# products: LLVM vectorizes both (2.1 ms for 512 x 2048 against 7.0 ms with libm's expf); the same
# work as one loop measured 5.6 ms (not vectorized).

@njit(**_OPTS)
def swiglu_rows(gate_up, out):
    """out = silu(gate) * up for gate|up side by side in each row."""
    rows, half = out.shape
    e = np.empty(half, np.float32)
    for r in range(rows):
        gu = gate_up[r]
        for j in range(half):
            e[j] = _exp(-gu[j])
        o = out[r]
        for j in range(half):
            o[j] = gu[j] / (np.float32(1.0) + e[j]) * gu[half + j]


@njit(**_OPTS)
def geglu_rows(gate_up, out):
    """out = gelu_tanh(gate) * up, gate|up side by side: 0.5 g (1 + tanh u), u = c (g + 0.044715 g^3),
    computed as g - g / (exp(2u) + 1), the same value."""
    rows, half = out.shape
    c2 = np.float32(2.0 * 0.7978845608028654)
    e = np.empty(half, np.float32)
    for r in range(rows):
        gu = gate_up[r]
        for j in range(half):
            g = gu[j]
            e[j] = _exp(c2 * (g + np.float32(0.044715) * g * g * g))
        o = out[r]
        for j in range(half):
            g = gu[j]
            o[j] = (g - g / (e[j] + np.float32(1.0))) * gu[half + j]


@njit(inline="always", **_OPTS)
def _rope_into(x, positions, cos, sin, partner, out):
    T, H, hd = x.shape
    dim = cos.shape[1]
    for t in range(T):
        p = positions[t]
        for h in range(H):
            for j in range(dim):
                out[t, h, j] = x[t, h, j] * cos[p, j] + x[t, h, partner[j]] * sin[p, j]
            for j in range(dim, hd):
                out[t, h, j] = x[t, h, j]


@njit(**_OPTS)
def rope_qk(q, k, positions, cos, sin, partner, q_out, k_out):
    """Rotate q (T, heads, hd) and k (T, kv heads, hd) by their positions: x * cos + x[partner] * sin
    over the first cos.shape[1] dimensions (rope.PairTable's layout), the rest copied."""
    _rope_into(q, positions, cos, sin, partner, q_out)
    _rope_into(k, positions, cos, sin, partner, k_out)


@njit(parallel=True, **_OPTS)
def attend_rows(q, k, v, kc, vc, slots, positions, window, scale, out):
    """A decode step's attention: row b's k, v (B, kv heads, hd) go into its slot's cache at
    positions[b], then its query q[b] (heads, hd) attends over that slot's keys up to there (the last
    `window` of them when window > 0). kc, vc (slots, kv heads, n_ctx, hd); out (B, heads * hd).
    Query head h reads kv head h // (heads / kv heads). Threaded over (row, head) pairs."""
    B, H, hd = q.shape
    n_kv = kc.shape[1]
    group = H // n_kv
    for b in range(B):
        for h in range(n_kv):
            kc[slots[b], h, positions[b]] = k[b, h]
            vc[slots[b], h, positions[b]] = v[b, h]
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        s, kv, p = slots[b], h // group, positions[b]
        lo = max(0, p - window + 1) if window > 0 else 0
        n = p + 1 - lo
        scores = np.empty(n, np.float32)
        top = np.float32(-np.inf)
        for i in range(n):
            acc = np.float32(0.0)
            for j in range(hd):
                acc += q[b, h, j] * kc[s, kv, lo + i, j]
            acc *= scale
            scores[i] = acc
            top = max(top, acc)
        total = np.float32(0.0)
        for i in range(n):
            e = np.exp(scores[i] - top)
            scores[i] = e
            total += e
        inv = np.float32(1.0) / total
        o = out[b, h * hd:(h + 1) * hd]
        o[:] = 0.0
        for i in range(n):
            w = scores[i] * inv
            for j in range(hd):
                o[j] += w * vc[s, kv, lo + i, j]
