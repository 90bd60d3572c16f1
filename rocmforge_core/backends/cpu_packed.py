"""The CPU backend users get: weights stay in their GGUF blocks in the memory map (numerics="packed").

The float32 reference (backends/cpu.py) keeps a float32 copy of every weight; this subclass keeps none.
A matrix product of a few rows (a decode step: one row per sequence) runs the compiled kernels of
backends/cpu_kernels.py on the packed blocks, with the activations rounded to int16 per 32 values.
A product of many rows (a prompt) dequantizes the weight, a slice of output rows at a time, into a
float32 buffer that every product reuses, and hands it to BLAS sgemm: the prompt keeps sgemm's speed
while at most SCRATCH_FLOATS of dequantized weights exist at once. The small ops (norms, rope, the
activations, a decode step's attention) are compiled too; they compute what the reference's numpy
ops compute, in fewer passes and with fewer calls.

Resident memory: the file's pages that the model touches (the map, shared with the page cache), the
KV cache, and the scratch; see footprint.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from gguf import GGMLQuantizationType as QT

from rocmforge_core import quants
from rocmforge_core.backends.cpu import CpuBackend

# Rows at or below this take the packed integer kernels, more take dequantize + sgemm. Measured on
# SmolLM2-135M and Gemma-3-270M (2-core EPYC): see BENCHMARKS.md, "packed CPU backend".
PACKED_MAX_ROWS = 8
# The dequantized slice of a weight that one sgemm call reads: 4M floats (16 MB) keeps 512-row
# sgemm calls at full speed (a few hundred output rows per call on the smallest models) while
# bounding the float32 copy of an 8B model's 28,672 x 4,096 gate|up matrix to 1/7 of it.
SCRATCH_FLOATS = 4 << 20
FLOAT_KINDS = (QT.F32, QT.F16, QT.BF16)


@dataclass(frozen=True)
class PackedPart:
    """Output columns lo..hi of a (fused) product: one GGUF tensor, its bytes viewed as blocks."""

    qtype: QT
    blocks: np.ndarray  # (n_out, blocks per row, bytes per block) uint8, a view of the map
    lo: int
    hi: int

    def __post_init__(self):
        # Read-only, as a file's memory map is: numba compiles a kernel once per argument type and
        # tells read-only arrays from writable ones, so blocks built in memory (tests, benchmarks)
        # would compile every kernel of their type a second time (cold: ~4 s a type).
        if self.blocks.flags.writeable:
            blocks = self.blocks.view()
            blocks.flags.writeable = False
            object.__setattr__(self, "blocks", blocks)

    @property
    def n_in(self) -> int:
        return self.blocks.shape[1] * quants.BLOCK_SIZES[self.qtype][0]

    def dequant_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of the weight as float32 (r1 - r0, n_in)."""
        return quants.dequantize(self.blocks[r0:r1], self.qtype, (r1 - r0, self.n_in))


@dataclass(frozen=True)
class KernelCall:
    """Consecutive quantized parts of one type and width: one call of that type's threaded kernel."""

    fn: Any          # cpu_kernels.kernel(type): matvec_<type>, AVX2 or portable
    ws: tuple        # cpu_kernels.MAX_PARTS block arrays, empty ones where there are fewer parts
    ends: np.ndarray  # (MAX_PARTS,) int64: each part's last row + 1, counted from col0
    col0: int


@dataclass
class PackedLinear:
    """y = x @ W.T (+ bias), W kept as the file's blocks of one or more tensors stacked along n_out."""

    parts: tuple[PackedPart, ...]
    bias: np.ndarray | None = None
    calls: list | None = field(default=None, repr=False)  # the decode kernels' plan, built on first use

    @property
    def n_out(self) -> int:
        return self.parts[-1].hi

    @property
    def n_in(self) -> int:
        return self.parts[0].n_in


def packed_part(tensor, lo: int) -> PackedPart:
    block, size = quants.BLOCK_SIZES[tensor.qtype]
    n_out, n_in = tensor.shape[0], tensor.shape[-1]
    blocks = np.asarray(tensor.data).reshape(n_out, n_in // block, size)
    return PackedPart(tensor.qtype, blocks, lo, lo + n_out)


class PackedCpuBackend(CpuBackend):
    """The reference ops, with matrix products on packed weights (see the module docstring)."""

    numerics = "packed"

    def __init__(self, threads: int | None = None):
        super().__init__()
        from rocmforge_core.backends import cpu_kernels

        self._k = cpu_kernels
        if threads is not None:
            cpu_kernels.set_threads(threads)
        self._scratch: np.ndarray | None = None

    def linear(self, gguf_file, names: Sequence[str], bias_names: Sequence[str] | None = None) -> PackedLinear:
        parts, lo = [], 0
        for name in names:
            part = packed_part(gguf_file.tensor(name), lo)
            parts.append(part)
            lo = part.hi
        bias = None
        if bias_names:
            bias = np.concatenate([gguf_file.dequant(n).reshape(-1) for n in bias_names]).astype(np.float32)
        return PackedLinear(tuple(parts), bias)

    def embedding(self, table: PackedLinear, tokens: np.ndarray) -> np.ndarray:
        part = table.parts[0]
        rows = part.blocks[np.asarray(tokens)]  # (T, blocks, bytes): only the rows asked for
        return quants.dequantize(rows, part.qtype, (len(rows), part.n_in))

    # ---- the small ops: compiled, one call each (cpu_kernels, "the small ops of a decode step") ----

    def matmul(self, x: np.ndarray, lin: PackedLinear, residual: np.ndarray | None = None) -> np.ndarray:
        y = self._product(x, lin)
        if residual is not None:
            np.add(y, residual, out=y)  # into the product's own fresh buffer
        return y

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        out = np.empty_like(x2)
        self._k.rms_norm_rows(x2, weight, np.float32(eps), out)
        return out.reshape(x.shape)

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
        self._k.swiglu_rows(np.ascontiguousarray(gate_up), out)
        return out

    def geglu(self, gate_up: np.ndarray) -> np.ndarray:
        out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
        self._k.geglu_rows(np.ascontiguousarray(gate_up), out)
        return out

    def rope_qk(self, q: np.ndarray, k: np.ndarray, positions: np.ndarray, spec):
        positions = np.asarray(positions, dtype=np.int64)
        table = self._rope_tables.get(spec)
        if table is None or positions.max() >= table.cos.shape[0]:
            table = self._rope_table(spec, int(positions.max()))
        q, k = np.ascontiguousarray(q), np.ascontiguousarray(k)
        q_out, k_out = np.empty_like(q), np.empty_like(k)
        self._k.rope_qk(q, k, positions, table.cos[:, 0], table.sin[:, 0], table.partner, q_out, k_out)
        return q_out, k_out

    def attention(self, q, k, v, cache, layer, slots, starts, counts, scale, window):
        """A decode step (one row per sequence) writes its K/V and attends in one compiled call; a
        prompt takes the reference's blocked numpy path (see CpuBackend.attention)."""
        if len(slots) != q.shape[0] or max(counts) != 1:
            return super().attention(q, k, v, cache, layer, slots, starts, counts, scale, window)
        out = np.empty((q.shape[0], q.shape[1] * q.shape[2]), np.float32)
        self._k.attend_rows(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v),
                            cache.k[layer], cache.v[layer], np.asarray(slots, dtype=np.int64),
                            np.asarray(starts, dtype=np.int64), window or 0, np.float32(scale), out)
        return out

    # ---- matrix products ----

    def _product(self, x: np.ndarray, lin: PackedLinear) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] <= PACKED_MAX_ROWS:
            y = self._packed_product(x, lin)
        else:
            y = self._dense_product(x, lin)
        if lin.bias is not None:
            y += lin.bias
        return y

    def _packed_product(self, x: np.ndarray, lin: PackedLinear) -> np.ndarray:
        """Few rows: the integer kernels on the blocks (float kernels or BLAS for float weights)."""
        k = self._k
        out = np.empty((x.shape[0], lin.n_out), np.float32)
        for p in lin.parts:
            if p.qtype == QT.F32:
                out[:, p.lo:p.hi] = x @ p.blocks.reshape(p.hi - p.lo, -1).view(np.float32).T
            elif p.qtype == QT.F16:
                k.matvec_f16(p.blocks.reshape(p.hi - p.lo, -1).view(np.uint16), x, k.F16, out, p.lo)
            elif p.qtype == QT.BF16:
                out[:, p.lo:p.hi] = x @ p.dequant_rows(0, p.hi - p.lo).T
        for c in lin.calls if lin.calls is not None else self._plan(lin):
            c.fn(c.ws, c.ends, x, k.F16, out, c.col0)
        return out

    def _plan(self, lin: PackedLinear) -> list[KernelCall]:
        """Group the quantized parts into kernel calls: consecutive parts of one type, up to MAX_PARTS."""
        groups: list[list[PackedPart]] = []
        for p in lin.parts:
            if p.qtype in FLOAT_KINDS:
                continue
            g = groups[-1] if groups else None
            if (g and g[-1].qtype == p.qtype and g[-1].hi == p.lo and g[-1].blocks.shape[1:] == p.blocks.shape[1:]
                    and len(g) < self._k.MAX_PARTS):
                g.append(p)
            else:
                groups.append([p])
        calls = []
        for g in groups:
            ws = [p.blocks for p in g]
            ends = np.cumsum([p.hi - p.lo for p in g] + [0] * (self._k.MAX_PARTS - len(g)), dtype=np.int64)
            ws += [g[0].blocks[:0]] * (self._k.MAX_PARTS - len(g))  # same array type: a tuple numba can index
            calls.append(KernelCall(self._k.kernel(g[0].qtype.name), tuple(ws), ends, g[0].lo))
        lin.calls = calls
        return calls

    def _dense_product(self, x: np.ndarray, lin: PackedLinear) -> np.ndarray:
        """Many rows: sgemm over the weight dequantized a slice of output rows at a time."""
        out = np.empty((x.shape[0], lin.n_out), np.float32)
        for p in lin.parts:
            n_rows = p.hi - p.lo
            if p.qtype == QT.F32:
                out[:, p.lo:p.hi] = x @ p.blocks.reshape(n_rows, -1).view(np.float32).T
                continue
            step = max(1, SCRATCH_FLOATS // p.n_in)
            for r0 in range(0, n_rows, step):
                r1 = min(n_rows, r0 + step)
                w = self._dequant_into_scratch(p, r0, r1)
                np.matmul(x, w.T, out=out[:, p.lo + r0:p.lo + r1])
        return out

    def _dequant_into_scratch(self, p: PackedPart, r0: int, r1: int) -> np.ndarray:
        n = (r1 - r0) * p.n_in
        if self._scratch is None or self._scratch.size < n:
            self._scratch = np.empty(max(n, min(SCRATCH_FLOATS, 1 << 20)), np.float32)
        w = self._scratch[:n].reshape(r1 - r0, p.n_in)
        dequant = getattr(self._k, "dequant_" + p.qtype.name.lower(), None)
        if dequant is None:  # F16, BF16: numpy's conversion is as fast
            w[...] = p.dequant_rows(r0, r1)
        else:
            dequant(p.blocks[r0:r1], self._k.F16, w)
        return w
