"""Block sizes of the GGML tensor types we read, and their dequantization to float32 with numpy."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from rocmforge_core.errors import UnsupportedModelError

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
    # Temporary: gguf's reference until the block decoders of this module land.
    import gguf.quants

    out = gguf.quants.dequantize(np.asarray(raw, dtype=np.uint8).reshape(-1), qtype)
    return np.asarray(out, dtype=np.float32).reshape(shape)
