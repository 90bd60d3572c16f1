"""The matrix-tile product for many activation rows (hip_kernels/mmf.hip): prompt processing.

Above mvq's eight rows per launch, a projection of split weights (gpu/mvq.py) runs as tiles on the
matrix units: weights decoded to f16 in shared memory, activations converted to f16 once per product
(convert_f16), float32 accumulation (the tile abstraction in rf_prelude.h picks mma.sync, MFMA, WMMA or
a portable loop per target). Each weight byte is read once per 128 activation rows instead of once
per 8, and the parts of a fused projection (q/k/v, gate/up) of one type share one launch.
"""

from __future__ import annotations

import numpy as np

from rocmforge_core.gpu import mvq

MIN_ROWS = mvq.COLUMN_BUCKETS[-1] + 1  # fewer rows: the int8 mat-vec reads the weights once anyway
ROWS_PER_BLOCK = 128                     # RF_MM_BN
WEIGHT_ROWS = (128, 64)                  # RF_MMF_KERNEL instances: weight rows per block
WARPS = 8                                # RF_MM_WARPS
MAX_PARTS = 3                            # weights per launch


def usable(x, ldx: int, rows: int) -> bool:
    """Whether the tile kernel can read these activations (16-byte aligned rows of float32)."""
    return rows >= MIN_ROWS and x.ptr % 16 == 0 and ldx % 4 == 0


def weight_rows(ops, n_out: int, rows: int) -> int:
    """Weight rows per block: 128, unless that leaves the card with fewer than two blocks per SM."""
    tall, short = WEIGHT_ROWS
    tiles = -(-rows // ROWS_PER_BLOCK)
    return tall if -(-n_out // tall) * tiles >= 2 * ops.device.multiprocessors else short


def to_f16(ops, x, ldx: int, rows: int, n: int):
    """Rows of float32 x (ldx apart) as a contiguous (rows, n) f16 array."""
    y = ops.empty((rows, n), np.float16)
    block = ops.threads(256)
    ops.launch("convert_f16", (-(-n // (4 * block)), rows), block, x.ptr, ldx, y.ptr, n)
    return y


def groups(parts) -> list[list]:
    """Runs of parts of one type in adjacent columns, at most MAX_PARTS each: the launches of one product."""
    out: list[list] = []
    for p in parts:
        last = out[-1][-1] if out else None
        if (last is not None and last.type_name == p.type_name and last.col_off + last.n_out == p.col_off
                and len(out[-1]) < MAX_PARTS):
            out[-1].append(p)
        else:
            out.append([p])
    return out


def launch(ops, parts, x16, rows: int, y_ptr: int, ldy: int, bias_ptr: int = 0, res_ptr: int = 0) -> None:
    """y[r, c] = W[c, :] . x[r, :] (+ bias[c]) (+ res[r, c]) for the stacked rows c of `parts` (one type,
    consecutive columns from parts[0].col_off; y, bias and res point at column 0 of the product)."""
    first = parts[0]
    n = [p.n_out for p in parts] + [0] * (MAX_PARTS - len(parts))
    w = [p.block.ptr for p in parts] + [0] * (MAX_PARTS - len(parts))
    bm = weight_rows(ops, sum(n), rows)
    block = WARPS * ops.warp if ops.warp > 1 else 1  # the host emulation's one thread plays all warps
    grid = (sum(-(-k // bm) for k in n), -(-rows // ROWS_PER_BLOCK))
    off = 4 * first.col_off
    ops.launch(f"mmf_{first.kernel}_{bm}", grid, block, *w, *n, first.n_in, x16.ptr, first.n_in,
               y_ptr + off, ldy, bias_ptr + off if bias_ptr else 0, res_ptr + off if res_ptr else 0, rows)
