"""The numpy backend: the reference implementation of every op the model code calls.

The model code (rocmforge_core/models/base.py) never touches arrays directly; it calls one method of a
backend ops object per operation. A GPU backend supplies the same methods over device buffers and is
tested against this one, op by op.

Weight representation (why float32 copies): this backend is the float32 reference that the GPU
backends, the packed CPU backend and the tests compare with, so it computes the plain float32 product
of the dequantized weights. Every linear weight is dequantized once into a C-contiguous float32
(n_out, n_in) matrix; Q|K|V are fused into one matrix and gate|up into another, so each layer makes
three large BLAS calls instead of six small ones. The tied output projection reuses the embedding
table (no second copy). Memory cost: 4 bytes per parameter (SmolLM2-135M ~540 MB, Gemma-3-270M
~1.07 GB), which is why users run the packed subclass (backends/cpu_packed.py, numerics="packed"),
whose weights stay in the file's blocks.

Numerics: plain float32 math on the dequantized weights, which matches llama.cpp run on the same
weights converted to F32 (logits within ~1e-3). llama.cpp's own CPU arithmetic on the quantized file
(8-bit activations, f16 KV, its kernels' summation orders) is reproduced bit for bit by a subclass in
backends/cpu_llama.py (numerics="llama.cpp"), which overrides only the ops it changes.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rocmforge_core.kv_cache import KVCache
from rocmforge_core.rope import PairTable, RopeSpec, cos_sin, table_size

# Queries per attention block in prefill: bounds the (heads, block, keys) score matrix to a few MB
# per thousand cached positions, whatever the prompt length, and skips most of the causally masked
# half of the scores (block i only reads keys up to its own last position).
ATTN_BLOCK = 128
_GELU_C = np.float32(np.sqrt(2.0 / np.pi))
# "packed": the users' default (backends/cpu_packed.py); "float32": this module, the reference every
# other backend and test compares with; "llama.cpp": llama.cpp's CPU arithmetic bit for bit.
NUMERICS = ("packed", "float32", "llama.cpp")

def _halves(gate_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of the gate and up halves (np.split costs ~15 us of Python per call)."""
    half = gate_up.shape[-1] // 2
    return gate_up[..., :half], gate_up[..., half:]


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, partner: np.ndarray) -> np.ndarray:
    out = x * cos
    swapped = x.take(partner, axis=-1)
    swapped *= sin
    out += swapped
    return out


@dataclass
class Linear:
    """A dense layer on the CPU: y = x @ w.T (+ bias). w is float32 (n_out, n_in), C-contiguous."""

    w: np.ndarray
    bias: np.ndarray | None = None

    @property
    def n_out(self) -> int:
        return self.w.shape[0]


class CpuBackend:
    """numpy ops; arrays are float32, activations are (rows, features)."""

    name = "cpu"
    numerics = "float32"
    keeps_all_rows = False  # the model may drop rows it no longer needs before the last layer

    def __init__(self):
        self._rope_tables: dict = {}

    # ---- weights: from the GGUF file into this backend's representation ----

    def linear(self, gguf_file, names: Sequence[str], bias_names: Sequence[str] | None = None) -> Linear:
        """One matrix from one or more GGUF weights stacked along the output dimension (fusion)."""
        parts = [gguf_file.dequant(n) for n in names]
        w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        bias = None
        if bias_names:
            bias = np.concatenate([gguf_file.dequant(n).reshape(-1) for n in bias_names])
            bias = np.ascontiguousarray(bias, dtype=np.float32)
        return Linear(np.ascontiguousarray(w, dtype=np.float32), bias)

    def weights_loaded(self) -> None:
        """Called once a model's weights are all loaded (the GPU backend tunes its kernels then)."""

    def vector(self, gguf_file, name: str) -> np.ndarray:
        return np.ascontiguousarray(gguf_file.dequant(name).reshape(-1), dtype=np.float32)

    def make_cache(self, n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        return KVCache(n_layers, n_slots, n_ctx, n_kv_heads, head_dim)

    # ---- ops ----

    def embedding(self, table: Linear, tokens: np.ndarray) -> np.ndarray:
        return table.w[tokens]  # (T, d), a gathered copy

    def matmul(self, x: np.ndarray, lin: Linear, residual: np.ndarray | None = None) -> np.ndarray:
        """x @ W.T (+ bias) (+ residual: the same sum as add(residual, product))."""
        y = self._product(x, lin)
        return y if residual is None else residual + y

    def _product(self, x: np.ndarray, lin: Linear) -> np.ndarray:
        y = x @ lin.w.T
        if lin.bias is not None:
            y += lin.bias
        return y

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """Normalise over the last axis (also used per head for q/k norms, x of shape (T, heads, hd))."""
        # The mean of squares in float64, as ggml sums it, then the scale in float32. This is what
        # np.mean computes (a pairwise sum, then / n), without its wrapper's cost on decode-sized rows.
        ss = np.add.reduce(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
        if ss.size == 1:  # one row (decode): the same roundings on scalars, without four ufunc calls
            # (float32 sqrt is the float64 sqrt rounded once: a double holds enough bits for that)
            r = np.float32(1.0) / np.float32(math.sqrt(np.float32(ss.item() / x.shape[-1]) + np.float32(eps)))
        else:
            r = np.add(ss / x.shape[-1], np.float32(eps), dtype=np.float32)  # rounds the mean first
            np.sqrt(r, out=r)
            np.divide(np.float32(1.0), r, out=r)
        y = x * r
        y *= weight
        return y

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        return x * np.float32(s)

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        return np.tanh(x / np.float32(cap)) * np.float32(cap)

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        """silu(gate) * up for gate|up fused along the last axis."""
        gate, up = _halves(gate_up)
        out = np.negative(gate)
        with np.errstate(over="ignore"):  # exp(-x) = inf for x < -88 gives x / inf = -0, as wanted
            np.exp(out, out=out)
        out += np.float32(1.0)
        np.divide(gate, out, out=out)
        out *= up
        return out

    def geglu(self, gate_up: np.ndarray) -> np.ndarray:
        """gelu_tanh(gate) * up for gate|up fused along the last axis."""
        gate, up = _halves(gate_up)
        return _gelu(gate) * up

    def rope_qk(self, q: np.ndarray, k: np.ndarray, positions: np.ndarray, spec: RopeSpec):
        """rope of q and of k at the same positions (a GPU does both in one launch)."""
        return self.rope(q, positions, spec), self.rope(k, positions, spec)

    def rope(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec) -> np.ndarray:
        """Rotate x of shape (T, heads, head_dim) by its positions (T,)."""
        positions = np.asarray(positions)
        table = self._rope_tables.get(spec)
        try:
            cos, sin = table.cos.take(positions, axis=0), table.sin.take(positions, axis=0)  # (T, 1, dim)
        except (AttributeError, IndexError):  # no table for this spec yet, or positions past its end
            table = self._rope_table(spec, int(positions.max()))
            cos, sin = table.cos.take(positions, axis=0), table.sin.take(positions, axis=0)
        if spec.dim == x.shape[-1]:
            return self._rotate(x, cos, sin, table)
        out = x.copy()  # the dimensions past spec.dim pass through unrotated
        out[..., :spec.dim] = self._rotate(x[..., :spec.dim], cos, sin, table)
        return out

    def _rotate(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, table: PairTable) -> np.ndarray:
        return _rotate(x, cos, sin, table.partner)

    def _rope_table(self, spec: RopeSpec, max_pos: int) -> PairTable:
        """Build the spec's table up to at least max_pos; every layer with this spec shares it."""
        cos, sin = self._cos_sin(spec, table_size(max_pos))
        table = PairTable.build(spec, cos, sin)
        self._rope_tables[spec] = table
        return table

    def _cos_sin(self, spec: RopeSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
        return cos_sin(spec, size)  # float64 angles, rounded once

    def glu_matmul(self, gate_up, activation: str, lin, residual=None):
        """matmul(swiglu(gate_up) ("silu") or geglu(gate_up), lin, residual): one op so that a backend
        may fuse the two (the GPU does for short rows)."""
        h = self.swiglu(gate_up) if activation == "silu" else self.geglu(gate_up)
        return self.matmul(h, lin, residual=residual)

    def norm_matmul(self, x, weight, eps: float, lin):
        """matmul(rms_norm(x, weight, eps), lin): one op so that a backend may fuse the two (the GPU
        does for short rows)."""
        return self.matmul(self.rms_norm(x, weight, eps), lin)

    def rope_attention(self, q, k, v, positions, spec: RopeSpec, cache, layer: int, slots: Sequence[int],
                       starts: Sequence[int], counts: Sequence[int], scale: float, window: int | None):
        """rope_qk(q, k), then attention: one op so that a backend may fuse the two (the GPU does)."""
        q, k = self.rope_qk(q, k, positions, spec)
        return self.attention(q, k, v, cache, layer, slots, starts, counts, scale, window)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
                  scale: float, window: int | None) -> np.ndarray:
        """Write k, v into the cache, then attend; returns (N, heads * head_dim).

        The N rows of q, k, v (N, heads|kv_heads, hd) belong to len(slots) sequences, `counts[b]` rows
        each, at positions starts[b] .. starts[b] + counts[b] - 1: prefill is one sequence of T rows,
        a batched decode step is B sequences of one row. A query at position p sees the keys at
        positions j <= p, and with a sliding window only those with p - j < window.
        """
        if len(slots) == q.shape[0] and max(counts) == 1:  # one row per sequence: a decode step
            if len(slots) == 1:
                cache.write(layer, slots[0], starts[0], k, v)
            else:
                cache.write_rows(layer, np.asarray(slots), np.asarray(starts), k, v)
            return self._attend_rows(q, cache, layer, slots, starts, scale, window)
        out = np.empty((q.shape[0], q.shape[1] * q.shape[2]), dtype=np.float32)
        row = 0
        for slot, start, n in zip(slots, starts, counts):
            cache.write(layer, slot, start, k[row:row + n], v[row:row + n])
            for lo in range(0, n, ATTN_BLOCK):
                hi = min(n, lo + ATTN_BLOCK)
                out[row + lo:row + hi] = self._attend(q[row + lo:row + hi], cache, layer, slot,
                                                      start + lo, scale, window)
            row += n
        return out

    def _attend(self, q: np.ndarray, cache: KVCache, layer: int, slot: int, p0: int,
                scale: float, window: int | None) -> np.ndarray:
        """Queries q (n, heads, hd) at positions p0.. of one slot against that slot's cached keys."""
        n, n_heads, hd = q.shape
        n_kv = cache.n_kv_heads
        group = n_heads // n_kv
        k_lo = 0 if window is None else max(0, p0 - window + 1)
        k_hi = p0 + n
        keys = cache.keys(layer, slot, k_lo, k_hi)      # (n_kv, L, hd)
        values = cache.values(layer, slot, k_lo, k_hi)  # (n_kv, L, hd)
        # Query head h reads kv head h // group (llama.cpp's GQA broadcast): group the query heads
        # of each kv head together so one batched matmul per kv head covers all of them.
        qg = q.reshape(n, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * n, hd)
        scores = (qg @ keys.transpose(0, 2, 1)).reshape(n_kv, group, n, -1)
        scores *= np.float32(scale)
        _apply_mask(scores, p0, k_lo, window)
        _exp_shifted(scores)
        self._normalise(scores, np.add.reduce(scores, axis=-1, keepdims=True))
        ctx = scores.reshape(n_kv, group * n, -1) @ values  # (n_kv, group*n, hd)
        return ctx.reshape(n_kv, group, n, hd).transpose(2, 0, 1, 3).reshape(n, n_heads * hd)

    def _attend_rows(self, q: np.ndarray, cache: KVCache, layer: int, slots: Sequence[int],
                     positions: Sequence[int], scale: float, window: int | None) -> np.ndarray:
        """One query per slot (B, heads, hd), each at the end of its slot: a decode step.

        A last query sees every cached key of its slot, so there is no mask; a window only moves the
        first key. The slots' score rows lie side by side in one (n_kv, group, total keys) buffer so
        that the softmax's elementwise passes run once for the whole batch. The sums and matmuls stay
        per slot, over that slot's keys only, so each slot gets the same bits as when it decodes alone.
        """
        n_rows, n_heads, hd = q.shape
        n_kv = cache.n_kv_heads
        group = n_heads // n_kv
        firsts = [0 if window is None else max(0, p - window + 1) for p in positions]
        lens = [p + 1 - lo for p, lo in zip(positions, firsts)]
        offs = [0, *itertools.accumulate(lens)]
        rows = list(zip(slots, firsts, lens, offs))
        scores = np.empty((n_kv, group, offs[-1]), np.float32)
        qg = q.reshape(n_rows, n_kv, group, hd)
        kc, vc = cache.k[layer], cache.v[layer]
        for b, (slot, lo, n, o) in enumerate(rows):
            np.matmul(qg[b], kc[slot, :, lo:lo + n].transpose(0, 2, 1), out=scores[:, :, o:o + n])
        scores *= np.float32(scale)
        if n_rows == 1:
            _exp_shifted(scores)
            total = np.add.reduce(scores, axis=-1, keepdims=True)
        else:
            scores -= np.repeat(np.maximum.reduceat(scores, offs[:-1], axis=-1), lens, axis=-1)
            np.exp(scores, out=scores)
            total = np.empty((n_kv, group, n_rows), np.float32)
            for b, (_, _, n, o) in enumerate(rows):
                np.add.reduce(scores[:, :, o:o + n], axis=-1, out=total[:, :, b])
        inv = (1.0 / total).astype(np.float32, copy=False)
        scores *= inv if n_rows == 1 else np.repeat(inv, lens, axis=-1)
        ctx = np.empty((n_rows, n_kv, group, hd), np.float32)
        for b, (slot, lo, n, o) in enumerate(rows):
            np.matmul(scores[:, :, o:o + n], vc[slot, :, lo:lo + n], out=ctx[b])
        return ctx.reshape(n_rows, n_heads * hd)

    @staticmethod
    def _normalise(scores: np.ndarray, total: np.ndarray) -> None:
        scores *= (1.0 / total).astype(np.float32, copy=False)


def _exp_shifted(scores: np.ndarray) -> None:
    """exp(scores - row max) in place: the softmax numerator."""
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)


def _apply_mask(scores: np.ndarray, p0: int, k_lo: int, window: int | None) -> None:
    """Hide (add -inf to) the scores (..., n, L) of keys k_lo.. that queries at p0.. may not see.

    Only two column ranges can hold hidden keys: those after the first query (causality) and, with
    a window, those too old for the last query. The columns between are visible to every query and
    are left alone rather than having zeros added.
    """
    n, n_keys = scores.shape[-2:]
    right = p0 + 1 - k_lo  # first column some query may not see yet
    if right < n_keys:
        scores[..., right:] += _mask(-1, n, n_keys - right, window)  # keys from p0 + 1
    if window is not None:
        left = min(p0 + n - window - k_lo, right)  # columns before this are too old for some query
        if left > 0:
            scores[..., :left] += _mask(p0 - k_lo, n, left, window)  # keys from k_lo


@functools.lru_cache(maxsize=16)
def _mask(q0: int, n: int, n_keys: int, window: int | None) -> np.ndarray:
    """Additive (n, n_keys) mask: 0 where a query at q0+i may see the key at j, -inf elsewhere.

    Positions count from the first key, so the masks depend only on the block's shape and every
    layer of a forward pass reuses them (hence the cache; the arrays are read-only).
    """
    qpos = np.arange(q0, q0 + n)[:, None]
    kpos = np.arange(n_keys)[None, :]
    hidden = kpos > qpos
    if window is not None:
        hidden |= (qpos - kpos) >= window
    mask = np.where(hidden, np.float32(-np.inf), np.float32(0.0))
    mask.flags.writeable = False
    return mask


def make_ops(name: str = "cpu", numerics: str = "float32") -> CpuBackend:
    """Entry point every backend module provides (see rocmforge_core.models.load_model): by default the
    float32 reference; numerics="packed" the backend on the file's blocks (what the engine runs for
    users), numerics="llama.cpp" the subclass that reproduces llama.cpp's CPU results."""
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, not {numerics!r}")
    if numerics == "llama.cpp":
        from rocmforge_core.backends.cpu_llama import LlamaCppBackend

        return LlamaCppBackend()
    if numerics == "packed":
        from rocmforge_core.backends.cpu_packed import PackedCpuBackend
        from rocmforge_core.threads import kernel_threads

        return PackedCpuBackend(threads=kernel_threads())
    return CpuBackend()


def _gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(c (x + 0.044715 x^3))), evaluated in that order but in two buffers."""
    inner = np.float32(0.044715) * x
    inner *= x
    inner *= x
    inner += x
    inner *= _GELU_C
    np.tanh(inner, out=inner)
    inner += np.float32(1.0)
    out = np.float32(0.5) * x
    out *= inner
    return out
