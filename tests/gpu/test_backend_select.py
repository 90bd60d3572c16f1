"""`--backend` selection: auto prefers hip, then cuda, then cpu and says which; a missing runtime is a
one-line error naming the extra to install; importing the GPU modules never needs a GPU runtime."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rocmforge_core import backends
from rocmforge_core.errors import BadInputError


def test_gpu_modules_import_without_any_gpu_package():
    code = ("import sys; sys.modules['hip'] = None; sys.modules['cuda'] = None\n"
            "import rocmforge_core.backends.gpu, rocmforge_core.gpu.runtime_cuda, rocmforge_core.gpu.runtime_hip\n"
            "from rocmforge_core.backends import select_backend\n"
            "print(select_backend('auto'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "('cpu', 'auto: no GPU runtime found (tried hip, cuda), using cpu')" in r.stdout


def test_auto_order_and_reason(monkeypatch):
    seen = []

    def problem(name):
        seen.append(name)
        return None if name == "cuda" else "hip-python is not installed"

    monkeypatch.setattr(backends, "gpu_runtime_problem", problem)
    monkeypatch.setattr(backends, "_device_name", lambda name: "Some GPU")
    assert backends.select_backend("auto") == ("cuda", "auto: picked cuda (Some GPU)")
    assert seen == ["hip", "cuda"]  # hip is tried first
    monkeypatch.setattr(backends, "gpu_runtime_problem", lambda name: None)
    assert backends.select_backend("auto")[0] == "hip"


@pytest.mark.parametrize("name,extra", [("cuda", "rocmforge[cuda]"), ("hip", "rocmforge[rocm]")])
def test_missing_runtime_is_one_line_naming_the_extra(monkeypatch, name, extra):
    monkeypatch.setattr(backends, "gpu_runtime_problem", lambda n: f"{n} package is not installed")
    with pytest.raises(BadInputError) as info:
        backends.select_backend(name)
    line = info.value.one_line()
    assert "\n" not in line and extra in line and f"the {name} backend is not available" in line
    assert info.value.exit_code == 2


def test_unknown_backend_is_bad_input():
    with pytest.raises(BadInputError):
        backends.select_backend("metal")


def test_a_broken_runtime_package_falls_back_instead_of_crashing(monkeypatch):
    import rocmforge_core.gpu as gpu

    def boom(name):
        raise OSError("libamdhip64.so: cannot open shared object file")

    monkeypatch.setattr(gpu, "probe", boom)
    assert backends.gpu_runtime_problem("hip").startswith("OSError")
    assert backends.select_backend("auto")[0] == "cpu"
