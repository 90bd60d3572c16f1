"""Write small GGUF files for tests with the `gguf` package's GGUFWriter.

    write_gguf(path, "llama", {"llama.block_count": 2, ...}, {"output_norm.weight": (w, GGMLQuantizationType.F32)})

Metadata values map to GGUF types by their Python type: str -> STRING, bool -> BOOL, int -> UINT32
(INT32 if negative, 64-bit if too large), float -> FLOAT32, list -> ARRAY of the first item's type,
numpy array -> ARRAY of its dtype. To force a type, pass `(value, GGUFValueType.X)`.

Tensors are `name -> (array, qtype)` with the array in numpy order (a weight is (n_out, n_in)):
a float array is quantized with `gguf.quants.quantize` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0);
a uint8 array is taken as already-packed blocks of `qtype`, shape (..., bytes per row) — use
`random_blocks` for K-quants, which gguf cannot quantize.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

# Byte offsets of the fp16 scale fields inside one block, per type (ggml-common.h).
FP16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
    QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,),
}

# The types gguf.quants.quantize can produce from floats.
GGUF_QUANTIZABLE = frozenset({QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0})

_NUMPY_TO_GGUF = {
    np.dtype(np.uint8): VT.UINT8, np.dtype(np.int8): VT.INT8, np.dtype(np.uint16): VT.UINT16,
    np.dtype(np.int16): VT.INT16, np.dtype(np.uint32): VT.UINT32, np.dtype(np.int32): VT.INT32,
    np.dtype(np.uint64): VT.UINT64, np.dtype(np.int64): VT.INT64, np.dtype(np.float32): VT.FLOAT32,
    np.dtype(np.float64): VT.FLOAT64, np.dtype(np.bool_): VT.BOOL,
}


def write_gguf(path: str | Path, arch: str, metadata: dict[str, Any] | None = None,
               tensors: dict[str, tuple[np.ndarray, QT]] | None = None, *,
               alignment: int | None = None) -> Path:
    """Write a GGUF file (general.architecture = arch) and return its path."""
    path = Path(path)
    writer = gguf.GGUFWriter(path, arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value in (metadata or {}).items():
        _add_value(writer, key, value)
    for name, (array, qtype) in (tensors or {}).items():
        data = tensor_data(np.asarray(array), QT(qtype))
        writer.add_tensor(name, data, raw_dtype=QT(qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_layer_tensors(p: str, weight, norm, d: int, n_heads: int, n_kv: int, hd: int, ffn: int) -> dict:
    """One llama-style layer's tensors by llama.cpp name (prefix p = "blk.N."); `weight(rows, cols)` and
    `norm(n)` make the (array, qtype) pairs."""
    return {
        p + "attn_norm.weight": norm(d), p + "ffn_norm.weight": norm(d),
        p + "attn_q.weight": weight(n_heads * hd, d), p + "attn_k.weight": weight(n_kv * hd, d),
        p + "attn_v.weight": weight(n_kv * hd, d), p + "attn_output.weight": weight(d, n_heads * hd),
        p + "ffn_gate.weight": weight(ffn, d), p + "ffn_up.weight": weight(ffn, d),
        p + "ffn_down.weight": weight(d, ffn),
    }


def tensor_data(array: np.ndarray, qtype: QT) -> np.ndarray:
    """The array as GGUFWriter stores it for `qtype`: packed uint8 blocks, or float32/float16."""
    if array.dtype == np.uint8:
        return array
    if qtype not in GGUF_QUANTIZABLE:
        raise NotImplementedError(f"gguf cannot quantize to {qtype.name}: pass random_blocks(...) instead")
    return gguf.quants.quantize(array.astype(np.float32), qtype)


def random_blocks(qtype: QT, shape: tuple[int, ...], rng: np.random.Generator,
                  scale: float = 0.01) -> np.ndarray:
    """Random packed blocks for a tensor of numpy `shape`: random quants, fp16 scales finite and
    of magnitude about `scale` (random bytes there could encode NaN/Inf or huge values).
    Returns uint8 of shape (*shape[:-1], bytes per row), ready for write_gguf.
    """
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise ValueError(f"row length {shape[-1]} is not a multiple of {qtype.name}'s block size {block}")
    n_blocks = int(np.prod(shape)) // block
    if qtype in (QT.F32, QT.F16, QT.BF16):
        values = rng.standard_normal(n_blocks).astype(np.float32)
        return tensor_data(values, qtype).view(np.uint8).reshape(*shape[:-1], -1)
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        d = (rng.uniform(0.5, 1.5, n_blocks) * scale).astype(np.float16)
        blocks[:, offset:offset + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(*shape[:-1], shape[-1] // block * type_size)


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], VT):
        value, vtype = value
        sub_type = _list_type(value) if vtype == VT.ARRAY else None
        writer.add_key_value(key, _plain(value), vtype, sub_type=sub_type)
        return
    vtype = _scalar_type(value) if not isinstance(value, (list, np.ndarray)) else VT.ARRAY
    if vtype == VT.ARRAY:
        writer.add_key_value(key, _plain(value), VT.ARRAY, sub_type=_list_type(value))
    else:
        writer.add_key_value(key, value, vtype)


def _scalar_type(value: Any) -> VT:
    if isinstance(value, str):
        return VT.STRING
    if isinstance(value, (bool, np.bool_)):
        return VT.BOOL
    if isinstance(value, (int, np.integer)):
        if 0 <= value < 2**32:
            return VT.UINT32
        if -2**31 <= value < 0:
            return VT.INT32
        return VT.UINT64 if value > 0 else VT.INT64
    if isinstance(value, (float, np.floating)):
        return VT.FLOAT32
    raise TypeError(f"no GGUF type for {type(value).__name__}")


def _list_type(value: Any) -> VT:
    if isinstance(value, np.ndarray):
        return _NUMPY_TO_GGUF[value.dtype]
    if not value:
        raise ValueError("GGUF arrays cannot be empty")
    if all(isinstance(v, str) for v in value):
        return VT.STRING
    if all(isinstance(v, bool) for v in value):
        return VT.BOOL
    if all(isinstance(v, int) for v in value):
        return VT.INT32
    return VT.FLOAT32


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


# --- corrupting files on purpose ------------------------------------------------------------------

def tensor_info_positions(path: str | Path, name: str) -> dict[str, int]:
    """Byte positions of a tensor's info fields in the file header: 'n_dims', 'dims', 'type', 'offset'."""
    raw = Path(path).read_bytes()
    encoded = name.encode()
    start = raw.find(struct.pack("<Q", len(encoded)) + encoded)
    if start < 0:
        raise KeyError(name)
    n_dims_pos = start + 8 + len(encoded)
    (n_dims,) = struct.unpack_from("<I", raw, n_dims_pos)
    type_pos = n_dims_pos + 4 + 8 * n_dims
    return {"n_dims": n_dims_pos, "dims": n_dims_pos + 4, "type": type_pos, "offset": type_pos + 4}


def patch(path: str | Path, position: int, fmt: str, value: Any) -> None:
    """Overwrite one little-endian value (struct format `fmt`) at `position` in the file."""
    with open(path, "r+b") as f:
        f.seek(position)
        f.write(struct.pack(fmt, value))


def truncate(path: str | Path, size: int, out: str | Path) -> Path:
    """Copy the first `size` bytes of `path` to `out`."""
    Path(out).write_bytes(Path(path).read_bytes()[:size])
    return Path(out)
