"""Every kernel in hip_kernels/ against a numpy (float64) reference, on each test backend.

Inputs are fresh random data per test; shapes are deliberately awkward (not multiples of the block
size, the warp size or the mat-vec's 4-row pass); every output buffer is poisoned with NaN (0xFF
bytes) before the launch, so an element the kernel fails to write fails the comparison.

Error bounds, relative to the largest |reference| value of the output:
  float32 arithmetic with float32 accumulation (mat-vec, norms, attention, rope, activations): 2e-5
  (worst case seen is ~1e-6: decoded weights are exact, only summation order differs);
  softmax: 1e-4 (its normaliser is one float32 sum over up to 49152 terms);
  gathers, copies, argmax, int8 dots: exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from gguf_factory import random_blocks
from rocmforge_core.backends.cpu import CpuBackend
from rocmforge_core.backends.gpu import GpuOps
from rocmforge_core.rope import RopeSpec
from rocmforge_core.gpu.kernels import weight_kernel
from rocmforge_core.gpu.weights import GpuLinear, WeightPart
from rocmforge_core.kv_cache import KVCache
from rocmforge_core.quants import dequantize

F32_BOUND = 2e-5
cpu = CpuBackend()


def rel_err(got, ref) -> float:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got)), "unwritten (NaN-poisoned) or non-finite outputs"
    scale = max(np.max(np.abs(ref)), 1e-30)
    return float(np.max(np.abs(got - ref)) / scale)


def poisoned(ops, shape, dtype=np.float32):
    arr = ops.empty(shape, dtype)
    ops.rt.memset8(arr.ptr, 0xFF, max(arr.nbytes, 1), ops.stream)
    return arr


def rng_for(request) -> np.random.Generator:
    return np.random.default_rng(abs(hash(request.node.nodeid)) % 2**32)


def weight(ops, qtype: QT, n_out: int, n_in: int, rng) -> tuple[GpuLinear, np.ndarray]:
    raw = random_blocks(qtype, (n_out, n_in), rng, scale=0.05)
    ref = dequantize(raw, qtype, (n_out, n_in)).astype(np.float64)
    block = ops.upload(np.ascontiguousarray(raw).reshape(-1).view(np.uint8))
    part = WeightPart(block, weight_kernel(qtype.name), n_out, n_in, raw.reshape(n_out, -1).shape[1], 0)
    return GpuLinear([part], n_out, n_in), ref


FLOAT_TYPES = [QT.F32, QT.F16, QT.BF16]
BLOCK_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
K_TYPES = [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]


def shapes_for(qtype: QT):
    if qtype in FLOAT_TYPES:
        return [(37, 45), (5, 7), (70, 100)]
    if qtype in BLOCK_TYPES:
        return [(37, 96), (5, 32), (70, 224)]
    return [(37, 256), (5, 768)]


@pytest.mark.parametrize("qtype", FLOAT_TYPES + BLOCK_TYPES + K_TYPES, ids=lambda q: q.name)
def test_matvec_reads_packed_blocks(ops, qtype, request):
    rng = rng_for(request)
    for n_out, n_in in shapes_for(qtype):
        lin, w = weight(ops, qtype, n_out, n_in, rng)
        for rows in (1, 3, 6, 9):  # 6 and 9: several 4-row passes, the last one partial
            x = rng.standard_normal((rows, n_in)).astype(np.float32)
            y = poisoned(ops, (rows, n_out))
            ops.matmul_into(ops.upload(x), lin, y)
            err = rel_err(ops.to_host(y), x.astype(np.float64) @ w.T)
            assert err < F32_BOUND, f"{qtype.name} {n_out}x{n_in} rows={rows}: {err:.2e}"


@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q8_0, QT.F16, QT.Q6_K], ids=lambda q: q.name)
def test_matvec_fused_parts_and_bias(ops, qtype, request):
    """Two weights stacked along the output (Q|K|V fusion) write their column ranges, plus a bias."""
    rng = rng_for(request)
    n_in = 256
    (a, wa), (b, wb) = weight(ops, qtype, 19, n_in, rng), weight(ops, QT.Q8_0, 13, n_in, rng)
    b.parts[0].col_off = 19
    bias = rng.standard_normal(32).astype(np.float32)
    lin = GpuLinear(a.parts + b.parts, 32, n_in, ops.upload(bias))
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    got = ops.matmul(ops.upload(x), lin)
    ref = x.astype(np.float64) @ np.concatenate([wa, wb]).T + bias
    assert rel_err(ops.to_host(got), ref) < F32_BOUND


@pytest.mark.parametrize("qtype", FLOAT_TYPES + BLOCK_TYPES + K_TYPES, ids=lambda q: q.name)
def test_embedding_gather(ops, qtype, request):
    rng = rng_for(request)
    n_out, n_in = shapes_for(qtype)[0]
    lin, w = weight(ops, qtype, n_out, n_in, rng)
    tokens = rng.integers(0, n_out, 11)
    tokens[3] = n_out - 1
    got = ops.embedding(lin, tokens)
    assert rel_err(ops.to_host(got), w[tokens]) < 1e-6


@pytest.mark.parametrize("shape", [(3, 1, 45), (7, 576), (2, 5, 256), (1, 2049)])
def test_rms_norm(ops, shape, request):
    rng = rng_for(request)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    got = ops.rms_norm(ops.upload(x), ops.upload(w), 1e-6)
    assert rel_err(ops.to_host(got), cpu.rms_norm(x.astype(np.float64), w, 1e-6)) < F32_BOUND


def test_elementwise_ops(ops, request):
    rng = rng_for(request)
    for shape in [(1, 1), (3, 1000), (5, 77)]:
        a = rng.standard_normal(shape).astype(np.float32) * 3
        b = rng.standard_normal(shape).astype(np.float32)
        da, db = ops.upload(a), ops.upload(b)
        assert rel_err(ops.to_host(ops.add(da, db)), a.astype(np.float64) + b) < 1e-6
        assert rel_err(ops.to_host(ops.scale(da, 0.37)), a * np.float64(0.37)) < 1e-6
        assert rel_err(ops.to_host(ops.softcap(da, 2.5)), np.tanh(a / 2.5) * 2.5) < F32_BOUND


@pytest.mark.parametrize("act", ["swiglu", "geglu"])
def test_gated_activations(ops, act, request):
    rng = rng_for(request)
    gu = (rng.standard_normal((5, 2 * 83)) * 4).astype(np.float32)
    got = getattr(ops, act)(ops.upload(gu))
    ref = getattr(cpu, act)(gu.astype(np.float64))
    assert rel_err(ops.to_host(got), ref) < F32_BOUND


def test_column_slices_and_row_gathers(ops, request):
    rng = rng_for(request)
    x = rng.standard_normal((9, 50)).astype(np.float32)
    d = ops.upload(x)
    assert np.array_equal(ops.to_host(d[:, 7:31]), x[:, 7:31])
    assert np.array_equal(ops.to_host(d[np.array([8, 0, 3])]), x[[8, 0, 3]])
    assert np.array_equal(ops.to_host(d[np.array([8])]), x[[8]])
    assert np.array_equal(np.asarray(d[4]), x[4])


def test_column_views_are_read_in_place(ops, request):
    """Column slices of a fused projection are strided views: the ops that consume q/k/v read them
    in place (no copy2d launch) and give the results of contiguous inputs exactly."""
    rng = rng_for(request)
    n, heads, n_kv, hd = 5, 4, 2, 16
    qkv = rng.standard_normal((n, (heads + 2 * n_kv) * hd)).astype(np.float32)
    d = ops.upload(qkv)
    q_end, k_end = heads * hd, (heads + n_kv) * hd
    q = d[:, :q_end].reshape(n, heads, hd)
    k = d[:, q_end:k_end].reshape(n, n_kv, hd)
    v = d[:, k_end:].reshape(n, n_kv, hd)
    assert not q.contiguous and q.ld == qkv.shape[1] and k.ld == v.ld == qkv.shape[1]
    w = ops.upload(rng.standard_normal(hd).astype(np.float32))
    spec = RopeSpec(hd, 10000.0, True)
    positions = np.arange(3, 3 + n)
    cache, host = _gpu_cache(ops, 2, n_kv, 16, hd, rng)
    launched = []
    launch = ops.launch
    ops.launch = lambda name, *a: launched.append(name) or launch(name, *a)
    try:
        normed, roped = ops.rms_norm(q, w, 1e-6), ops.rope(k, positions, spec)
        att = ops.attention(ops.rope(q, positions, spec), roped, v, cache, 0, [1], [3], [n], 0.25, None)
    finally:
        del ops.launch
    assert "copy2d_f32" not in launched, launched
    ref_q, ref_k = ops.upload(qkv[:, :q_end].reshape(n, heads, hd)), ops.upload(qkv[:, q_end:k_end].reshape(n, n_kv, hd))
    ref_v = ops.upload(qkv[:, k_end:].reshape(n, n_kv, hd))
    assert np.array_equal(ops.to_host(normed), ops.to_host(ops.rms_norm(ref_q, w, 1e-6)))
    assert np.array_equal(ops.to_host(roped), ops.to_host(ops.rope(ref_k, positions, spec)))
    cache2, _ = _gpu_cache(ops, 2, n_kv, 16, hd, np.random.default_rng(0))
    ops.rt.copy_htod(cache2.k[0], host.k[0], host.k[0].nbytes, ops.stream)
    ops.rt.copy_htod(cache2.v[0], host.v[0], host.v[0].nbytes, ops.stream)
    ref = ops.attention(ops.rope(ref_q, positions, spec), ops.rope(ref_k, positions, spec), ref_v, cache2, 0,
                        [1], [3], [n], 0.25, None)
    assert np.array_equal(ops.to_host(att), ops.to_host(ref))
    assert np.array_equal(cache.values(0, 1, 0, 16), cache2.values(0, 1, 0, 16))
    lin, wm = weight(ops, QT.F32, 7, q_end, rng)
    assert np.array_equal(ops.to_host(ops.matmul(d[:, :q_end], lin)), ops.to_host(ops.matmul(ref_q.reshape(n, -1), lin)))
    assert np.array_equal(np.asarray(d[:, q_end:k_end]), qkv[:, q_end:k_end])  # a download copies once


@pytest.mark.parametrize("neox,rot,hd", [(True, 64, 64), (False, 16, 16), (True, 12, 20), (False, 80, 80)])
def test_rope(ops, neox, rot, hd, request):
    rng = rng_for(request)
    spec = RopeSpec(rot, 10000.0, neox, pos_scale=0.5, freq_factors=tuple(rng.uniform(1, 3, rot // 2)))
    x = rng.standard_normal((6, 3, hd)).astype(np.float32)
    positions = np.array([0, 1, 5, 77, 300, 2047])
    got = ops.rope(ops.upload(x), positions, spec)
    assert rel_err(ops.to_host(got), cpu.rope(x, positions, spec)) < F32_BOUND


@pytest.mark.parametrize("window", [None, 5])
def test_split_attention_matches_one_block(ops, window, request):
    """Flash-decoding (keys split over blocks, then merged) equals attention over all keys in one
    block, for rows of different lengths (some shorter than the number of splits) and GQA 4:1."""
    rng = rng_for(request)
    n_heads, n_kv, hd, n_ctx = 8, 2, 64, 40
    cache = ops.make_cache(1, 3, n_ctx, n_kv, hd)
    for slot, length in ((0, 37), (1, 3), (2, 20)):
        k = ops.upload(rng.standard_normal((length, n_kv, hd)).astype(np.float32))
        v = ops.upload(rng.standard_normal((length, n_kv, hd)).astype(np.float32))
        q = ops.upload(rng.standard_normal((length, n_heads, hd)).astype(np.float32))
        ops.attention(q, k, v, cache, 0, [slot], [0], [length], 0.125, window)  # fills the cache
    q = ops.upload(rng.standard_normal((3, n_heads, hd)).astype(np.float32))
    k = ops.upload(rng.standard_normal((3, n_kv, hd)).astype(np.float32))
    v = ops.upload(rng.standard_normal((3, n_kv, hd)).astype(np.float32))
    saved = ops.attn_keys_per_split
    try:
        ops.attn_keys_per_split = 8  # 40 // 8 = 5 splits
        assert ops._attention_splits(3, n_ctx) == 5
        split = ops.to_host(ops.attention(q, k, v, cache, 0, [0, 1, 2], [37, 3, 20], [1, 1, 1], 0.125, window))
        ops.attn_keys_per_split = 10**9
        whole = ops.to_host(ops.attention(q, k, v, cache, 0, [0, 1, 2], [37, 3, 20], [1, 1, 1], 0.125, window))
    finally:
        ops.attn_keys_per_split = saved
    assert rel_err(split, whole) < F32_BOUND


def test_f16_cache_stores_round_to_nearest_even(ops, request):
    """kv_append into an f16 cache rounds as numpy's float16 does: ties, subnormals, overflow to inf."""
    rng = rng_for(request)
    n_kv, hd = 2, 64
    vals = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-9, 5, 200),
                           [65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26 * 3, 0.0, -0.0,
                            1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 6e-8]]).astype(np.float32)
    x = np.resize(vals, (2, n_kv, hd)).astype(np.float32)
    saved, ops.kv_cache_type = ops.kv_cache_type, "f16"
    try:
        cache = ops.make_cache(1, 1, 4, n_kv, hd)
    finally:
        ops.kv_cache_type = saved
    q = ops.upload(np.zeros((2, 4, hd), np.float32))  # the queries do not matter here: only the append
    ops.attention(q, ops.upload(x), ops.upload(-x), cache, 0, [0], [0], [2], 0.125, None)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(cache.keys(0, 0, 0, 2), want.transpose(1, 0, 2))
    assert np.array_equal(cache.values(0, 0, 0, 2), -want.transpose(1, 0, 2))


@pytest.mark.parametrize("splits", [1, 4])
def test_f16_cache_attention_equals_f32_on_f16_values(ops, splits, request):
    """With keys and values already representable in f16, the f16 cache's attention (whole or split)
    equals the f32 cache's up to float32 summation order."""
    rng = rng_for(request)
    n_heads, n_kv, hd, n_ctx, length = 8, 2, 64, 32, 29
    k = rng.standard_normal((length, n_kv, hd)).astype(np.float16).astype(np.float32)
    v = rng.standard_normal((length, n_kv, hd)).astype(np.float16).astype(np.float32)
    q = rng.standard_normal((length, n_heads, hd)).astype(np.float32)
    outs = []
    saved = (ops.kv_cache_type, ops.attn_keys_per_split)
    try:
        for kind in ("f16", "f32"):
            ops.kv_cache_type, ops.attn_keys_per_split = kind, n_ctx // splits
            cache = ops.make_cache(1, 1, n_ctx, n_kv, hd)
            ops.attention(ops.upload(q[:-1]), ops.upload(k[:-1]), ops.upload(v[:-1]), cache, 0, [0], [0],
                          [length - 1], 0.125, None)  # prefill rows: one block per (head, row)
            last = ops.attention(ops.upload(q[-1:]), ops.upload(k[-1:]), ops.upload(v[-1:]), cache, 0, [0],
                                 [length - 1], [1], 0.125, None)  # a decode row
            outs.append(ops.to_host(last))
    finally:
        ops.kv_cache_type, ops.attn_keys_per_split = saved
    assert rel_err(outs[0], outs[1]) < F32_BOUND


def _f16_values(rng, shape):
    return rng.standard_normal(shape).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("hd,heads,n_kv", [(64, 9, 3), (128, 32, 4), (256, 4, 1), (128, 10, 2), (64, 8, 8)],
                         ids=["hd64-gqa3", "hd128-gqa8", "hd256-gqa4", "hd128-gqa5", "hd64-mha"])
@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("split,split_keys", [(False, 0), (True, 0), (True, 8)],
                         ids=["one-block", "split", "live-splits"])
def test_attention_per_kv_head(ops, hd, heads, n_kv, window, split, split_keys, request):
    """attn_gqa_f16_<hd> (decode rows over an f16 cache, one block per KV head and split): GQA ratios 1,
    3, 4, 5 (a group of 4 heads plus one) and 8, rows shorter than the number of splits, windows shorter
    than the rows, against the CPU on the same f16-exact keys and values. live-splits: of the 8
    splits, a row takes one per 8 of its keys (62 keys: all 8, 34: 5, 3 and a window of 7: one, which
    writes the output without the merge)."""
    rng = rng_for(request)
    n_ctx, lengths = 70, (61, 2, 33)
    saved = (ops.kv_cache_type, ops.gqa_blocks_per_sm, ops.gqa_min_keys, ops.gqa_split_keys)
    try:
        ops.kv_cache_type = "f16"
        ops.gqa_blocks_per_sm, ops.gqa_min_keys = (10**4, 8) if split else (0, 10**9)
        ops.gqa_split_keys = split_keys
        cache = ops.make_cache(1, 3, n_ctx, n_kv, hd)
        host = KVCache(1, 3, n_ctx, n_kv, hd)
        scale = hd ** -0.5
        batches = [([slot], [0], [length]) for slot, length in enumerate(lengths)]  # prompts, then a decode step
        batches.append(([0, 1, 2], list(lengths), [1, 1, 1]))
        for slots, starts, counts in batches:
            n = sum(counts)
            q = rng.standard_normal((n, heads, hd)).astype(np.float32)
            k, v = _f16_values(rng, (n, n_kv, hd)), _f16_values(rng, (n, n_kv, hd))
            ref = cpu.attention(q, k, v, host, 0, slots, starts, counts, scale, window)
            got = ops.attention(ops.upload(q), ops.upload(k), ops.upload(v), cache, 0, slots, starts, counts,
                                scale, window)
            assert rel_err(ops.to_host(got), ref) < F32_BOUND, (slots, starts)
        kv_blocks = n_kv * -(-(heads // n_kv) // 4)
        assert ops._gqa_splits(3, n_ctx, kv_blocks) == (8 if split else 1)
    finally:
        ops.kv_cache_type, ops.gqa_blocks_per_sm, ops.gqa_min_keys, ops.gqa_split_keys = saved


def test_rope_qk_in_one_launch(ops, request):
    """q and k of different head counts, read as strided column slices of one fused projection."""
    rng = rng_for(request)
    spec = RopeSpec(64, 10000.0, False)
    qkv = rng.standard_normal((5, (4 + 2 + 2) * 64)).astype(np.float32)
    positions = np.array([3, 4, 9, 100, 101])
    d = ops.upload(qkv)
    q, k = d[:, :256].reshape(5, 4, 64), d[:, 256:384].reshape(5, 2, 64)
    yq, yk = ops.rope_qk(q, k, positions, spec)
    hq, hk = qkv[:, :256].reshape(5, 4, 64), qkv[:, 256:384].reshape(5, 2, 64)
    assert rel_err(ops.to_host(yq), cpu.rope(hq, positions, spec)) < F32_BOUND
    assert rel_err(ops.to_host(yk), cpu.rope(hk, positions, spec)) < F32_BOUND


def _gpu_cache(ops, n_slots, n_kv, n_ctx, hd, rng):
    """A 1-layer device cache and its CPU twin, both pre-filled with the same random history."""
    cache = ops.make_cache(1, n_slots, n_ctx, n_kv, hd)
    host = KVCache(1, n_slots, n_ctx, n_kv, hd)
    host.k[0][:] = rng.standard_normal(host.k[0].shape)
    host.v[0][:] = rng.standard_normal(host.v[0].shape)
    ops.rt.copy_htod(cache.k[0], host.k[0], host.k[0].nbytes, ops.stream)
    ops.rt.copy_htod(cache.v[0], host.v[0], host.v[0].nbytes, ops.stream)
    ops.sync()
    return cache, host


@pytest.mark.parametrize("hd", [16, 64, 80, 256])
@pytest.mark.parametrize("window", [None, 5])
def test_attention_decode_and_prefill(ops, hd, window, request):
    """Writes K/V into the cache, then GQA attention for a decode batch and a prefill chunk."""
    rng = rng_for(request)
    heads, n_kv, n_ctx = 6, 2, 40
    cache, host = _gpu_cache(ops, 3, n_kv, n_ctx, hd, rng)
    scale = hd ** -0.5
    for slots, starts, counts in (([2, 0], [17, 3], [1, 1]), ([1], [9], [13]), ([0], [0], [1])):
        n = sum(counts)
        q = rng.standard_normal((n, heads, hd)).astype(np.float32)
        k = rng.standard_normal((n, n_kv, hd)).astype(np.float32)
        v = rng.standard_normal((n, n_kv, hd)).astype(np.float32)
        ref = cpu.attention(q, k, v, host, 0, slots, starts, counts, scale, window)
        got = ops.attention(ops.upload(q), ops.upload(k), ops.upload(v), cache, 0, slots, starts, counts,
                            scale, window)
        assert rel_err(ops.to_host(got), ref) < F32_BOUND
        assert np.array_equal(cache.keys(0, slots[0], 0, n_ctx), host.keys(0, slots[0], 0, n_ctx))
        assert np.array_equal(cache.values(0, slots[-1], 0, n_ctx), host.values(0, slots[-1], 0, n_ctx))


@pytest.mark.parametrize("neox", [True, False])
def test_rope_attention_fuses_rotation_and_append(ops, neox, request):
    """ops.rope_attention (q and k rotated, k and v appended to the cache, one launch, then attention)
    equals the CPU's rope_qk + attention, for a decode batch of two sequences and a prompt chunk, with a
    partial rotary dimension and q, k, v read in place from one fused projection's rows; and on an f16
    cache it writes the same bits as the two-launch path (rope_qk, then attention's own append)."""
    rng = rng_for(request)
    heads, n_kv, hd, n_ctx = 6, 2, 48, 24
    spec = RopeSpec(32, 10000.0, neox)
    cache, host = _gpu_cache(ops, 3, n_kv, n_ctx, hd, rng)
    for slots, starts, counts in (([2, 0], [17, 3], [1, 1]), ([1], [5], [9])):
        n = sum(counts)
        positions = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)])
        qkv = rng.standard_normal((n, (heads + 2 * n_kv) * hd)).astype(np.float32)
        q, k, v = (qkv[:, :heads * hd].reshape(n, heads, hd), qkv[:, heads * hd:(heads + n_kv) * hd].reshape(n, n_kv, hd),
                   qkv[:, (heads + n_kv) * hd:].reshape(n, n_kv, hd))
        ref = cpu.rope_attention(q, k, v, positions, spec, host, 0, slots, starts, counts, 0.125, None)
        d = ops.upload(qkv)
        dq = d[:, :heads * hd].reshape(n, heads, hd)
        dk = d[:, heads * hd:(heads + n_kv) * hd].reshape(n, n_kv, hd)
        dv = d[:, (heads + n_kv) * hd:].reshape(n, n_kv, hd)
        launched = []
        launch = ops.launch
        ops.launch = lambda kernel, *a: launched.append(kernel) or launch(kernel, *a)
        try:
            got = ops.rope_attention(dq, dk, dv, positions, spec, cache, 0, slots, starts, counts, 0.125, None)
        finally:
            ops.launch = launch
        assert "rope_qk_kv_append_f32" in launched and not any(k.startswith(("rope_qk_f32", "kv_append")) for k in launched)
        assert rel_err(ops.to_host(got), ref) < F32_BOUND
        for slot in set(slots):
            assert rel_err(cache.keys(0, slot, 0, n_ctx), host.keys(0, slot, 0, n_ctx)) < F32_BOUND
            assert np.array_equal(cache.values(0, slot, 0, n_ctx), host.values(0, slot, 0, n_ctx))

    f16_ops = GpuOps(ops.rt)
    f16_ops.kv_cache_type = "f16"
    caches = [f16_ops.make_cache(1, 2, n_ctx, n_kv, hd) for _ in range(2)]
    q = f16_ops.upload(rng.standard_normal((2, heads, hd)).astype(np.float32))
    k = f16_ops.upload(rng.standard_normal((2, n_kv, hd)).astype(np.float32))
    v = f16_ops.upload(rng.standard_normal((2, n_kv, hd)).astype(np.float32))
    args = (caches[0], 0, [0, 1], [7, 2], [1, 1], 0.125, None)
    fused = f16_ops.rope_attention(q, k, v, np.array([7, 2]), spec, *args)
    rq, rk = f16_ops.rope_qk(q, k, np.array([7, 2]), spec)
    plain = f16_ops.attention(rq, rk, v, caches[1], *args[1:])
    assert np.array_equal(f16_ops.to_host(fused), f16_ops.to_host(plain))
    for slot in (0, 1):
        assert np.array_equal(caches[0].keys(0, slot, 0, n_ctx), caches[1].keys(0, slot, 0, n_ctx))
        assert np.array_equal(caches[0].values(0, slot, 0, n_ctx), caches[1].values(0, slot, 0, n_ctx))


@pytest.mark.parametrize("hd,heads,n_kv", [(64, 9, 3), (128, 16, 2), (256, 4, 1)], ids=["hd64-gqa3", "hd128-gqa8", "hd256-gqa4"])
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("splits", ["one-block", "live-splits"])
def test_rope_inside_decode_attention(ops, hd, heads, n_kv, neox, splits, request):
    """Decode rows over an f16 cache (one per sequence) take attn_gqa_rope_f16_<hd>: q rotated as the
    attention loads it, k rotated and k / v appended by the attention's blocks, no launch of their own.
    The same bits as rope_qk_kv_append then attn_gqa (outputs and both caches), and close to the CPU,
    for GQA groups of 3, 8 (two blocks of heads write the same key) and 4, a partial rotary dimension,
    rows whose own key falls in the first, a middle or the last live split, and a window."""
    rng = rng_for(request)
    n_ctx, spec = 80, RopeSpec(hd // 2, 10000.0, neox)
    saved = (ops.kv_cache_type, ops.gqa_blocks_per_sm, ops.gqa_min_keys, ops.gqa_split_keys, ops.rope_in_attention)
    try:
        ops.kv_cache_type = "f16"
        if splits == "live-splits":  # 10 splits of 8 keys at most
            ops.gqa_blocks_per_sm, ops.gqa_min_keys, ops.gqa_split_keys = 10**4, 8, 8
        else:
            ops.gqa_blocks_per_sm, ops.gqa_min_keys = 0, 10**9
        caches = [ops.make_cache(1, 4, n_ctx, n_kv, hd) for _ in range(2)]
        host = KVCache(1, 4, n_ctx, n_kv, hd)
        hist_k = _f16_values(rng, host.k[0].shape)  # the same f16-exact history in all three caches
        hist_v = _f16_values(rng, host.v[0].shape)
        host.k[0][:], host.v[0][:] = hist_k, hist_v
        for c in caches:
            ops.rt.copy_htod(c.k[0], hist_k.astype(np.float16), hist_k.size * 2, ops.stream)
            ops.rt.copy_htod(c.v[0], hist_v.astype(np.float16), hist_v.size * 2, ops.stream)
        ops.sync()
        for window in (None, 11):
            slots, starts = [3, 0, 1, 2], [0, 7, 40, 79]
            n = len(slots)
            positions = np.array(starts)
            qkv = rng.standard_normal((n, (heads + 2 * n_kv) * hd)).astype(np.float32)
            k_h = _f16_values(rng, (n, n_kv, hd))
            v_h = _f16_values(rng, (n, n_kv, hd))
            qkv[:, heads * hd:(heads + n_kv) * hd] = k_h.reshape(n, -1)
            qkv[:, (heads + n_kv) * hd:] = v_h.reshape(n, -1)
            q_h = qkv[:, :heads * hd].reshape(n, heads, hd)
            ref = cpu.rope_attention(q_h, qkv[:, heads * hd:(heads + n_kv) * hd].reshape(n, n_kv, hd),
                                     qkv[:, (heads + n_kv) * hd:].reshape(n, n_kv, hd), positions, spec, host, 0,
                                     slots, starts, [1] * n, hd ** -0.5, window)
            outs = []
            for fused, cache in zip((True, False), caches):
                ops.rope_in_attention = fused
                d = ops.upload(qkv)
                dq = d[:, :heads * hd].reshape(n, heads, hd)
                dk = d[:, heads * hd:(heads + n_kv) * hd].reshape(n, n_kv, hd)
                dv = d[:, (heads + n_kv) * hd:].reshape(n, n_kv, hd)
                launched = []
                launch = ops.launch
                ops.launch = lambda kernel, *a: launched.append(kernel) or launch(kernel, *a)
                try:
                    outs.append(ops.to_host(ops.rope_attention(dq, dk, dv, positions, spec, cache, 0, slots, starts,
                                                               [1] * n, hd ** -0.5, window)))
                finally:
                    ops.launch = launch
                assert (f"attn_gqa_rope_f16_{hd}" in launched) == fused, launched
                assert ("rope_qk_kv_append_f16" in launched) != fused, launched
            assert np.array_equal(outs[0], outs[1]), window
            assert rel_err(outs[0], ref) < 1e-3, window  # the rotated new keys are cached in f16, the CPU's in float32
            for slot in range(4):
                assert np.array_equal(caches[0].keys(0, slot, 0, n_ctx), caches[1].keys(0, slot, 0, n_ctx))
                assert np.array_equal(caches[0].values(0, slot, 0, n_ctx), caches[1].values(0, slot, 0, n_ctx))
            assert rel_err(caches[0].keys(0, 2, 0, n_ctx), host.keys(0, 2, 0, n_ctx)) < 1e-3
    finally:
        (ops.kv_cache_type, ops.gqa_blocks_per_sm, ops.gqa_min_keys, ops.gqa_split_keys,
         ops.rope_in_attention) = saved


@pytest.mark.parametrize("n", [1, 67, 1000, 49152])
def test_softmax_and_argmax(ops, n, request):
    rng = rng_for(request)
    x = (rng.standard_normal((3, n)) * 5).astype(np.float32)
    x[1, n // 2] = x[1, n // 3] = x[1].max() + 1  # a tie: the first index wins, as numpy
    got = ops.to_host(ops.softmax(ops.upload(x)))
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    # 1e-4: the normaliser is a float32 sum of up to 49152 terms (one thread does it all in emulation)
    assert rel_err(got, e / e.sum(axis=1, keepdims=True)) < 1e-4
    assert np.array_equal(ops.argmax(ops.upload(x)), np.argmax(x, axis=1))


def test_int8_dot_helper(ops, request):
    rng = rng_for(request)
    a = rng.integers(-128, 128, (37, 4 * 9), dtype=np.int8)
    b = rng.integers(-128, 128, (37, 4 * 9), dtype=np.int8)
    out = poisoned(ops, (37,), np.int32)
    da, db = ops.upload(a.view(np.int32)), ops.upload(b.view(np.int32))
    t = ops.threads(64)
    ops.launch("dot4_i8_rows", ((37 + t - 1) // t,), t, da.ptr, db.ptr, out.ptr, 9, 37)
    ref = (a.astype(np.int64) * b).sum(axis=1)
    assert np.array_equal(ops.to_host(out), ref)


def _cpu_draw(row: np.ndarray, params, u: float) -> tuple[int, np.ndarray, np.ndarray]:
    """The CPU sampler's token for logits `row` and uniform u (candidate_probs + Sampler._draw's
    inverse CDF), with the candidates' ids and cdf."""
    from rocmforge_core.sampler import candidate_probs

    ids, probs = candidate_probs(row, params)
    cdf = np.cumsum(probs)
    pick = min(int(np.sum(cdf <= u * cdf[-1])), len(probs) - 1 - int(np.argmax(probs[::-1] > 0)))
    return int(ids[pick]), ids, cdf


@pytest.mark.parametrize("vocab", [1000, 6244, 49157])
def test_device_sampling_matches_the_cpu_chain(ops, vocab, request):
    """The device sampler draws what the CPU sampler draws with the same uniform: top-k (ties to the
    lowest id), top-p, min-p, temperature, inverse CDF; settings across the chain's corners, rows with
    equal logits at the k-th place (spread over the slices of the two-launch path) and a flat row. 1000
    ids: one block a row (sample_topk_f32); 6244: four slices of 2048, the last of 100 (fewer than k =
    256) then sample_pick_f32; 49157: 25 slices."""
    from rocmforge_core.sampler import SamplingParams

    rng = rng_for(request)
    settings = [(0.8, 40, 0.95, 0.05), (1.5, 256, 0.5, 0.0), (0.2, 7, 1.0, 0.3), (1.0, 1, 1.0, 0.0),
                (0.7, 100, 0.9, 0.0), (2.0, 256, 1.0, 0.0), (1e-4, 50, 0.95, 0.05)]
    rows = []
    for _ in range(3):
        rows.append(rng.standard_normal(vocab).astype(np.float32) * rng.uniform(0.5, 6))
    tied = rng.standard_normal(vocab).astype(np.float32)
    tied[rng.choice(vocab, 60, replace=False)] = tied.max() + 1.0  # 60 equal best logits
    rows += [tied, np.zeros(vocab, np.float32)]  # and a flat row: top-k keeps ids 0..k-1
    checked = 0
    for row in rows:
        x = ops.upload(np.tile(row, (len(settings), 1)))
        us = rng.uniform(0, 1, len(settings))
        table = np.array([[t, k, p, m, u] for (t, k, p, m), u in zip(settings, us)], np.float32)
        got = ops.sample_rows(x, table)
        for (t, k, p, m), u, g in zip(settings, table[:, 4], got):
            want, ids, cdf = _cpu_draw(row, SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m), float(u))
            if g != want:  # only a u within rounding of a cdf step may land on the neighbour
                step = np.abs(cdf / cdf[-1] - u).min()
                assert step < 1e-5 and g in ids, (t, k, p, m, u, g, want)
            checked += 1
    assert checked == len(rows) * len(settings)


def test_device_penalties_equal_the_cpu(ops, request):
    """penalize_f32 changes the logits exactly as sampler.apply_penalties does (double precision on
    both sides, the host's own float64 penalties): repeated ids counted once each, -1 padding and ids
    outside the vocabulary ignored, negative logits multiplied, overflow and -inf clamped to float32's
    range, a row whose penalties are off left alone."""
    from rocmforge_core.sampler import apply_penalties

    rng = rng_for(request)
    vocab, width = 1000, 70
    logits = (rng.standard_normal((5, vocab)) * 4).astype(np.float32)
    logits[3, 5] = -np.inf
    windows = [rng.integers(0, 40, width).tolist(),                       # many repeats
               rng.integers(0, vocab, 50).tolist() + [vocab + 5, -7],     # out of range: ignored
               rng.integers(0, vocab, width).tolist(),                    # penalties off
               [5, 5, 6, 7] + rng.integers(0, vocab, 20).tolist(),        # -inf and huge penalties
               [int(np.argmax(logits[4]))] * 3]
    pens = [(1.1, 0.0, 0.0), (1.3, 0.25, 0.5), (1.0, 0.0, 0.0), (1e-39, 1e38, 0.0), (0.7, 0.0, -2.0)]
    ids = np.full((5, width + 2), -1, np.int32)
    for i, w in enumerate(windows):
        ids[i, :len(w)] = w
    x = ops.upload(logits)
    ops.penalize(x, (ids, np.array(pens, np.float64)))
    got = ops.to_host(x)
    for i, (w, (rp, fp, pp)) in enumerate(zip(windows, pens)):
        want = apply_penalties(logits[i], w, rp, -1, fp, pp)
        assert np.array_equal(got[i], want), i
    assert np.array_equal(got[2], logits[2])
    assert np.isfinite(got[3]).all() and not np.array_equal(got[3], logits[3])


def test_staged_uploads_arrive_whole(ops, request):
    """The pinned double buffer (gpu/staging.py) delivers arrays larger than a chunk, of odd sizes,
    back to back into one device array, with each buffer refilled only after its copy: every byte
    where it belongs; closing waits for the copies and frees the buffers."""
    from rocmforge_core.gpu.staging import Stager

    rng = rng_for(request)
    sizes = [5001, 7, 3000, 1000, 1]
    raws = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    want = np.concatenate(raws)
    out = ops.empty((sum(sizes),), np.uint8)
    stager = Stager(ops.rt, ops.stream, chunk=1000)
    at = 0
    for raw in raws:
        stager.copy(out.ptr + at, raw)
        raw[:] = 0  # the source may change once copy() returns: its bytes are already staged
        at += raw.nbytes
    stager.close()
    assert stager.buffers == [] and stager.bytes == sum(sizes)
    assert np.array_equal(ops.to_host(out), want)
