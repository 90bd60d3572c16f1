"""Block sizes of the GGML tensor types we read, and their dequantization to float32 with numpy.

Each decoder works on all blocks of a tensor at once: the raw bytes are reshaped to (n_blocks,
bytes_per_block) and each field of the block struct (ggml-common.h) is a column slice of that array.
The arithmetic mirrors ggml's order in float32; the scale-times-quant products are exact in float32
(an fp16 scale has 11 significant bits), so the results equal ggml's and gguf.quants's bit for bit.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from rocmforge_core.errors import BadInputError, UnsupportedModelError

# (elements per block, bytes per block) for every type we can dequantize.
BLOCK_SIZES: dict[QT, tuple[int, int]] = {
    QT.F32: (1, 4),
    QT.F16: (1, 2),
    QT.BF16: (1, 2),
    QT.Q4_0: (32, 2 + 16),
    QT.Q4_1: (32, 2 + 2 + 16),
    QT.Q5_0: (32, 2 + 4 + 16),
    QT.Q5_1: (32, 2 + 2 + 4 + 16),
    QT.Q8_0: (32, 2 + 32),
    QT.Q2_K: (256, 16 + 64 + 2 + 2),
    QT.Q3_K: (256, 32 + 64 + 12 + 2),
    QT.Q4_K: (256, 2 + 2 + 12 + 128),
    QT.Q5_K: (256, 2 + 2 + 12 + 32 + 128),
    QT.Q6_K: (256, 128 + 64 + 16 + 2),
}

SUPPORTED_TYPES: frozenset[QT] = frozenset(BLOCK_SIZES)
FLOAT_TYPES: frozenset[QT] = frozenset({QT.F32, QT.F16, QT.BF16})

# Byte offsets of the fp16 scale fields (d, and dmin where there is one) inside a block (ggml-common.h).
SCALE_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
    QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,),
}


def first_nonfinite_scale(raw: np.ndarray, qtype: QT) -> int | None:
    """The first block whose fp16 scale is NaN or Inf, or None.

    Only the high byte of each scale is read (a strided column, no copy of the blocks): an fp16 is
    non-finite exactly when its five exponent bits, bits 2..6 of that byte, are all set.
    """
    type_size = BLOCK_SIZES[qtype][1]
    blocks = raw.reshape(-1, type_size)
    for offset in SCALE_FIELDS.get(qtype, ()):
        bad = np.flatnonzero((blocks[:, offset + 1] & 0x7C) == 0x7C)
        if bad.size:
            return int(bad[0])
    return None


def first_nonfinite_value(raw: np.ndarray, qtype: QT) -> int | None:
    """The first NaN or Inf element of a float tensor (F32, F16, BF16), or None."""
    if qtype == QT.BF16:
        finite = (raw.view("<u2") & 0x7F80) != 0x7F80
    else:
        finite = np.isfinite(raw.view("<f4" if qtype == QT.F32 else "<f2"))
    bad = np.flatnonzero(~finite)
    return int(bad[0]) if bad.size else None


def type_name(qtype: int) -> str:
    """The GGML name of a type id, or `type id N` for ids gguf does not know."""
    try:
        return QT(qtype).name
    except ValueError:
        return f"type id {int(qtype)}"


def unsupported_type_error(qtype: int, where: str = "") -> UnsupportedModelError:
    """The error for a tensor type we cannot decode; `where` names the tensor, if known."""
    names = ", ".join(t.name for t in BLOCK_SIZES)
    prefix = f"{where}: " if where else ""
    return UnsupportedModelError(f"{prefix}unsupported tensor type {type_name(qtype)}",
                                 hint=f"supported: {names}")


def check_supported(qtype: int) -> QT:
    if qtype not in BLOCK_SIZES:
        raise unsupported_type_error(qtype)
    return QT(qtype)


def dequantize(raw: np.ndarray, qtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """Unpack the raw bytes of a tensor of `qtype` into a float32 array of numpy `shape`."""
    qtype = check_supported(qtype)
    block, type_size = BLOCK_SIZES[qtype]
    n_elements = int(np.prod(shape, dtype=np.int64))
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if n_elements % block or raw.size != n_elements // block * type_size:
        raise BadInputError(f"{qtype.name} data of {raw.size} bytes does not hold a tensor of shape {tuple(shape)}")
    blocks = raw.reshape(-1, type_size)
    return _DECODERS[qtype](blocks).reshape(shape)


# --- shared field readers -------------------------------------------------------------------------

def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 scale at byte `offset` of every block, as a float32 column (n, 1)."""
    return blocks[:, offset:offset + 2].view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., k) bytes -> (..., 2, k): the low nibbles of all bytes, then the high nibbles."""
    return np.stack([qs & 0x0F, qs >> 4], axis=-2)


def _bits(packed: np.ndarray, n_bits: int, count: int) -> np.ndarray:
    """(..., k) integers -> (..., count, k): field i holds bits [i*n_bits, (i+1)*n_bits) of each."""
    shifts = (np.arange(count, dtype=packed.dtype) * n_bits)[:, None]
    return (packed[..., None, :] >> shifts) & ((1 << n_bits) - 1)


def _bit_planes(packed: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 8, k) of 0/1: plane i holds bit i of every byte (np.unpackbits: fast C)."""
    n, k = packed.shape
    return np.unpackbits(packed, axis=1, bitorder="little").reshape(n, k, 8).transpose(0, 2, 1)


def _affine(q: np.ndarray, scale: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """scale * q (+ shift) in float32, broadcasting scale/shift over the last axis of q.

    Casting q to float32 first and scaling in place is ~1.5x faster than numpy's mixed int/float
    multiply, and gives the same bits: each step is the same single float32 rounding.
    """
    y = q.astype(np.float32)
    y *= scale
    if shift is not None:
        y += shift
    return y


def _k_scales_6bit(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins per block, each (n, 8) uint8.

    Sub-blocks 0-3 use the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take
    their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from bytes 0-7's bits 6-7.
    """
    lo, mid, hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return scales, mins


def _q3_k_scales(packed: np.ndarray) -> np.ndarray:
    """Q3_K: 12 bytes -> 16 signed six-bit scales per block, (n, 16) int8.

    Scale i takes its low 4 bits from a nibble of bytes 0-7 (low nibbles for i < 8, high for i >= 8)
    and its top 2 bits from byte 8 + i % 4, bits 2*(i // 4) and up.
    """
    low = _nibbles(packed[:, 0:8]).reshape(-1, 16)
    high = _bits(packed[:, 8:12], 2, 4).reshape(-1, 16)
    return (low | (high << 4)).astype(np.int8) - 32


# --- plain floats ----------------------------------------------------------------------------------

def _f32(blocks: np.ndarray) -> np.ndarray:
    return blocks.reshape(-1).view("<f4").astype(np.float32)


def _f16_all(blocks: np.ndarray) -> np.ndarray:
    return blocks.reshape(-1).view("<f2").astype(np.float32)


def _bf16(blocks: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32: widen the bits, do not round.
    return (blocks.reshape(-1).view("<u2").astype(np.uint32) << 16).view(np.float32)


# --- 32-element blocks: y = d * q (+ m) ------------------------------------------------------------

def _q4_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 2:18]).reshape(-1, 32).astype(np.int8) - 8
    return _affine(q, d)


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _nibbles(blocks[:, 4:20]).reshape(-1, 32)
    return _affine(q, d, m)


def _q5_high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: the little-endian 32-bit qh field -> bit 4 of each of the 32 quants, (n, 32) uint8."""
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _q5_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 6:22]).reshape(-1, 32) | _q5_high_bits(blocks[:, 2:6])
    return _affine(q.astype(np.int8) - 16, d)


def _q5_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _nibbles(blocks[:, 8:24]).reshape(-1, 32) | _q5_high_bits(blocks[:, 4:8])
    return _affine(q, d, m)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    return _affine(blocks[:, 2:34].view(np.int8), _f16(blocks, 0))


# --- 256-element super-blocks (K-quants) -----------------------------------------------------------

def _q2_k(blocks: np.ndarray) -> np.ndarray:
    # scales[16] qs[64] d dmin; 16 sub-blocks of 16, each with a 4-bit scale and a 4-bit min.
    scales, qs = blocks[:, 0:16], blocks[:, 16:80]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    q = _bits(qs.reshape(-1, 2, 32), 2, 4).reshape(-1, 16, 16)  # (n, 2 halves x 4 shifts x 32) as 16x16
    return _affine(q, (d * (scales & 0x0F))[..., None], -(dmin * (scales >> 4))[..., None]).reshape(-1, 256)


def _q3_k(blocks: np.ndarray) -> np.ndarray:
    # hmask[32] qs[64] scales[12] d; 2 low bits in qs, the third bit (set = no -4 offset) in hmask.
    hmask, qs = blocks[:, 0:32], blocks[:, 32:96]
    scales, d = _q3_k_scales(blocks[:, 96:108]), _f16(blocks, 108)
    low = _bits(qs.reshape(-1, 2, 32), 2, 4).reshape(-1, 8, 32)
    high = _bit_planes(hmask)  # (n, 8, 32): bit j of hmask[l] belongs to group j
    q = low.astype(np.int8) - ((high ^ 1) << 2).astype(np.int8)
    return _affine(q.reshape(-1, 16, 16), (d * scales)[..., None]).reshape(-1, 256)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    # d dmin scales[12] qs[128]; 8 sub-blocks of 32: low nibbles of 32 bytes, then their high nibbles.
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scales_6bit(blocks[:, 4:16])
    q = _nibbles(blocks[:, 16:144].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    return _affine(q, (d * sc)[..., None], -(dmin * mn)[..., None]).reshape(-1, 256)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    # d dmin scales[12] qh[32] qs[128]; as Q4_K, with bit s of qh[l] as bit 4 of sub-block s, quant l.
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scales_6bit(blocks[:, 4:16])
    low = _nibbles(blocks[:, 48:176].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    q = low | (_bit_planes(blocks[:, 16:48]) << 4)
    return _affine(q, (d * sc)[..., None], -(dmin * mn)[..., None]).reshape(-1, 256)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    # ql[128] qh[64] scales[16] d; per 128-half: 4 groups of 32 quants, 4 low bits from ql, 2 from qh.
    ql, qh = blocks[:, 0:128].reshape(-1, 2, 64), blocks[:, 128:192].reshape(-1, 2, 32)
    scales, d = blocks[:, 192:208].view(np.int8), _f16(blocks, 208)
    low = _nibbles(ql).reshape(-1, 2, 4, 32)  # groups: ql[0:32] lo, ql[32:64] lo, ql[0:32] hi, ql[32:64] hi
    q = (low | (_bits(qh, 2, 4) << 4)).astype(np.int8) - 32
    return _affine(q.reshape(-1, 16, 16), (d * scales)[..., None]).reshape(-1, 256)


_DECODERS = {
    QT.F32: _f32, QT.F16: _f16_all, QT.BF16: _bf16,
    QT.Q4_0: _q4_0, QT.Q4_1: _q4_1, QT.Q5_0: _q5_0, QT.Q5_1: _q5_1, QT.Q8_0: _q8_0,
    QT.Q2_K: _q2_k, QT.Q3_K: _q3_k, QT.Q4_K: _q4_k, QT.Q5_K: _q5_k, QT.Q6_K: _q6_k,
}
