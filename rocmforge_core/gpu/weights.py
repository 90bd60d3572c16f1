"""Linear weights on the device: each GGUF weight uploaded once as its packed blocks (the mat-vec
and gather kernels decode them on the fly; the types of the int8 mat-vec split into [quants | scales],
same bytes), fused weights stacked along the output dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from rocmforge_core.errors import BadInputError, UnsupportedModelError
from rocmforge_core.gpu import mvq
from rocmforge_core.gpu.kernels import weight_kernel

LOGIT_TENSORS = ("output.weight", "token_embd.weight")


@dataclass
class WeightPart:
    """One GGUF weight, packed blocks on the device: rows [col_off, col_off + n_out) of the output."""

    block: Any
    kernel: str       # suffix, e.g. "q4_1": mv_q4_1 and get_rows_q4_1 read it
    n_out: int
    n_in: int
    row_bytes: int
    col_off: int
    type_name: str = ""
    split: bool = False  # blocks split into [quants | scales] for the int8 mat-vec (gpu/mvq.py)
    mvq: dict = field(default_factory=dict)  # row bucket -> the mat-vec variant (R, U) tuned for it


@dataclass
class GpuLinear:
    """y = x @ W.T (+ bias) with W one or more GGUF weights stacked along the output dimension."""

    parts: list[WeightPart]
    n_out: int
    n_in: int
    bias: Any = None      # DeviceArray (n_out,)
    logits: bool = False  # the vocabulary projection: its result goes back to the host


def load_linear(ops, gguf_file, names: Sequence[str], bias_names: Sequence[str] | None = None) -> GpuLinear:
    """Upload the named weights (and biases, dequantized to float32) through `ops.upload`. Adjacent
    weights of one type that the int8 mat-vec reads (Q|K|V, gate|up) become one split array, one part:
    one launch per product instead of one per weight."""
    parts, off, n_in = [], 0, None
    pending: list = []  # (info, n_in, raw) of adjacent split weights of one type, not yet uploaded

    def flush():
        if pending:
            first, k = pending[0][0], pending[-1][1]
            raws = [raw for _, _, raw in pending]
            rows = sum(int(info.shape[0]) for info, _, _ in pending)
            block = mvq.split_on_device(ops, raws, first.qtype.name)
            row_bytes = raws[0].nbytes // int(first.shape[0])
            parts.append(WeightPart(block, weight_kernel(first.qtype.name), rows, k, row_bytes, off - rows,
                                    first.qtype.name, True))
            pending.clear()

    for name in names:
        info = gguf_file.tensor(name)
        kernel = weight_kernel(info.qtype.name)
        if kernel is None:
            raise UnsupportedModelError(f"{name}: tensor type {info.qtype.name} has no GPU kernel",
                                        hint="use --backend cpu")
        n_out, k = int(info.shape[0]), int(np.prod(info.shape[1:], dtype=np.int64))
        if n_in not in (None, k):
            raise BadInputError(f"{name} has {k} inputs, the fused weights before it {n_in}")
        n_in = k
        raw = np.ascontiguousarray(np.asarray(info.data).reshape(-1).view(np.uint8))
        if pending and pending[0][0].qtype != info.qtype:
            flush()
        if ops.q8_activations and mvq.splits(info.qtype.name, k):
            pending.append((info, k, raw))
            off += n_out
            continue
        flush()
        block = ops.empty(raw.shape, np.uint8)
        ops.stage(block.ptr, raw)  # pinned and overlapped with reading the file (gpu/staging.py)
        parts.append(WeightPart(block, kernel, n_out, k, raw.nbytes // n_out, off, info.qtype.name))
        off += n_out
    flush()
    bias = None
    if bias_names:
        bias = ops.upload(np.concatenate([gguf_file.dequant(n).reshape(-1) for n in bias_names]), np.float32)
    return GpuLinear(parts, off, n_in, bias, logits=names[0] in LOGIT_TENSORS)
