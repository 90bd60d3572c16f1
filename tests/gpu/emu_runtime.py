"""A GpuRuntime that runs the hip_kernels sources on the CPU ("host emulation"), for the GPU tests
on machines without a GPU.

Each kernel file is compiled by the host C++ compiler with -DRF_HOST_EMULATION -DWARP_SIZE=1 into a
shared library; a launch calls the kernel once per block with blockDim = 1 (the kernels are written
for any block size, and warp reductions over one lane are no-ops). Device memory is host memory.
This checks the kernels' arithmetic, indexing and block decoding and the whole GPU ops layer; it
cannot check warp shuffles or block-level races, which only the real devices exercise.

Graphs are emulated as recordings: between capture_begin and capture_end, launches, device copies and
memsets are recorded with their argument values as they were at capture (as a real graph bakes them
in) instead of run, and graph_launch replays them. Calls that a real capture forbids or would bake in
wrongly (allocation, host copies, synchronisation) raise, so the GPU ops' graph path is held to the
same rules here as on a device.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from rocmforge_core.gpu.runtime import DeviceInfo, GpuRuntime, PackedArgs


class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


_ARGTYPES = {"p": ctypes.c_uint64, "i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float}


def host_compiler() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


class EmuRuntime(GpuRuntime):
    name = "emu"
    times_kernels = False  # its "device" time is the host's, serial: nothing to tune by

    def __init__(self):
        cxx = host_compiler()
        if cxx is None:
            raise RuntimeError("no host C++ compiler for the kernel emulation")
        self._cxx = cxx
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        self.compiler_version = f"emu-{version}"
        self.device = DeviceInfo(name="host emulation", arch="host", warp_size=1, total_memory=1 << 34,
                                 multiprocessors=1, max_threads=1)
        self._buffers: dict[int, np.ndarray] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="rf-emu-"))
        self._libs: list[ctypes.CDLL] = []
        self._recording: list | None = None  # the graph being captured

    def _not_in_capture(self, what: str) -> None:
        if self._recording is not None:
            raise RuntimeError(f"emu: {what} during a graph capture")

    def _compile(self, source: str, filename: str, options: list[str]) -> bytes:
        src = self._tmp / (filename + ".cpp")
        out = self._tmp / (filename + ".so")
        src.write_text(source)
        cmd = [self._cxx, "-x", "c++", "-std=c++17", "-O2", "-shared", "-fPIC", "-DRF_HOST_EMULATION",
               *options, str(src), "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"host compile of {filename} failed:\n{r.stderr}")
        return out.read_bytes()

    def load_module(self, image: bytes):
        path = self._tmp / f"mod{len(self._libs)}.so"
        path.write_bytes(image)
        lib = ctypes.CDLL(str(path))
        self._libs.append(lib)
        return lib

    def get_function(self, module, name: str):
        return (module, getattr(module, name))

    def alloc(self, nbytes: int) -> int:
        self._not_in_capture("alloc")
        buf = np.empty(max(1, int(nbytes)), dtype=np.uint8)
        ptr = buf.ctypes.data
        self._buffers[ptr] = buf
        return ptr

    def free(self, ptr: int) -> None:
        self._not_in_capture("free")
        del self._buffers[ptr]

    def host_alloc(self, nbytes: int) -> int:
        return self.alloc(nbytes)  # host memory is all the emulation has

    def host_free(self, ptr: int) -> None:
        self.free(ptr)

    def copy_htod(self, dst, src_host, nbytes, stream=None):
        self._not_in_capture("a host-to-device copy")
        ctypes.memmove(dst, src_host.ctypes.data, nbytes)

    def copy_dtoh(self, dst_host, src, nbytes, stream=None):
        self._not_in_capture("a device-to-host copy")
        ctypes.memmove(dst_host.ctypes.data, src, nbytes)

    def copy_dtod(self, dst, src, nbytes, stream=None):
        if self._recording is not None:
            self._recording.append(lambda: ctypes.memmove(dst, src, nbytes))
            return
        ctypes.memmove(dst, src, nbytes)

    def memset8(self, dst, value, nbytes, stream=None):
        if self._recording is not None:
            self._recording.append(lambda: ctypes.memset(dst, value, nbytes))
            return
        ctypes.memset(dst, value, nbytes)

    def stream_create(self):
        return object()

    def stream_destroy(self, stream):
        pass

    def stream_synchronize(self, stream):
        self._not_in_capture("a stream synchronisation")

    def event_create(self):
        return [0.0]

    def event_record(self, event, stream):
        import time
        event[0] = time.perf_counter()

    def event_synchronize(self, event):
        pass

    def event_elapsed_ms(self, start, stop):
        return (stop[0] - start[0]) * 1e3

    def event_destroy(self, event):
        pass

    def launch(self, function, grid, block, args: PackedArgs, stream, shared_bytes=0):
        lib, fn = function
        if block != (1, 1, 1):
            raise ValueError(f"host emulation runs one thread per block, got {block}")
        if self._recording is not None:  # bake in the values as of now, as a real capture does
            baked = PackedArgs(args.types, args.values())
            self._recording.append(lambda: self.launch(function, grid, block, baked, stream, shared_bytes))
            return
        fn.restype = None
        fn.argtypes = [_ARGTYPES[t] for t in args.types]
        values = args.values()
        block_idx = _Dim3.in_dll(lib, "blockIdx")
        grid_dim = _Dim3.in_dll(lib, "gridDim")
        grid_dim.x, grid_dim.y, grid_dim.z = grid
        for z in range(grid[2]):
            for y in range(grid[1]):
                for x in range(grid[0]):
                    block_idx.x, block_idx.y, block_idx.z = x, y, z
                    fn(*values)

    def capture_begin(self, stream):
        if self._recording is not None:
            raise RuntimeError("emu: a capture is already in progress")
        self._recording = []

    def capture_end(self, stream):
        if self._recording is None:
            raise RuntimeError("emu: capture_end without capture_begin")
        graph, self._recording = self._recording, None
        return graph

    def graph_launch(self, graph, stream):
        self._not_in_capture("a graph launch")
        for step in graph:
            step()

    def graph_destroy(self, graph):
        graph.clear()

    def synchronize(self):
        self._not_in_capture("a device synchronisation")
