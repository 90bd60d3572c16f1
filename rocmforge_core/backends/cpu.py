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

Numerics. The default, "float32", is plain float32 math on the dequantized weights: it matches
llama.cpp run on the same weights converted to F32 (logits within ~1e-3). llama.cpp's CPU backend on
the quantized file differs from both: before each product with a quantized weight it rounds the
activations to 8 bits (Q8_0, Q8_1 or Q8_K blocks by weight type) and sums integer products, keeps K
and V in float16, and takes GELU from a float16 table; on the default models that moves its logits by
2-15% and its greedy text parts from the F32 run's in 7 of 12 fixture prompts.
numerics="llama.cpp" reproduces that CPU arithmetic bit for bit (backends/ggml_numerics.py: its
roundings, FMA contractions, SIMD lane orders and per-kernel choices for AVX2 machines), so greedy
text and logits are identical to llama.cpp's. Near enough is not enough there: 8-bit rounding is
discontinuous, so a one-ulp difference now and then flips a rounding, and within a dozen layers two
runs that differ only in summation order carry independent quantization noise. The exact kernels
sum integers in float64 and emulate every FMA, several times slower than float32 BLAS; the mode is
for reproducing llama.cpp (and testing against it), not the default.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

from rocmforge_core.backends import ggml_numerics
from rocmforge_core.kv_cache import KVCache
from rocmforge_core.rope import PairTable, RopeSpec, angles_ggml, cos_sin, table_size

# Queries per attention block in prefill: bounds the (heads, block, keys) score matrix to a few MB
# per thousand cached positions, whatever the prompt length, and skips most of the causally masked
# half of the scores (block i only reads keys up to its own last position).
ATTN_BLOCK = 128
_GELU_C = np.float32(np.sqrt(2.0 / np.pi))
NUMERICS = ("float32", "llama.cpp")

# The format llama.cpp's CPU dot products convert activations to, per weight type
# (ggml-cpu type_traits: vec_dot_type). F32 weights multiply float32 activations as they are.
ACTIVATION_FORMAT: dict[QT, str | None] = {
    QT.F32: None, QT.F16: "f16", QT.BF16: "bf16",
    QT.Q4_0: "q8_0", QT.Q5_0: "q8_0", QT.Q8_0: "q8_0", QT.Q4_1: "q8_1", QT.Q5_1: "q8_1",
    QT.Q2_K: "q8_K", QT.Q3_K: "q8_K", QT.Q4_K: "q8_K", QT.Q5_K: "q8_K", QT.Q6_K: "q8_K",
}


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


@dataclass(frozen=True)
class ActGroup:
    """Output rows lo..hi of a fused matrix whose weights want activations in format `fmt`.

    `mins` (rows, n_in / 32) holds the per-block offsets m of Q4_1/Q5_1 weights: llama.cpp multiplies
    them by a float16-rounded block sum of the quantized activations, which a plain matmul cannot mimic.
    """

    lo: int
    hi: int
    fmt: str | None
    mins: np.ndarray | None = None


@dataclass
class Linear:
    """A dense layer on the CPU: y = x @ w.T (+ bias). w is float32 (n_out, n_in), C-contiguous.

    `groups` is empty with float32 numerics; with llama.cpp numerics it says how to round the
    activations for each block of output rows.
    """

    w: np.ndarray
    bias: np.ndarray | None = None
    groups: tuple[ActGroup, ...] = ()
    # llama.cpp numerics: output rows lo..hi and the kernel that reproduces llama.cpp's result for them
    exact: tuple[tuple[int, int, object], ...] = ()

    @property
    def n_out(self) -> int:
        return self.w.shape[0]


class CpuBackend:
    """numpy ops; arrays are float32, activations are (rows, features)."""

    name = "cpu"

    def __init__(self, numerics: str = "float32"):
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, not {numerics!r}")
        self.numerics = numerics
        self.llama_numerics = numerics == "llama.cpp"
        # llama.cpp's matrix kernels depend on how many rows one product has (one row: vector dot
        # kernels; several: tinyBLAS, 4-row gemm, tiled). Its fixtures were made with every prompt row
        # computed through the last layer (logits for all positions), so the model must not drop rows.
        self.keeps_all_rows = self.llama_numerics
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
        tensors = [gguf_file.tensor(n) for n in names]
        groups = _act_groups(tensors) if self.llama_numerics else ()
        exact = _exact_kernels(tensors) if self.llama_numerics else ()
        return Linear(np.ascontiguousarray(w, dtype=np.float32), bias, groups, exact)

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
        if lin.exact:
            parts = [kernel.matmul(x) if kernel is not None else x @ lin.w[lo:hi].T
                     for lo, hi, kernel in lin.exact]
            y = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        elif not lin.groups:
            y = x @ lin.w.T
        elif len(lin.groups) == 1:
            y = _group_matmul(x, lin.w, lin.groups[0])
        else:
            y = np.concatenate([_group_matmul(x, lin.w[g.lo:g.hi], g) for g in lin.groups], axis=1)
        if lin.bias is not None:
            y += lin.bias
        return y

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """Normalise over the last axis (also used per head for q/k norms, x of shape (T, heads, hd))."""
        if self.llama_numerics:
            return ggml_numerics.rms_norm(x, weight, eps)
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
        if self.llama_numerics:
            return ggml_numerics.silu_mul(gate, up)
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
        if self.llama_numerics:
            return ggml_numerics.gelu_mul(gate, up)
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
        rotate = _rotate
        if self.llama_numerics:
            sin = np.where(table.first, -sin, sin)  # unsigned: rope_rotate fuses as GCC does
            rotate = functools.partial(ggml_numerics.rope_rotate, first=table.first)
        if spec.dim == x.shape[-1]:
            return rotate(x, cos, sin, table.partner)
        out = x.copy()  # the dimensions past spec.dim pass through unrotated
        out[..., :spec.dim] = rotate(x[..., :spec.dim], cos, sin, table.partner)
        return out

    def _rope_table(self, spec: RopeSpec, max_pos: int) -> PairTable:
        """Build the spec's table up to at least max_pos; every layer with this spec shares it."""
        size = table_size(max_pos)
        if self.llama_numerics:
            cos, sin = ggml_numerics.cos_sin(angles_ggml(np.arange(size), spec))
        else:
            cos, sin = cos_sin(spec, size)
        table = PairTable.build(spec, cos, sin)
        self._rope_tables[spec] = table
        return table

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
                  scale: float, window: int | None) -> np.ndarray:
        """Write k, v into the cache, then attend; returns (N, heads * head_dim).

        The N rows of q, k, v (N, heads|kv_heads, hd) belong to len(slots) sequences, `counts[b]` rows
        each, at positions starts[b] .. starts[b] + counts[b] - 1: prefill is one sequence of T rows,
        a batched decode step is B sequences of one row. A query at position p sees the keys at
        positions j <= p, and with a sliding window only those with p - j < window.
        """
        if self.llama_numerics:  # llama.cpp's f16 KV cache, and f16 queries for its f16 K matmul
            return self._attention_ggml(_f16_round(q), _f16_round(k), _f16_round(v), cache, layer,
                                        slots, starts, counts, scale, window)
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

    def _attention_ggml(self, q, k, v, cache: KVCache, layer: int, slots, starts, counts,
                        scale: float, window: int | None) -> np.ndarray:
        """Attention with llama.cpp's arithmetic (no flash attention): for each sequence, its
        queries against cache cells 0.. (cell = position), f16 K.Q, softmax, f16 V.P. A single query
        takes ggml's vector dot kernel, several take tinyBLAS (they round differently).

        Cell = position holds for one sequence in llama.cpp's cache from an empty start; its
        sliding-window cache reuses cells once a sequence outgrows the window, which is not
        reproduced (the sums would group other cells together)."""
        n_heads, hd = q.shape[1], q.shape[2]
        group = n_heads // cache.n_kv_heads
        out = np.empty((q.shape[0], n_heads * hd), np.float32)
        row = 0
        for slot, start, n in zip(slots, starts, counts):
            cache.write(layer, slot, start, k[row:row + n], v[row:row + n])
            n_cells = start + n
            keys = np.repeat(cache.keys(layer, slot, 0, n_cells), group, axis=0)       # (H, P, hd)
            values_t = np.repeat(cache.values(layer, slot, 0, n_cells), group, axis=0).transpose(0, 2, 1)
            for lo in range(0, n, 16 if n > 1 else 1):  # 16 queries at a time bound the temporaries
                hi = min(n, lo + 16)
                pos = np.arange(start + lo, start + hi)[:, None]
                cells = np.arange(n_cells)[None, :]
                visible = cells <= pos if window is None else (cells <= pos) & (pos - cells < window)
                qh = q[row + lo:row + hi].transpose(1, 0, 2)                             # (H, m, hd)
                if n == 1:
                    scores = ggml_numerics.dot_f16_vec(keys, qh[:, 0])[:, None, :]       # (H, 1, P)
                    probs = ggml_numerics.softmax_rows(scores, scale, visible)
                    ctx = ggml_numerics.dot_f16_vec(values_t, _f16_round(probs[:, 0]))[:, None, :]
                else:
                    scores = ggml_numerics.dot_f16_gemm(keys, qh)                         # (H, m, P)
                    probs = ggml_numerics.softmax_rows(scores, scale, visible)
                    ctx = ggml_numerics.dot_f16_gemm(values_t, _f16_round(probs))        # (H, m, hd)
                out[row + lo:row + hi] = ctx.transpose(1, 0, 2).reshape(hi - lo, n_heads * hd)
            row += n
        return out

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
    """Entry point every backend module provides (see rocmforge_core.models.load_model)."""
    return CpuBackend(numerics)


# ---- llama.cpp's roundings, as float32 arrays of the rounded values ----

def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _bf16_round(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)  # nearest even
    return rounded.view(np.float32)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round rows of x through Q8_0 blocks of 32 (ggml's AVX2 quantize_row_q8_0).

    Returns the dequantized values (fp16 scale times int8) and, per block, the int8 sums times the
    float32 scale rounded to fp16 (the `s` field of a Q8_1 block), shape (..., n / 32).
    """
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv)  # round half to even, as _mm256_round_ps
    values = (q * _f16_round(d)).reshape(x.shape)
    sums = _f16_round(q.sum(axis=-1) * d[..., 0])
    return values, sums


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """Round rows of x through Q8_K blocks of 256 (ggml's quantize_row_q8_K: scale -127/max, float32)."""
    blocks = x.reshape(*x.shape[:-1], -1, 256)
    pick = np.abs(blocks).argmax(axis=-1)[..., None]
    signed_max = np.take_along_axis(blocks, pick, axis=-1)
    with np.errstate(divide="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127.0) / signed_max, np.float32(0.0)).astype(np.float32)
        d = np.where(iscale != 0, np.float32(1.0) / iscale, np.float32(0.0)).astype(np.float32)
    q = np.minimum(np.rint(blocks * iscale), 127)
    return (q * d).reshape(x.shape)


def _group_matmul(x: np.ndarray, w: np.ndarray, g: ActGroup) -> np.ndarray:
    """x @ w.T with x rounded as llama.cpp rounds it for this group's weight type."""
    if g.fmt is None:
        return x @ w.T
    if g.fmt == "f16":
        return _f16_round(x) @ w.T
    if g.fmt == "bf16":
        return _bf16_round(x) @ w.T
    if g.fmt == "q8_K":
        return quantize_q8_k(x) @ w.T
    xq, sums = quantize_q8_0(x)
    y = xq @ w.T
    if g.mins is not None:
        # Q4_1/Q5_1: the block offset m multiplies ggml's fp16 `s` rather than the exact sum of xq.
        exact = xq.reshape(*x.shape[:-1], -1, 32).sum(axis=-1)
        y += (sums - exact) @ g.mins.T
    return y


def _exact_kernels(tensors) -> tuple[tuple[int, int, object], ...]:
    """Bit-exact llama.cpp kernels for the parts of a fused matrix, or () if a part has none (then
    the whole matrix takes the approximate `groups` rounding: right formats, float32 sums).

    Exact kernels exist for the weight types of the two default models (Q4_1, Q5_0, Q8_0, Q4_K,
    Q6_K), each checked against llama.cpp's own tensors. Other types take other ggml kernels on
    AVX2 (Q4_0 and IQ4_NL are repacked, F16 goes through tinyBLAS) that are not reproduced yet."""
    out, row = [], 0
    for t in tensors:
        n_out, n_in = t.shape[0], t.shape[-1]
        if t.qtype == QT.F32:
            kernel = None
        elif t.qtype.name in ("Q8_0", "Q5_0", "Q4_1"):
            kernel = ggml_numerics.block_matrix(t.qtype.name, np.asarray(t.data).reshape(-1), n_out, n_in)
        elif t.qtype.name in ("Q4_K", "Q6_K"):
            kernel = ggml_numerics.superblock_matrix(t.qtype.name, np.asarray(t.data).reshape(-1), n_out, n_in)
        else:
            return ()
        out.append((row, row + n_out, kernel))
        row += n_out
    return tuple(out)


def _act_groups(tensors) -> tuple[ActGroup, ...]:
    """Activation formats of the parts of a fused matrix; neighbours that agree share a group."""
    groups: list[ActGroup] = []
    row = 0
    for t in tensors:
        fmt = ACTIVATION_FORMAT[t.qtype]
        mins = _block_mins(t) if fmt == "q8_1" else None
        n = t.shape[0]
        last = groups[-1] if groups else None
        if last and last.fmt == fmt and fmt != "q8_1":
            groups[-1] = ActGroup(last.lo, row + n, fmt)
        elif last and last.fmt == fmt:
            groups[-1] = ActGroup(last.lo, row + n, fmt, np.concatenate([last.mins, mins]))
        else:
            groups.append(ActGroup(row, row + n, fmt, mins))
        row += n
    if all(g.fmt is None for g in groups):
        return ()
    return tuple(groups)


def _block_mins(t) -> np.ndarray:
    """The fp16 offset m of every Q4_1/Q5_1 block (bytes 2..3 of the block), as (rows, blocks)."""
    _, type_size = gguf.GGML_QUANT_SIZES[t.qtype]
    raw = np.asarray(t.data).reshape(-1, type_size)
    return raw[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(t.shape[0], -1)


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
