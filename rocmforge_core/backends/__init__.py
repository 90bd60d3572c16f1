"""Backend selection: which runtime the model math runs on (hip, cuda or the numpy reference)."""

from __future__ import annotations

import importlib.util

from rocmforge_core.errors import BadInputError

BACKENDS = ("auto", "cpu", "hip", "cuda")
_EXTRA = {"hip": "rocmforge[rocm] (hip-python)", "cuda": "rocmforge[cuda] (cuda-bindings)"}


def gpu_runtime_available(name: str) -> bool:
    """True when the Python runtime for a GPU backend is importable and has a GPU model path."""
    if name == "hip":
        return importlib.util.find_spec("hip") is not None and _gpu_models_built()
    if name == "cuda":
        return importlib.util.find_spec("cuda") is not None and _gpu_models_built()
    return False


def _gpu_models_built() -> bool:
    return importlib.util.find_spec("rocmforge_core.backends.gpu") is not None


def select_backend(requested: str = "auto") -> tuple[str, str]:
    """Return (backend, reason). `auto` tries hip, then cuda, then falls back to the CPU."""
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise BadInputError(f"unknown backend '{requested}'", hint="choose auto, cpu, hip or cuda")
    if requested == "cpu":
        return "cpu", "requested"
    if requested in ("hip", "cuda"):
        if not gpu_runtime_available(requested):
            raise BadInputError(
                f"the {requested} backend is not available on this machine",
                hint=f"install {_EXTRA[requested]} and the GPU driver, or use --backend cpu",
            )
        return requested, "requested"
    for name in ("hip", "cuda"):
        if gpu_runtime_available(name):
            return name, f"auto: {name} runtime found"
    return "cpu", "auto: no GPU runtime found"
