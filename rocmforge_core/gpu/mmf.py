"""The matrix-tile product for many activation rows (hip_kernels/mmf.hip): prompt processing.

Above mvq's eight rows per launch, a projection of split weights (gpu/mvq.py) runs as tiles on the
matrix units: weights decoded to f16 in shared memory, activations converted to f16, float32
accumulation (the tile abstraction in rf_prelude.h picks mma.sync, MFMA, WMMA or a portable loop per
target). Each weight byte is read once per 128 activation rows instead of once per 8.
"""

from __future__ import annotations

from rocmforge_core.gpu import mvq

MIN_ROWS = mvq.COLUMN_BUCKETS[-1] + 1  # fewer rows: the int8 mat-vec reads the weights once anyway
ROWS_PER_BLOCK = 128                     # RF_MM_BN
WEIGHT_ROWS = (128, 64)                  # RF_MMF_KERNEL instances: weight rows per block
WARPS = 8                                # RF_MM_WARPS


def usable(x, ldx: int, rows: int) -> bool:
    """Whether the tile kernel can read these activations (16-byte aligned rows of float32)."""
    return rows >= MIN_ROWS and x.ptr % 16 == 0 and ldx % 4 == 0


def weight_rows(ops, n_out: int, rows: int) -> int:
    """Weight rows per block: 128, unless that leaves the card with fewer than two blocks per SM."""
    tiles = -(-rows // ROWS_PER_BLOCK)
    return 128 if -(-n_out // 128) * tiles >= 2 * ops.device.multiprocessors else 64


def launch(ops, part, x, ldx: int, rows: int, y_ptr: int, ldy: int, bias_ptr: int = 0, res_ptr: int = 0) -> None:
    """y[r, col_off + i] = part[i, :] . x[r, :] (+ bias) (+ res) for every activation row r."""
    bm = weight_rows(ops, part.n_out, rows)
    block = WARPS * ops.warp if ops.warp > 1 else 1  # the host emulation's one thread plays all warps
    grid = (-(-part.n_out // bm), -(-rows // ROWS_PER_BLOCK))
    ops.launch(f"mmf_{part.kernel}_{bm}", grid, block, part.block.ptr, part.n_out, part.n_in, x.ptr, ldx,
               y_ptr, ldy, bias_ptr, res_ptr, rows)
