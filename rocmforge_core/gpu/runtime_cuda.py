"""The `cuda` runtime: NVIDIA GPUs through cuda-bindings (driver API) and NVRTC.

Kernels are compiled by NVRTC straight to a cubin for the device's sm_XY (no PTX JIT at load time).
NVRTC takes no -O3 (it always optimises); the sources need no CUDA headers (see rf_prelude.h).
The driver context is the device's primary context, made current on each new calling thread, since
the engine runs model compute on a worker thread.
"""

from __future__ import annotations

import threading
from typing import Any

from rocmforge_core.gpu.runtime import DeviceInfo, GpuError, GpuRuntime, GpuUnavailableError, PackedArgs

_EXTRA_HINT = "install rocmforge[cuda] (cuda-bindings, nvidia-cuda-nvrtc) and the NVIDIA driver, or use --backend cpu"


def _import_bindings():
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        try:  # cuda-python < 12.6 layout
            from cuda import cuda as driver, nvrtc  # type: ignore[no-redef]
        except ImportError as exc:
            raise GpuUnavailableError("cuda-bindings is not installed",
                                      hint=_EXTRA_HINT) from exc
    return driver, nvrtc


class CudaRuntime(GpuRuntime):
    name = "cuda"

    def __init__(self, device_index: int = 0):
        self._drv, self._nvrtc = _import_bindings()
        drv = self._drv
        try:
            self._check(drv.cuInit(0)[0], "cuInit")
        except GpuError as exc:
            raise GpuUnavailableError(f"no usable NVIDIA driver or GPU ({exc.message})", hint=_EXTRA_HINT) from exc
        except Exception as exc:  # cuda-bindings installed but libcuda.so absent: raised on first call
            raise GpuUnavailableError(f"no NVIDIA driver library ({type(exc).__name__})",
                                      hint=_EXTRA_HINT) from exc
        n = self._ok(drv.cuDeviceGetCount(), "cuDeviceGetCount")
        if n <= device_index:
            raise GpuUnavailableError("no NVIDIA GPU found", hint="use --backend cpu")
        self._dev = self._ok(drv.cuDeviceGet(device_index), "cuDeviceGet")
        self._ctx = self._ok(drv.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        self._tls = threading.local()
        self._ensure_ctx()
        attr = drv.CUdevice_attribute

        def get(a):
            return int(self._ok(drv.cuDeviceGetAttribute(a, self._dev), "cuDeviceGetAttribute"))

        major = get(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        minor = get(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        raw_name = self._ok(drv.cuDeviceGetName(256, self._dev), "cuDeviceGetName")
        self.device = DeviceInfo(
            name=bytes(raw_name).split(b"\0", 1)[0].decode(errors="replace"),
            arch=f"sm_{major}{minor}",
            warp_size=get(attr.CU_DEVICE_ATTRIBUTE_WARP_SIZE),
            total_memory=int(self._ok(drv.cuDeviceTotalMem(self._dev), "cuDeviceTotalMem")),
            multiprocessors=get(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
            max_threads=get(attr.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
        )
        try:
            self.compiler_version = nvrtc_version()
        except Exception as exc:  # libnvrtc missing: the bindings raise on first use
            raise GpuUnavailableError(f"NVRTC is not available ({exc})", hint=_EXTRA_HINT) from exc
        self._null_stream = drv.CUstream(0)

    # ---- error handling
    def _check(self, err: Any, what: str) -> None:
        if int(err) != 0:
            _, msg = self._drv.cuGetErrorString(err)
            text = msg.decode() if isinstance(msg, bytes) else str(err)
            raise GpuError(f"{what} failed: {text}")

    def _ok(self, result: tuple, what: str) -> Any:
        self._check(result[0], what)
        return result[1] if len(result) == 2 else result[1:]

    def _ensure_ctx(self) -> None:
        if not getattr(self._tls, "ready", False):
            self._check(self._drv.cuCtxSetCurrent(self._ctx)[0], "cuCtxSetCurrent")
            self._tls.ready = True

    def _s(self, stream: Any) -> Any:
        return self._null_stream if stream is None else stream

    # ---- compile, load
    def _compile(self, source: str, filename: str, options: list[str]) -> bytes:
        return nvrtc_compile(source, filename, options, self.device.arch)

    def load_module(self, image: bytes) -> Any:
        self._ensure_ctx()
        return self._ok(self._drv.cuModuleLoadData(image), "cuModuleLoadData")

    def get_function(self, module: Any, name: str) -> Any:
        return self._ok(self._drv.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")

    # ---- memory
    def alloc(self, nbytes: int) -> int:
        self._ensure_ctx()
        return int(self._ok(self._drv.cuMemAlloc(max(1, int(nbytes))), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuMemFree(ptr)[0], "cuMemFree")

    def host_alloc(self, nbytes: int) -> int:
        self._ensure_ctx()
        return int(self._ok(self._drv.cuMemHostAlloc(max(1, int(nbytes)), 0), "cuMemHostAlloc"))

    def host_free(self, ptr: int) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuMemFreeHost(ptr)[0], "cuMemFreeHost")

    def copy_htod(self, dst: int, src_host: Any, nbytes: int, stream: Any = None) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuMemcpyHtoDAsync(dst, src_host.ctypes.data, nbytes, self._s(stream))[0],
                    "cuMemcpyHtoDAsync")

    def copy_dtoh(self, dst_host: Any, src: int, nbytes: int, stream: Any = None) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuMemcpyDtoHAsync(dst_host.ctypes.data, src, nbytes, self._s(stream))[0],
                    "cuMemcpyDtoHAsync")

    def copy_dtod(self, dst: int, src: int, nbytes: int, stream: Any = None) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuMemcpyDtoDAsync(dst, src, nbytes, self._s(stream))[0], "cuMemcpyDtoDAsync")

    def memset8(self, dst: int, value: int, nbytes: int, stream: Any = None) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuMemsetD8Async(dst, value, nbytes, self._s(stream))[0], "cuMemsetD8Async")

    # ---- streams, events
    def stream_create(self) -> Any:
        self._ensure_ctx()
        return self._ok(self._drv.cuStreamCreate(1), "cuStreamCreate")  # 1: non-blocking vs stream 0

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._drv.cuStreamDestroy(stream)[0], "cuStreamDestroy")

    def stream_synchronize(self, stream: Any) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuStreamSynchronize(self._s(stream))[0], "cuStreamSynchronize")

    def event_create(self) -> Any:
        self._ensure_ctx()
        return self._ok(self._drv.cuEventCreate(0), "cuEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self._drv.cuEventRecord(event, self._s(stream))[0], "cuEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self._check(self._drv.cuEventSynchronize(event)[0], "cuEventSynchronize")

    def event_elapsed_ms(self, start: Any, stop: Any) -> float:
        fn = getattr(self._drv, "cuEventElapsedTime", None) or self._drv.cuEventElapsedTime_v2
        return float(self._ok(fn(start, stop), "cuEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._check(self._drv.cuEventDestroy(event)[0], "cuEventDestroy")

    # ---- launch, graphs
    def launch(self, function: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: PackedArgs, stream: Any, shared_bytes: int = 0) -> None:
        self._ensure_ctx()
        err = self._drv.cuLaunchKernel(function, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                       shared_bytes, self._s(stream), args.address, 0)[0]
        if int(err) != 0:
            self._check(err, "cuLaunchKernel")

    def capture_begin(self, stream: Any) -> None:
        mode = self._drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self._check(self._drv.cuStreamBeginCapture(stream, mode)[0], "cuStreamBeginCapture")

    def capture_end(self, stream: Any) -> Any:
        graph = self._ok(self._drv.cuStreamEndCapture(stream), "cuStreamEndCapture")
        exe = self._ok(self._drv.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        self._check(self._drv.cuGraphDestroy(graph)[0], "cuGraphDestroy")
        return exe

    def graph_launch(self, graph: Any, stream: Any) -> None:
        self._check(self._drv.cuGraphLaunch(graph, self._s(stream))[0], "cuGraphLaunch")

    def graph_destroy(self, graph: Any) -> None:
        self._check(self._drv.cuGraphExecDestroy(graph)[0], "cuGraphExecDestroy")

    def synchronize(self) -> None:
        self._ensure_ctx()
        self._check(self._drv.cuCtxSynchronize()[0], "cuCtxSynchronize")


def nvrtc_compile(source: str, filename: str, options: list[str], arch: str) -> bytes:
    """Compile one translation unit with NVRTC to a cubin for `arch` (e.g. "sm_90"). Needs no GPU,
    so the CI compile check uses it too."""
    _, rtc = _import_bindings()
    err, prog = rtc.nvrtcCreateProgram(source.encode(), filename.encode(), 0, [], [])
    _check_rtc(err, "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}", "--std=c++17", *options]
        (err,) = rtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        if int(err) != 0:
            raise GpuError(f"NVRTC could not compile {filename}:\n{_program_log(rtc, prog)}")
        err, size = rtc.nvrtcGetCUBINSize(prog)
        _check_rtc(err, "nvrtcGetCUBINSize")
        buf = b" " * size
        _check_rtc(rtc.nvrtcGetCUBIN(prog, buf)[0], "nvrtcGetCUBIN")
        return bytes(buf)
    finally:
        rtc.nvrtcDestroyProgram(prog)


def nvrtc_version() -> str:
    _, rtc = _import_bindings()
    err, major, minor = rtc.nvrtcVersion()
    _check_rtc(err, "nvrtcVersion")
    return f"nvrtc-{major}.{minor}"


def _check_rtc(err: Any, what: str) -> None:
    if int(err) != 0:
        raise GpuError(f"{what} failed: {err}")


def _program_log(rtc: Any, prog: Any) -> str:
    err, size = rtc.nvrtcGetProgramLogSize(prog)
    buf = b" " * max(1, size)
    rtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\0 ").decode(errors="replace")
