"""The kernel table, read from hip_kernels/ itself: which file defines each `extern "C" __global__`
function and the argument layout its signature implies, plus the per-runtime loader that compiles
a file on first use and hands out (function, PackedArgs) pairs.

Why parse the sources: a hand-kept table of files and layouts silently drifts from the kernels (a
wrong layout packs arguments the kernel misreads). Here adding a kernel is writing it; changing a
signature changes its layout. Kernels stamped out by a macro (RF_WEIGHT_KERNELS(T, D) in the prelude)
are found by expanding each invocation with the macro's own body.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocmforge_core.gpu.runtime import PRELUDE, GpuError, GpuRuntime, PackedArgs, kernel_dir

# `void RF_BOUNDS(threads, blocks) name(` (launch bounds, as CUDA and HIP place them) is a kernel too.
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:RF_BOUNDS\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)')
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)\(([^)]*)\)(.*)$", re.M)
# Scalar parameter types -> PackedArgs codes; pointers are always "p" (device addresses).
_SCALARS = {
    "int": "i32", "int32_t": "i32", "unsigned": "i32", "unsigned int": "i32", "uint32_t": "i32",
    "long long": "i64", "long long int": "i64", "int64_t": "i64", "float": "f32",
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


class KernelSourceError(GpuError):
    """A kernel signature the table cannot turn into a layout, or a name defined twice."""


@dataclass(frozen=True)
class Kernel:
    name: str
    file: str                 # hip_kernels/<file>.hip
    layout: tuple[str, ...]   # "p", "i32", "i64", "f32" per argument, in source order


def _strip(src: str) -> str:
    """Source without comments and with backslash-continued lines joined (one #define per line)."""
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    src = re.sub(r"//[^\n]*", "", src)
    return src.replace("\\\n", " ")


def param_layout(kernel: str, params: str) -> tuple[str, ...]:
    """The layout of one parameter list, e.g. 'const float* x, int n' -> ("p", "i32")."""
    out = []
    for param in filter(None, (p.strip() for p in params.split(","))):
        if param == "void":
            continue
        if "*" in param:
            out.append("p")
            continue
        words = [w for w in param.split() if w not in _QUALIFIERS][:-1]  # drop the parameter name
        code = _SCALARS.get(" ".join(words))
        if code is None:
            raise KernelSourceError(f"kernel {kernel}: no argument layout for parameter {param!r}")
        out.append(code)
    return tuple(out)


def _macros(src: str) -> dict[str, tuple[list[str], str]]:
    """#define NAME(args) bodies that define kernels: name -> (parameter names, body)."""
    found = {}
    for m in _DEFINE.finditer(src):
        if "__global__" in m.group(3):
            found[m.group(1)] = ([a.strip() for a in m.group(2).split(",")], m.group(3))
    return found


def _expand(body: str, params: list[str], args: list[str]) -> str:
    """The macro body with its parameters replaced and `##` token pastes joined."""
    for p, a in zip(params, args):
        body = re.sub(rf"\b{p}\b", a, body)
    return re.sub(r"\s*##\s*", "", body)


def _kernels_in(src: str, macros: dict[str, tuple[list[str], str]]) -> list[tuple[str, str]]:
    """(name, parameter list) of every kernel in one file, macro-stamped ones included."""
    plain = _DEFINE.sub("", src)
    found = [(m.group(1), m.group(2)) for m in _KERNEL.finditer(plain)]
    for name, (params, body) in macros.items():
        for call in re.finditer(rf"^[ \t]*{name}\s*\(([^)]*)\)", plain, re.M):
            args = [a.strip() for a in call.group(1).split(",")]
            found += [(m.group(1), m.group(2)) for m in _KERNEL.finditer(_expand(body, params, args))]
    return found


def scan(directory: Path) -> dict[str, Kernel]:
    """Every kernel of every <file>.hip in `directory`, by name."""
    prelude_path = directory / PRELUDE
    prelude = _strip(prelude_path.read_text()) if prelude_path.exists() else ""
    table: dict[str, Kernel] = {}
    for path in sorted(directory.glob("*.hip")):
        src = _strip(path.read_text())
        for name, params in _kernels_in(src, {**_macros(prelude), **_macros(src)}):
            if name in table:
                raise KernelSourceError(f"kernel {name} is defined in both {table[name].file} and {path.stem}")
            table[name] = Kernel(name, path.stem, param_layout(name, params))
    return table


@functools.lru_cache(maxsize=None)
def kernel_table(directory: Path | None = None) -> dict[str, Kernel]:
    """The shipped kernels (read once per process: the sources do not change under a running model)."""
    return scan(directory or kernel_dir())


def weight_kernel(type_name: str, table: dict[str, Kernel] | None = None) -> str | None:
    """The kernel suffix of a GGUF weight type ("Q4_K" -> "q4_K": mv_q4_K and get_rows_q4_K), or
    None when hip_kernels/ has no mat-vec and gather for it."""
    head, _, rest = type_name.partition("_")
    suffix = head.lower() + ("_" + rest if rest else "")
    table = kernel_table() if table is None else table
    return suffix if f"mv_{suffix}" in table and f"get_rows_{suffix}" in table else None


class KernelLoader:
    """Kernels of one runtime: compiles and loads a file on first use of any of its kernels."""

    def __init__(self, rt: GpuRuntime, table: dict[str, Kernel] | None = None):
        self.rt = rt
        self.table = kernel_table() if table is None else table
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, tuple[Any, PackedArgs]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[Any, PackedArgs]:
        """(function, its reusable PackedArgs)."""
        entry = self._functions.get(name)
        if entry is None:
            kernel = self.table.get(name)
            if kernel is None:
                raise KernelSourceError(f"no kernel named {name} in hip_kernels/")
            with self._lock:
                if kernel.file not in self._modules:
                    self._modules[kernel.file] = self.rt.load_module(self.rt.compile(kernel.file))
                fn = self.rt.get_function(self._modules[kernel.file], name)
                entry = self._functions[name] = (fn, PackedArgs(kernel.layout))
        return entry
