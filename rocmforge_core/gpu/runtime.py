"""The runtime interface both GPU runtimes implement, plus what they share: argument packing,
kernel source assembly and the on-disk compile cache.

A runtime is deliberately thin: device info, compile (cached by source hash + arch + compiler
version), module load, function lookup, alloc/free, async copies, streams, events, launch with
pre-packed argument buffers, and stream capture into replayable graphs. Device pointers are plain ints.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rocmforge_core.errors import BadInputError, RocmforgeError

PRELUDE = "rf_prelude.h"


class GpuUnavailableError(BadInputError):
    """The runtime's Python package, driver or device is missing (one line, names what to install)."""


class GpuError(RocmforgeError):
    """A GPU call failed after the runtime was up (exit code 1: an internal failure)."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    arch: str            # "sm_90", or on AMD the device name and compute capability
    warp_size: int
    total_memory: int    # bytes
    multiprocessors: int
    max_threads: int     # per block

    def describe(self) -> str:
        return f"{self.name} ({self.arch}, warp {self.warp_size}, {self.total_memory / 2**30:.0f} GiB)"


# ---- argument packing ----

_CTYPES = {
    "p": ctypes.c_uint64,     # device pointer
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "f32": ctypes.c_float,
}
_PACK_CODES = {"p": "Q", "i32": "i", "i64": "q", "f32": "f"}  # struct-module codes of the same types


class PackedArgs:
    """A kernel's arguments packed once into C memory, with the void* array launches take.

    Building the array per launch (tuple packing) costs tens of microseconds in the Python bindings;
    a PackedArgs is built once per call site and only the changing values are `set` before a launch.
    `address` is the void** kernelParams pointer.
    """

    def __init__(self, types: Sequence[str], values: Sequence[Any] | None = None):
        self.types = tuple(types)
        fields = [(f"a{i}", _CTYPES[t]) for i, t in enumerate(types)]
        self._struct = type("Args", (ctypes.Structure,), {"_fields_": fields})()
        self._names = [f for f, _ in fields]
        base = ctypes.addressof(self._struct)
        offsets = [getattr(type(self._struct), f).offset for f in self._names]
        self._ptrs = (ctypes.c_void_p * max(1, len(fields)))(*[base + o for o in offsets])
        self.address = ctypes.addressof(self._ptrs)
        # set_all writes every value with one struct.pack_into (a field-by-field setattr cost ~1 us per
        # argument, most of a prompt chunk's host time on small models): the ctypes layout's own
        # offsets, padded explicitly, little-endian standard sizes.
        fmt, at = "<", 0
        for offset, t in zip(offsets, self.types):
            fmt += "x" * (offset - at) + _PACK_CODES[t]
            at = offset + ctypes.sizeof(_CTYPES[t])
        self._packer = struct.Struct(fmt)
        self._view = memoryview(self._struct).cast("B")
        if values is not None:
            self.set_all(values)

    def set(self, index: int, value: Any) -> None:
        setattr(self._struct, self._names[index], value)

    def set_all(self, values: Sequence[Any]) -> None:
        if len(values) != len(self._names):
            raise ValueError(f"kernel takes {len(self._names)} arguments, got {len(values)}")
        try:
            self._packer.pack_into(self._view, 0, *values)
        except (struct.error, OverflowError):  # out of range, or another type: ctypes' own conversion or error
            for name, value in zip(self._names, values):
                setattr(self._struct, name, value)

    def values(self) -> list[Any]:
        return [getattr(self._struct, n) for n in self._names]


# ---- kernel sources ----

def kernel_dir() -> Path:
    from hip_kernels import KERNEL_DIR

    return KERNEL_DIR


def kernel_files() -> list[str]:
    """Names (without .hip) of every kernel file shipped in hip_kernels/."""
    return sorted(p.stem for p in kernel_dir().glob("*.hip"))


def kernel_source(name: str) -> str:
    """The file's source with the project headers (rf_prelude.h, rf_blocks.h, ...) inlined, each once:
    one self-contained translation unit, so neither compiler needs include paths or header lists."""
    seen: set[str] = set()

    def inline(match: re.Match) -> str:
        header = match.group(1)
        if header in seen:
            return f"// ---- {header} (already inlined)"
        seen.add(header)
        text = (kernel_dir() / header).read_text().replace("#pragma once", "", 1)
        return f"// ---- {header} (inlined)\n{_INCLUDE.sub(inline, text)}\n// ----"

    return _INCLUDE.sub(inline, (kernel_dir() / f"{name}.hip").read_text())


_INCLUDE = re.compile(r'^#include "(rf_\w+\.h)"[ \t]*$', re.M)


# ---- compile cache ----

def cache_dir() -> Path:
    home = os.environ.get("ROCMFORGE_HOME")
    if home:
        return Path(home) / "kernels"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rocmforge")) / "kernels"


def cache_key(source: str, options: Sequence[str], arch: str, compiler: str, runtime: str) -> str:
    h = hashlib.sha256()
    for part in (runtime, compiler, arch, "\0".join(options), source):
        h.update(part.encode())
        h.update(b"\x01")
    return h.hexdigest()


def cached_compile(runtime: "GpuRuntime", name: str, source: str, options: Sequence[str]) -> bytes:
    """Compile through `runtime._compile`, keeping the binary on disk under its cache key.
    Writes are atomic (temp file + rename) so concurrent processes never read half a binary."""
    key = cache_key(source, options, runtime.device.arch, runtime.compiler_version, runtime.name)
    path = cache_dir() / f"{name}-{key[:32]}.bin"
    try:
        return path.read_bytes()
    except OSError:
        pass
    image = runtime._compile(source, f"{name}.hip", list(options))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(image)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a recompile next time
    return image


class GpuRuntime:
    """The interface. Streams, events, modules, functions and graphs are opaque handles."""

    name = "base"
    times_kernels = True  # events measure device time (the host emulation's do not mean anything)
    device: DeviceInfo
    compiler_version: str

    # -- compile and load
    def compile(self, name: str, defines: dict[str, Any] | None = None) -> bytes:
        """Compile hip_kernels/<name>.hip for this device (cached on disk)."""
        opts = [f"-D{k}={v}" for k, v in sorted({"WARP_SIZE": self.device.warp_size, **(defines or {})}.items())]
        return cached_compile(self, name, kernel_source(name), opts)

    def _compile(self, source: str, filename: str, options: list[str]) -> bytes:
        raise NotImplementedError

    def load_module(self, image: bytes) -> Any:
        raise NotImplementedError

    def get_function(self, module: Any, name: str) -> Any:
        raise NotImplementedError

    # -- memory
    def alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, ptr: int) -> None:
        raise NotImplementedError

    def host_alloc(self, nbytes: int) -> int:
        """Page-locked host memory: copies between it and the device run asynchronously (a copy to
        ordinary pageable memory makes the host wait for the device to reach it)."""
        raise NotImplementedError

    def host_free(self, ptr: int) -> None:
        raise NotImplementedError

    def copy_htod(self, dst: int, src_host: Any, nbytes: int, stream: Any = None) -> None:
        """Async host -> device; src_host is a C-contiguous numpy array kept alive by the caller."""
        raise NotImplementedError

    def copy_dtoh(self, dst_host: Any, src: int, nbytes: int, stream: Any = None) -> None:
        raise NotImplementedError

    def copy_dtod(self, dst: int, src: int, nbytes: int, stream: Any = None) -> None:
        raise NotImplementedError

    def memset8(self, dst: int, value: int, nbytes: int, stream: Any = None) -> None:
        raise NotImplementedError

    # -- streams, events
    def stream_create(self) -> Any:
        raise NotImplementedError

    def stream_destroy(self, stream: Any) -> None:
        raise NotImplementedError

    def stream_synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def event_create(self) -> Any:
        raise NotImplementedError

    def event_record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def event_synchronize(self, event: Any) -> None:
        raise NotImplementedError

    def event_elapsed_ms(self, start: Any, stop: Any) -> float:
        raise NotImplementedError

    def event_destroy(self, event: Any) -> None:
        raise NotImplementedError

    # -- launch, graphs
    def launch(self, function: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: PackedArgs, stream: Any, shared_bytes: int = 0) -> None:
        raise NotImplementedError

    def capture_begin(self, stream: Any) -> None:
        raise NotImplementedError

    def capture_end(self, stream: Any) -> Any:
        """End the capture and return an instantiated, launchable graph."""
        raise NotImplementedError

    def graph_launch(self, graph: Any, stream: Any) -> None:
        raise NotImplementedError

    def graph_destroy(self, graph: Any) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError


class PinnedArray:
    """A numpy array over page-locked host memory of a runtime; `close` gives the memory back."""

    def __init__(self, rt: GpuRuntime, shape, dtype):
        import numpy as np

        self.rt, dtype = rt, np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        self.ptr = rt.host_alloc(n)
        raw = (ctypes.c_uint8 * max(1, n)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=n).view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.array = self.ptr, 0, None
            self.rt.host_free(ptr)
