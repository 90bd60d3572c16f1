"""The GPU layer under backends/gpu.py (the ops), one job per module:

- runtime.py (+ runtime_hip.py, runtime_cuda.py): one interface over hip-python and cuda-bindings;
- kernels.py: the kernel table read from hip_kernels/ (file and argument layout of each kernel);
- memory.py: the buffer pool and DeviceArray;  cache.py: the KV cache;  weights.py: packed weights;
- decode_step.py: the decode step captured into a graph and replayed, a layer above the ops.

`open_runtime("hip" | "cuda")` returns the process-wide runtime for device 0, or raises
GpuUnavailableError (a BadInputError: one line naming the extra to install) when the Python package or
the driver is missing. Importing this package never imports hip-python or cuda-bindings.
"""

from __future__ import annotations

import threading

from rocmforge_core.gpu.runtime import DeviceInfo, GpuRuntime, GpuUnavailableError, PackedArgs

__all__ = ["DeviceInfo", "GpuRuntime", "GpuUnavailableError", "PackedArgs", "open_runtime", "probe"]

_LOCK = threading.Lock()
_RUNTIMES: dict[str, GpuRuntime] = {}


def open_runtime(name: str) -> GpuRuntime:
    """The shared runtime of one kind, created on first use (a device context is process-wide)."""
    with _LOCK:
        if name not in _RUNTIMES:
            if name == "cuda":
                from rocmforge_core.gpu.runtime_cuda import CudaRuntime as cls
            elif name == "hip":
                from rocmforge_core.gpu.runtime_hip import HipRuntime as cls
            else:
                raise ValueError(f"unknown GPU runtime {name!r}")
            _RUNTIMES[name] = cls()
        return _RUNTIMES[name]


def probe(name: str) -> str | None:
    """None when runtime `name` can be opened here, else the one-line reason it cannot."""
    try:
        open_runtime(name)
    except GpuUnavailableError as exc:
        return exc.message
    return None
