"""The matrix-tile product (hip_kernels/mmf.hip, rocmforge_core/gpu/mmf.py) against numpy.

Fresh random blocks at awkward shapes: weight rows that are not a multiple of either block height
(64, 128), activation rows past one 128-row tile and not a multiple of a tile's 16, inputs of one
and of several quant blocks. Two references per case:
  - the same arithmetic: weights and activations rounded to f16 first, exact products; the kernel's
    only freedom is float32 summation order (plus one f16 ulp where its dequantized float32 value
    sits one float32 ulp from the file decoder's), so 1e-4 of the largest output;
  - float64 on the unrounded values (what the CPU backend computes): rounding each factor to f16
    moves each product by at most 2^-10 of its size, so each output by at most 2^-10 sum|w x| (a hard
    bound), plus float32 slack.
Outputs are poisoned with NaN first, so an element the kernel fails to write fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from gguf_factory import random_blocks
from rocmforge_core.gpu import mmf, mvq
from rocmforge_core.gpu.kernels import weight_kernel
from rocmforge_core.gpu.weights import GpuLinear, WeightPart
from rocmforge_core.quants import dequantize
from test_kernels import poisoned, rel_err, rng_for
from test_mmvq import split_weight

TYPES = [QT[name] for name in mvq.SPLIT_TYPES]
F16_SAME_BOUND = 1e-4


def shapes(qtype: QT):
    qk = mvq.SPLIT_TYPES[qtype.name][0]
    return [(200, qk * 3 if qk == 32 else qk), (37, qk * 2)]


def f16_rows(x: np.ndarray) -> np.ndarray:
    """x as convert_f16 hands it to the tiles: each row times 2^(140 - e) (e = the biased exponent of
    its largest magnitude, so that one lands in [2^13, 2^14)), rounded to f16, scaled back."""
    x = np.asarray(x, np.float32)
    e = ((np.abs(x).max(axis=1).view(np.uint32) >> 23) & 0xFF).astype(np.int64)
    shift = np.where((e >= 14) & (e <= 254), 140 - e, 0).astype(np.float64)
    up = np.exp2(shift)[:, None]
    return (x * up).astype(np.float16).astype(np.float64) / up


def check(got, x, w, where):
    x16 = f16_rows(x)
    w16 = w.astype(np.float16).astype(np.float64)
    assert rel_err(got, x16 @ w16.T) < F16_SAME_BOUND, where
    ref = x.astype(np.float64) @ w.T
    bound = 2.0**-10 * (np.abs(x.astype(np.float64)) @ np.abs(w).T) * 1.001 + 2e-5 * np.abs(ref).max()
    assert np.all(np.abs(got - ref) <= bound), where


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_tile_product(ops_q8, qtype, request):
    ops = ops_q8
    rng = rng_for(request)
    for n_out, n_in in shapes(qtype):
        lin, w = split_weight(ops, qtype, n_out, n_in, rng)
        for rows in (9, 130):
            x = rng.standard_normal((rows, n_in)).astype(np.float32)
            y = poisoned(ops, (rows, n_out))
            ops.matmul_into(ops.upload(x), lin, y)
            check(ops.to_host(y), x, w, f"{qtype.name} {n_out}x{n_in} rows={rows}")


def test_activations_beyond_f16_range(ops_q8, request):
    """Rows far outside f16's range (largest |x| 1e6, and rows of 1e-7s that f16 would flush to
    subnormals) come out as float32 would compute them, to f16's relative precision."""
    ops = ops_q8
    rng = rng_for(request)
    lin, w = split_weight(ops, QT.Q4_K, 70, 512, rng)
    x = rng.standard_normal((33, 512)).astype(np.float32)
    x[::3] *= 3e5
    x[1::3] *= 1e-7
    y = poisoned(ops, (33, 70))
    ops.matmul_into(ops.upload(x), lin, y)
    got = ops.to_host(y)
    ref = x.astype(np.float64) @ w.T
    bound = 2.0**-10 * (np.abs(x.astype(np.float64)) @ np.abs(w).T) * 1.001
    assert np.all(np.isfinite(got)) and np.all(np.abs(got - ref) <= bound)
    small = slice(1, None, 3)  # the 1e-7 rows: each row is held to its own scale
    assert rel_err(got[small], ref[small]) < 1e-3


GGUF_LAYOUT_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q2_K, QT.Q3_K]


@pytest.mark.parametrize("qtype", GGUF_LAYOUT_TYPES, ids=lambda q: q.name)
def test_tile_product_gguf_layout(ops_q8, qtype, request):
    """Types without a split layout run on the tiles from GGUF's own blocks (rf_gguf_stage): the
    float mat-vec would be one launch, the tiles are the f16 conversion plus the product (plus a
    reduction when split)."""
    ops = ops_q8
    rng = rng_for(request)
    for n_out, n_in in ((200, 512), (37, 256)):
        raw = random_blocks(qtype, (n_out, n_in), rng, scale=0.05)
        w = dequantize(raw, qtype, (n_out, n_in)).astype(np.float64)
        flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        part = WeightPart(ops.upload(flat), weight_kernel(qtype.name), n_out, n_in, flat.nbytes // n_out, 0,
                          qtype.name, False)
        assert mmf.tiled(part)
        lin = GpuLinear([part], n_out, n_in)
        for rows in (9, 130):
            x = rng.standard_normal((rows, n_in)).astype(np.float32)
            y = poisoned(ops, (rows, n_out))
            before = ops.launches
            ops.matmul_into(ops.upload(x), lin, y)
            assert ops.launches - before >= 2
            check(ops.to_host(y), x, w, f"{qtype.name} {n_out}x{n_in} rows={rows}")


def test_tile_product_epilogue_and_strided_rows(ops_q8, request):
    """Bias and residual added in the epilogue; activations read from a column slice (row stride
    larger than the row), as a fused projection's output is."""
    ops = ops_q8
    rng = rng_for(request)
    n_out, n_in, rows = 77, 256, 21
    lin, w = split_weight(ops, QT.Q4_K, n_out, n_in, rng)
    bias = rng.standard_normal(n_out).astype(np.float32)
    lin.bias = ops.upload(bias)
    wide = rng.standard_normal((rows, n_in + 64)).astype(np.float32)
    x = ops.upload(wide)[:, 64:]
    res = rng.standard_normal((rows, n_out)).astype(np.float32)
    got = ops.to_host(ops.matmul(x, lin, residual=ops.upload(res)))
    check(got - bias - res, wide[:, 64:], w, "epilogue")


def test_fused_parts_share_launches(ops_q8, request):
    """A projection of stacked weights (q/k/v-like) with types Q4_K, Q4_K, Q6_K, Q4_K, Q4_K, Q4_K,
    Q4_K: runs of one type in one launch (at most three parts each), every column where it belongs."""
    ops = ops_q8
    rng = rng_for(request)
    types = [QT.Q4_K, QT.Q4_K, QT.Q6_K, QT.Q4_K, QT.Q4_K, QT.Q4_K, QT.Q4_K]
    outs = [70, 33, 48, 129, 16, 40, 24]
    n_in, rows = 256, 19
    parts, refs, off = [], [], 0
    for qtype, n_out in zip(types, outs):
        lin, w = split_weight(ops, qtype, n_out, n_in, rng)
        part = lin.parts[0]
        part.col_off = off
        off += n_out
        parts.append(part)
        refs.append(w)
    fused = GpuLinear(parts, off, n_in)
    assert [len(g) for g in mmf.groups(parts)] == [2, 1, 3, 1]
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    y = poisoned(ops, (rows, off))
    before = ops.launches
    ops.matmul_into(ops.upload(x), fused, y)
    assert ops.launches - before == 1 + 4  # the f16 conversion, then one launch per run
    check(ops.to_host(y), x, np.concatenate(refs), "fused")


class _Card:
    class device:
        multiprocessors = 132  # an H200


def test_launch_plan():
    """Block height and input splits per launch (512 prompt rows, H200): at 8B shapes the big fused
    gate/up fills the card with tall blocks as is; the long-input down projection, a lone 1024-row part
    (v) and the attention output are split over their inputs; the 135M model's products are not."""
    card = _Card()
    assert mmf.plan(card, 28672, 4096, 512) == (128, 1)
    assert mmf.plan(card, 4096, 14336, 512)[1] > 1
    assert mmf.plan(card, 1024, 4096, 512)[1] >= 4
    assert mmf.plan(card, 4096, 4096, 512)[1] > 1
    assert mmf.plan(card, 4096, 256, 512)[1] == 1  # too short to split: 8 steps
    assert mmf.plan(card, 576, 576, 512)[1] == 1  # 135M shapes: a split saves less than its launch costs


def test_split_product_adds_bias_and_residual_deterministically(ops_q8, request):
    """A product of one tile split over its input (in three on the emulation's one SM, in eight on an
    H200): the partial sums, bias and residual add up to the reference, and two runs agree bit for bit."""
    ops = ops_q8
    rng = rng_for(request)
    n_out, n_in, rows = 50, 2048, 21
    assert mmf.plan(ops, n_out, n_in, rows)[1] > 1
    lin, w = split_weight(ops, QT.Q4_0, n_out, n_in, rng)
    bias = rng.standard_normal(n_out).astype(np.float32)
    lin.bias = ops.upload(bias)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    res = rng.standard_normal((rows, n_out)).astype(np.float32)
    before = ops.launches
    first = ops.to_host(ops.matmul(ops.upload(x), lin, residual=ops.upload(res)))
    assert ops.launches - before == 3  # the f16 conversion, the split product, the reduction
    again = ops.to_host(ops.matmul(ops.upload(x), lin, residual=ops.upload(res)))
    assert np.array_equal(first, again)
    check(first - bias - res, x, w, "split")
