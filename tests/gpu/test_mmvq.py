"""The int8-activation mat-vec (hip_kernels/mmvq.hip, rocmforge_core/gpu/mvq.py) against numpy.

Two references per case, on fresh random blocks at awkward shapes (rows that are not a multiple of
the launch's column bucket, output counts not a multiple of the block, rows shorter than a warp):
  - exact arithmetic on the same 8-bit activations: the kernel's only freedom is float32 summation
    order, so 2e-5 of the largest output (as for the float mat-vec);
  - float activations (what the CPU backend computes): rounding moves each value by at most 1/254 of
    its block's largest |x|, so by Cauchy-Schwarz each output moves by at most ||W row|| times the
    norm of those per-value bounds (a hard bound, not a statistical one), plus float32 slack.
Every output buffer is poisoned with NaN first, so an element the kernel fails to write fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from gguf_factory import random_blocks
from rocmforge_core.gpu.kernels import weight_kernel
from rocmforge_core.gpu.weights import GpuLinear, WeightPart
from rocmforge_core.backends.cpu import CpuBackend
from rocmforge_core.gpu import mvq
from rocmforge_core.quants import dequantize
from test_kernels import F32_BOUND, poisoned, rel_err, rng_for

TYPES = [QT[name] for name in mvq.SPLIT_TYPES]
cpu_ref = CpuBackend()


def split_weight(ops_q8, qtype: QT, n_out: int, n_in: int, rng) -> tuple[GpuLinear, np.ndarray]:
    raw = random_blocks(qtype, (n_out, n_in), rng, scale=0.05)
    ref = dequantize(raw, qtype, (n_out, n_in)).astype(np.float64)
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    block = mvq.split_on_device(ops_q8, [flat], qtype.name)
    part = WeightPart(block, weight_kernel(qtype.name), n_out, n_in, flat.nbytes // n_out, 0, qtype.name, True)
    return GpuLinear([part], n_out, n_in), ref


def q8_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's version of quantize_q8: per 32 values d = max|x| / 127, q = rint(x * (127 / max|x|))."""
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(axis=2)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv[..., None]).astype(np.int8)
    return q, (amax / np.float32(127)).astype(np.float32)


def q8_error_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(rows, n_out) bound on |x_q8 @ w.T - x @ w.T| from the per-value rounding bound amax / 254."""
    amax = np.abs(x.astype(np.float64).reshape(x.shape[0], -1, 32)).max(axis=2)
    per_row = np.sqrt(32 * ((amax / 254) ** 2).sum(axis=1))  # (rows,) norm of the rounding bounds
    return per_row[:, None] * np.linalg.norm(w, axis=1)[None, :] * 1.0001


def shapes(qtype: QT):
    qk = mvq.SPLIT_TYPES[qtype.name][0]
    return [(37, qk * 3), (5, qk), (130, qk * 13 if qk == 32 else qk * 2)]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_int8_matvec(ops_q8, qtype, request, monkeypatch):
    ops = ops_q8
    monkeypatch.setattr(ops, "matrix_tiles", False)  # 11 rows would go to the tile product (test_mmf.py)
    rng = rng_for(request)
    for n_out, n_in in shapes(qtype):
        lin, w = split_weight(ops_q8, qtype, n_out, n_in, rng)
        for rows in (1, 3, 8, 11):  # buckets 1, 4, 8 and 8 + a partial 4
            x = rng.standard_normal((rows, n_in)).astype(np.float32)
            y = poisoned(ops_q8, (rows, n_out))
            ops.matmul_into(ops.upload(x), lin, y)
            got = ops.to_host(y)
            q, d = q8_reference(x)
            xr = (q.astype(np.float64) * d[..., None]).reshape(rows, n_in)
            where = f"{qtype.name} {n_out}x{n_in} rows={rows}"
            assert rel_err(got, xr @ w.T) < F32_BOUND, where
            ref = x.astype(np.float64) @ w.T
            assert np.all(np.abs(got - ref) <= q8_error_bound(x, w) + F32_BOUND * np.abs(ref).max()), where


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q6_K, QT.Q4_0], ids=lambda q: q.name)
def test_every_variant_computes_the_same_sums(ops_q8, qtype, request):
    """Each row bucket's kernel variants (R rows per lane group, U items in flight; mvq.tune picks
    one per shape by timing) give bit-identical results, a last group short of R rows included -
    tuning can never change what a model computes - and the same as the default launch."""
    ops = ops_q8
    rng = rng_for(request)
    qk = mvq.SPLIT_TYPES[qtype.name][0]
    n_out, n_in = 37, qk * (5 if qk == 32 else 2)  # 37 rows: a partial group for R = 2 and 4
    lin, w = split_weight(ops_q8, qtype, n_out, n_in, rng)
    part = lin.parts[0]
    for nc, variants in mvq.VARIANTS.items():
        rows = nc if nc == 1 else nc - 1  # a bucket's launch with fewer rows than it holds
        x = rng.standard_normal((rows, n_in)).astype(np.float32)
        q8 = mvq.quantize(ops, ops.upload(x))
        results = []
        for variant in variants:
            y = poisoned(ops, (rows, n_out))
            mvq.launch(ops, part, q8, rows, y.ptr, n_out, variant=variant)
            results.append(ops.to_host(y))
        q, d = q8_reference(x)
        xr = (q.astype(np.float64) * d[..., None]).reshape(rows, n_in)
        assert rel_err(results[0], xr @ w.T) < F32_BOUND, (qtype.name, nc)
        for variant, got in zip(variants[1:], results[1:]):
            assert np.array_equal(got, results[0]), (qtype.name, nc, variant)


def test_tuning_gives_each_shape_a_variant_per_bucket(ops_q8, request, monkeypatch):
    """mvq.tune times the variants over every part of a shape and records one per row bucket on each
    part; launches then use it (here the emulation's timings, whatever they are: the choice is only
    about speed, the test above shows the results are the same)."""
    ops = ops_q8
    rng = rng_for(request)
    lins = [split_weight(ops_q8, QT.Q4_K, 37, 512, rng)[0] for _ in range(2)]
    lines = mvq.tune(ops, lins, repeats=1)
    assert len(lines) == 2 and lines[0].startswith("q4_K 37x512 (x2)") and "1 shapes tuned in" in lines[1]
    for lin in lins:
        part = lin.parts[0]
        assert set(part.mvq) == set(mvq.COLUMN_BUCKETS)
        assert all(part.mvq[nc] in mvq.VARIANTS[nc] for nc in mvq.COLUMN_BUCKETS)
    launched = []
    launch = ops.launch
    monkeypatch.setattr(ops, "launch", lambda kernel, *a: launched.append(kernel) or launch(kernel, *a))
    x = ops.upload(rng.standard_normal((3, 512)).astype(np.float32))
    ops.matmul_into(x, lins[0], ops.empty((3, 37)))
    r, u = lins[0].parts[0].mvq[4]
    assert f"mvq_q4_K_4_r{r}u{u}" in launched


@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_norm_runs_inside_the_matvec(ops_q8, qtype, request, monkeypatch):
    """norm_matmul on one short row: the RMSNorm computed and quantized in each mat-vec block
    (mvq_norm_<type>, no rms_norm launch) gives the product of the normed row within the 8-bit
    activations' bound, bias included; a row longer than norm_fuse_max takes the two launches."""
    ops = ops_q8
    rng = rng_for(request)
    qk = mvq.SPLIT_TYPES[qtype.name][0]
    n_out, n_in = 37, qk * (18 if qk == 32 else 3)
    lin, w = split_weight(ops_q8, qtype, n_out, n_in, rng)
    lin.bias = ops.upload(rng.standard_normal(n_out).astype(np.float32))
    x = (rng.standard_normal((1, n_in)) * 3).astype(np.float32)
    nw = rng.standard_normal(n_in).astype(np.float32)
    normed = (x.astype(np.float64) / np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-5)) * nw
    ref = normed @ w.T + ops.to_host(lin.bias)
    launched = []
    launch = ops.launch
    monkeypatch.setattr(ops, "launch", lambda kernel, *a: launched.append(kernel) or launch(kernel, *a))
    for fuse_max, want in ((4096, "mvq_norm_"), (0, "rms_norm_q8")):
        monkeypatch.setattr(ops, "norm_fuse_max", fuse_max)
        launched.clear()
        got = ops.to_host(ops.norm_matmul(ops.upload(x), ops.upload(nw), 1e-5, lin))
        assert any(k.startswith(want) for k in launched), (fuse_max, launched)
        assert (want == "rms_norm_q8") == ("rms_norm_q8" in launched)
        bound = q8_error_bound(normed.astype(np.float32), w) * 1.01 + 1e-4 * np.abs(ref).max()
        assert np.all(np.abs(got - ref) <= bound), (qtype.name, fuse_max)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_activation_runs_inside_the_matvec(ops_q8, activation, request, monkeypatch):
    """glu_matmul on one short gate|up row: the activation computed and quantized in each mat-vec block
    (mvq_<swiglu|geglu>_<type>, no activation launch), with the residual in the epilogue, gives the
    same bits as the two launches (the same functions, the same quantization, variants summing alike);
    a row longer than the limit takes the two launches."""
    ops = ops_q8
    rng = rng_for(request)
    n_out, f = 37, 96
    lin, w = split_weight(ops_q8, QT.Q4_1, n_out, f, rng)
    gu = ops.upload((rng.standard_normal((1, 2 * f)) * 2).astype(np.float32))
    res = ops.upload(rng.standard_normal((1, n_out)).astype(np.float32))
    launched = []
    launch = ops.launch
    monkeypatch.setattr(ops, "launch", lambda kernel, *a: launched.append(kernel) or launch(kernel, *a))
    monkeypatch.setattr(ops, "norm_fuse_max", 1024)  # on (off by default: measured slower on an H200)
    act = "swiglu" if activation == "silu" else "geglu"
    fused = ops.to_host(ops.glu_matmul(gu, activation, lin, residual=res))
    assert f"mvq_{act}_q4_1" in launched and f"{act}_q8" not in launched
    plain = ops.to_host(ops.matmul(getattr(ops, act)(gu), lin, residual=res))
    assert np.array_equal(fused, plain)
    monkeypatch.setattr(ops, "norm_fuse_max", 0)
    launched.clear()
    again = ops.to_host(ops.glu_matmul(gu, activation, lin, residual=res))
    assert f"{act}_q8" in launched and np.array_equal(again, plain)


def test_tuning_choices_are_kept_for_the_next_load(ops_q8, request, monkeypatch, tmp_path):
    """With the cache (as weights_loaded tunes), a shape tuned once is not timed again: a second model's
    parts of that shape get the same variants from disk even where capture would fail; another shape,
    or a file that is not JSON, is timed as before."""
    ops = ops_q8
    rng = rng_for(request)
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    first = [split_weight(ops, QT.Q4_K, 37, 512, rng)[0] for _ in range(2)]
    lines = mvq.tune(ops, first, repeats=1, cache=True)
    assert "1 shapes tuned in" in lines[-1] and (tmp_path / "kernels" / "mvq-tuning.json").is_file()
    again = [split_weight(ops, QT.Q4_K, 37, 512, rng)[0] for _ in range(2)]

    def refuse(stream):
        raise RuntimeError("no capture here")
    monkeypatch.setattr(ops.rt, "capture_begin", refuse)
    lines = mvq.tune(ops, again, repeats=1, cache=True)
    assert lines[0].endswith("(cached)") and "from the tuning cache" in lines[-1], lines
    assert all(lin.parts[0].mvq == first[0].parts[0].mvq for lin in again)
    other = split_weight(ops, QT.Q4_K, 41, 512, rng)[0]  # a shape not seen: timed (and here it fails)
    assert "tuning failed" in mvq.tune(ops, [other], repeats=1, cache=True)[0]
    (tmp_path / "kernels" / "mvq-tuning.json").write_text("not json")
    assert "tuning failed" in mvq.tune(ops, again[:1] + again[1:], repeats=1, cache=True)[0]


def test_tuning_that_cannot_capture_keeps_the_defaults(ops_q8, request, monkeypatch):
    """A runtime whose graph capture fails does not fail the model's load: every part keeps the
    default variants and the tuning says why."""
    ops = ops_q8
    lin = split_weight(ops_q8, QT.Q4_0, 37, 64, rng_for(request))[0]

    def refuse(stream):
        raise RuntimeError("no capture here")
    monkeypatch.setattr(ops.rt, "capture_begin", refuse)
    lines = mvq.tune(ops, [lin], repeats=1)
    assert "tuning failed" in lines[0] and "no capture here" in lines[0]
    assert lin.parts[0].mvq == {}


def test_quantize_matches_numpy(ops_q8, request):
    ops = ops_q8
    rng = rng_for(request)
    x = rng.standard_normal((5, 320)).astype(np.float32) * 3
    x[2, :32] = 0  # an all-zero block: d = 0, q = 0
    xq, xd = mvq.quantize(ops_q8, ops.upload(x))
    q, d = q8_reference(x)
    assert np.array_equal(ops.to_host(xq).reshape(q.shape), q)
    ds = ops.to_host(xd)
    assert np.array_equal(ds[..., 0], d)
    assert np.allclose(ds[..., 1], d * q.astype(np.float32).sum(axis=2), rtol=1e-6, atol=0)


def test_rms_norm_also_quantizes(ops_q8, request):
    ops = ops_q8
    rng = rng_for(request)
    x = rng.standard_normal((3, 576)).astype(np.float32)
    w = rng.standard_normal(576).astype(np.float32)
    y = ops.rms_norm(ops.upload(x), ops.upload(w), 1e-5)
    assert y.q8 is not None
    yh = ops.to_host(y)
    q, d = q8_reference(yh)
    got_q = ops.to_host(y.q8[0]).reshape(q.shape).astype(np.int16)
    assert np.abs(got_q - q).max() <= 1 and np.mean(got_q != q) < 1e-2  # y rounded the same way, or 1 ulp off
    assert np.allclose(ops.to_host(y.q8[1])[..., 0], d, rtol=1e-6)


@pytest.mark.parametrize("act", ["swiglu", "geglu"])
def test_gated_activation_also_quantizes(ops_q8, act, request):
    ops = ops_q8
    rng = rng_for(request)
    gu = rng.standard_normal((3, 2 * 288)).astype(np.float32)
    y = getattr(ops, act)(ops.upload(gu))
    ref = getattr(cpu_ref, act)(gu.astype(np.float64))
    yh = ops.to_host(y)
    assert rel_err(yh, ref) < F32_BOUND
    q, d = q8_reference(yh)
    got_q = ops.to_host(y.q8[0]).reshape(q.shape).astype(np.int16)
    assert np.abs(got_q - q).max() <= 1 and np.mean(got_q != q) < 1e-2
    assert np.allclose(ops.to_host(y.q8[1])[..., 0], d, rtol=1e-6)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_gather_from_split_layout(ops_q8, qtype, request):
    ops = ops_q8
    rng = rng_for(request)
    n_out, n_in = shapes(qtype)[0]
    lin, w = split_weight(ops_q8, qtype, n_out, n_in, rng)
    tokens = rng.integers(0, n_out, 9)
    tokens[2] = n_out - 1
    got = ops.embedding(lin, tokens)
    assert rel_err(ops.to_host(got), w[tokens]) < 1e-6


def test_lanes_per_row(ops_q8):
    ops = ops_q8
    assert mvq.lanes_per_row(ops_q8, 1) == 1
    assert mvq.lanes_per_row(ops_q8, 18) == min(16, ops.warp)
    assert mvq.lanes_per_row(ops_q8, 448) == ops.warp


def test_attention_output_also_quantizes(ops_q8, request):
    """The attention kernel quantizes its output rows for the output projection (groups of 32 that
    span head boundaries of a row the same way quantize_q8 would)."""
    ops = ops_q8
    rng = rng_for(request)
    n_heads, n_kv, hd, n_ctx = 4, 2, 64, 32
    cache = ops.make_cache(1, 2, n_ctx, n_kv, hd)
    q = ops.upload(rng.standard_normal((3, n_heads, hd)).astype(np.float32))
    k = ops.upload(rng.standard_normal((3, n_kv, hd)).astype(np.float32))
    v = ops.upload(rng.standard_normal((3, n_kv, hd)).astype(np.float32))
    out = ops.attention(q, k, v, cache, 0, [1], [0], [3], 0.125, None)
    assert out.q8 is not None
    q_ref, d_ref = q8_reference(ops.to_host(out))
    got = ops.to_host(out.q8[0]).reshape(q_ref.shape).astype(np.int16)
    assert np.abs(got - q_ref).max() <= 1 and np.mean(got != q_ref) < 1e-2
    assert np.allclose(ops.to_host(out.q8[1])[..., 0], d_ref, rtol=1e-6)


def test_adjacent_weights_of_one_type_share_one_launch(ops_q8, request, tmp_path, monkeypatch):
    """load_linear stacks adjacent weights of one split type into one part (Q|K as one array, V of
    another type its own): one mat-vec launch per run of a type, the product equal to the CPU's."""
    from gguf_factory import write_gguf
    from rocmforge_core.gguf_file import GGUFFile
    from rocmforge_core.gpu.weights import load_linear

    ops = ops_q8
    monkeypatch.setattr(ops, "matrix_tiles", False)
    rng = rng_for(request)
    shapes_types = {"q": (96, QT.Q4_K), "k": (37, QT.Q4_K), "v": (37, QT.Q8_0), "o": (5, QT.Q4_K)}
    tensors = {n: (random_blocks(t, (rows, 256), rng, scale=0.05), t) for n, (rows, t) in shapes_types.items()}
    gguf_file = GGUFFile(write_gguf(tmp_path / "w.gguf", "llama", {}, tensors))
    lin = load_linear(ops, gguf_file, ["q", "k", "v", "o"])
    assert [(p.type_name, p.n_out, p.col_off) for p in lin.parts] == [("Q4_K", 133, 0), ("Q8_0", 37, 133),
                                                                         ("Q4_K", 5, 170)]
    w = np.concatenate([dequantize(a, t, (a.shape[0], 256)) for a, t in tensors.values()]).astype(np.float64)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    launched = []
    launch = ops.launch
    monkeypatch.setattr(ops, "launch", lambda kernel, *a: launched.append(kernel) or launch(kernel, *a))
    y = poisoned(ops, (3, lin.n_out))
    ops.matmul_into(ops.upload(x), lin, y)
    assert [k.rsplit("_", 1)[0] for k in launched if k.startswith("mvq_")] == ["mvq_q4_K_4", "mvq_q8_0_4",
                                                                                "mvq_q4_K_4"]
    q, d = q8_reference(x)
    xr = (q.astype(np.float64) * d[..., None]).reshape(3, 256)
    assert rel_err(ops.to_host(y), xr @ w.T) < F32_BOUND
