"""The CPU backend's thread count: numpy's BLAS threads and the packed kernels' (numba) threads.

BLAS libraries read their thread count from the environment when they load, so `set_cpu_threads`
must run before numpy is imported; the CLI calls it first thing in a command. If numpy is already
loaded, threadpoolctl (when installed) or OpenBLAS's own setter changes the running library.
The packed backend's kernels run on `kernel_threads()`: the count asked for, else the physical cores
(llama.cpp's default too: a second hyper-thread on a core adds no memory bandwidth).
"""

from __future__ import annotations

import ctypes
import os
import sys

from rocmforge_core.errors import BadInputError

_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")
_limits = None  # threadpoolctl's limiter, kept alive for the life of the process
_requested: int | None = None  # the -t/--threads value, for the packed kernels


def set_cpu_threads(n: int) -> None:
    """Run numpy's BLAS on n threads (n >= 1)."""
    global _limits, _requested
    if n < 1:
        raise BadInputError(f"-t/--threads must be at least 1 (got {n})")
    _requested = n
    os.environ["NUMBA_NUM_THREADS"] = str(max(n, os.cpu_count() or 1))  # numba's pool size, read on import
    if "numba" in sys.modules:
        from rocmforge_core.backends.cpu_kernels import set_threads

        set_threads(n)
    for var in _ENV_VARS:
        os.environ[var] = str(n)
    if "numpy" not in sys.modules:
        return  # the library reads the variables when it loads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        _call_openblas("set", n)
        return
    _limits = threadpool_limits(limits=n, user_api="blas")


def kernel_threads() -> int:
    """Threads for the packed CPU kernels: -t/--threads if given, else the physical core count."""
    return _requested if _requested is not None else physical_cores()


def physical_cores() -> int:
    """Distinct (package, core) pairs in /proc/cpuinfo; the logical CPU count where that is unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return os.cpu_count() or 1
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or os.cpu_count() or 1


def blas_threads() -> int | None:
    """The thread count the loaded BLAS reports (None when it cannot be asked)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _call_openblas("get")
    counts = [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return counts[0] if counts else None


def _call_openblas(kind: str, n: int | None = None) -> int | None:
    for lib in _loaded_openblas():
        for getter in _GETTERS:
            name = getter.replace("get_", "set_") if kind == "set" else getter
            fn = getattr(lib, name, None)
            if fn is not None:
                return fn(ctypes.c_int(n)) if kind == "set" else int(fn())
    return None


def _loaded_openblas() -> list:
    """OpenBLAS libraries mapped into this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return [ctypes.CDLL(p) for p in sorted(paths)]
