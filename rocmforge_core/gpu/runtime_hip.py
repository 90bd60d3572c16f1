"""The `hip` runtime: AMD GPUs through hip-python (`from hip import hip, hiprtc`).

Kept to a few plain HIP calls (hipDeviceGetAttribute rather than the hipDeviceProp_t struct, whose
layout changed between ROCm 6 and 7 and between hip-python majors), so that the test-only shim in
scripts/hip_shim/ can provide them on NVIDIA machines. hiprtc compiles for the current device's
architecture when no --offload-arch is given, so the runtime never needs the gfx name; the compile
cache keys on the device name and compute capability instead.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from rocmforge_core.gpu.runtime import DeviceInfo, GpuError, GpuRuntime, GpuUnavailableError, PackedArgs

_EXTRA_HINT = "install rocmforge[rocm] (hip-python) and ROCm, or use --backend cpu"


def _import_hip():
    try:
        from hip import hip, hiprtc
    except ImportError as exc:
        raise GpuUnavailableError("hip-python is not installed",
                                  hint=_EXTRA_HINT) from exc
    return hip, hiprtc


class HipRuntime(GpuRuntime):
    name = "hip"

    def __init__(self, device_index: int = 0):
        self._hip, self._rtc = _import_hip()
        hip = self._hip
        try:  # the first call loads libamdhip64.so: a RuntimeError if ROCm is missing
            self._check(hip.hipInit(0)[0], "hipInit")
            n = self._ok(hip.hipGetDeviceCount(), "hipGetDeviceCount")
        except Exception as exc:  # RuntimeError/OSError from the loader, GpuError from the call
            raise GpuUnavailableError(f"no usable ROCm runtime or AMD GPU ({exc})", hint=_EXTRA_HINT) from exc
        if n <= device_index:
            raise GpuUnavailableError("no AMD GPU found", hint="use --backend cpu")
        self._index = device_index
        self._tls = threading.local()
        self._ensure_device()
        a = hip.hipDeviceAttribute_t

        def get(attr):
            return int(self._ok(hip.hipDeviceGetAttribute(attr, device_index), "hipDeviceGetAttribute"))

        name = self._ok(hip.hipDeviceGetName(256, device_index), "hipDeviceGetName")
        name = name if isinstance(name, str) else str(name)
        name = name.split("\0", 1)[0]
        major = get(a.hipDeviceAttributeComputeCapabilityMajor)
        minor = get(a.hipDeviceAttributeComputeCapabilityMinor)
        self.device = DeviceInfo(
            name=name.strip(),
            arch=f"{name.strip()} cc{major}.{minor}",
            warp_size=get(a.hipDeviceAttributeWarpSize),
            total_memory=int(self._ok(hip.hipDeviceTotalMem(device_index), "hipDeviceTotalMem")),
            multiprocessors=get(a.hipDeviceAttributeMultiprocessorCount),
            max_threads=get(a.hipDeviceAttributeMaxThreadsPerBlock),
        )
        try:
            err, vmaj, vmin = self._rtc.hiprtcVersion()
            self._check_rtc(err, "hiprtcVersion")
        except RuntimeError as exc:  # libhiprtc.so missing
            raise GpuUnavailableError(f"hiprtc is not available ({exc})", hint=_EXTRA_HINT) from exc
        self.compiler_version = f"hiprtc-{vmaj}.{vmin}"

    # ---- error handling
    def _check(self, err: Any, what: str) -> None:
        if int(err) != 0:
            try:
                text = self._hip.hipGetErrorString(err)
                text = text[-1] if isinstance(text, tuple) else text  # hip-python returns (err, str)
                text = text.decode() if isinstance(text, bytes) else str(text)
            except Exception:
                text = str(err)
            raise GpuError(f"{what} failed: {text} ({int(err)})")

    def _ok(self, result: tuple, what: str) -> Any:
        self._check(result[0], what)
        return result[1] if len(result) == 2 else result[1:]

    def _check_rtc(self, err: Any, what: str) -> None:
        if int(err) != 0:
            raise GpuError(f"{what} failed: {err}")

    def _ensure_device(self) -> None:
        # The current device is per thread; the engine computes on a worker thread.
        if not getattr(self._tls, "ready", False):
            self._check(self._hip.hipSetDevice(self._index)[0], "hipSetDevice")
            self._tls.ready = True

    # ---- compile, load
    def _compile(self, source: str, filename: str, options: list[str]) -> bytes:
        rtc = self._rtc
        err, prog = rtc.hiprtcCreateProgram(source.encode(), filename.encode(), 0, None, None)
        self._check_rtc(err, "hiprtcCreateProgram")
        try:
            opts = ["-O3", "-std=c++17", *options]
            (err,) = rtc.hiprtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
            if int(err) != 0:
                raise GpuError(f"hiprtc could not compile {filename}:\n{self._log(prog)}")
            err, size = rtc.hiprtcGetCodeSize(prog)
            self._check_rtc(err, "hiprtcGetCodeSize")
            buf = bytearray(size)
            self._check_rtc(rtc.hiprtcGetCode(prog, buf)[0], "hiprtcGetCode")
            return bytes(buf)
        finally:
            # hiprtcDestroyProgram takes a pointer to the handle (it clears it): hip-python passes
            # whatever address it is given, so give it the address of a variable holding the handle.
            handle = ctypes.c_void_p(int(prog))
            rtc.hiprtcDestroyProgram(ctypes.addressof(handle))

    def _log(self, prog: Any) -> str:
        err, size = self._rtc.hiprtcGetProgramLogSize(prog)
        buf = bytearray(max(1, size))
        self._rtc.hiprtcGetProgramLog(prog, buf)
        return bytes(buf).rstrip(b"\0 ").decode(errors="replace")

    def load_module(self, image: bytes) -> Any:
        self._ensure_device()
        self._image_keep = getattr(self, "_image_keep", [])
        data = bytearray(image)
        self._image_keep.append(data)  # hipModuleLoadData may read the image lazily
        return self._ok(self._hip.hipModuleLoadData(data), "hipModuleLoadData")

    def get_function(self, module: Any, name: str) -> Any:
        return self._ok(self._hip.hipModuleGetFunction(module, name.encode()), f"hipModuleGetFunction({name})")

    # ---- memory
    def alloc(self, nbytes: int) -> int:
        self._ensure_device()
        return int(self._ok(self._hip.hipMalloc(max(1, int(nbytes))), "hipMalloc"))

    def free(self, ptr: int) -> None:
        self._ensure_device()
        self._check(self._hip.hipFree(ptr)[0], "hipFree")

    def host_alloc(self, nbytes: int) -> int:
        self._ensure_device()
        return int(self._ok(self._hip.hipHostMalloc(max(1, int(nbytes)), 0), "hipHostMalloc"))

    def host_free(self, ptr: int) -> None:
        self._ensure_device()
        self._check(self._hip.hipHostFree(ptr)[0], "hipHostFree")

    def copy_htod(self, dst: int, src_host: Any, nbytes: int, stream: Any = None) -> None:
        self._ensure_device()
        self._check(self._hip.hipMemcpyHtoDAsync(dst, src_host.ctypes.data, nbytes, stream)[0],
                    "hipMemcpyHtoDAsync")

    def copy_dtoh(self, dst_host: Any, src: int, nbytes: int, stream: Any = None) -> None:
        self._ensure_device()
        self._check(self._hip.hipMemcpyDtoHAsync(dst_host.ctypes.data, src, nbytes, stream)[0],
                    "hipMemcpyDtoHAsync")

    def copy_dtod(self, dst: int, src: int, nbytes: int, stream: Any = None) -> None:
        self._ensure_device()
        self._check(self._hip.hipMemcpyDtoDAsync(dst, src, nbytes, stream)[0], "hipMemcpyDtoDAsync")

    def memset8(self, dst: int, value: int, nbytes: int, stream: Any = None) -> None:
        self._ensure_device()
        self._check(self._hip.hipMemsetD8Async(dst, value, nbytes, stream)[0], "hipMemsetD8Async")

    # ---- streams, events
    def stream_create(self) -> Any:
        self._ensure_device()
        return self._ok(self._hip.hipStreamCreate(), "hipStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._hip.hipStreamDestroy(stream)[0], "hipStreamDestroy")

    def stream_synchronize(self, stream: Any) -> None:
        self._ensure_device()
        self._check(self._hip.hipStreamSynchronize(stream)[0], "hipStreamSynchronize")

    def event_create(self) -> Any:
        self._ensure_device()
        return self._ok(self._hip.hipEventCreate(), "hipEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self._hip.hipEventRecord(event, stream)[0], "hipEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self._check(self._hip.hipEventSynchronize(event)[0], "hipEventSynchronize")

    def event_elapsed_ms(self, start: Any, stop: Any) -> float:
        return float(self._ok(self._hip.hipEventElapsedTime(start, stop), "hipEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._check(self._hip.hipEventDestroy(event)[0], "hipEventDestroy")

    # ---- launch, graphs
    def launch(self, function: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: PackedArgs, stream: Any, shared_bytes: int = 0) -> None:
        self._ensure_device()
        err = self._hip.hipModuleLaunchKernel(function, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                              shared_bytes, stream, args.address, None)[0]
        if int(err) != 0:
            self._check(err, "hipModuleLaunchKernel")

    def capture_begin(self, stream: Any) -> None:
        mode = self._hip.hipStreamCaptureMode.hipStreamCaptureModeThreadLocal
        self._check(self._hip.hipStreamBeginCapture(stream, mode)[0], "hipStreamBeginCapture")

    def capture_end(self, stream: Any) -> Any:
        graph = self._ok(self._hip.hipStreamEndCapture(stream), "hipStreamEndCapture")
        result = self._hip.hipGraphInstantiate(graph, None, 0)
        self._check(result[0], "hipGraphInstantiate")
        self._check(self._hip.hipGraphDestroy(graph)[0], "hipGraphDestroy")
        return result[1]

    def graph_launch(self, graph: Any, stream: Any) -> None:
        self._check(self._hip.hipGraphLaunch(graph, stream)[0], "hipGraphLaunch")

    def graph_destroy(self, graph: Any) -> None:
        self._check(self._hip.hipGraphExecDestroy(graph)[0], "hipGraphExecDestroy")

    def synchronize(self) -> None:
        self._ensure_device()
        self._check(self._hip.hipDeviceSynchronize()[0], "hipDeviceSynchronize")
