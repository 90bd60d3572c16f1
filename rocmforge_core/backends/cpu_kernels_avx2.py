"""AVX2 decode kernels of the packed CPU backend: the integer block sums written as LLVM vector code.

The portable kernels (cpu_kernels.py) leave the vectorizing to LLVM, which makes two costly choices
on rows of many blocks: it reduces each block's 8 int32 lanes to one sum on its own (7 instructions
per block of 32), and with fastmath it vectorizes the loop over blocks instead, gathering scales and
widening quants to 32-bit lanes (`vpmulld`). Here numba intrinsics build the vector code directly:
each block's quants widened to int16 lanes, `vpmaddwd` against the int16 activations (16 products
per instruction, as before), and the lane sums of 4 or 8 blocks reduced together (a transpose-add
tree: 3 steps for 8 blocks instead of 3 each). The activations stay int16, so every block's integer
sum is the portable kernels' exactly (integer addition in any order); only the float sum over blocks
may round differently (their order differs). tests/test_cpu_avx2.py checks both.

Chosen by cpu_kernels.kernel() when the host CPU has AVX2; nothing here is compiled otherwise.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from rocmforge_core.backends.cpu_kernels import (
    _OPTS, MAX_PARTS, _f16, _part_row, _quantized,
)

_i8, _i16, _i32, _i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V16I8, _V16I16, _V8I32 = ir.VectorType(_i8, 16), ir.VectorType(_i16, 16), ir.VectorType(_i32, 8)


# ---- IR helpers -------------------------------------------------------------------------------------

class _Blocks:
    """Byte addressing into a C-contiguous 2-D numba array (rows of blocks or of activation quants)."""

    def __init__(self, context, builder, aryty, value):
        ary = context.make_array(aryty)(context, builder, value)
        self.b = builder
        self.base = builder.bitcast(ary.data, _i8.as_pointer())
        self.stride = cgutils.unpack_tuple(builder, ary.strides, 2)[0]  # bytes per row

    def row(self, k):
        """Byte offset of row k (an i64 IR value)."""
        return self.b.mul(k, self.stride)

    def load(self, off, vty):
        p = self.b.gep(self.base, [off], inbounds=True)
        return self.b.load(self.b.bitcast(p, vty.as_pointer()), align=1)


def _c(b, off: int):
    return ir.Constant(_i64, off)


def _splat16(v: int):
    return ir.Constant(_V16I16, [v] * 16)


def _pmaddwd(builder, a, b):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8I32, [_V16I16, _V16I16]),
                                        "llvm.x86.avx2.pmadd.wd")
    return builder.call(fn, [a, b])


def _widen(builder, v16i8, signed: bool):
    return builder.sext(v16i8, _V16I16) if signed else builder.zext(v16i8, _V16I16)


def _hadd(builder, a, b):
    """vphaddd's lanes: [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7] of two <8 x i32>."""
    mask = lambda m: ir.Constant(ir.VectorType(_i32, 8), m)  # noqa: E731
    return builder.add(builder.shuffle_vector(a, b, mask([0, 2, 8, 10, 4, 6, 12, 14])),
                       builder.shuffle_vector(a, b, mask([1, 3, 9, 11, 5, 7, 13, 15])))


def _half(builder, v, lo: int, n: int):
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_i32, n), list(range(lo, lo + n))))


def _lane_vector(builder, vecs):
    """The lane sums of 4 or 8 <8 x i32> vectors, as one <4 x i32> or <8 x i32> in their order."""
    b = builder
    # two hadd steps: lane 4 * half + j holds part of vector j of each 4
    quads = [_hadd(b, _hadd(b, *vecs[i:i + 2]), _hadd(b, *vecs[i + 2:i + 4])) for i in range(0, len(vecs), 4)]
    if len(quads) == 1:
        return b.add(_half(b, quads[0], 0, 4), _half(b, quads[0], 4, 4))
    lo = b.shuffle_vector(quads[0], quads[1], ir.Constant(ir.VectorType(_i32, 8), [0, 1, 2, 3, 8, 9, 10, 11]))
    hi = b.shuffle_vector(quads[0], quads[1], ir.Constant(ir.VectorType(_i32, 8), [4, 5, 6, 7, 12, 13, 14, 15]))
    return b.add(lo, hi)


def _lane_sums(builder, vecs):
    """The lane sums of 1, 4 or 8 <8 x i32> vectors, as a list of i32 values in their order."""
    b = builder
    if len(vecs) == 1:  # the whole horizontal sum of one vector
        v = b.add(_half(b, vecs[0], 0, 4), _half(b, vecs[0], 4, 4))
        v = b.add(_half(b, v, 0, 2), _half(b, v, 2, 2))
        return [b.add(b.extract_element(v, ir.Constant(_i32, 0)), b.extract_element(v, ir.Constant(_i32, 1)))]
    v = _lane_vector(b, vecs)
    return [b.extract_element(v, ir.Constant(_i32, i)) for i in range(len(vecs))]


def _fsum(builder, v):
    """The sum of a float vector's lanes (halving, so the order is fixed)."""
    n = v.type.count
    while n > 1:
        n //= 2
        v = builder.fadd(_half(builder, v, 0, n), _half(builder, v, n, n))
    return builder.extract_element(v, ir.Constant(_i32, 0))


def _tuple(context, builder, n, values):
    return context.make_tuple(builder, types.UniTuple(types.int32, n), values)


def _check(w, xq):
    return (isinstance(w, types.Array) and w.ndim == 2 and w.layout == "C" and w.dtype == types.uint8
            and isinstance(xq, types.Array) and xq.ndim == 2 and xq.layout == "C" and xq.dtype == types.int16)


def _check_f(*arrays):
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32
               for a in arrays)


def _x_halves(X, b, xrow):
    """The two <16 x i16> halves of activation block row xrow (an i64 byte offset)."""
    return X.load(xrow, _V16I16), X.load(b.add(xrow, _c(b, 32)), _V16I16)


class _Floats:
    """Element addressing into a C-contiguous 1-D float32 numba array (xd, xs)."""

    def __init__(self, context, builder, aryty, value):
        self.b = builder
        self.base = context.make_array(aryty)(context, builder, value).data

    def load(self, i, n: int):
        p = self.b.gep(self.base, [i], inbounds=True)
        return self.b.load(self.b.bitcast(p, ir.VectorType(ir.FloatType(), n).as_pointer()), align=4)


def _fvec(builder, v: float, n: int):
    return ir.Constant(ir.VectorType(ir.FloatType(), n), [v] * n)


def _halves_at(builder, W, rows, off: int):
    """The fp16 fields at byte off of the given block rows, as a float vector (exact, as the F16 table)."""
    b = builder
    v = ir.Constant(ir.VectorType(_i16, len(rows)), None)
    for i, row in enumerate(rows):
        v = b.insert_element(v, W.load(b.add(row, _c(b, off)), _i16), ir.Constant(_i32, i))
    return b.fpext(b.bitcast(v, ir.VectorType(ir.HalfType(), len(rows))), ir.VectorType(ir.FloatType(), len(rows)))


def _pair_sums(builder, v):
    """<2n x float> -> <n x float>: v[2i] + v[2i + 1] (xs's two half-block sums of block i)."""
    n = v.type.count // 2
    even = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_i32, n), list(range(0, 2 * n, 2))))
    odd = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_i32, n), list(range(1, 2 * n, 2))))
    return builder.fadd(even, odd)


# ---- block sums per type ----------------------------------------------------------------------------
# Each type's IR: the <8 x i32> lane products of one block (or super-block) against its activations. Two
# intrinsics are built on each: `_sums<n>_<type>(w, k, xq)`, the exact integer dots of n consecutive
# blocks as a tuple (the 1-block tails, and the tests' exact comparison with the portable dots), and
# `_part<n>_<type>(w, k, xq, xd, xs)`, the same blocks' float contribution to the row's sum, its scales
# and offsets applied in vector lanes too (fp16 scales through vcvtph2ps instead of the table).

def _q8_0_vec(b, W, row, x0, x1):
    lo = _widen(b, W.load(b.add(row, _c(b, 2)), _V16I8), True)
    hi = _widen(b, W.load(b.add(row, _c(b, 18)), _V16I8), True)
    return b.add(_pmaddwd(b, lo, x0), _pmaddwd(b, hi, x1))


def _nibbles_vec(qs: int):
    def vec(b, W, row, x0, x1):
        v = _widen(b, W.load(b.add(row, _c(b, qs)), _V16I8), False)
        return b.add(_pmaddwd(b, b.and_(v, _splat16(15)), x0), _pmaddwd(b, b.lshr(v, _splat16(4)), x1))
    return vec


_V32I8 = ir.VectorType(_i8, 32)
_BIT_OF_BYTE = ir.Constant(_V32I8, [1 << (j % 8) for j in range(32)])


def _splat8(v: int, n: int = 32):
    return ir.Constant(ir.VectorType(_i8, n), [v] * n)


def _nibbles5_vec(qh: int, qs: int):
    """Q5_0/Q5_1: the fifth bits in the byte domain (as llama.cpp's bytes_from_bits_32: the 32-bit qh
    broadcast, byte j // 8 of it to byte j, tested against bit j % 8), or-ed into the 32 nibbles,
    then widened to two <16 x i16>."""
    def vec(b, W, row, x0, x1):
        h = W.load(b.add(row, _c(b, qh)), _i32)
        hv = b.insert_element(ir.Constant(ir.VectorType(_i32, 8), None), h, ir.Constant(_i32, 0))
        hv = b.bitcast(b.shuffle_vector(hv, hv, ir.Constant(ir.VectorType(_i32, 8), [0] * 8)), _V32I8)
        spread = b.shuffle_vector(hv, hv, ir.Constant(ir.VectorType(_i32, 32), [j // 8 for j in range(32)]))
        on = b.icmp_unsigned("!=", b.and_(spread, _BIT_OF_BYTE), _splat8(0))
        bits = b.select(on, _splat8(16), _splat8(0))
        v = W.load(b.add(row, _c(b, qs)), _V16I8)
        lo = b.and_(v, _splat8(15, 16))
        hi = b.lshr(v, _splat8(4, 16))
        q = b.or_(b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_i32, 32), list(range(32)))), bits)
        q0 = b.zext(b.shuffle_vector(q, q, ir.Constant(ir.VectorType(_i32, 16), list(range(16)))), _V16I16)
        q1 = b.zext(b.shuffle_vector(q, q, ir.Constant(ir.VectorType(_i32, 16), list(range(16, 32)))), _V16I16)
        return b.add(_pmaddwd(b, q0, x0), _pmaddwd(b, q1, x1))
    return vec


def _simple_vecs(block_vec, n):
    """blocks k..k+n-1 of a 32-quant type: activation block = weight block."""
    def vecs(b, W, X, k0):
        rows, out = [], []
        for i in range(n):
            kk = b.add(k0, _c(b, i))
            x0, x1 = _x_halves(X, b, X.row(kk))
            rows.append(W.row(kk))
            out.append(block_vec(b, W, rows[-1], x0, x1))
        return rows, out
    return vecs


def _q4_k_vecs(b, W, X, k0):
    """Q4_K super-block k0: its 8 sub-blocks against activation blocks 8 k0 .. 8 k0 + 7."""
    row = W.row(k0)
    xb = b.mul(k0, _c(b, 8))
    out = []
    for pair in range(4):
        q0 = _widen(b, W.load(b.add(row, _c(b, 16 + 32 * pair)), _V16I8), False)
        q1 = _widen(b, W.load(b.add(row, _c(b, 32 + 32 * pair)), _V16I8), False)
        for sub in range(2):
            op = (lambda v: b.and_(v, _splat16(15))) if sub == 0 else (lambda v: b.lshr(v, _splat16(4)))
            x0, x1 = _x_halves(X, b, X.row(b.add(xb, _c(b, 2 * pair + sub))))
            out.append(b.add(_pmaddwd(b, op(q0), x0), _pmaddwd(b, op(q1), x1)))
    return [row], out


def _q6_k_vecs(b, W, X, k0):
    """Q6_K super-block k0: 16 dots of 16 quants (unsigned 0..63), in the order of its 16 scales (index
    8h + 2g + half: half h of 128, group g of 32, quants 16 half .. 16 half + 15 of activation block
    8 k0 + 4h + g)."""
    row = W.row(k0)
    xb = b.mul(k0, _c(b, 8))
    out = [None] * 16
    for h in range(2):
        for half in range(2):
            a = _widen(b, W.load(b.add(row, _c(b, 64 * h + 16 * half)), _V16I8), False)
            c = _widen(b, W.load(b.add(row, _c(b, 64 * h + 32 + 16 * half)), _V16I8), False)
            hb = _widen(b, W.load(b.add(row, _c(b, 128 + 32 * h + 16 * half)), _V16I8), False)
            lows = (b.and_(a, _splat16(15)), b.and_(c, _splat16(15)), b.lshr(a, _splat16(4)), b.lshr(c, _splat16(4)))
            for g in range(4):
                q = b.or_(lows[g], b.shl(b.and_(b.lshr(hb, _splat16(2 * g)), _splat16(3)), _splat16(4)))
                x = X.load(b.add(X.row(b.add(xb, _c(b, 4 * h + g))), _c(b, 32 * half)), _V16I16)
                out[8 * h + 2 * g + half] = _pmaddwd(b, q, x)
    return [row], out


def _int_sums(vecs_fn, n: int):
    """The intrinsic (w, k, xq) -> UniTuple(int32, n) of vecs_fn's exact integer dots."""
    @intrinsic
    def sums(typingctx, w, k, xq):
        if not _check(w, xq):
            return None

        def codegen(context, builder, sig, args):
            W = _Blocks(context, builder, sig.args[0], args[0])
            X = _Blocks(context, builder, sig.args[2], args[2])
            k0 = context.cast(builder, args[1], sig.args[1], types.int64)
            vecs = vecs_fn(builder, W, X, k0)[1]
            sums = _lane_sums(builder, vecs[:8]) + (_lane_sums(builder, vecs[8:]) if len(vecs) > 8 else [])
            return _tuple(context, builder, n, sums)

        return types.UniTuple(types.int32, n)(w, k, xq), codegen
    return sums


def _float_part(vecs_fn, scale_fn):
    """The intrinsic (w, k, xq, xd, xs) -> float32: scale_fn(builder, W, rows, k0, <n x float> sums, XD, XS)
    gives the blocks' contributions as a float vector, summed here."""
    @intrinsic
    def part(typingctx, w, k, xq, xd, xs):
        if not (_check(w, xq) and _check_f(xd, xs)):
            return None

        def codegen(context, builder, sig, args):
            W = _Blocks(context, builder, sig.args[0], args[0])
            X = _Blocks(context, builder, sig.args[2], args[2])
            XD = _Floats(context, builder, sig.args[3], args[3])
            XS = _Floats(context, builder, sig.args[4], args[4])
            k0 = context.cast(builder, args[1], sig.args[1], types.int64)
            rows, vecs = vecs_fn(builder, W, X, k0)
            t = [_lane_vector(builder, vecs[i:i + 8]) for i in range(0, len(vecs), 8)]
            t = [builder.sitofp(v, ir.VectorType(ir.FloatType(), v.type.count)) for v in t]
            return scale_fn(builder, W, rows, k0, t, XD, XS)

        return types.float32(w, k, xq, xd, xs), codegen
    return part


def _scale_q8_0(b, W, rows, k0, t, XD, XS):  # d * xd * t
    return _fsum(b, b.fmul(b.fmul(_halves_at(b, W, rows, 0), XD.load(k0, 4)), t[0]))


def _scale_offset(o: float):  # d * (xd * t - o * (xs0 + xs1)): Q4_0, Q5_0
    def scale(b, W, rows, k0, t, XD, XS):
        inner = b.fsub(b.fmul(XD.load(k0, 4), t[0]),
                       b.fmul(_fvec(b, o, 4), _pair_sums(b, XS.load(b.mul(k0, _c(b, 2)), 8))))
        return _fsum(b, b.fmul(_halves_at(b, W, rows, 0), inner))
    return scale


def _scale_min(b, W, rows, k0, t, XD, XS):  # d * xd * t + m * (xs0 + xs1): Q4_1, Q5_1
    dt = b.fmul(b.fmul(_halves_at(b, W, rows, 0), XD.load(k0, 4)), t[0])
    return _fsum(b, b.fadd(dt, b.fmul(_halves_at(b, W, rows, 2), _pair_sums(b, XS.load(b.mul(k0, _c(b, 2)), 8)))))


def _bytes_at(b, W, row, off: int, n: int):
    return W.load(b.add(row, _c(b, off)), ir.VectorType(_i8, n))


def _scale_q4_k(b, W, rows, k0, t, XD, XS):
    """d * sum(xd * sc * t) - dmin * sum(mn * (xs0 + xs1)) over the 8 sub-blocks; the 6-bit scales and
    mins unpacked from their 12 bytes in 32-bit words (as llama.cpp's utmp): bytes 0..7 the scales,
    8..15 the mins."""
    row = rows[0]
    u = [W.load(b.add(row, _c(b, 4 + 4 * i)), _i32) for i in range(3)]
    m1, m2, m3 = (ir.Constant(_i32, v) for v in (0x3F3F3F3F, 0x0F0F0F0F, 0x03030303))
    sh = lambda v, n: b.lshr(v, ir.Constant(_i32, n))  # noqa: E731
    shl4 = lambda v: b.shl(v, ir.Constant(_i32, 4))  # noqa: E731
    w3 = b.or_(b.and_(sh(u[2], 4), m2), shl4(b.and_(sh(u[1], 6), m3)))
    w2 = b.and_(u[1], m1)
    w1 = b.or_(b.and_(u[2], m2), shl4(b.and_(sh(u[0], 6), m3)))
    w0 = b.and_(u[0], m1)
    words = ir.Constant(ir.VectorType(_i32, 4), None)
    for i, wv in enumerate((w0, w1, w2, w3)):
        words = b.insert_element(words, wv, ir.Constant(_i32, i))
    by = b.bitcast(words, ir.VectorType(_i8, 16))
    f8 = ir.VectorType(ir.FloatType(), 8)
    sc = b.uitofp(b.shuffle_vector(by, by, ir.Constant(ir.VectorType(_i32, 8), list(range(8)))), f8)
    mn = b.uitofp(b.shuffle_vector(by, by, ir.Constant(ir.VectorType(_i32, 8), list(range(8, 16)))), f8)
    b8 = b.mul(k0, _c(b, 8))
    acc = _fsum(b, b.fmul(b.fmul(XD.load(b8, 8), sc), t[0]))
    mins = _fsum(b, b.fmul(mn, _pair_sums(b, XS.load(b.mul(k0, _c(b, 16)), 16))))
    d = _halves_at(b, W, [row], 0)
    dmin = _halves_at(b, W, [row], 2)
    i0 = ir.Constant(_i32, 0)
    return b.fsub(b.fmul(b.extract_element(d, i0), acc), b.fmul(b.extract_element(dmin, i0), mins))


def _scale_q6_k(b, W, rows, k0, t, XD, XS):
    """d * (sum(xd * t * sc) - 32 * sum(sc * xs)): scale i reads xd[8k + i // 2] and xs[16k + i]."""
    row = rows[0]
    f16v = ir.VectorType(ir.FloatType(), 16)
    sc = b.sitofp(_bytes_at(b, W, row, 192, 16), f16v)
    xd = XD.load(b.mul(k0, _c(b, 8)), 8)
    xd2 = b.shuffle_vector(xd, xd, ir.Constant(ir.VectorType(_i32, 16), [i // 2 for i in range(16)]))
    tt = b.shuffle_vector(t[0], t[1], ir.Constant(ir.VectorType(_i32, 16), list(range(16))))
    acc = _fsum(b, b.fmul(b.fmul(xd2, tt), sc))
    offset = _fsum(b, b.fmul(sc, XS.load(b.mul(k0, _c(b, 16)), 16)))
    d = b.extract_element(_halves_at(b, W, [row], 208), ir.Constant(_i32, 0))
    return b.fmul(d, b.fsub(acc, b.fmul(ir.Constant(ir.FloatType(), 32.0), offset)))


_VEC = {"q8_0": _q8_0_vec, "q4_0": _nibbles_vec(2), "q4_1": _nibbles_vec(4),
        "q5_0": _nibbles5_vec(2, 6), "q5_1": _nibbles5_vec(4, 8)}
_SCALE = {"q8_0": _scale_q8_0, "q4_0": _scale_offset(8.0), "q4_1": _scale_min,
          "q5_0": _scale_offset(16.0), "q5_1": _scale_min}
_sums4_q8_0, _sums1_q8_0, _part4_q8_0 = (_int_sums(_simple_vecs(_VEC["q8_0"], 4), 4),
                                         _int_sums(_simple_vecs(_VEC["q8_0"], 1), 1),
                                         _float_part(_simple_vecs(_VEC["q8_0"], 4), _SCALE["q8_0"]))
_sums4_q4_0, _sums1_q4_0, _part4_q4_0 = (_int_sums(_simple_vecs(_VEC["q4_0"], 4), 4),
                                         _int_sums(_simple_vecs(_VEC["q4_0"], 1), 1),
                                         _float_part(_simple_vecs(_VEC["q4_0"], 4), _SCALE["q4_0"]))
_sums4_q4_1, _sums1_q4_1, _part4_q4_1 = (_int_sums(_simple_vecs(_VEC["q4_1"], 4), 4),
                                         _int_sums(_simple_vecs(_VEC["q4_1"], 1), 1),
                                         _float_part(_simple_vecs(_VEC["q4_1"], 4), _SCALE["q4_1"]))
_sums4_q5_0, _sums1_q5_0, _part4_q5_0 = (_int_sums(_simple_vecs(_VEC["q5_0"], 4), 4),
                                         _int_sums(_simple_vecs(_VEC["q5_0"], 1), 1),
                                         _float_part(_simple_vecs(_VEC["q5_0"], 4), _SCALE["q5_0"]))
_sums4_q5_1, _sums1_q5_1, _part4_q5_1 = (_int_sums(_simple_vecs(_VEC["q5_1"], 4), 4),
                                         _int_sums(_simple_vecs(_VEC["q5_1"], 1), 1),
                                         _float_part(_simple_vecs(_VEC["q5_1"], 4), _SCALE["q5_1"]))
_sums8_q4_k, _part_q4_k = _int_sums(_q4_k_vecs, 8), _float_part(_q4_k_vecs, _scale_q4_k)
_sums16_q6_k, _part_q6_k = _int_sums(_q6_k_vecs, 16), _float_part(_q6_k_vecs, _scale_q6_k)


# ---- one weight row times one activation row, per type: groups of 4 blocks (or one super-block) through
# the float parts, the last nb % 4 blocks through the integer sums and the portable float formula --------

@njit(inline="always", **_OPTS)
def _row_q8_0(w, xq, xd, xs, f16):
    nb = w.shape[0]
    s = np.float32(0.0)
    k = 0
    while k + 4 <= nb:
        s += _part4_q8_0(w, k, xq, xd, xs)
        k += 4
    while k < nb:
        s += _f16(w[k], 0, f16) * xd[k] * np.float32(_sums1_q8_0(w, k, xq)[0])
        k += 1
    return s


@njit(inline="always", **_OPTS)
def _q4_0_block(w, k, t, xd, xs, f16):
    return _f16(w[k], 0, f16) * (xd[k] * np.float32(t) - np.float32(8.0) * (xs[2 * k] + xs[2 * k + 1]))


@njit(inline="always", **_OPTS)
def _row_q4_0(w, xq, xd, xs, f16):
    nb = w.shape[0]
    s = np.float32(0.0)
    k = 0
    while k + 4 <= nb:
        s += _part4_q4_0(w, k, xq, xd, xs)
        k += 4
    while k < nb:
        s += _q4_0_block(w, k, _sums1_q4_0(w, k, xq)[0], xd, xs, f16)
        k += 1
    return s


@njit(inline="always", **_OPTS)
def _q4_1_block(w, k, t, xd, xs, f16):
    bl = w[k]
    return _f16(bl, 0, f16) * xd[k] * np.float32(t) + _f16(bl, 2, f16) * (xs[2 * k] + xs[2 * k + 1])


@njit(inline="always", **_OPTS)
def _row_q4_1(w, xq, xd, xs, f16):
    nb = w.shape[0]
    s = np.float32(0.0)
    k = 0
    while k + 4 <= nb:
        s += _part4_q4_1(w, k, xq, xd, xs)
        k += 4
    while k < nb:
        s += _q4_1_block(w, k, _sums1_q4_1(w, k, xq)[0], xd, xs, f16)
        k += 1
    return s


@njit(inline="always", **_OPTS)
def _q5_0_block(w, k, t, xd, xs, f16):
    return _f16(w[k], 0, f16) * (xd[k] * np.float32(t) - np.float32(16.0) * (xs[2 * k] + xs[2 * k + 1]))


@njit(inline="always", **_OPTS)
def _row_q5_0(w, xq, xd, xs, f16):
    nb = w.shape[0]
    s = np.float32(0.0)
    k = 0
    while k + 4 <= nb:
        s += _part4_q5_0(w, k, xq, xd, xs)
        k += 4
    while k < nb:
        s += _q5_0_block(w, k, _sums1_q5_0(w, k, xq)[0], xd, xs, f16)
        k += 1
    return s


@njit(inline="always", **_OPTS)
def _row_q5_1(w, xq, xd, xs, f16):
    nb = w.shape[0]
    s = np.float32(0.0)
    k = 0
    while k + 4 <= nb:
        s += _part4_q5_1(w, k, xq, xd, xs)
        k += 4
    while k < nb:
        s += _q4_1_block(w, k, _sums1_q5_1(w, k, xq)[0], xd, xs, f16)  # Q5_1 keeps d, m where Q4_1 does
        k += 1
    return s


@njit(inline="always", **_OPTS)
def _row_q4_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        s += _part_q4_k(w, k, xq, xd, xs)
    return s


@njit(inline="always", **_OPTS)
def _row_q6_k(w, xq, xd, xs, f16):
    s = np.float32(0.0)
    for k in range(w.shape[0]):
        s += _part_q6_k(w, k, xq, xd, xs)
    return s


# ---- the threaded kernels (as cpu_kernels.matvec_<type>) -------------------------------------------


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
def matvec_q4_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q4_k(w, xq[b], xd[b], xs[b], f16)


@njit(parallel=True, **_OPTS)
def matvec_q6_k(ws, ends, x, f16, out, col0):
    xq, xd, xs = _quantized(x)
    for r in prange(ends[MAX_PARTS - 1]):
        p, i = _part_row(ends, r)
        w = ws[p][i]
        for b in range(xq.shape[0]):
            out[b, col0 + r] = _row_q6_k(w, xq[b], xd[b], xs[b], f16)
