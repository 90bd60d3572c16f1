"""The preallocated key/value cache: fixed-shape per-layer buffers, one slot per sequence.

Shapes never change after `make_cache` (as in gpt-fast), so the engine can keep several sequences in
flight, each in its own slot, and a GPU backend can capture graphs over the same buffers. The cache does
not track lengths: callers say where each write goes (`start`), and attention reads positions
`[0, start + n)` of the slot, so a slot is reused simply by prefilling it again from position 0.
"""

from __future__ import annotations

import numpy as np

from rocmforge_core.errors import BadInputError


class KVCache:
    """Keys and values for `n_layers` layers: each (n_slots, n_kv_heads, n_ctx, head_dim).

    Heads come before positions so that `keys(layer, slot, lo, hi)` is a stack of contiguous
    (positions, head_dim) matrices, which np.matmul hands to BLAS without a copy.

    float32 rather than float16: numpy has no BLAS path for float16, so a float16 cache would be
    converted back to float32 at every decode step, costing more time than the halved memory saves.
    Memory: 2 * n_layers * n_kv_heads * head_dim * 4 bytes per position per slot (SmolLM2: 46 KB,
    Gemma-3-270M: 37 KB), i.e. ~94 MB / ~75 MB for one 2048-position slot. np.zeros maps pages lazily,
    so slots that are never filled cost no resident memory.
    """

    def __init__(self, n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int,
                 dtype=np.float32):
        if n_slots < 1 or n_ctx < 1:
            raise BadInputError(f"a KV cache needs at least one slot and one position "
                                f"(got {n_slots} slots, {n_ctx} positions)")
        self.n_layers, self.n_slots, self.n_ctx = n_layers, n_slots, n_ctx
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        shape = (n_slots, n_kv_heads, n_ctx, head_dim)
        self.k = [np.zeros(shape, dtype) for _ in range(n_layers)]
        self.v = [np.zeros(shape, dtype) for _ in range(n_layers)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def check(self, slot: int, start: int, n: int) -> None:
        """Refuse a write outside the buffers with a clear error instead of an IndexError."""
        if not 0 <= slot < self.n_slots:
            raise BadInputError(f"KV cache slot {slot} does not exist (the cache has {self.n_slots})")
        if start < 0 or start + n > self.n_ctx:
            raise BadInputError(
                f"positions {start}..{start + n - 1} do not fit the context of {self.n_ctx} tokens",
                hint="use a shorter prompt or a larger --ctx")

    def write(self, layer: int, slot: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store k, v of shape (n, n_kv_heads, head_dim) at positions start .. start+n-1."""
        n = k.shape[0]
        self.k[layer][slot, :, start:start + n] = k.transpose(1, 0, 2)
        self.v[layer][slot, :, start:start + n] = v.transpose(1, 0, 2)

    def write_rows(self, layer: int, slots, positions, k: np.ndarray, v: np.ndarray) -> None:
        """Store row i of k, v (B, n_kv_heads, head_dim) at positions[i] of slots[i] (distinct slots).

        One indexed assignment per buffer for a whole decode batch instead of one write per slot.
        """
        self.k[layer][slots, :, positions] = k  # the two index arrays pair up: (B, n_kv, hd)
        self.v[layer][slots, :, positions] = v

    def keys(self, layer: int, slot: int, lo: int, hi: int) -> np.ndarray:
        return self.k[layer][slot, :, lo:hi]  # (n_kv, hi-lo, hd), a view

    def values(self, layer: int, slot: int, lo: int, hi: int) -> np.ndarray:
        return self.v[layer][slot, :, lo:hi]  # (n_kv, hi-lo, hd), a view
