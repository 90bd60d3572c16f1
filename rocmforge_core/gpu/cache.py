"""The KV cache on the device: per layer, keys and values (f16 by default, or float32) at fixed addresses."""

from __future__ import annotations

from typing import Any

import numpy as np

from rocmforge_core.errors import BadInputError
from rocmforge_core.kv_cache import KVCache


CACHE_TYPES = {"f16": np.dtype(np.float16), "f32": np.dtype(np.float32)}


class GpuKVCache:
    """The KV cache on the device: per layer, keys and values (n_slots, n_kv_heads, n_ctx, head_dim)."""

    def __init__(self, ops: Any, n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int,
                 cache_type: str = "f16"):
        if cache_type not in CACHE_TYPES:
            raise BadInputError(f"unknown cache type '{cache_type}'", hint="choose " + " or ".join(CACHE_TYPES))
        if n_slots < 1 or n_ctx < 1:
            raise BadInputError(f"a KV cache needs at least one slot and one position "
                                f"(got {n_slots} slots, {n_ctx} positions)")
        self.ops = ops
        self.n_layers, self.n_slots, self.n_ctx = n_layers, n_slots, n_ctx
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self.shape = (n_slots, n_kv_heads, n_ctx, head_dim)
        self.cache_type = cache_type  # the kernels' suffix: kv_append_<type>, attn_<type>
        self.dtype = CACHE_TYPES[cache_type]
        layer_bytes = self.dtype.itemsize * n_slots * n_kv_heads * n_ctx * head_dim
        rt = ops.rt
        self._ptrs: list[int] = []
        try:
            for _ in range(2 * n_layers):
                ptr = rt.alloc(layer_bytes)
                self._ptrs.append(ptr)
                rt.memset8(ptr, 0, layer_bytes, ops.stream)  # unwritten positions read as 0, as on the CPU
        except Exception:
            self.close()
            raise
        self.k = self._ptrs[:n_layers]
        self.v = self._ptrs[n_layers:]
        self.nbytes = 2 * n_layers * layer_bytes
        # Captured decode steps (gpu/decode_step.py) that write this cache, by (id(model), batch size); None: capture failed,
        # run that step op by op. They bake in the cache's addresses, so they die with it.
        self.graphs: dict[tuple[int, int], Any] = {}
        # Captured prompt chunks (gpu/prefill_step.py), by (id(model), chunk length); same rules.
        self.prefill_graphs: dict[tuple[int, int], Any] = {}

    check = KVCache.check  # same bounds rules and messages as the CPU cache

    def keys(self, layer: int, slot: int, lo: int, hi: int) -> np.ndarray:
        return self._download(self.k[layer])[slot, :, lo:hi]

    def values(self, layer: int, slot: int, lo: int, hi: int) -> np.ndarray:
        return self._download(self.v[layer])[slot, :, lo:hi]

    def _download(self, ptr: int) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        self.ops.rt.copy_dtoh(out, ptr, out.nbytes, self.ops.stream)
        self.ops.rt.stream_synchronize(self.ops.stream)
        return out.astype(np.float32)

    @property
    def bytes_per_token(self) -> int:
        """Cache bytes one position of context takes (keys and values of every layer)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype.itemsize

    def close(self) -> None:
        graphs, self.graphs = getattr(self, "graphs", {}), {}
        prefill, self.prefill_graphs = getattr(self, "prefill_graphs", {}), {}
        for g in list(graphs.values()) + list(prefill.values()):
            if g is not None:
                g.close()
        ptrs, self._ptrs = self._ptrs, []
        if ptrs:
            self.ops.rt.synchronize()
            for ptr in ptrs:
                self.ops.rt.free(ptr)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver frees everything anyway
            pass
