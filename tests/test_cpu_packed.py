"""The packed CPU backend (numerics="packed") against the float32 reference (backends/cpu.py).

- Kernels: every supported type, at row counts and widths that are multiples of nothing convenient,
  for decode-sized inputs (the integer kernels) and prompt-sized ones (dequantize + sgemm, sliced).
  int16 activations cost ~2e-5 of a product's largest value on random inputs (int8 cost 0.43-0.63 %);
  the bound below is 2e-4, a wrong block field or an int8 rounding would cost 10-100x more.
- Weights: no float32 copy of a weight matrix is kept; every array the linear layers hold is a view
  of the file's memory map.
- Real models: greedy continuations equal the float32 reference's up to the first near-tie, a step
  where the reference's two best logits are within 1 % of the larger.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from gguf_factory import random_blocks
from rocmforge_core import quants
from rocmforge_core.backends import cpu_packed
from rocmforge_core.backends.cpu import CpuBackend, make_ops
from rocmforge_core.backends.cpu_packed import PackedCpuBackend, PackedLinear, PackedPart
from rocmforge_core.gguf_file import GGUFFile
from rocmforge_core.models import load_model

ALL_TYPES = sorted(quants.SUPPORTED_TYPES, key=int)
NEAR_TIE = 0.01


def packed_linear(parts_raw) -> PackedLinear:
    parts, lo = [], 0
    for qtype, raw, n_out in parts_raw:
        block, size = quants.BLOCK_SIZES[qtype]
        blocks = raw.reshape(n_out, -1, size)
        parts.append(PackedPart(qtype, blocks, lo, lo + n_out))
        lo += n_out
    return PackedLinear(tuple(parts))


def reference(parts_raw, n_in) -> np.ndarray:
    return np.concatenate([quants.dequantize(raw, q, (n, n_in)) for q, raw, n in parts_raw])


def width(qtype: QT) -> int:
    return 768 if quants.BLOCK_SIZES[qtype][0] == 256 else 352  # 3 super-blocks, 11 blocks


@pytest.mark.parametrize("isa", ["host", "portable"])
@pytest.mark.parametrize("rows", [1, 3, 13])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_product_matches_the_float32_reference(qtype, rows, isa, monkeypatch):
    """The host's decode kernels (AVX2 ones where the CPU has AVX2) and the portable ones, forced."""
    from rocmforge_core.backends import cpu_kernels

    if isa == "portable":
        monkeypatch.setattr(cpu_kernels, "ISA", "portable")
    elif rows > cpu_packed.PACKED_MAX_ROWS:
        pytest.skip("prompt-sized: dequantize + sgemm, no decode kernel (run once, as portable)")
    rng = np.random.default_rng([int(qtype), rows])
    n_in, n_out = width(qtype), 37
    parts = [(qtype, random_blocks(qtype, (n_out, n_in), rng), n_out)]
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    want = x @ reference(parts, n_in).T
    got = PackedCpuBackend().matmul(x, packed_linear(parts))
    err = np.abs(got - want).max() / np.abs(want).max()
    exact_path = qtype == QT.F32 or rows > cpu_packed.PACKED_MAX_ROWS or qtype in (QT.F16, QT.BF16)
    assert err < (1e-5 if exact_path else 2e-4), err


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t not in cpu_packed.FLOAT_KINDS], ids=lambda t: t.name)
def test_compiled_dequantizers_equal_the_numpy_decoders(qtype):
    """The prompt path's dequantizers (cpu_kernels.dequant_*) against quants.dequantize, at 19 rows
    of an odd number of blocks; they compute each element as scale * q + offset, as numpy does, and
    may differ from it only by the one rounding an FMA saves."""
    from rocmforge_core.backends import cpu_kernels

    rng = np.random.default_rng(int(qtype))
    n_in, n_out = width(qtype), 19
    block, size = quants.BLOCK_SIZES[qtype]
    raw = random_blocks(qtype, (n_out, n_in), rng)
    want = quants.dequantize(raw, qtype, (n_out, n_in))
    got = np.full((n_out, n_in), np.nan, np.float32)
    blocks = raw.reshape(n_out, -1, size)
    blocks.flags.writeable = False  # as PackedPart holds them: the specialization the models compile
    getattr(cpu_kernels, "dequant_" + qtype.name.lower())(blocks, cpu_kernels.F16, got)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())


def test_fused_parts_of_mixed_types_land_in_their_columns(monkeypatch):
    """Q|K|V of three types (as in Gemma-3's Q5_0/Q5_0/Q8_0 layers) with a bias, both paths, and
    the prompt path's weight sliced into several scratch-sized pieces."""
    rng = np.random.default_rng(7)
    n_in = 256
    parts = [(QT.Q5_0, random_blocks(QT.Q5_0, (29, n_in), rng), 29),
             (QT.Q4_K, random_blocks(QT.Q4_K, (11, n_in), rng), 11),
             (QT.Q8_0, random_blocks(QT.Q8_0, (7, n_in), rng), 7)]
    lin = packed_linear(parts)
    lin.bias = rng.standard_normal(47).astype(np.float32)
    w = reference(parts, n_in)
    monkeypatch.setattr(cpu_packed, "SCRATCH_FLOATS", 5 * n_in)  # 5 rows a slice
    ops = PackedCpuBackend()
    for rows, tol in ((2, 2e-4), (20, 1e-5)):
        x = rng.standard_normal((rows, n_in)).astype(np.float32)
        want = x @ w.T + lin.bias
        got = ops.matmul(x, lin)
        for lo, hi in ((0, 29), (29, 40), (40, 47)):
            err = np.abs(got[:, lo:hi] - want[:, lo:hi]).max() / np.abs(want[:, lo:hi]).max()
            assert err < tol, (rows, lo, err)


def test_parts_of_one_type_share_a_kernel_call_and_keep_their_columns():
    """Four Q4_1 parts (13, 5, 9, 3 rows) then a Q8_0 one: a call of three parts, one of one, one Q8_0."""
    rng = np.random.default_rng(11)
    n_in = 96
    parts = [(QT.Q4_1, random_blocks(QT.Q4_1, (n, n_in), rng), n) for n in (13, 5, 9, 3)]
    parts.append((QT.Q8_0, random_blocks(QT.Q8_0, (6, n_in), rng), 6))
    lin = packed_linear(parts)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    want = x @ reference(parts, n_in).T
    got = PackedCpuBackend().matmul(x, lin)
    assert [(c.col0, c.ends.tolist()) for c in lin.calls] == [(0, [13, 18, 27]), (27, [3, 3, 3]), (30, [6, 6, 6])]
    for lo, hi in ((0, 13), (13, 18), (18, 27), (27, 30), (30, 36)):
        err = np.abs(got[:, lo:hi] - want[:, lo:hi]).max() / np.abs(want[:, lo:hi]).max()
        assert err < 2e-4, (lo, err)


def test_weights_are_views_of_the_map_and_embedding_rows_exact(smollm2_path):
    gguf_file = GGUFFile(smollm2_path)
    packed = load_model(gguf_file, make_ops("cpu", "packed"))
    for layer in packed.weights.layers:
        for lin in (layer.qkv, layer.wo, layer.gate_up, layer.down):
            for part in lin.parts:
                assert part.blocks.dtype == np.uint8 and not part.blocks.flags.owndata
                assert np.shares_memory(part.blocks, gguf_file._map)
    tokens = np.array([0, 17, 49151, 17])
    want = CpuBackend().embedding(CpuBackend().linear(gguf_file, ["token_embd.weight"]), tokens)
    assert np.array_equal(packed.ops.embedding(packed.weights.embed, tokens), want)


def greedy_with_logits(model, prompts, n, batch: int = 6):
    """Prompts in groups of `batch` (each in its own slot; decoded together, as the engine batches
    them, within the packed kernels' row limit): the greedy ids and each step's logits per prompt."""
    out = []
    for g0 in range(0, len(prompts), batch):
        group = prompts[g0:g0 + batch]
        cache = model.make_cache(len(group), max(map(len, group)) + n + 1)
        cur = np.stack([model.prefill(p, cache, slot, 0) for slot, p in enumerate(group)])
        pos = np.array([len(p) for p in group])
        ids, steps = [[] for _ in group], [[] for _ in group]
        for i in range(n):
            for r in range(len(group)):
                steps[r].append(cur[r])
                ids[r].append(int(np.argmax(cur[r])))
            if i + 1 < n:
                cur = model.decode(np.array([x[-1] for x in ids]), cache, np.arange(len(group)), pos + i)
        out += list(zip(ids, steps))
    return out


def near_tie(logits: np.ndarray) -> bool:
    top2 = np.sort(logits)[-2:]
    return top2[1] - top2[0] <= NEAR_TIE * abs(top2[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_greedy_equals_float32_up_to_the_first_near_tie(name, request):
    import json
    from pathlib import Path

    fixture = json.loads((Path(__file__).parent / "data" / f"generate_{name}.json").read_text())
    prompts = [c["prompt_ids"] for c in fixture["runs"]["quantized"]["cases"]]
    gguf_file = GGUFFile(request.getfixturevalue(f"{name}_path"))
    ref = greedy_with_logits(load_model(gguf_file, make_ops("cpu", "float32")), prompts, 16)
    got = greedy_with_logits(load_model(gguf_file, make_ops("cpu", "packed")), prompts, 16)
    compared = 0
    for (ref_ids, ref_steps), (ids, _) in zip(ref, got):
        for step, (want, have) in enumerate(zip(ref_ids, ids)):
            if near_tie(ref_steps[step]):
                break
            assert have == want, (name, step, ref_ids, ids)
            compared += 1
    assert compared >= 3 * len(prompts)  # the test compared something: most steps are no near-tie


# ---- the compiled small ops against the reference's numpy ops -------------------------------------

def close(got, want, tol=2e-6):
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err < tol, err


@pytest.mark.parametrize("shape", [(1, 576), (5, 640), (3, 7, 64)])
def test_rms_norm_and_gated_activations_match_the_reference(shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    ref, ops = CpuBackend(), PackedCpuBackend()
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    close(ops.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6))
    gate_up = (rng.standard_normal((shape[0], 2 * 96)) * 4).astype(np.float32)
    gate_up[0, :3] = (-100.0, 100.0, 0.0)  # exp overflow and the ends of tanh
    close(ops.swiglu(gate_up), ref.swiglu(gate_up))
    close(ops.geglu(gate_up), ref.geglu(gate_up))


@pytest.mark.parametrize("neox,dim", [(True, 64), (False, 64), (True, 32)])
def test_rope_matches_the_reference(neox, dim):
    from rocmforge_core.rope import RopeSpec

    rng = np.random.default_rng(dim + neox)
    spec = RopeSpec(dim=dim, base=10000.0, neox=neox)
    q = rng.standard_normal((3, 5, 64)).astype(np.float32)
    k = rng.standard_normal((3, 1, 64)).astype(np.float32)
    positions = np.array([0, 7, 3000])  # past the first table (1,024 positions): it grows
    for got, want in zip(PackedCpuBackend().rope_qk(q, k, positions, spec),
                         CpuBackend().rope_qk(q, k, positions, spec)):
        close(got, want)


@pytest.mark.parametrize("window", [None, 5])
def test_decode_attention_matches_the_reference(window):
    """Three sequences of different lengths in slots 2, 0, 3 of a 4-slot cache, 6 query heads over
    2 kv heads (GQA), with and without a sliding window shorter than some of them."""
    from rocmforge_core.kv_cache import KVCache

    rng = np.random.default_rng(0 if window is None else window)
    n_kv, hd, heads = 2, 40, 6
    cache = KVCache(1, 4, 32, n_kv, hd)
    cache.k[0][...] = rng.standard_normal(cache.k[0].shape)
    cache.v[0][...] = rng.standard_normal(cache.v[0].shape)
    q = rng.standard_normal((3, heads, hd)).astype(np.float32)
    k, v = rng.standard_normal((2, 3, n_kv, hd)).astype(np.float32)
    slots, positions = [2, 0, 3], [0, 11, 30]
    ref_cache = KVCache(1, 4, 32, n_kv, hd)
    ref_cache.k[0][...], ref_cache.v[0][...] = cache.k[0], cache.v[0]
    got = PackedCpuBackend().attention(q, k, v, cache, 0, slots, positions, [1, 1, 1], 0.15, window)
    want = CpuBackend().attention(q, k, v, ref_cache, 0, slots, positions, [1, 1, 1], 0.15, window)
    close(got, want, 1e-5)
    assert np.array_equal(cache.k[0], ref_cache.k[0]) and np.array_equal(cache.v[0], ref_cache.v[0])
