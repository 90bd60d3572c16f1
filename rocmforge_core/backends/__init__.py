"""Backend selection: which runtime the model math runs on (hip, cuda or the numpy reference).

`auto` tries hip (AMD), then cuda (NVIDIA), then falls back to the CPU, and says which it picked and
why. Asking for hip or cuda where it cannot run is a one-line error naming the extra to install.
Nothing here imports hip-python or cuda-bindings at import time: runtimes are probed when selected.
"""

from __future__ import annotations

from rocmforge_core.errors import BadInputError

BACKENDS = ("auto", "cpu", "hip", "cuda")
_EXTRA = {"hip": "rocmforge[rocm] (hip-python) and ROCm", "cuda": "rocmforge[cuda] (cuda-bindings, NVRTC)"}


def gpu_runtime_problem(name: str) -> str | None:
    """None when GPU runtime `name` opens here, else why not (one line)."""
    from rocmforge_core.gpu import probe

    try:
        return probe(name)
    except Exception as exc:  # a broken install must not take the CPU path down with it
        return f"{type(exc).__name__}: {exc}"


def gpu_runtime_available(name: str) -> bool:
    """True when the runtime for GPU backend `name` can be opened on this machine."""
    return name in ("hip", "cuda") and gpu_runtime_problem(name) is None


def select_backend(requested: str = "auto") -> tuple[str, str]:
    """Return (backend, reason). `auto` tries hip, then cuda, then falls back to the CPU."""
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise BadInputError(f"unknown backend '{requested}'", hint="choose auto, cpu, hip or cuda")
    if requested == "cpu":
        return "cpu", "requested"
    if requested in ("hip", "cuda"):
        problem = gpu_runtime_problem(requested)
        if problem is not None:
            raise BadInputError(f"the {requested} backend is not available: {problem}",
                                hint=f"install {_EXTRA[requested]}, or use --backend cpu")
        return requested, "requested"
    skipped = []
    for name in ("hip", "cuda"):
        problem = gpu_runtime_problem(name)
        if problem is None:
            return name, f"auto: picked {name} ({_device_name(name)})"
        skipped.append(name)
    return "cpu", "auto: no GPU runtime found (tried " + ", ".join(skipped) + "), using cpu"


def _device_name(name: str) -> str:
    from rocmforge_core.gpu import open_runtime

    return open_runtime(name).device.name
