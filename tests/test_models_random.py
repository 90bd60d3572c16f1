"""Every architecture on tiny random-weight GGUF files, against the plain float64 reference.

Odd sizes on purpose (d=48, 3 query heads sharing 1 kv head, vocab 67) so that no shape coincidence
hides a wrong reshape; gemma3 gets 7 layers (layer 5 is global, the others slide) and a window of 4
positions, shorter than the prompts, so the window changes the result.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from rocmforge_core.backends import cpu
from rocmforge_core.backends.cpu import CpuBackend
from rocmforge_core.backends.cpu_llama import LlamaCppBackend, quantize_q8_0, quantize_q8_k
from rocmforge_core.errors import BadInputError, UnsupportedModelError
from rocmforge_core.gguf_file import GGUFFile
from rocmforge_core.models import load_model
from gguf_factory import random_blocks, write_gguf, llama_layer_tensors
from reference_numpy import ReferenceModel

VOCAB = 67
REL_TOL = 1e-4   # float32 model vs float64 reference, relative to the largest |logit|
# With llama.cpp's numerics the model rounds activations to 8 bits (or float16) before each matmul and
# keeps K, V and attention probabilities in float16: measured <= 1.5e-2 from the reference (Q4_1),
# <= 1e-3 for float weights; prefill and decode differ by rounding flips only (measured <= 3e-4).
LLAMA_NUMERICS_TOL = 5e-2
LLAMA_NUMERICS_CONSISTENCY_TOL = 2e-3

CASES = {
    # name: (architecture, shape and feature options)
    "llama-f32-tied": ("llama", dict(dtype=QT.F32)),
    "llama-f16-untied-scaled": ("llama", dict(dtype=QT.F16, untied=True, rope_scale=2.0, rope_freqs=True)),
    "gemma3-f16": ("gemma3", dict(dtype=QT.F16, n_layers=7, window=4)),
    "gemma3-f32-softcap": ("gemma3", dict(dtype=QT.F32, n_layers=7, window=4, softcap=3.0)),
    "qwen2-f32-bias": ("qwen2", dict(dtype=QT.F32, untied=True)),
    "qwen3-f16-qknorm": ("qwen3", dict(dtype=QT.F16, d=40, n_heads=4, n_kv=2, hd=16)),
    # Quantized weights: rows must be whole blocks (32 values; 256 for K-quants).
    "llama-q4_1": ("llama", dict(dtype=QT.Q4_1, d=64, n_heads=4, n_kv=2, hd=16, ffn=96)),
    "gemma3-q8_0": ("gemma3", dict(dtype=QT.Q8_0, d=64, n_heads=2, n_kv=1, hd=32, ffn=96, n_layers=7, window=4)),
    "qwen2-q4_k": ("qwen2", dict(dtype=QT.Q4_K, d=256, n_heads=4, n_kv=2, hd=64, ffn=256)),
}


def make_tiny_model(path, arch: str, *, dtype=QT.F32, d=48, n_heads=3, n_kv=1, hd=16, ffn=72,
                    n_layers=2, untied=False, window=None, softcap=None, rope_scale=None,
                    rope_freqs=False, seed=0):
    rng = np.random.default_rng(seed)

    def weight(*shape, std=0.15):
        if dtype in (QT.Q4_K, QT.Q6_K):  # gguf cannot quantize K-quants: random packed blocks
            return random_blocks(dtype, shape, rng, scale=std / 200), dtype
        return (rng.standard_normal(shape) * std).astype(np.float32), dtype

    def norm(n):  # around 1, as real norm weights (gemma's stored weights already include the +1)
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32), QT.F32

    meta = {
        f"{arch}.block_count": n_layers, f"{arch}.embedding_length": d,
        f"{arch}.feed_forward_length": ffn, f"{arch}.attention.head_count": n_heads,
        f"{arch}.attention.head_count_kv": n_kv, f"{arch}.attention.key_length": hd,
        f"{arch}.attention.value_length": hd, f"{arch}.context_length": 64,
        f"{arch}.rope.dimension_count": hd, f"{arch}.rope.freq_base": 500.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5, f"{arch}.vocab_size": VOCAB,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB)],
    }
    if window:
        meta[f"{arch}.attention.sliding_window"] = window
    if softcap:
        meta[f"{arch}.final_logit_softcapping"] = softcap
    if rope_scale:
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = rope_scale
    tensors = {"token_embd.weight": weight(VOCAB, d, std=1.0), "output_norm.weight": norm(d)}
    if untied:
        tensors["output.weight"] = weight(VOCAB, d, std=0.3)
    if rope_freqs:
        tensors["rope_freqs.weight"] = (rng.uniform(1.0, 4.0, hd // 2).astype(np.float32), QT.F32)
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors.update(llama_layer_tensors(p, weight, norm, d, n_heads, n_kv, hd, ffn))
        if arch == "qwen2":
            for kind, n in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
                tensors[p + f"attn_{kind}.bias"] = (rng.standard_normal(n * hd).astype(np.float32) * 0.3, QT.F32)
        if arch in ("qwen3", "gemma3"):
            tensors[p + "attn_q_norm.weight"] = norm(hd)
            tensors[p + "attn_k_norm.weight"] = norm(hd)
        if arch == "gemma3":
            tensors[p + "post_attention_norm.weight"] = norm(d)
            tensors[p + "post_ffw_norm.weight"] = norm(d)
    return write_gguf(path, arch, meta, tensors)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    arch, options = CASES[request.param]
    path = make_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", arch, **options)
    return path, load_model(GGUFFile(path))


def prompt(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, n).tolist()


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def test_prefill_matches_reference(case):
    path, model = case
    tokens = prompt(11)
    expected = ReferenceModel(path).logits(tokens)
    got = model.prefill(tokens, model.make_cache(1, 32), slot=0, start=0, all_logits=True)
    assert got.shape == (11, VOCAB)
    assert rel_err(got, expected) < REL_TOL
    last = model.prefill(tokens, model.make_cache(1, 32), slot=0, start=0)
    assert last.shape == (VOCAB,)
    assert rel_err(last, expected[-1]) < REL_TOL


def test_token_by_token_decode_equals_prefill(case):
    _, model = case
    tokens = prompt(10, seed=2)
    full = model.prefill(tokens, model.make_cache(1, 16), 0, 0, all_logits=True)
    cache = model.make_cache(2, 16)
    steps = [model.decode(np.array([t]), cache, np.array([1]), np.array([pos]))[0]
             for pos, t in enumerate(tokens)]
    assert rel_err(steps, full) < 1e-5


def test_chunked_prefill_equals_one_prefill(case, monkeypatch):
    _, model = case
    tokens = prompt(12, seed=3)
    whole = model.prefill(tokens, model.make_cache(1, 16), 0, 0, all_logits=True)
    monkeypatch.setattr(cpu, "ATTN_BLOCK", 3)  # also split the queries inside attention
    cache = model.make_cache(1, 16)
    first = model.prefill(tokens[:5], cache, 0, 0, all_logits=True)
    rest = model.prefill(tokens[5:], cache, 0, 5, all_logits=True)
    assert rel_err(np.concatenate([first, rest]), whole) < 1e-5


def test_batched_decode_equals_each_sequence_alone(case):
    _, model = case
    seqs = [prompt(5, seed=4), prompt(9, seed=5)]
    nexts = [[3, 17, 40], [66, 0, 12]]
    alone = []
    for seq, nxt in zip(seqs, nexts):
        cache = model.make_cache(1, 32)
        model.prefill(seq, cache, 0, 0)
        alone.append([model.decode(np.array([t]), cache, np.array([0]), np.array([len(seq) + i]))[0]
                      for i, t in enumerate(nxt)])
    cache = model.make_cache(3, 32)  # slots 2 and 0, out of order, slot 1 unused
    slots = np.array([2, 0])
    for slot, seq in zip(slots, seqs):
        model.prefill(seq, cache, int(slot), 0)
    for i in range(3):
        tokens = np.array([nexts[0][i], nexts[1][i]])
        positions = np.array([len(seqs[0]) + i, len(seqs[1]) + i])
        out = model.decode(tokens, cache, slots, positions)
        assert out.shape == (2, VOCAB)
        for b in range(2):
            assert rel_err(out[b], alone[b][i]) < 1e-5


def test_llama_cpp_numerics_stay_near_the_reference(case):
    path, _ = case
    tokens = prompt(11)
    model = load_model(GGUFFile(path), LlamaCppBackend())
    expected = ReferenceModel(path).logits(tokens)
    got = model.prefill(tokens, model.make_cache(1, 16), 0, 0, all_logits=True)
    assert rel_err(got, expected) < LLAMA_NUMERICS_TOL
    cache = model.make_cache(1, 16)
    steps = [model.decode(np.array([t]), cache, np.array([0]), np.array([pos]))[0]
             for pos, t in enumerate(tokens)]
    assert rel_err(steps, got) < LLAMA_NUMERICS_CONSISTENCY_TOL


def test_q8_0_activation_rounding_equals_ggml_blocks():
    """Quantize-then-dequantize through gguf's Q8_0 (ggml's reference layout) gives the same values."""
    x = np.random.default_rng(7).standard_normal((5, 256)).astype(np.float32) * 3
    x[1, :32] = 0.0  # an all-zero block
    ours, sums = quantize_q8_0(x)
    blocks = gguf.quants.quantize(x, QT.Q8_0)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(blocks, QT.Q8_0))
    q = blocks.reshape(-1, 34)[:, 2:].view(np.int8).astype(np.float32).reshape(5, 8, 32)
    d = (np.abs(x.reshape(5, 8, 32)).max(axis=-1) / 127).astype(np.float32)
    np.testing.assert_array_equal(sums, (q.sum(axis=-1) * d).astype(np.float16).astype(np.float32))


def test_q8_k_activation_rounding_follows_ggml():
    """ggml's quantize_row_q8_K: the largest |x| of a block of 256 maps to -127, scale kept in float32."""
    x = np.random.default_rng(8).standard_normal((3, 512)).astype(np.float32)
    got = quantize_q8_k(x)
    for row in range(3):
        for b in range(2):
            block = x[row, b * 256:(b + 1) * 256]
            peak = block[np.argmax(np.abs(block))]
            iscale = np.float32(-127.0) / peak
            q = np.minimum(np.rint(block * iscale), 127)
            np.testing.assert_array_equal(got[row, b * 256:(b + 1) * 256], q * (np.float32(1.0) / iscale))
    assert np.max(np.abs(got - x)) < np.max(np.abs(x)) / 127


def test_sliding_window_changes_the_result(tmp_path):
    """The gemma3 cases above are only meaningful if the window matters for their prompts."""
    tokens = prompt(11)

    def run(window):
        path = make_tiny_model(tmp_path / f"w{window}.gguf", "gemma3", n_layers=7, window=window)
        model = load_model(GGUFFile(path))
        return model.prefill(tokens, model.make_cache(1, 32), 0, 0, all_logits=True)

    narrow, wide = run(4), run(64)
    assert rel_err(narrow[:4], wide[:4]) < 1e-6  # positions 0..3 see all their keys either way
    assert rel_err(narrow[-1], wide[-1]) > 1e-3


def test_bad_inputs_are_one_line_errors(case):
    _, model = case
    cache = model.make_cache(1, 8)
    with pytest.raises(BadInputError, match="context"):
        model.prefill(prompt(9), cache, 0, 0)
    with pytest.raises(BadInputError, match="out of range"):
        model.prefill([VOCAB], cache, 0, 0)
    with pytest.raises(BadInputError, match="empty"):
        model.prefill([], cache, 0, 0)
    with pytest.raises(BadInputError, match="slot"):
        model.decode(np.array([1]), cache, np.array([1]), np.array([0]))


def test_unknown_architecture_is_refused(tmp_path):
    path = make_tiny_model(tmp_path / "m.gguf", "llama")
    gguf_file = GGUFFile(path)
    gguf_file.architecture = "mamba"
    with pytest.raises(UnsupportedModelError, match="mamba"):
        load_model(gguf_file)
