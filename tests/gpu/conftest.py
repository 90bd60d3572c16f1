"""Fixtures for the GPU tests: one runtime per backend under test.

Backends: `emu` (the kernels compiled for the CPU in host emulation: runs anywhere with g++),
`cuda` (cuda-bindings + NVRTC) and `hip` (hip-python; on NVIDIA through scripts/hip_shim).
ROCMFORGE_GPU_BACKENDS=cuda,hip picks which run (default: all three); a GPU backend that cannot
open here is skipped with the reason, so CI without a GPU shows exactly why those tests did not run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALL_BACKENDS = ("emu", "cuda", "hip")


def selected_backends() -> list[str]:
    raw = os.environ.get("ROCMFORGE_GPU_BACKENDS", "")
    names = [b.strip() for b in raw.split(",") if b.strip()] or list(ALL_BACKENDS)
    return [b for b in names if b in ALL_BACKENDS]


def _params():
    return [pytest.param(b, marks=[] if b == "emu" else [pytest.mark.gpu]) for b in selected_backends()]


_RUNTIMES: dict = {}


def open_backend_runtime(name: str):
    """The runtime for a test backend, or pytest.skip with the reason it is unavailable."""
    if name not in _RUNTIMES:
        if name == "emu":
            from emu_runtime import EmuRuntime, host_compiler

            if host_compiler() is None:
                pytest.skip("emu: no host C++ compiler (g++) for the kernel emulation")
            _RUNTIMES[name] = EmuRuntime()
        else:
            from rocmforge_core.gpu import GpuUnavailableError, open_runtime

            try:
                _RUNTIMES[name] = open_runtime(name)
            except GpuUnavailableError as exc:
                _RUNTIMES[name] = exc
    rt = _RUNTIMES[name]
    if isinstance(rt, Exception):
        pytest.skip(f"{name} GPU runtime unavailable: {rt.one_line()}")
    return rt


@pytest.fixture(scope="session", params=_params())
def backend_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def rt(backend_name):
    return open_backend_runtime(backend_name)


@pytest.fixture(scope="session")
def ops(rt):
    """GPU ops with every product in float32: the CPU backend's arithmetic up to summation order,
    which the float-reference tests hold to 1e-4."""
    from rocmforge_core.backends.gpu import GpuOps

    ops = GpuOps(rt)
    ops.q8_activations = False
    ops.kv_cache_type = "f32"
    return ops


@pytest.fixture(scope="session")
def ops_q8(rt):
    """GPU ops as users run them: 8-bit activations for the weight types of the int8 mat-vec."""
    from rocmforge_core.backends.gpu import GpuOps

    ops = GpuOps(rt)
    ops.q8_activations = True
    return ops
