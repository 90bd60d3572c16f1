"""llama.cpp's CPU arithmetic, bit for bit: the CPU backend with numerics="llama.cpp".

llama.cpp's CPU backend on a quantized file rounds the activations to 8 bits before each product with
a quantized weight (Q8_0, Q8_1 or Q8_K blocks by weight type) and sums integer products, keeps K and
V in float16, and takes GELU from a float16 table; on the default models that moves its logits by
2-15% from a float32 run and its greedy text parts from the F32 run's in 7 of 12 fixture prompts.
This subclass of the float32 reference reproduces that arithmetic (backends/ggml_numerics.py: its
roundings, FMA contractions, SIMD lane orders and per-kernel choices for AVX2 machines), overriding
only the ops it changes, so greedy text and logits are identical to llama.cpp's. Near enough is not
enough here: 8-bit rounding is discontinuous, so a one-ulp difference now and then flips a rounding,
and within a dozen layers two runs that differ only in summation order carry independent
quantization noise. The exact kernels sum integers in float64 and emulate every FMA, several times
slower than float32 BLAS; the mode is for reproducing llama.cpp (and testing against it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

from rocmforge_core import quants
from rocmforge_core.backends import ggml_numerics
from rocmforge_core.backends.cpu import CpuBackend, Linear, _halves
from rocmforge_core.kv_cache import KVCache
from rocmforge_core.rope import PairTable, RopeSpec, angles_ggml

# The format llama.cpp's CPU dot products convert activations to, per weight type
# (ggml-cpu type_traits: vec_dot_type). F32 weights multiply float32 activations as they are.
ACTIVATION_FORMAT: dict[QT, str | None] = {
    QT.F32: None, QT.F16: "f16", QT.BF16: "bf16",
    QT.Q4_0: "q8_0", QT.Q5_0: "q8_0", QT.Q8_0: "q8_0", QT.Q4_1: "q8_1", QT.Q5_1: "q8_1",
    QT.Q2_K: "q8_K", QT.Q3_K: "q8_K", QT.Q4_K: "q8_K", QT.Q5_K: "q8_K", QT.Q6_K: "q8_K",
}


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
class LlamaLinear(Linear):
    """A dense layer plus how llama.cpp computes it: `groups` say how to round the activations for
    each block of output rows; `exact` holds, per part, output rows lo..hi and the kernel that
    reproduces llama.cpp's result for them (empty when a part's type has none).

    When every part has its kernel, no float32 copy is kept (`w` is None): the products never read
    it, and the embedding dequantizes the rows it looks up from `tensors`, the GGUF tensors."""

    groups: tuple[ActGroup, ...] = ()
    exact: tuple[tuple[int, int, object], ...] = ()
    tensors: tuple = ()

    @property
    def n_out(self) -> int:
        return self.w.shape[0] if self.w is not None else self.exact[-1][1]


class LlamaCppBackend(CpuBackend):
    """The numpy ops with llama.cpp's roundings and kernels (see the module docstring)."""

    numerics = "llama.cpp"
    # llama.cpp's matrix kernels depend on how many rows one product has (one row: vector dot
    # kernels; several: tinyBLAS, 4-row gemm, tiled). Its fixtures were made with every prompt row
    # computed through the last layer (logits for all positions), so the model must not drop rows.
    keeps_all_rows = True

    def linear(self, gguf_file, names: Sequence[str], bias_names: Sequence[str] | None = None) -> LlamaLinear:
        tensors = [gguf_file.tensor(n) for n in names]
        exact = _exact_kernels(tensors)
        if exact and all(kernel is not None for _, _, kernel in exact):
            # no float32 copy (see LlamaLinear): Gemma-3-270M's would be 1 GB and ~5 s to dequantize
            bias = None
            if bias_names:
                bias = np.concatenate([gguf_file.dequant(n).reshape(-1) for n in bias_names])
                bias = np.ascontiguousarray(bias, dtype=np.float32)
            return LlamaLinear(None, bias, exact=exact, tensors=tuple(tensors))
        base = super().linear(gguf_file, names, bias_names)
        return LlamaLinear(base.w, base.bias, _act_groups(tensors), exact)

    def embedding(self, table: LlamaLinear, tokens: np.ndarray) -> np.ndarray:
        if table.w is not None:
            return super().embedding(table, tokens)
        (t,) = table.tensors  # the table is one tensor; its rows decode as in the whole-table decode
        block, size = quants.BLOCK_SIZES[t.qtype]
        n_out, n_in = t.shape[0], t.shape[-1]
        rows = np.asarray(t.data).reshape(n_out, n_in // block, size)[np.asarray(tokens)]
        return quants.dequantize(rows, t.qtype, (len(rows), n_in))

    def _product(self, x: np.ndarray, lin: LlamaLinear) -> np.ndarray:
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
        return ggml_numerics.rms_norm(x, weight, eps)

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        return ggml_numerics.silu_mul(*_halves(gate_up))

    def geglu(self, gate_up: np.ndarray) -> np.ndarray:
        return ggml_numerics.gelu_mul(*_halves(gate_up))

    def _rotate(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, table: PairTable) -> np.ndarray:
        sin = np.where(table.first, -sin, sin)  # unsigned: rope_rotate fuses as GCC does
        return ggml_numerics.rope_rotate(x, cos, sin, table.partner, first=table.first)

    def _cos_sin(self, spec: RopeSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
        return ggml_numerics.cos_sin(angles_ggml(np.arange(size), spec))

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
                  scale: float, window: int | None) -> np.ndarray:
        """llama.cpp's f16 KV cache, and f16 queries for its f16 K matmul."""
        return self._attention_ggml(_f16_round(q), _f16_round(k), _f16_round(v), cache, layer,
                                    slots, starts, counts, scale, window)

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
