"""Model architectures: `load_model` picks the module named after the GGUF's general.architecture.

Each architecture is one small module here (`llama`, `gemma3`, `qwen2`, `qwen3`) whose `Model` class
configures the shared decoder in base.py; a few architectures llama.cpp treats alike are aliases.
"""

from __future__ import annotations

import importlib

from rocmforge_core.errors import BadInputError, UnsupportedModelError

ARCHITECTURES = ("llama", "gemma3", "qwen2", "qwen3")
ALIASES = {"mistral": "llama"}
# Backend name -> module in rocmforge_core.backends providing make_ops(name).
BACKEND_MODULES = {"cpu": "cpu", "hip": "gpu", "cuda": "gpu"}


def load_model(gguf_file, backend="cpu"):
    """Build the model of an open GGUFFile on a backend ("cpu", "hip", "cuda" or an ops object)."""
    arch = ALIASES.get(gguf_file.architecture, gguf_file.architecture)
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture '{gguf_file.architecture}' is not supported",
            hint="supported: " + ", ".join(ARCHITECTURES + tuple(ALIASES)))
    module = importlib.import_module(f"rocmforge_core.models.{arch}")
    return module.Model.from_gguf(gguf_file, make_ops(backend))


def make_ops(backend):
    """The ops object of a backend: every backend module exposes `make_ops(name)`."""
    if not isinstance(backend, str):
        return backend
    module_name = BACKEND_MODULES.get(backend)
    if module_name is None:
        raise BadInputError(f"unknown backend '{backend}'", hint="choose cpu, hip or cuda")
    module = importlib.import_module(f"rocmforge_core.backends.{module_name}")
    return module.make_ops(backend)
