"""How much memory a model takes on a backend, said before loading and checked against what is free.

The numbers follow what each backend really allocates: the float32 CPU reference keeps a float32 copy
of every tensor (4 bytes per parameter, whatever the file's types); the packed CPU backend (the
default) reads the file's blocks in the memory map plus one float32 scratch for prompt products; the
llama.cpp-numerics CPU backend and the GPU backends keep the file's packed blocks (the GPU pool rounds to size classes: measured
1.019x on an 8B file). The KV cache holds keys and values of every layer, slot and position: float32
on the CPU, f16 (or f32) on a GPU. The CPU cache is mapped lazily, so its bytes are what a full
context can reach, not what a short chat touches.
"""

from __future__ import annotations

from dataclasses import dataclass

from rocmforge_core.errors import BadInputError

GPU_POOL_OVERHEAD = 1.02  # the device pool's size classes over the tensors' bytes (measured 1.019x)
CACHE_BYTES = {"f32": 4, "f16": 2}
PACKED_SCRATCH_BYTES = 16 << 20  # backends/cpu_packed.py: SCRATCH_FLOATS float32 values


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass(frozen=True)
class Footprint:
    backend: str
    weights: int   # bytes the loaded weights occupy
    kv: int        # bytes of a full KV cache at n_ctx for n_slots
    n_ctx: int
    n_slots: int

    @property
    def total(self) -> int:
        return self.weights + self.kv

    def describe(self) -> str:
        slots = f" x {self.n_slots} slots" if self.n_slots > 1 else ""
        return (f"{_gib(self.total)} (weights {_gib(self.weights)} + KV cache {_gib(self.kv)} for "
                f"{self.n_ctx:,} tokens{slots})")


def weight_bytes(gguf_file, backend: str, numerics: str = "float32") -> int:
    """Bytes the weights of this file take once loaded on `backend` ("cpu", "cuda", "hip")."""
    tensors = gguf_file.tensors.values()
    if backend == "cpu" and numerics == "float32":
        return sum(4 * t.n_elements for t in tensors)
    packed = sum(t.n_bytes for t in tensors)
    if backend == "cpu":
        return packed + (PACKED_SCRATCH_BYTES if numerics == "packed" else 0)
    return int(packed * GPU_POOL_OVERHEAD)


def kv_bytes(config, n_ctx: int, n_slots: int, cache_type: str = "f32") -> int:
    per_value = CACHE_BYTES[cache_type]
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * per_value * n_ctx * n_slots


def footprint(gguf_file, config, backend: str, n_ctx: int, n_slots: int = 1, numerics: str = "float32",
              cache_type: str | None = None) -> Footprint:
    cache = cache_type or ("f32" if backend == "cpu" else "f16")
    return Footprint(backend, weight_bytes(gguf_file, backend, numerics), kv_bytes(config, n_ctx, n_slots, cache),
                     n_ctx, n_slots)


def check_weights_fit(gguf_file, backend: str, numerics: str, free: int | None, where: str) -> int:
    """Refuse, before anything is allocated, weights larger than the memory `where` has free; returns
    their bytes. `free` None (not known here): no check."""
    need = weight_bytes(gguf_file, backend, numerics)
    if free is not None and need > free:
        hint = ("the CPU backend keeps float32 copies of the weights (4 bytes per parameter); "
                "use a GPU backend or a smaller model" if backend == "cpu" and numerics == "float32"
                else "use a smaller model or a smaller quantization")
        raise BadInputError(f"the model's weights need {_gib(need)} on the {backend} backend, but only "
                            f"{_gib(free)} of {where} is available", hint=hint)
    return need


def check_cache_fits(fp: Footprint, free: int | None, where: str) -> None:
    """Refuse a KV cache (at the chosen context) larger than the memory left after the weights."""
    if free is not None and fp.kv > free:
        raise BadInputError(f"a {fp.n_ctx:,}-token context needs {_gib(fp.kv)} of KV cache on the {fp.backend} "
                            f"backend, but only {_gib(free)} of {where} is available after the weights",
                            hint="ask for a smaller -c/--ctx")
