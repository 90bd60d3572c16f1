"""The CPU backend's thread count: the threads numpy's BLAS uses for every matrix product.

BLAS libraries read their thread count from the environment when they load, so `set_cpu_threads`
must run before numpy is imported; the CLI calls it first thing in a command. If numpy is already
loaded, threadpoolctl (when installed) or OpenBLAS's own setter changes the running library.
"""

from __future__ import annotations

import ctypes
import os
import sys

from rocmforge_core.errors import BadInputError

_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")
_limits = None  # threadpoolctl's limiter, kept alive for the life of the process


def set_cpu_threads(n: int) -> None:
    """Run numpy's BLAS on n threads (n >= 1)."""
    global _limits
    if n < 1:
        raise BadInputError(f"-t/--threads must be at least 1 (got {n})")
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
