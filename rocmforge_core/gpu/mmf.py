"""The matrix-tile product for many activation rows (hip_kernels/mmf.hip): prompt processing.

Above mvq's eight rows per launch, a projection of split weights (gpu/mvq.py) runs as tiles on the
matrix units: weights decoded to f16 in shared memory, activations converted to f16 once per product
(convert_f16, each row scaled by a power of two into f16's range), float32 accumulation (the tile
abstraction in rf_prelude.h picks mma.sync, MFMA, WMMA or a portable loop per target). Each weight
byte is read once per 128 activation rows instead of once per 8, and the parts of a fused projection
(q/k/v, gate/up) of one type share one launch. Each launch
picks its block height (128 or 64 weight rows) and, for products too small to fill the card, a split
of the input over several blocks whose partial sums one more pass adds up in a fixed order (`plan`).
"""

from __future__ import annotations

import functools

import numpy as np

from rocmforge_core.gpu import mvq

MIN_ROWS = mvq.COLUMN_BUCKETS[-1] + 1  # fewer rows: the int8 mat-vec reads the weights once anyway
ROWS_PER_BLOCK = 128                     # RF_MM_BN
BK = 32                                  # RF_MM_BK: input values per step
WEIGHT_ROWS = (128, 64)                  # RF_MMF_KERNEL instances: weight rows per block
# Weight types without a split layout, read in GGUF's own blocks (rf_gguf_stage; 128-row blocks only).
GGUF_TYPES = frozenset({"f32", "f16", "bf16", "q2_K", "q3_K"})
WARPS = 8                                # RF_MM_WARPS
MAX_PARTS = 3                            # weights per launch


def usable(x, ldx: int, rows: int) -> bool:
    """Whether the tile kernel can read these activations (16-byte aligned rows of float32)."""
    return rows >= MIN_ROWS and x.ptr % 16 == 0 and ldx % 4 == 0


BLOCKS_PER_SM = {128: 2, 64: 3}          # resident blocks per SM (RF_BOUNDS in mmf.hip)
# Costs measured on the H200 (8B shapes, 512 rows): one wave of block steps, in microseconds, at each
# block height; the split reduction's fixed cost and the bandwidth its partial sums move at.
STEP_US = {128: 1.75, 64: 1.6}
REDUCE_US = 3.0
REDUCE_BYTES_PER_US = 3.0e6
# The host's part of a launch (Python, argument packing, the driver call; plus the scratch array for a
# split): a model constant fitted on the H200 machine, where splits on the 135M model's tiny products
# cut its device time 7 % but its prompt rate fell 55k -> 33k tok/s. The host's work overlaps the
# device's, so a launch costs the larger of the two: splitting a product whose device time is below
# that buys nothing.
HOST_US = 40.0
MAX_SPLITS = 8
MIN_SPLIT_STEPS = 8                      # 256 input values a split at least
SPLIT_MARGIN = 0.85


def tiled(part) -> bool:
    """Whether a weight part runs on the tiles for prompt rows (the split layout, or a GGUF type with a
    tile stage whose rows are whole 32-value steps)."""
    return part.split or (part.kernel in GGUF_TYPES and part.n_in % BK == 0)


def plan(ops, n_out: int, n_in: int, rows: int, heights: tuple[int, ...] = WEIGHT_ROWS) -> tuple[int, int]:
    """(weight rows per block, splits of the input) for one launch: the pair that finishes soonest when
    whole waves of resident blocks each take their steps, plus for a split the pass that writes and
    re-reads the partial sums. Small products (few weight rows or few activation rows) get split over
    the input so that they fill the card; big ones are left whole."""
    return _plan(max(1, ops.device.multiprocessors), n_out, n_in, rows, heights)


@functools.lru_cache(maxsize=4096)
def _plan(sms: int, n_out: int, n_in: int, rows: int, heights: tuple[int, ...]) -> tuple[int, int]:
    tiles = -(-rows // ROWS_PER_BLOCK)
    steps = n_in // BK
    best = None
    for bm in heights:
        blocks = -(-n_out // bm) * tiles
        slots = BLOCKS_PER_SM[bm] * sms
        for s in range(1, MAX_SPLITS + 1):
            per = -(-steps // s)
            if s > 1 and per < MIN_SPLIT_STEPS:
                break
            device = -(-blocks * s // slots) * per * STEP_US[bm]
            if s == 1:
                cost = max(device, HOST_US)
            else:  # and only for a clear gain: the cost model is coarse
                device += REDUCE_US + (2 * s + 1) * rows * n_out * 4 / REDUCE_BYTES_PER_US
                cost = max(device, 2 * HOST_US) / SPLIT_MARGIN
            if best is None or (cost, device) < best[:2]:  # ties (host-bound): the least device time
                best = (cost, device, bm, s)
    return best[2], best[3]


def to_f16(ops, x, ldx: int, rows: int, n: int):
    """Rows of float32 x (ldx apart) as a contiguous (rows, n) f16 array, each row scaled by a power of
    two into f16's range, and the (rows,) float32 factors that undo it (the products' epilogue)."""
    y, scale = ops.empty((rows, n), np.float16), ops.empty((rows,))
    ops.launch("convert_f16", (rows,), ops.threads(256), x.ptr, ldx, y.ptr, scale.ptr, n)
    return y, scale


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
    consecutive columns from parts[0].col_off; y, bias and res point at column 0 of the product);
    x16 = to_f16's (rows, scales)."""
    x16, xs = x16
    first = parts[0]
    n = [p.n_out for p in parts] + [0] * (MAX_PARTS - len(parts))
    w = [p.block.ptr for p in parts] + [0] * (MAX_PARTS - len(parts))
    cols = sum(n)
    bm, splits = plan(ops, cols, first.n_in, rows, (128,) if first.kernel in GGUF_TYPES else WEIGHT_ROWS)
    k_steps = -(-(first.n_in // BK) // splits)
    block = WARPS * ops.warp if ops.warp > 1 else 1  # the host emulation's one thread plays all warps
    grid = (sum(-(-k // bm) for k in n), -(-rows // ROWS_PER_BLOCK), splits)
    off = 4 * first.col_off
    bias = bias_ptr + off if bias_ptr else 0
    res = res_ptr + off if res_ptr else 0
    name = f"mmf_{first.kernel}_{bm}"
    if splits == 1:
        ops.launch(name, grid, block, *w, *n, first.n_in, first.row_bytes, x16.ptr, first.n_in, xs.ptr, y_ptr + off,
                   ldy, bias, res, rows, k_steps, 0)
        return
    # Each split's partial product into its own slice of a scratch array, then one pass adds them up
    # in a fixed order (bitwise the same result every run) with the bias and the residual.
    ws = ops.empty((splits, rows, cols))
    ops.launch(name, grid, block, *w, *n, first.n_in, first.row_bytes, x16.ptr, first.n_in, xs.ptr, ws.ptr, cols,
               0, 0, rows, k_steps, rows * cols)
    threads = ops.threads(256)
    ops.launch("mmf_reduce", (-(-cols // threads), rows), threads, ws.ptr, rows * cols, splits, cols, y_ptr + off,
               ldy, bias, res)
