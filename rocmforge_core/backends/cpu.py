"""The numpy backend: the reference implementation of every op the model code calls.

The model code (rocmforge_core/models/base.py) never touches arrays directly; it calls one method of a
backend ops object per operation. A GPU backend supplies the same methods over device buffers and is
tested against this one, op by op.

Weight representation (why float32 copies): numpy's only fast matrix product is BLAS sgemm/sgemv on
float32, and for the small default models a one-time dequantization at load is cheap (~1-3 s). Every
linear weight is therefore dequantized once into a C-contiguous float32 (n_out, n_in) matrix; Q|K|V
are fused into one matrix and gate|up into another, so each layer makes three large BLAS calls instead
of six small ones. The tied output projection reuses the embedding table (no second copy).
Memory cost: 4 bytes per parameter, SmolLM2-135M ~540 MB, Gemma-3-270M ~1.07 GB (of which the
262,144 x 640 embedding/output table is 671 MB). Per-layer on-the-fly dequantization would save that
memory but cost a dequantization per layer per token, several times slower than the BLAS call itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rocmforge_core.kv_cache import KVCache

# Queries per attention block in prefill: bounds the (heads, block, keys) score matrix to a few MB
# per thousand cached positions, whatever the prompt length.
ATTN_BLOCK = 256
_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


@dataclass(frozen=True)
class RopeSpec:
    """How one layer rotates q and k. `freq_factors` divides the per-pair frequencies (llama3)."""

    dim: int                 # rotated dimensions (the rest of the head passes through)
    base: float
    neox: bool               # pairs (i, i + dim/2) when True, adjacent pairs (2i, 2i+1) otherwise
    pos_scale: float = 1.0   # linear scaling: positions are multiplied by this (1 / factor)
    freq_factors: tuple[float, ...] | None = None

    def inv_freq(self) -> np.ndarray:
        inv = self.base ** (-np.arange(0, self.dim, 2, dtype=np.float64) / self.dim)
        if self.freq_factors is not None:
            inv = inv / np.asarray(self.freq_factors, dtype=np.float64)
        return inv


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

    def vector(self, gguf_file, name: str) -> np.ndarray:
        return np.ascontiguousarray(gguf_file.dequant(name).reshape(-1), dtype=np.float32)

    def make_cache(self, n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        return KVCache(n_layers, n_slots, n_ctx, n_kv_heads, head_dim)

    # ---- ops ----

    def embedding(self, table: Linear, tokens: np.ndarray) -> np.ndarray:
        return table.w[tokens]  # (T, d), a gathered copy

    def matmul(self, x: np.ndarray, lin: Linear) -> np.ndarray:
        y = x @ lin.w.T
        if lin.bias is not None:
            y += lin.bias
        return y

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """Normalise over the last axis (also used per head for q/k norms, x of shape (T, heads, hd))."""
        ms = np.mean(np.square(x), axis=-1, keepdims=True)
        return x * (1.0 / np.sqrt(ms + np.float32(eps))) * weight

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        return x * np.float32(s)

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        return np.tanh(x / np.float32(cap)) * np.float32(cap)

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        """silu(gate) * up for gate|up fused along the last axis."""
        gate, up = np.split(gate_up, 2, axis=-1)
        # sigmoid via tanh: no overflow warnings for large negative inputs, unlike 1/(1+exp(-x)).
        return gate * (0.5 + 0.5 * np.tanh(0.5 * gate)) * up

    def geglu(self, gate_up: np.ndarray) -> np.ndarray:
        """gelu_tanh(gate) * up for gate|up fused along the last axis."""
        gate, up = np.split(gate_up, 2, axis=-1)
        inner = _GELU_C * (gate + np.float32(0.044715) * gate * gate * gate)
        return 0.5 * gate * (1.0 + np.tanh(inner)) * up

    def rope(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec) -> np.ndarray:
        """Rotate x of shape (T, heads, head_dim) by its positions (T,)."""
        angles = np.outer(np.asarray(positions, dtype=np.float64) * spec.pos_scale, spec.inv_freq())
        cos = np.cos(angles).astype(np.float32)[:, None, :]  # (T, 1, dim/2)
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        half = spec.dim // 2
        out = x.copy()
        if spec.neox:
            x1, x2 = x[..., :half], x[..., half:spec.dim]
            out[..., :half] = x1 * cos - x2 * sin
            out[..., half:spec.dim] = x2 * cos + x1 * sin
        else:
            x1, x2 = x[..., 0:spec.dim:2], x[..., 1:spec.dim:2]
            out[..., 0:spec.dim:2] = x1 * cos - x2 * sin
            out[..., 1:spec.dim:2] = x2 * cos + x1 * sin
        return out

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
                  scale: float, window: int | None) -> np.ndarray:
        """Write k, v into the cache, then attend; returns (N, heads * head_dim).

        The N rows of q, k, v (N, heads|kv_heads, hd) belong to len(slots) sequences, `counts[b]` rows
        each, at positions starts[b] .. starts[b] + counts[b] - 1: prefill is one sequence of T rows,
        a batched decode step is B sequences of one row. A query at position p sees the keys at
        positions j <= p, and with a sliding window only those with p - j < window.
        """
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
        qpos = np.arange(p0, p0 + n)[:, None]
        kpos = np.arange(k_lo, k_hi)[None, :]
        masked = kpos > qpos
        if window is not None:
            masked |= (qpos - kpos) >= window
        if masked.any():
            scores[:, :, masked] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        ctx = scores.reshape(n_kv, group * n, -1) @ values  # (n_kv, group*n, hd)
        return ctx.reshape(n_kv, group, n, hd).transpose(2, 0, 1, 3).reshape(n, n_heads * hd)


def make_ops(name: str = "cpu") -> CpuBackend:
    """Entry point every backend module provides (see rocmforge_core.models.load_model)."""
    return CpuBackend()
