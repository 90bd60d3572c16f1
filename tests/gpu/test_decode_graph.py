"""Decode through captured graphs against the op-by-op path of the same backend, and against the CPU.

A graph bakes in its launch arguments; only the contents of its input buffers change between replays.
So every test here changes what a step reads (tokens, positions, slots, the batch's size and order) and
expects the replay to give bit-for-bit the logits of the op-by-op path (the same kernels on the same
inputs), which can only hold if the kernels really read those values from the buffers.
On emu the graph is a recording that replays launches with their captured arguments.
"""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge_core.backends.gpu import GpuOps
from rocmforge_core.gguf_file import GGUFFile
from rocmforge_core.models import load_model
from test_model_gpu import GPU_CASES, LOGIT_TOL, Q8_LOGIT_TOL, cpu_model, rel_err
from test_models_random import VOCAB, make_tiny_model

# One model per architecture; gemma3's window of 4 is crossed by the positions decoded below.
GRAPH_CASES = ["llama-f32-tied", "llama-q8_0", "gemma3-f32-softcap", "gemma3-q5_1", "qwen2-f32-bias",
               "qwen3-f16-qknorm"]
N_CTX = 48


@pytest.fixture(scope="module", params=GRAPH_CASES)
def case(request, tmp_path_factory):
    arch, options = GPU_CASES[request.param]
    path = make_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", arch, **options)
    return request.param, GGUFFile(path)


@pytest.fixture(scope="module")
def op_by_op(rt, numerics):
    ops = GpuOps(rt)
    ops.use_graphs, ops.q8_activations = False, numerics == "q8"
    ops.kv_cache_type = "f16" if numerics == "q8" else "f32"
    return ops


@pytest.fixture(scope="module")
def graphed(rt, numerics):
    ops = GpuOps(rt)
    ops.use_graphs, ops.q8_activations = True, numerics == "q8"
    ops.kv_cache_type = "f16" if numerics == "q8" else "f32"
    return ops


@pytest.fixture(scope="module", params=["f32", "q8"])
def numerics(request) -> str:
    """Graphs must replay exactly what op by op computes: float32 everywhere, and as users run it
    (8-bit activations, f16 KV cache)."""
    return request.param


def captured(ops, cache) -> list[int]:
    """Batch sizes with a live graph in `cache`; fails on any capture that fell back."""
    assert ops.graph_failures == []
    assert all(g is not None for g in cache.graphs.values())
    return sorted(b for _, b in cache.graphs)


def test_greedy_graph_equals_op_by_op(case, op_by_op, graphed):
    """One sequence, 24 greedy steps past the sliding window: identical logits at every step."""
    name, gguf_file = case
    prompt = np.random.default_rng(3).integers(0, VOCAB, 5).tolist()
    runs = []
    for ops in (op_by_op, graphed):
        model = load_model(gguf_file, ops)
        cache = model.make_cache(1, N_CTX)
        logits = model.prefill(prompt, cache, 0, 0)
        steps = []
        for pos in range(len(prompt), len(prompt) + 24):
            logits = model.decode(np.array([int(np.argmax(logits))]), cache, np.array([0]), np.array([pos]))
            steps.append(logits)
        runs.append((np.stack(steps), cache))
    (eager, _), (graph, cache) = runs
    assert captured(graphed, cache) == [1], name
    assert np.array_equal(graph, eager), name


def test_batched_graph_equals_op_by_op_and_cpu(case, op_by_op, graphed):
    """Batches of 3, 2 and 1 over slots in shuffled order at different positions (past gemma3's window),
    each batch size replayed again later: graph == op by op exactly, and == CPU within LOGIT_TOL."""
    name, gguf_file = case
    cpu = cpu_model(gguf_file)
    prompts = {2: [5, 9, 2, 44, 3, 17, 8], 0: [60, 1, 7], 1: [33, 21, 4, 4, 50]}
    # (slots, positions) per step; each slot's next position follows its prompt (or its last step).
    schedule = [([2, 0, 1], [7, 3, 5]), ([0, 2, 1], [4, 8, 6]), ([1, 2], [7, 9]), ([2, 0, 1], [10, 5, 8]),
                ([0], [6]), ([1, 0], [9, 7]), ([2, 1, 0], [11, 10, 8])]
    rng = np.random.default_rng(11)
    tokens = [rng.integers(0, VOCAB, len(s)) for s, _ in schedule]
    results = []
    for model, ops in ((cpu, None), (load_model(gguf_file, op_by_op), op_by_op),
                       (load_model(gguf_file, graphed), graphed)):
        cache = model.make_cache(3, N_CTX)
        for slot, seq in prompts.items():
            model.prefill(seq, cache, slot, 0)
        out = [np.asarray(model.decode(t, cache, np.array(s), np.array(p)))
               for t, (s, p) in zip(tokens, schedule)]
        results.append((out, cache))
    (ref, _), (eager, _), (graph, cache) = results
    assert captured(graphed, cache) == [1, 2, 3], name
    for i, (r, e, g) in enumerate(zip(ref, eager, graph)):
        assert np.array_equal(g, e), (name, i)
        assert rel_err(g, r) < (Q8_LOGIT_TOL if graphed.q8_activations else LOGIT_TOL), (name, i)


def test_graphs_live_with_their_cache(rt, case):
    """A new cache gets new graphs (the old ones wrote the old cache); closing a cache frees them,
    and the env switch turns graphs off."""
    name, gguf_file = case
    ops = GpuOps(rt)
    ops.use_graphs = True
    model = load_model(gguf_file, ops)
    outs = []
    for _ in range(2):
        cache = model.make_cache(2, N_CTX)
        model.prefill([1, 2, 3], cache, 1, 0)
        outs.append([model.decode(np.array([t]), cache, np.array([1]), np.array([3 + i]))
                     for i, t in enumerate((4, 5, 6))])
        assert captured(ops, cache) == [1]
        cache.close()
        assert cache.graphs == {}
    assert all(np.array_equal(a, b) for a, b in zip(*outs)), name


def test_env_switch_turns_graphs_off(rt, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_GPU_GRAPHS", "0")
    assert GpuOps(rt).use_graphs is False
    monkeypatch.setenv("ROCMFORGE_GPU_GRAPHS", "1")
    assert GpuOps(rt).use_graphs is True


def test_greedy_step_picks_on_the_device(case, graphed):
    """decode_greedy through a replay (argmax on the device, only ids downloaded) == argmax of the
    logits decode returns, step after step, for a batch of two."""
    name, gguf_file = case[0], case[1]
    model = load_model(gguf_file, graphed)
    caches = [model.make_cache(2, N_CTX), model.make_cache(2, N_CTX)]
    for cache in caches:
        model.prefill([3, 1, 4], cache, 0, 0)
        model.prefill([1, 5], cache, 1, 0)
    tok_a = tok_b = np.array([9, 2])
    pos = np.array([3, 2])
    for step in range(6):
        ids = model.decode_greedy(tok_a, caches[0], np.array([0, 1]), pos)
        logits = model.decode(tok_b, caches[1], np.array([0, 1]), pos)
        assert ids.tolist() == np.argmax(logits, axis=-1).tolist(), (name, step)
        tok_a, tok_b, pos = ids, np.argmax(logits, axis=-1), pos + 1
    assert captured(graphed, caches[0]) == [2], name


def test_greedy_steps_queued_ahead_survive_other_work(case, graphed, op_by_op):
    """Greedy steps queue the next step before returning; whatever the engine does in between (a
    logits step, a prefill into another slot, a batch of another size, the end of the context),
    the ids equal the argmax of op-by-op logits on a cache fed the same way."""
    name, gguf_file = case[0], case[1]
    fast, ref = load_model(gguf_file, graphed), load_model(gguf_file, op_by_op)
    n_ctx = 16
    caches = {id(m): m.make_cache(3, n_ctx) for m in (fast, ref)}

    def both(fn):
        return [fn(m, caches[id(m)]) for m in (fast, ref)]

    def greedy(m, c, toks, slots, pos):
        if m is fast:
            return m.decode_greedy(np.array(toks), c, np.array(slots), np.array(pos)).tolist()
        return np.argmax(m.decode(np.array(toks), c, np.array(slots), np.array(pos)), axis=-1).tolist()

    both(lambda m, c: m.prefill([3, 1, 4], c, 0, 0))
    both(lambda m, c: m.prefill([1, 5], c, 1, 0))
    toks, pos = [9, 2], [3, 2]
    for step in range(10):
        if step == 3:  # a logits step in between
            a, b = both(lambda m, c: np.asarray(m.decode(np.array(toks), c, np.array([0, 1]), np.array(pos))))
            assert np.array_equal(np.argmax(a, -1), np.argmax(b, -1)), name
            toks, pos = np.argmax(a, -1).tolist(), [p + 1 for p in pos]
            continue
        if step == 5:  # a new sequence's prefill, then a batch of three
            both(lambda m, c: m.prefill([7, 7, 7], c, 2, 0))
            toks, pos = toks + [4], pos + [3]
        got, want = both(lambda m, c: greedy(m, c, toks, list(range(len(toks))), pos))
        assert got == want, (name, step)
        toks, pos = got, [p + 1 for p in pos]
    # the last steps run into the end of the context: nothing may be queued past it
    while max(pos) < n_ctx:
        got, want = both(lambda m, c: greedy(m, c, toks, list(range(len(toks))), pos))
        assert got == want, (name, "tail", pos)
        toks, pos = got, [p + 1 for p in pos]
    served = sum(g.served_ahead for g in caches[id(fast)].graphs.values() if g is not None)
    assert served >= 6, (name, served)  # steps 1, 2 and 6-9 at least were the ones queued ahead


def test_sampled_step_with_penalties_as_the_cpu_chain(case, graphed):
    """decode_sampled with penalties (a greedy row with a repeat penalty, a sampled row with frequency
    and presence penalties) through a replay == the CPU sampler on the same step's logits: penalties,
    then argmax or the chain with the same uniform."""
    from rocmforge_core.sampler import SamplingParams, apply_penalties, candidate_probs

    name, gguf_file = case[0], case[1]
    model = load_model(gguf_file, graphed)
    caches = [model.make_cache(2, N_CTX), model.make_cache(2, N_CTX)]
    histories = [[3, 1, 4, 1, 5], [2, 7, 2]]
    for cache in caches:
        for slot, h in enumerate(histories):
            model.prefill(h, cache, slot, 0)
    pens = np.array([(1.5, 0.0, 0.0), (1.2, 0.5, 1.0)], np.float64)
    rng = np.random.default_rng(7)
    toks = np.array([histories[0][-1], histories[1][-1]])
    for step in range(5):
        pos = np.array([len(h) for h in histories])
        u = float(rng.uniform(0, 1))
        table = np.array([[1.0, 1, 1.0, 0.0, 0.0], [0.9, 20, 0.95, 0.0, u]], np.float32)
        width = max(len(h) for h in histories)
        window = np.full((2, width), -1, np.int32)
        for r, h in enumerate(histories):
            window[r, :len(h)] = h
        ids = model.decode_sampled(toks, caches[0], np.array([0, 1]), pos, table, (window, pens))
        logits = np.asarray(model.decode(toks, caches[1], np.array([0, 1]), pos))
        greedy = apply_penalties(logits[0], histories[0], *pens[0][:1], -1, *pens[0][1:])
        assert ids[0] == int(np.argmax(greedy)), (name, step)
        row = apply_penalties(logits[1], histories[1], pens[1][0], -1, pens[1][1], pens[1][2])
        cand, probs = candidate_probs(row, SamplingParams(temperature=0.9, top_k=20, top_p=0.95, min_p=0.0))
        cdf = np.cumsum(probs) / probs.sum()
        want = cand[min(int(np.sum(cdf <= table[1, 4])), int(np.flatnonzero(probs > 0)[-1]))]
        assert ids[1] == want or np.abs(cdf - table[1, 4]).min() < 1e-5, (name, step)
        for h, t in zip(histories, ids):
            h.append(int(t))
        toks = np.asarray(ids)


def test_sampled_step_draws_on_the_device_as_the_cpu_chain(case, graphed):
    """decode_sampled through a replay (logits soft-capped and sampled on the device, only ids
    downloaded) == the CPU sampler's chain on the logits decode returns, with the same uniforms, for
    a batch of two rows with different settings, step after step (u near a cdf step excepted)."""
    from rocmforge_core.sampler import SamplingParams, candidate_probs

    name, gguf_file = case[0], case[1]
    model = load_model(gguf_file, graphed)
    caches = [model.make_cache(2, N_CTX), model.make_cache(2, N_CTX)]
    for cache in caches:
        model.prefill([3, 1, 4], cache, 0, 0)
        model.prefill([1, 5], cache, 1, 0)
    settings = [(0.9, 20, 0.9, 0.05), (1.3, 5, 1.0, 0.0)]
    rng = np.random.default_rng(5)
    toks, pos = np.array([9, 2]), np.array([3, 2])
    for step in range(6):
        us = rng.uniform(0, 1, 2)
        table = np.array([[t, k, p, m, u] for (t, k, p, m), u in zip(settings, us)], np.float32)
        ids = model.decode_sampled(toks, caches[0], np.array([0, 1]), pos, table)
        logits = np.asarray(model.decode(toks, caches[1], np.array([0, 1]), pos))
        for r, ((t, k, p, m), u) in enumerate(zip(settings, table[:, 4])):
            cand, probs = candidate_probs(logits[r], SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m))
            cdf = np.cumsum(probs) / probs.sum()
            want = cand[min(int(np.sum(cdf <= u)), int(np.flatnonzero(probs > 0)[-1]))]
            assert ids[r] == want or np.abs(cdf - u).min() < 1e-5, (name, step, r)
        toks, pos = ids, pos + 1
    assert captured(graphed, caches[0]) == [2], name

def test_prompt_chunk_graph_equals_op_by_op(case, op_by_op, graphed, monkeypatch):
    """Prompt chunks of a captured length replay a graph (their rows' tokens, positions and slot read
    from its buffers): the last position's logits and the cache equal the op-by-op path's, chunk after
    chunk at other positions and slots, and the decode after them agrees."""
    name, gguf_file = case
    monkeypatch.setattr(graphed, "prefill_graph_rows", (17,))  # >= 16 rows: the flash-attention tiles
    rng = np.random.default_rng(4)
    chunks = [(0, 0), (0, 17), (1, 0)]  # (slot, start): both slots, past gemma3's window
    tokens = [rng.integers(0, VOCAB, 17) for _ in chunks]
    runs = []
    for ops in (op_by_op, graphed):
        model = load_model(gguf_file, ops)
        cache = model.make_cache(2, N_CTX)
        outs = [np.asarray(model.prefill(t.tolist(), cache, s, p)) for t, (s, p) in zip(tokens, chunks)]
        outs.append(np.asarray(model.decode(np.array([3, 5]), cache, np.array([0, 1]), np.array([34, 17]))))
        runs.append((outs, cache))
    (eager, ref_cache), (graph, cache) = runs
    assert graphed.graph_failures == [] and list(cache.prefill_graphs) and all(cache.prefill_graphs.values())
    for i, (e, g) in enumerate(zip(eager, graph)):
        assert np.array_equal(g, e), (name, i)
    for slot in (0, 1):
        assert np.array_equal(cache.keys(0, slot, 0, N_CTX), ref_cache.keys(0, slot, 0, N_CTX)), name


def test_engine_samples_with_penalties_on_the_device(rt, tmp_path):
    """Through the engine (continuous batching, two requests at once: one sampled with repeat and
    frequency penalties, one greedy with a presence penalty over the last 6 ids, ending early), the
    device path (penalize + draw on the device, only ids back, each step queued ahead with its window's
    newest id filled in on the device) gives the same tokens as the host path (logits down, the CPU
    sampler) with the same seeds, and the device path really ran (its kernels were launched, steps
    were served ahead)."""
    import asyncio

    from rocmforge_core.chat_template import ChatTemplate
    from rocmforge_core.engine import Engine, Request, collect
    from rocmforge_core.sampler import SamplingParams
    from rocmforge_core.tokenizer import Tokenizer
    from tiny_byte_model import write_byte_model

    gguf_file = GGUFFile(write_byte_model(tmp_path / "bytes.gguf"))
    requests = [Request(tokens=[256, 72, 105, 72], max_tokens=12, ignore_eos=True,
                        sampling=SamplingParams(temperature=0.9, top_k=30, top_p=0.95, repeat_penalty=1.4,
                                                frequency_penalty=0.3, seed=11)),
                Request(tokens=[256, 97, 98, 97, 98], max_tokens=7, ignore_eos=True,
                        sampling=SamplingParams(temperature=0.0, presence_penalty=2.5, repeat_last_n=6))]

    def generate(on_device: bool) -> tuple[list[list[int]], list[str], int]:
        ops = GpuOps(rt)
        ops.samples_on_device = on_device
        launched = []
        launch = ops.launch
        ops.launch = lambda kernel, *a: launched.append(kernel) or launch(kernel, *a)
        engine = Engine(model=load_model(gguf_file, ops), tokenizer=Tokenizer.from_gguf(gguf_file),
                        chat_template=ChatTemplate.for_model(gguf_file.metadata), gguf_file=gguf_file,
                        backend=ops.name, backend_reason="test", n_ctx=48, n_slots=2, max_queue=4, load_ms=0.0)

        async def go():
            async with engine:
                out = await asyncio.gather(*(collect(engine.submit(r)) for r in requests))
                return out, sum(g.served_ahead for g in engine._cache.graphs.values() if g is not None)
        out, served = asyncio.run(asyncio.wait_for(go(), 300))
        return [ids for _, ids, _ in out], launched, served

    device, device_kernels, served = generate(True)
    host, host_kernels, _ = generate(False)
    assert device == host and [len(ids) for ids in device] == [12, 7]
    assert "penalize_f32" in device_kernels and "sample_topk_f32" in device_kernels
    assert "fill_window_i32" in device_kernels and served >= 5, served
    assert "penalize_f32" not in host_kernels


def test_engine_queues_sampled_steps_ahead(rt, tmp_path):
    """Sampled requests without penalties: the device queues each step's successor before the host has
    read the step's ids (with the next uniforms drawn in advance), and the tokens are still those of
    the host path with the same seeds - also when a request ends early (max_tokens 5 of 14): its
    batch changes, the step queued for the old batch is dropped, and the draws made for it are the
    next real steps' draws."""
    import asyncio

    from rocmforge_core.chat_template import ChatTemplate
    from rocmforge_core.engine import Engine, Request, collect
    from rocmforge_core.sampler import SamplingParams
    from rocmforge_core.tokenizer import Tokenizer
    from tiny_byte_model import write_byte_model

    gguf_file = GGUFFile(write_byte_model(tmp_path / "bytes.gguf"))
    requests = [Request(tokens=[256, 72, 105, 72], max_tokens=14, ignore_eos=True,
                        sampling=SamplingParams(temperature=0.9, top_k=30, top_p=0.95, seed=11)),
                Request(tokens=[256, 97, 98, 97, 98], max_tokens=5, ignore_eos=True,
                        sampling=SamplingParams(temperature=1.3, top_k=50, min_p=0.02, seed=5))]

    def generate(on_device: bool):
        ops = GpuOps(rt)
        ops.samples_on_device = on_device
        engine = Engine(model=load_model(gguf_file, ops), tokenizer=Tokenizer.from_gguf(gguf_file),
                        chat_template=ChatTemplate.for_model(gguf_file.metadata), gguf_file=gguf_file,
                        backend=ops.name, backend_reason="test", n_ctx=48, n_slots=2, max_queue=4, load_ms=0.0)

        async def go():
            async with engine:
                out = await asyncio.gather(*(collect(engine.submit(r)) for r in requests))
                return out, sum(g.served_ahead for g in engine._cache.graphs.values() if g is not None)
        out, served = asyncio.run(asyncio.wait_for(go(), 300))
        return [ids for _, ids, _ in out], served

    device, served = generate(True)
    host, _ = generate(False)
    assert device == host and [len(ids) for ids in device] == [14, 5]
    assert served >= 5, served
