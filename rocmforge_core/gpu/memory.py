"""Device memory for the GPU ops: a stream-ordered buffer pool and DeviceArray, the array facade
the model code handles (the shapes, row views and indexing it uses on numpy arrays).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from rocmforge_core.gpu.runtime import GpuRuntime


class _Block:
    """One pooled allocation; going out of scope returns it to its pool (stream order keeps reuse safe:
    all work runs on one stream, so a later kernel cannot overtake an earlier reader)."""

    __slots__ = ("pool", "ptr", "size")

    def __init__(self, pool: "BufferPool", ptr: int, size: int):
        self.pool, self.ptr, self.size = pool, ptr, size

    def __del__(self):
        pool = self.pool
        if pool is not None and not pool.closed:
            pool.free_lists.setdefault(self.size, []).append(self.ptr)


class BufferPool:
    """Size-class free lists over runtime allocations: decode steps allocate the same sizes every
    step, so after the first step no allocation reaches the driver."""

    def __init__(self, rt: GpuRuntime, poison_stream: Any = None):
        self.rt = rt
        # ROCMFORGE_GPU_POISON=1: fill every buffer handed out with NaN, so reads of unwritten memory
        # show up as NaN instead of plausible stale values (a debugging aid; costs a memset each).
        self.poison_stream = poison_stream if os.environ.get("ROCMFORGE_GPU_POISON") == "1" else None
        self.allocated = 0  # bytes taken from the driver (what the pool holds, used or free)
        self.free_lists: dict[int, list[int]] = {}
        self.owned: list[int] = []
        self.closed = False

    @staticmethod
    def size_class(nbytes: int) -> int:
        n = max(256, int(nbytes))
        if n <= 1 << 20:
            return 1 << (n - 1).bit_length()
        return (n + (1 << 20) - 1) >> 20 << 20  # whole MiB above 1 MiB

    def get(self, nbytes: int) -> _Block:
        size = self.size_class(nbytes)
        free = self.free_lists.get(size)
        if free:
            ptr = free.pop()
        else:
            ptr = self.rt.alloc(size)
            self.owned.append(ptr)
            self.allocated += size
        if self.poison_stream is not None:
            self.rt.memset8(ptr, 0xFF, size, self.poison_stream)
        return _Block(self, ptr, size)

    def close(self) -> None:
        """Give every allocation back to the driver (after the device is idle)."""
        if self.closed:
            return
        self.closed = True
        self.rt.synchronize()
        for ptr in self.owned:
            self.rt.free(ptr)
        self.owned.clear()
        self.free_lists.clear()


_F32 = np.dtype(np.float32)


class DeviceArray:
    """A device array (float32 unless said otherwise) whose first axis may be strided: rows are `ld`
    elements apart, the rest of each row contiguous. Column slices of a 2-D array are such views
    (`qkv[:, a:b]`: q, k and v read in place from the fused projection); the ops that consume them
    take the stride, the others make a contiguous copy first. `block` keeps the memory alive."""

    __slots__ = ("ops", "ptr", "shape", "dtype", "block", "size", "ld", "q8", "__weakref__")

    def __init__(self, ops: Any, ptr: int, shape: tuple[int, ...], dtype=_F32, block: Any = None,
                 ld: int | None = None):
        # Built for every op output: plain-int arithmetic only (numpy scalar math costs microseconds).
        self.ops, self.ptr, self.shape = ops, ptr, tuple(map(int, shape))
        self.dtype = dtype if dtype is _F32 else np.dtype(dtype)
        self.block = block
        self.size = math.prod(self.shape)
        self.ld = self.row_size if ld is None else int(ld)
        self.q8 = None  # (xq, xd): the same rows quantized to 8 bits, when their producer made them

    @property
    def row_size(self) -> int:
        """Elements per index of the first axis (1 for a 1-D array)."""
        return math.prod(self.shape[1:])

    @property
    def contiguous(self) -> bool:
        return len(self.shape) < 2 or self.shape[0] <= 1 or self.ld == self.row_size

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        ld = "" if self.contiguous else f", ld={self.ld}"
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype.name}{ld}, ptr=0x{self.ptr:x})"

    def reshape(self, *shape) -> "DeviceArray":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(shape)
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = self.size // max(1, known)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} into {tuple(shape)}")
        if self.contiguous:
            return DeviceArray(self.ops, self.ptr, tuple(shape), self.dtype, self)
        if shape[0] != self.shape[0]:  # a view's rows cannot be merged or split without a copy
            raise ValueError(f"cannot reshape the strided view {self.shape} into {tuple(shape)}")
        return DeviceArray(self.ops, self.ptr, tuple(shape), self.dtype, self, self.ld)

    def row_view(self, lo: int, hi: int) -> "DeviceArray":
        """Rows lo..hi-1 along the first axis, without a copy."""
        ptr = self.ptr + lo * self.ld * self.dtype.itemsize
        return DeviceArray(self.ops, ptr, (hi - lo,) + self.shape[1:], self.dtype, self, self.ld)

    def column_view(self, lo: int, hi: int) -> "DeviceArray":
        """Columns lo..hi-1 of a 2-D array, without a copy (rows keep their stride)."""
        ptr = self.ptr + lo * self.dtype.itemsize
        return DeviceArray(self.ops, ptr, (self.shape[0], hi - lo), self.dtype, self, self.ld)

    def __getitem__(self, key) -> "DeviceArray":
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            return self.row_view(k, k + 1).reshape(self.shape[1:] or (1,))
        if isinstance(key, slice) and key.step in (None, 1):
            lo, hi, _ = key.indices(self.shape[0])
            return self.row_view(lo, max(lo, hi))
        if isinstance(key, (np.ndarray, list)):
            return self.ops.take_rows(self, np.asarray(key, dtype=np.int64).reshape(-1))
        if (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and isinstance(key[1], slice)
                and key[1].step in (None, 1) and self.ndim == 2):
            lo, hi, _ = key[1].indices(self.shape[1])
            return self.column_view(lo, max(lo, hi))
        raise TypeError(f"DeviceArray does not support indexing with {key!r}")

    def numpy(self) -> np.ndarray:
        return self.ops.to_host(self)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)
