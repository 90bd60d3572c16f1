"""Open a GGUF file memory-mapped: its metadata as plain Python values, its tensors as raw byte views.

We parse the header ourselves (with the `gguf` package's type enums) rather than through
`gguf.GGUFReader`, whose per-element Python parsing of metadata arrays takes ~30 s on gemma3's
262,144-token vocabulary; here the numeric arrays are single numpy reads. Every way a file can be
wrong (not GGUF, unknown version, cut short, a tensor past the end, a type we cannot decode) becomes a
one-line `BadInputError`.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from rocmforge_core import quants
from rocmforge_core.errors import BadInputError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

VT = gguf.GGUFValueType
# struct format and numpy dtype of each fixed-size metadata value type (little-endian files only).
_SCALARS: dict[int, tuple[str, np.dtype]] = {
    VT.UINT8: ("<B", np.dtype("<u1")), VT.INT8: ("<b", np.dtype("<i1")),
    VT.UINT16: ("<H", np.dtype("<u2")), VT.INT16: ("<h", np.dtype("<i2")),
    VT.UINT32: ("<I", np.dtype("<u4")), VT.INT32: ("<i", np.dtype("<i4")),
    VT.UINT64: ("<Q", np.dtype("<u8")), VT.INT64: ("<q", np.dtype("<i8")),
    VT.FLOAT32: ("<f", np.dtype("<f4")), VT.FLOAT64: ("<d", np.dtype("<f8")),
    VT.BOOL: ("<?", np.dtype("?")),
}
# Numeric arrays under this prefix (scores, token types) stay numpy arrays; the others become lists.
_NUMPY_ARRAY_PREFIX = "tokenizer.ggml."


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """One tensor of the file. `shape` is numpy order (row-major): a weight is (n_out, n_in)."""

    name: str
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data: np.ndarray  # raw uint8 view into the memory map, never a copy


class _Truncated(Exception):
    """The header ended before a value we were reading."""


_U64 = struct.Struct("<Q")


class _Cursor:
    """Reads little-endian values from a byte buffer, raising _Truncated instead of reading past it."""

    def __init__(self, buf: memoryview):
        self.buf = buf
        self.pos = 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def need(self, n: int) -> None:
        if n < 0 or n > self.remaining():
            raise _Truncated

    def scalar(self, vtype: int) -> Any:
        fmt = _SCALARS[vtype][0]
        self.need(struct.calcsize(fmt))
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def u32(self) -> int:
        return self.scalar(VT.UINT32)

    def u64(self) -> int:
        return self.scalar(VT.UINT64)

    def string(self, errors: str = "replace") -> str:
        n = self.u64()
        self.need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors=errors)

    def strings(self, count: int, errors: str) -> list[str]:
        """`count` strings in a row: string() inlined, as a vocabulary holds 100k+ of them (1.1 s for a
        Llama-3 file's tokens and merges through string(), a fifth of that here)."""
        buf, pos, end, unpack = self.buf, self.pos, len(self.buf), _U64.unpack_from
        out = [""] * count
        for i in range(count):
            if end - pos < 8:
                raise _Truncated
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                raise _Truncated
            out[i] = str(buf[pos:pos + n], "utf-8", errors)
            pos += n
        self.pos = pos
        return out

    def array(self, key: str) -> Any:
        itype, count = self.u32(), self.u64()
        if itype == VT.STRING:
            self.need(count * 8)  # every string has at least its 8-byte length
            # Vocabularies may hold byte pieces that are not valid UTF-8 alone: keep them recoverable.
            return self.strings(count, "surrogateescape")
        if itype == VT.ARRAY:
            raise ValueError("nested arrays are not supported")
        if itype not in _SCALARS:
            raise ValueError(f"unknown array element type {itype}")
        dtype = _SCALARS[itype][1]
        self.need(count * dtype.itemsize)
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        if key.startswith(_NUMPY_ARRAY_PREFIX):
            return values.astype(values.dtype.newbyteorder("="))
        return values.tolist()

    def value(self, key: str, vtype: int) -> Any:
        if vtype == VT.STRING:
            return self.string()
        if vtype == VT.ARRAY:
            return self.array(key)
        if vtype not in _SCALARS:
            raise ValueError(f"unknown value type {vtype}")
        return self.scalar(vtype)


class GGUFFile:
    """A GGUF model file, memory-mapped. Metadata values are plain Python; tensor data is not copied.

    `metadata` maps keys to str/int/float/bool or lists of them; numeric arrays under `tokenizer.ggml.`
    (scores: float32, token_type: int32) are numpy arrays. `tensors` keeps the file's order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._map = _open_map(self.path)
        self.file_size = int(self._map.size)
        cur = _Cursor(memoryview(self._map))
        self.version, n_tensors, n_kv = _read_header(cur, self.path)
        self.metadata: dict[str, Any] = _read_metadata(cur, n_kv, self.path)
        self.alignment = _alignment(self.metadata, self.path)
        infos = _read_tensor_infos(cur, n_tensors, self.path)
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in infos:
            self.tensors[name] = self._tensor(name, dims, type_id, offset)
        _check_no_overlap(infos, self.tensors, self.path)
        self.architecture: str = self._architecture()

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise BadInputError(f"{self.path.name}: tensor '{name}' not found in the file") from None

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def dequant(self, name: str) -> np.ndarray:
        """The tensor as float32, in numpy (row-major) shape."""
        info = self.tensor(name)
        return quants.dequantize(info.data, info.qtype, info.shape)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, architecture={self.architecture!r}, tensors={len(self.tensors)})"

    def _architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise BadInputError(f"{self.path.name}: GGUF metadata has no general.architecture")
        return arch

    def _tensor(self, name: str, dims: list[int], type_id: int, offset: int) -> TensorInfo:
        where = f"{self.path.name}: tensor '{name}'"
        if type_id not in quants.SUPPORTED_TYPES:
            raise quants.unsupported_type_error(type_id, where)
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = quants.BLOCK_SIZES[qtype]
        n_elements = math.prod(dims)  # Python ints: a corrupt dim must not wrap around
        if dims and dims[0] % block:
            raise BadInputError(f"{where}: row length {dims[0]} is not a multiple of the "
                                f"{qtype.name} block size {block}")
        if offset % self.alignment:
            raise BadInputError(f"{where}: data offset {offset} is not aligned to {self.alignment} bytes")
        n_bytes = n_elements // block * type_size
        start = self.data_offset + offset
        if start + n_bytes > self.file_size:
            raise BadInputError(
                f"{where}: data (bytes {start}..{start + n_bytes}) runs past the end of the file "
                f"({self.file_size} bytes)", hint="the file is truncated or corrupt")
        data = self._map[start:start + n_bytes]
        return TensorInfo(name, qtype, tuple(reversed(dims)), n_elements, n_bytes, data)


def _check_no_overlap(infos: list, tensors: dict[str, TensorInfo], path: Path) -> None:
    """Two tensors sharing bytes mean a corrupt header (llama.cpp refuses such files too)."""
    spans = sorted((offset, tensors[name].n_bytes, name) for name, _, _, offset in infos)
    for (start, size, name), (next_start, _, next_name) in zip(spans, spans[1:]):
        if size and start + size > next_start:
            raise BadInputError(f"{path.name}: tensor '{name}' (data bytes {start}..{start + size}) overlaps "
                                f"tensor '{next_name}' (from byte {next_start})", hint="the file is corrupt")


def _open_map(path: Path) -> np.memmap:
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    if path.is_dir():
        raise BadInputError(f"{path} is a directory, not a GGUF file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadInputError(f"{path.name} is empty, not a GGUF file")
        if size < 8:
            _check_magic(path.read_bytes(), path)
            raise BadInputError(f"{path.name}: truncated GGUF file (the header is cut short at {size} bytes)")
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_magic(head: bytes, path: Path) -> None:
    """Accepts a prefix of the magic, so that a file cut inside it reads as truncated."""
    if not GGUF_MAGIC.startswith(head[:4]):
        raise BadInputError(f"{path.name} is not a GGUF file (bad magic {head[:4]!r}, expected b'GGUF')")


def _read_header(cur: _Cursor, path: Path) -> tuple[int, int, int]:
    _check_magic(bytes(cur.buf[:4]), path)
    cur.pos = 4
    try:
        version = cur.u32()
        if version not in SUPPORTED_VERSIONS:
            hint = "a big-endian file?" if version & 0xFFFF == 0 else "supported: GGUF versions 2 and 3"
            raise BadInputError(f"{path.name}: unsupported GGUF version {version}", hint=hint)
        n_tensors, n_kv = cur.u64(), cur.u64()
    except _Truncated:
        raise BadInputError(f"{path.name}: truncated GGUF file (the header is cut short)") from None
    return version, n_tensors, n_kv


def _read_metadata(cur: _Cursor, n_kv: int, path: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    try:
        cur.need(n_kv * 12)  # a key length and a value type at least, per entry
    except _Truncated:
        raise BadInputError(f"{path.name}: truncated GGUF file (the header announces {n_kv} metadata "
                            "entries, more than the rest of the file can hold)") from None
    key = "#0"
    try:
        for i in range(n_kv):
            key = f"#{i}"
            key = cur.string()
            value = cur.value(key, cur.u32())
            if key in metadata:
                raise ValueError("duplicate key")
            metadata[key] = value
    except _Truncated:
        raise BadInputError(f"{path.name}: truncated GGUF file (metadata cut short at key {key})") from None
    except (ValueError, OverflowError) as exc:
        raise BadInputError(f"{path.name}: corrupt GGUF metadata at key {key}: {exc}") from None
    return metadata


def _alignment(metadata: dict[str, Any], path: Path) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise BadInputError(f"{path.name}: general.alignment {value!r} is not a power of two")
    return value


def _read_tensor_infos(cur: _Cursor, n_tensors: int, path: Path) -> list[tuple[str, list[int], int, int]]:
    infos = []
    seen: set[str] = set()
    try:
        cur.need(n_tensors * 24)  # name length, dim count, type and offset at least, per tensor
    except _Truncated:
        raise BadInputError(f"{path.name}: truncated GGUF file (the header announces {n_tensors} tensors, "
                            "more than the rest of the file can hold)") from None
    name = "#0"
    try:
        for i in range(n_tensors):
            name = f"#{i}"
            name = cur.string()
            n_dims = cur.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise ValueError(f"{n_dims} dimensions (a tensor has 1 to {MAX_DIMS})")
            dims = [cur.u64() for _ in range(n_dims)]
            type_id, offset = cur.u32(), cur.u64()
            if name in seen:
                raise ValueError("duplicate tensor name")
            seen.add(name)
            infos.append((name, dims, type_id, offset))
    except _Truncated:
        raise BadInputError(f"{path.name}: truncated GGUF file (tensor info cut short at tensor {name})") from None
    except ValueError as exc:
        raise BadInputError(f"{path.name}: corrupt GGUF tensor info for {name}: {exc}") from None
    return infos
