"""Whole models on the GPU backend against the CPU backend (the reference).

Random-weight llama/gemma3/qwen2/qwen3 GGUFs (tests/test_models_random.py's builder, plus block-quant
variants) and the real SmolLM2 file: prefill logits within LOGIT_TOL of the CPU's (relative to the
largest |logit|: the two differ only in float32 summation order), and greedy decoding gives the
identical 64 tokens. The real model runs on the GPU backends only (host emulation would take minutes).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import time

from gguf_factory import write_gguf
from rocmforge_core.backends.cpu import CpuBackend
from rocmforge_core.gguf_file import GGUFFile
from rocmforge_core.models import load_model
from test_models_random import CASES, VOCAB, make_tiny_model

LOGIT_TOL = 1e-4        # random tiny models, float32 products
# 8-bit activations (the int8 mat-vec): each block of 32 rounded to 1/254 of its largest value; over
# a tiny random model's few layers the logits move by about 1 % of the largest.
Q8_LOGIT_TOL = 5e-2
NEAR_TIE = 1e-2         # greedy steps are compared up to the first whose CPU top-2 are this close
REAL_LOGIT_TOL = 2e-3   # SmolLM2: 30 layers of float32 in another summation order
N_GREEDY = 64

GPU_CASES = dict(CASES)
GPU_CASES.update({  # packed-block weights: d and ffn multiples of 32
    "llama-q8_0": ("llama", dict(dtype=QT.Q8_0, d=64, n_heads=4, n_kv=2, hd=16, ffn=96)),
    "qwen2-q4_0": ("qwen2", dict(dtype=QT.Q4_0, d=64, n_heads=4, n_kv=2, hd=16, ffn=96, untied=True)),
    "gemma3-q5_1": ("gemma3", dict(dtype=QT.Q5_1, d=64, n_heads=4, n_kv=1, hd=32, ffn=96, n_layers=7, window=4)),
    # head_dim 64: decode attention over the f16 cache takes the per-KV-head kernel (attn_gqa_f16_64)
    "llama-q4_0-hd64": ("llama", dict(dtype=QT.Q4_0, d=64, n_heads=6, n_kv=2, hd=64, ffn=96)),
})


def cpu_model(gguf_file):
    """The reference: the CPU backend with plain float32 numerics (not its llama.cpp-rounding mode)."""
    return load_model(gguf_file, CpuBackend())


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.isfinite(a))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def greedy(model, prompt: list[int], n: int, n_ctx: int) -> tuple[list[int], list[np.ndarray]]:
    cache = model.make_cache(1, n_ctx)
    logits = model.prefill(prompt, cache, 0, 0)
    tokens, steps = [], [np.asarray(logits)]
    pos = len(prompt)
    for _ in range(n):
        tok = int(np.argmax(logits))
        tokens.append(tok)
        logits = model.decode(np.array([tok]), cache, np.array([0]), np.array([pos]))[0]
        steps.append(np.asarray(logits))
        pos += 1
    return tokens, steps


@pytest.fixture(scope="module", params=list(GPU_CASES))
def tiny(request, tmp_path_factory):
    arch, options = GPU_CASES[request.param]
    path = make_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", arch, **options)
    gguf_file = GGUFFile(path)
    return request.param, gguf_file, cpu_model(gguf_file)


def test_tiny_models_match_cpu(ops, tiny):
    name, gguf_file, cpu = tiny
    gpu_model = load_model(gguf_file, ops)
    prompt = np.random.default_rng(7).integers(0, VOCAB, 9).tolist()
    ref = cpu.prefill(prompt, cpu.make_cache(1, 96), 0, 0, all_logits=True)
    got = gpu_model.prefill(prompt, gpu_model.make_cache(1, 96), 0, 0, all_logits=True)
    assert isinstance(got, np.ndarray) and got.shape == ref.shape
    assert rel_err(got, ref) < LOGIT_TOL, name
    cpu_tokens, cpu_steps = greedy(cpu, prompt, N_GREEDY, 96)
    gpu_tokens, gpu_steps = greedy(gpu_model, prompt, N_GREEDY, 96)
    assert gpu_tokens == cpu_tokens, name
    assert max(rel_err(g, c) for g, c in zip(gpu_steps, cpu_steps)) < LOGIT_TOL, name


def test_batched_decode_matches_cpu(ops, tiny):
    """Two sequences in different slots at different positions, decoded as one batch."""
    name, gguf_file, cpu = tiny
    gpu_model = load_model(gguf_file, ops)
    seqs = [[5, 9, 2, 44, 3], [60, 1, 7]]
    results = []
    for model in (cpu, gpu_model):
        cache = model.make_cache(3, 32)
        for slot, seq in zip((2, 0), seqs):
            model.prefill(seq, cache, slot, 0)
        step = model.decode(np.array([11, 12]), cache, np.array([2, 0]), np.array([5, 3]))
        results.append(np.asarray(step))
    assert rel_err(results[1], results[0]) < LOGIT_TOL, name


def first_near_tie(steps: list[np.ndarray]) -> int:
    """Index of the first greedy step whose top-2 logits are within NEAR_TIE of the largest |logit|."""
    for i, logits in enumerate(steps):
        top2 = np.sort(np.asarray(logits, np.float64).reshape(-1))[-2:]
        if top2[1] - top2[0] < NEAR_TIE * np.max(np.abs(logits)):
            return i
    return len(steps)


def assert_greedy_agrees(gpu_tokens, cpu_tokens, cpu_steps, what) -> int:
    """Tokens equal up to the first CPU near tie (8-bit activations may break a tie differently).
    Returns how many steps were compared."""
    n = min(first_near_tie(cpu_steps), len(cpu_tokens))
    assert gpu_tokens[:n] == cpu_tokens[:n], (what, n, gpu_tokens[:n], cpu_tokens[:n])
    return n


@pytest.mark.parametrize("keys_per_split", [512, 8], ids=["one-block", "flash-decoding"])
def test_tiny_models_q8_close_to_cpu(ops_q8, tiny, keys_per_split):
    """8-bit activations, decode attention in one block per KV head or split over 12 blocks (96 // 8)."""
    name, gguf_file, cpu = tiny
    gpu_model = load_model(gguf_file, ops_q8)
    prompt = np.random.default_rng(7).integers(0, VOCAB, 9).tolist()
    ref = cpu.prefill(prompt, cpu.make_cache(1, 96), 0, 0, all_logits=True)
    got = gpu_model.prefill(prompt, gpu_model.make_cache(1, 96), 0, 0, all_logits=True)
    assert rel_err(got, ref) < Q8_LOGIT_TOL, name
    saved = ops_q8.attn_keys_per_split, ops_q8.gqa_blocks_per_sm, ops_q8.gqa_min_keys, ops_q8.gqa_split_keys
    ops_q8.attn_keys_per_split = keys_per_split  # head_dim 16 and 32: one block per query head (attn_f16)
    ops_q8.gqa_blocks_per_sm, ops_q8.gqa_min_keys = (0, 512) if keys_per_split == 512 else (10**4, keys_per_split)
    ops_q8.gqa_split_keys = keys_per_split  # rows of 9-25 keys: 2-4 live splits of 8 keys
    try:
        cpu_tokens, cpu_steps = greedy(cpu, prompt, 16, 96)
        gpu_tokens, _ = greedy(gpu_model, prompt, 16, 96)
    finally:
        (ops_q8.attn_keys_per_split, ops_q8.gqa_blocks_per_sm, ops_q8.gqa_min_keys,
         ops_q8.gqa_split_keys) = saved
    assert_greedy_agrees(gpu_tokens, cpu_tokens, cpu_steps, name)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["smollm2", "gemma3"])
def test_real_model_q8_perplexity_within_half_a_percent(ops_q8, backend_name, model_name, request):
    """The issue's bar for faster numerics: perplexity with 8-bit activations and the f16 KV cache
    within 0.5 % of the float32 CPU's, on 5k+ scored tokens of this repository's own text, for both
    default models (H200, 2026-12-01, on the text as it was then: SmolLM2 22.852 vs 22.852,
    Gemma-3-270M 25.746 vs 25.746)."""
    if backend_name == "emu":
        pytest.skip("emu: the real model is checked on GPU backends only (minutes in emulation)")
    from pathlib import Path

    from rocmforge_core import perplexity
    from rocmforge_core.tokenizer import Tokenizer

    root = Path(__file__).resolve().parents[2]
    text = "".join((root / f).read_text() for f in ("README.md", "BENCHMARKS.md", "examples/README.md"))
    gguf_file = GGUFFile(request.getfixturevalue(f"{model_name}_path"))
    tok = Tokenizer.from_gguf(gguf_file)
    ids = tok.encode(text)
    assert len(ids) >= 8000
    ref = perplexity.perplexity(cpu_model(gguf_file), ids, 512, tok.bos_id)
    got = perplexity.perplexity(load_model(gguf_file, ops_q8), ids, 512, tok.bos_id)
    print(f"\n{model_name} perplexity on {ops_q8.rt.device.name} ({backend_name}), {got.n_tokens} tokens: "
          f"{got.ppl:.3f} (8-bit activations, f16 cache) vs {ref.ppl:.3f} (cpu float32)")
    assert got.n_tokens == ref.n_tokens
    assert abs(got.ppl / ref.ppl - 1) < 0.005


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["smollm2", "gemma3"])
def test_real_model_q8_greedy_agrees_with_cpu(ops_q8, backend_name, model_name, request):
    """The real models with 8-bit activations: greedy tokens equal the float32 CPU's up to its first
    near tie (top-2 logits within 1 % of the largest), over several prompts. (SmolLM2, H200,
    2026-12-01: equal for 12, 5 and 5 steps, each up to the CPU's first near tie.)"""
    if backend_name == "emu":
        pytest.skip("emu: the real model is checked on GPU backends only (minutes in emulation)")
    from rocmforge_core.tokenizer import Tokenizer

    gguf_file = GGUFFile(request.getfixturevalue(f"{model_name}_path"))
    cpu, gpu_model = cpu_model(gguf_file), load_model(gguf_file, ops_q8)
    tok = Tokenizer.from_gguf(gguf_file)
    compared = []
    for text in ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"):
        prompt = tok.encode(text)
        cpu_tokens, cpu_steps = greedy(cpu, prompt, 32, 128)
        gpu_tokens, gpu_steps = greedy(gpu_model, prompt, 32, 128)
        compared.append(assert_greedy_agrees(gpu_tokens, cpu_tokens, cpu_steps, text))
        assert rel_err(gpu_steps[0], cpu_steps[0]) < Q8_LOGIT_TOL, text
    print(f"\n{model_name} q8 on {ops_q8.rt.device.name} ({backend_name}): greedy steps equal before the first "
          f"near tie: {compared}")


@pytest.mark.slow
def test_smollm2_greedy_matches_cpu(ops, backend_name, smollm2_path):
    if backend_name == "emu":
        pytest.skip("emu: the real model is checked on GPU backends only (minutes in emulation)")
    gguf_file = GGUFFile(smollm2_path)
    cpu, gpu_model = cpu_model(gguf_file), load_model(gguf_file, ops)
    from rocmforge_core.tokenizer import Tokenizer

    prompt = Tokenizer.from_gguf(gguf_file).encode("The capital of France is")
    ref = cpu.prefill(prompt, cpu.make_cache(1, 128), 0, 0, all_logits=True)
    got = gpu_model.prefill(prompt, gpu_model.make_cache(1, 128), 0, 0, all_logits=True)
    prefill_err = rel_err(got, ref)
    cpu_tokens, cpu_steps = greedy(cpu, prompt, N_GREEDY, 128)
    gpu_tokens, gpu_steps = greedy(gpu_model, prompt, N_GREEDY, 128)
    eager_tokens, eager_steps = op_by_op(ops, lambda: greedy(gpu_model, prompt, N_GREEDY, 128))
    step_err = max(rel_err(g, c) for g, c in zip(gpu_steps, cpu_steps))
    same_as_eager = all(np.array_equal(g, e) for g, e in zip(gpu_steps, eager_steps))
    print(f"\nsmollm2 on {ops.rt.device.name} ({backend_name}): prefill logits rel err {prefill_err:.2e}, "
          f"decode max rel err {step_err:.2e}, tokens identical: {gpu_tokens == cpu_tokens}, "
          f"graph decode == op-by-op decode: {same_as_eager} (graphs {'on' if ops.use_graphs else 'off'})")
    assert prefill_err < REAL_LOGIT_TOL
    assert gpu_tokens == cpu_tokens == eager_tokens
    assert step_err < REAL_LOGIT_TOL
    assert same_as_eager


def smollm2_shaped_gguf(path, seed=0):
    """A random-weight GGUF with SmolLM2-135M's shapes and types: 30 llama layers, d=576, 9 query and
    3 kv heads of 64, ffn 1536, vocab 49152, Q4_1 matrices, a tied Q8_0 embedding."""
    rng = np.random.default_rng(seed)
    d, n_heads, n_kv, hd, ffn, vocab, n_layers = 576, 9, 3, 64, 1536, 49152, 30

    def w(*shape, std=0.04, qtype=QT.Q4_1):
        return (rng.standard_normal(shape) * std).astype(np.float32), qtype

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32), QT.F32

    meta = {"llama.block_count": n_layers, "llama.embedding_length": d, "llama.feed_forward_length": ffn,
            "llama.attention.head_count": n_heads, "llama.attention.head_count_kv": n_kv,
            "llama.context_length": 2048, "llama.rope.dimension_count": hd, "llama.rope.freq_base": 100000.0,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": vocab,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"t{i}" for i in range(vocab)]}
    tensors = {"token_embd.weight": w(vocab, d, std=1.0, qtype=QT.Q8_0), "output_norm.weight": norm(d)}
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors.update({p + "attn_norm.weight": norm(d), p + "ffn_norm.weight": norm(d),
                        p + "attn_q.weight": w(n_heads * hd, d), p + "attn_k.weight": w(n_kv * hd, d),
                        p + "attn_v.weight": w(n_kv * hd, d), p + "attn_output.weight": w(d, n_heads * hd),
                        p + "ffn_gate.weight": w(ffn, d), p + "ffn_up.weight": w(ffn, d),
                        p + "ffn_down.weight": w(d, ffn, std=0.025)})
    return write_gguf(path, "llama", meta, tensors)


def op_by_op(ops, fn):
    """fn() with the ops' decode graphs turned off."""
    saved, ops.use_graphs = ops.use_graphs, False
    try:
        return fn()
    finally:
        ops.use_graphs = saved


def steps_per_s(model, n_steps: int = 32) -> float:
    """Single-sequence decode steps per second (wall clock, after warm-up)."""
    cache = model.make_cache(1, 256)
    model.prefill(list(range(1, 17)), cache, 0, 0)
    for pos in range(16, 19):
        model.decode(np.array([7]), cache, np.array([0]), np.array([pos]))
    t0 = time.perf_counter()
    for pos in range(19, 19 + n_steps):
        model.decode(np.array([7]), cache, np.array([0]), np.array([pos]))
    return n_steps / (time.perf_counter() - t0)


@pytest.mark.slow
def test_smollm2_shaped_random_model(ops, backend_name, tmp_path_factory):
    """Full-size shapes with random weights: greedy 64 tokens and logits vs the CPU, and decode speed."""
    if backend_name == "emu":
        pytest.skip("emu: full-size model checked on GPU backends only")
    gguf_file = GGUFFile(smollm2_shaped_gguf(tmp_path_factory.mktemp("smol-shaped") / "m.gguf"))
    cpu, gpu_model = cpu_model(gguf_file), load_model(gguf_file, ops)
    prompt = [1, 500, 9000, 33, 48000, 77, 2]
    ref = cpu.prefill(prompt, cpu.make_cache(1, 128), 0, 0, all_logits=True)
    got = gpu_model.prefill(prompt, gpu_model.make_cache(1, 128), 0, 0, all_logits=True)
    cpu_tokens, cpu_steps = greedy(cpu, prompt, N_GREEDY, 128)
    gpu_tokens, gpu_steps = greedy(gpu_model, prompt, N_GREEDY, 128)
    prefill_err = rel_err(got, ref)
    step_err = max(rel_err(g, c) for g, c in zip(gpu_steps, cpu_steps))
    eager_tokens, _ = op_by_op(ops, lambda: greedy(gpu_model, prompt, N_GREEDY, 128))
    gpu_speed, cpu_speed = steps_per_s(gpu_model), steps_per_s(cpu)
    eager_speed = op_by_op(ops, lambda: steps_per_s(gpu_model))
    print(f"\nsmollm2-shaped random on {ops.rt.device.name} ({backend_name}): prefill rel err {prefill_err:.2e}, "
          f"decode max rel err {step_err:.2e}, tokens identical: {gpu_tokens == cpu_tokens == eager_tokens}; "
          f"decode {gpu_speed:.1f} tok/s on {backend_name} (graphs {'on' if ops.use_graphs else 'off'}), "
          f"{eager_speed:.1f} tok/s op by op, {cpu_speed:.1f} tok/s cpu")
    assert prefill_err < REAL_LOGIT_TOL and step_err < REAL_LOGIT_TOL
    assert gpu_tokens == cpu_tokens == eager_tokens


def test_fused_projections_are_not_copied(ops, tiny):
    """q, k and v are read in place from the fused projection: a prefill and a decode step launch
    no copy2d (STYLE point 5)."""
    name, gguf_file, _ = tiny
    model = load_model(gguf_file, ops)
    cache = model.make_cache(1, 32)
    launched = []
    launch = ops.launch
    ops.launch = lambda kernel, *a: launched.append(kernel) or launch(kernel, *a)
    try:
        model.prefill([5, 9, 2], cache, 0, 0)
        op_by_op(ops, lambda: model.decode(np.array([7]), cache, np.array([0]), np.array([3])))
    finally:
        del ops.launch
    assert any(k.startswith(("rope_qk_f32", "rope_qk_kv_append_")) for k in launched), name
    assert "copy2d_f32" not in launched, name
