"""The engine contract: on the real default model, no start-up race, clean stop, cancellation,
continuous batching and KV reuse between chat turns; on tiny random models, that bad requests are
refused at submit(), that a failure inside the loop ends only its own request, and that stop() is
prompt during a long prefill."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from gguf_factory import write_gguf, llama_layer_tensors
from rocmforge_core.engine import Request, collect, create_engine
from rocmforge_core.errors import BadInputError
from rocmforge_core.sampler import Sampler, SamplingParams
from rocmforge_core.tokenizer.bpe import byte_to_unicode

slow = pytest.mark.slow  # loads the real default model

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
    "My favourite food is",
    "The quick brown fox",
]


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rocmforge")]


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """Greedy continuations of each prompt, alone, on a fresh engine."""

    async def go():
        out = {}
        async with create_engine(smollm2_path, backend="cpu", n_slots=1) as engine:
            for p in PROMPTS:
                text, ids, final = await collect(engine.submit(
                    Request(prompt=p, max_tokens=12, sampling=GREEDY)))
                out[p] = (text, ids, final.timings)
        return out

    return run(go(), timeout=600)


@slow
def test_start_then_submit_immediately_200_times(smollm2_path, reference):
    """The seed system's race (a request before the loop runs): 200 fresh engines, each asked at once.
    Two tokens each (the prefill's and one decode step) are enough to see a lost or garbled request;
    twelve made this the suite's slowest test (~300 s on 2 loaded cores)."""
    expected = reference[PROMPTS[0]][1][:2]

    async def once():
        engine = create_engine(smollm2_path, backend="cpu", n_slots=1, n_ctx=256)
        await engine.start()
        try:
            _, ids, final = await collect(engine.submit(
                Request(prompt=PROMPTS[0], max_tokens=2, sampling=GREEDY)))
        finally:
            await engine.stop()
        return ids, final.finish_reason

    for i in range(200):
        ids, reason = run(once(), timeout=60)  # a race would hang here and fail on the timeout
        assert (ids, reason) == (expected, "length"), f"iteration {i}"


@slow
def test_stop_leaves_no_tasks_or_threads(smollm2_path):
    async def go():
        engine = create_engine(smollm2_path, backend="cpu", n_slots=2)
        tasks_before = asyncio.all_tasks()
        await engine.start()
        assert engine.running and our_threads() == []  # the worker starts on first use
        stream = engine.submit(Request(prompt=PROMPTS[2], max_tokens=500, sampling=GREEDY))
        async for event in stream:  # leave it generating
            if event.token_id is not None:
                break
        assert our_threads()
        await engine.stop()
        assert not engine.running
        assert asyncio.all_tasks() == tasks_before
        rest = [e async for e in stream]  # in-flight request was told it is over
        assert rest[-1].finish_reason == "cancelled"

    run(go())
    assert our_threads() == []
    assert [t for t in threading.enumerate() if not t.daemon] == [threading.main_thread()]


@slow
def test_start_stop_cycles_do_not_grow_memory(smollm2_path):
    engine = create_engine(smollm2_path, backend="cpu", n_slots=2, n_ctx=256)

    async def cycles(n):
        for _ in range(n):
            await engine.start()
            await engine.stop()

    run(cycles(10))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        run(cycles(100))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 512 * 1024, f"{growth} bytes kept after 100 start/stop cycles"


@slow
def test_cancel_mid_generation_frees_the_slot(smollm2_path, reference):
    async def go():
        async with create_engine(smollm2_path, backend="cpu", n_slots=2) as engine:
            initial = engine.free_slot_count
            stream = engine.submit(Request(prompt=PROMPTS[2], max_tokens=400, sampling=GREEDY))
            seen, after_cancel, final = 0, 0, None
            async for event in stream:
                if event.finish_reason:
                    final = event
                    break
                if seen >= 3:
                    after_cancel += 1
                seen += 1
                if seen == 3:
                    stream.cancel()
            assert final.finish_reason == "cancelled"
            assert after_cancel <= 1  # within one decode step
            assert engine.free_slot_count == initial
            text, _, nxt = await collect(engine.submit(
                Request(prompt=PROMPTS[0], max_tokens=12, sampling=GREEDY)))
            assert text == reference[PROMPTS[0]][0] and nxt.finish_reason == "length"
            assert engine.free_slot_count == initial

    run(go())


@slow
def test_eight_concurrent_requests_match_alone_and_batch(smollm2_path, reference):
    """Same texts as alone; decoded as batched steps (counted, not timed: timing lives in benchmarks/,
    where engine_batching.py measures the throughput; the time ratio is printed here for the record)."""
    batch_sizes: list[int] = []

    async def go():
        async with create_engine(smollm2_path, backend="cpu", n_slots=8, n_ctx=512) as engine:
            model = engine.model

            def counting(real):
                def step(tokens, *args):
                    batch_sizes.append(len(tokens))
                    return real(tokens, *args)
                return step

            t0 = time.perf_counter()
            await collect(engine.submit(Request(prompt=PROMPTS[0], max_tokens=12, sampling=GREEDY)))
            single = time.perf_counter() - t0
            # greedy batches decode through decode_greedy (the backend picks the tokens), others
            # through decode: count both (instance attributes; removed below)
            model.decode, model.decode_greedy = counting(model.decode), counting(model.decode_greedy)
            try:
                t0 = time.perf_counter()
                results = await asyncio.gather(*[
                    collect(engine.submit(Request(prompt=p, max_tokens=12, sampling=GREEDY)))
                    for p in PROMPTS])
                total = time.perf_counter() - t0
            finally:
                del model.decode, model.decode_greedy
        return results, single, total

    results, single, total = run(go(), timeout=300)
    for prompt, (text, ids, final) in zip(PROMPTS, results):
        assert (text, ids) == reference[prompt][:2], prompt
    print(f"\n8 concurrent requests took {total:.2f}s vs {single:.2f}s alone: {total / single:.2f}x "
          f"(serial would be ~8x); decode batch sizes {batch_sizes}")
    # 8 requests x 11 decode steps each: one at a time would be 88 steps of 1; batched, ~11 steps of 8
    assert sum(batch_sizes) == 8 * 11
    assert len(batch_sizes) <= 11 + 7 and max(batch_sizes) == 8


@slow
def test_second_turn_prefills_only_new_tokens(smollm2_path):
    async def go():
        async with create_engine(smollm2_path, backend="cpu", n_slots=1) as engine:
            session = engine.open_session()
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            text, _, first = await collect(engine.submit(
                Request(messages=messages, session=session, max_tokens=16, sampling=GREEDY)))
            assert first.timings.reused_tokens == 0
            cached = list(session.cached)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": "And of Italy?"}]
            full = engine.prepare_prompt(Request(messages=messages))
            from rocmforge_core.engine import common_prefix

            expected_reuse = common_prefix(full, cached)
            _, _, second = await collect(engine.submit(
                Request(messages=messages, session=session, max_tokens=4, sampling=GREEDY)))
            t = second.timings
            assert t.reused_tokens == expected_reuse
            assert expected_reuse >= len(cached) - 2  # only the template's turn end was rewritten
            prefilled = t.prompt_tokens - t.reused_tokens
            assert prefilled == len(full) - expected_reuse
            assert prefilled < len(full) // 2
            session.close()
            assert engine.free_slot_count == 1

    run(go())


@slow
def test_full_queue_is_a_clear_busy_error(smollm2_path):
    from rocmforge_core.engine import EngineBusyError

    async def go():
        async with create_engine(smollm2_path, backend="cpu", n_slots=1, max_queue=2, n_ctx=256) as engine:
            streams = [engine.submit(Request(prompt=PROMPTS[0], max_tokens=2, sampling=GREEDY))
                       for _ in range(2)]  # the loop has not run yet: both wait in the queue
            with pytest.raises(EngineBusyError, match="busy"):
                engine.submit(Request(prompt=PROMPTS[0], max_tokens=2, sampling=GREEDY))
            for s in streams:  # the queued ones still complete
                _, _, final = await collect(s)
                assert final.finish_reason == "length"

    run(go())


@slow
def test_submit_before_start_is_refused(smollm2_path):
    from rocmforge_core.engine import EngineStateError

    engine = create_engine(smollm2_path, backend="cpu", n_slots=1, n_ctx=256)
    with pytest.raises(EngineStateError):
        engine.submit(Request(prompt="hi"))


# ---- robustness, on tiny random models ---------------------------------------------------------------

VOCAB = 300  # printable ASCII first (so text prompts encode), then filler tokens


def random_llama(path, *, rows=VOCAB, d=64, n_heads=4, n_kv=2, hd=16, ffn=128, n_layers=2, ctx=8192,
                 extra=None):
    """A llama GGUF with random weights and a byte-level vocabulary of VOCAB tokens; `rows` embedding
    rows (fewer than VOCAB makes the tokenizer's list longer than the model's, as in a broken file)."""
    rng = np.random.default_rng(0)

    def weight(*shape, std=0.15):
        return (rng.standard_normal(shape) * std).astype(np.float32), QT.F32

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32), QT.F32

    chars = [byte_to_unicode()[b] for b in range(32, 127)]
    a = "llama"
    meta = {f"{a}.block_count": n_layers, f"{a}.embedding_length": d, f"{a}.feed_forward_length": ffn,
            f"{a}.attention.head_count": n_heads, f"{a}.attention.head_count_kv": n_kv,
            f"{a}.attention.key_length": hd, f"{a}.attention.value_length": hd, f"{a}.context_length": ctx,
            f"{a}.rope.dimension_count": hd, f"{a}.rope.freq_base": 10000.0,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.tokens": chars + [f"<t{i}>" for i in range(VOCAB - len(chars))],
            "tokenizer.ggml.eos_token_id": VOCAB - 1, **(extra or {})}
    tensors = {"token_embd.weight": weight(rows, d, std=1.0), "output_norm.weight": norm(d)}
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors.update(llama_layer_tensors(p, weight, norm, d, n_heads, n_kv, hd, ffn))
    return write_gguf(path, a, meta, tensors)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return random_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


GOOD = [Request(prompt="Hello there", max_tokens=8, sampling=GREEDY),
        Request(tokens=[5, 6, 7, 8], max_tokens=6, sampling=SamplingParams(seed=3)),
        Request(prompt="A longer prompt, with punctuation!", max_tokens=8, stop=["zz"],
                sampling=SamplingParams(temperature=0.7, top_k=0, seed=11, repeat_penalty=1.1))]


def with_sampling(**fields) -> Request:
    return Request(tokens=[1, 2, 3], max_tokens=4, sampling=SamplingParams(**fields))


BAD = {
    "id = embedding rows": Request(tokens=[VOCAB]), "negative id": Request(tokens=[-1]),
    "float id": Request(tokens=[1.5]), "bool id": Request(tokens=[True]), "ids as text": Request(tokens="12"),
    "prompt and tokens": Request(prompt="a", tokens=[1]), "prompt not text": Request(prompt=5),
    "messages not a list": Request(messages="hi"), "message without content": Request(messages=[{"role": "user"}]),
    "max_tokens 0": Request(tokens=[1], max_tokens=0), "max_tokens float": Request(tokens=[1], max_tokens=2.5),
    "max_tokens bool": Request(tokens=[1], max_tokens=True),
    "stop is a string": Request(tokens=[1], stop="abc"), "empty stop": Request(tokens=[1], stop=[""]),
    "stop not text": Request(tokens=[1], stop=[3]), "ignore_eos not bool": Request(tokens=[1], ignore_eos="yes"),
    "sampling not params": Request(tokens=[1], sampling={"temperature": 0}),
    "float top_k": with_sampling(top_k=1.5), "float repeat_last_n": with_sampling(repeat_last_n=2.5),
    "float seed": with_sampling(seed=1.5), "seed 1e400": with_sampling(seed=1e400),
    "seed past 64 bits": with_sampling(seed=2**70), "nan temperature": with_sampling(temperature=float("nan")),
    "inf temperature": with_sampling(temperature=float("inf")), "bool temperature": with_sampling(temperature=True),
    "text top_p": with_sampling(top_p="0.9"), "huge top_k": with_sampling(top_k=2**40),
    "huge int temperature": with_sampling(temperature=10**400),
}


def alone(path, requests, **options):
    """Each request's (text, ids, finish reason) on its own, one after another on a fresh engine."""
    async def go():
        async with create_engine(path, backend="cpu", n_slots=1, n_ctx=512, **options) as engine:
            return [summary(await collect(engine.submit(r))) for r in requests]

    return run(go())


def summary(result):
    text, ids, final = result
    return text, ids, final.finish_reason


def test_a_request_continuing_an_earlier_one_prefills_only_the_rest(tiny_path):
    """Without a session: a prompt that starts with an earlier request's tokens (a chat client resending
    the conversation) takes the slot whose cache holds them and prefills only the rest - also when
    that slot is not the one idle longest, and when an unrelated request was served in between (it
    takes the other slot and leaves this cache alone); the answers are a fresh engine's."""
    first = Request(tokens=list(range(5, 45)), max_tokens=6, sampling=GREEDY)
    other = Request(tokens=list(range(60, 80)), max_tokens=4, sampling=GREEDY)

    async def go():
        async with create_engine(tiny_path, backend="cpu", n_slots=2, n_ctx=512) as engine:
            _, ids_a, a = await collect(engine.submit(first))
            _, ids_b, b = await collect(engine.submit(other))
            # The slot idle longest now is first's; the continuation of `other` must find other's.
            follow_b = Request(tokens=other.tokens + ids_b + [7, 8, 9], max_tokens=6, sampling=GREEDY)
            result_b = await collect(engine.submit(follow_b))
            follow_a = Request(tokens=first.tokens + ids_a + [7, 8, 9], max_tokens=6, sampling=GREEDY)
            result_a = await collect(engine.submit(follow_a))
            return a, b, (follow_a, result_a), (follow_b, result_b)

    a, b, (follow_a, result_a), (follow_b, result_b) = run(go())
    assert a.timings.reused_tokens == 0 and b.timings.reused_tokens == 0
    # Each prompt and every generated token but the last (sampled, never fed) were cached.
    assert result_b[2].timings.reused_tokens == 20 + 4 - 1
    assert result_a[2].timings.reused_tokens == 40 + 6 - 1
    assert [summary(result_a), summary(result_b)] == alone(tiny_path, [follow_a, follow_b])


def test_bad_requests_are_refused_at_submit_beside_good_ones(tiny_path):
    expected = alone(tiny_path, GOOD)

    async def go():
        async with create_engine(tiny_path, backend="cpu", n_slots=4, n_ctx=512) as engine:
            good = [asyncio.ensure_future(collect(engine.submit(r))) for r in GOOD]
            await asyncio.sleep(0.01)  # the good ones are in flight while the bad ones arrive
            errors = {}
            for name, request in BAD.items():
                with pytest.raises(BadInputError) as info:
                    engine.submit(request)
                errors[name] = info.value.one_line()
            results = [summary(r) for r in await asyncio.gather(*good)]
            assert engine.running
            after = summary(await collect(engine.submit(GOOD[0])))
        return errors, results, after

    errors, results, after = run(go())
    assert results == expected and after == expected[0]
    assert all("\n" not in e for e in errors.values())
    assert "out of range for the model's 300 embedding rows" in errors["id = embedding rows"]
    assert "--top-k must be a whole number (got 1.5)" in errors["float top_k"]
    assert "--repeat-last-n must be a whole number (got 2.5)" in errors["float repeat_last_n"]
    assert "--seed must be a whole number (got inf)" in errors["seed 1e400"]
    assert "--temperature must be a number (got True)" in errors["bool temperature"]
    assert "--max-tokens must be >= 1 (got 0)" in errors["max_tokens 0"]


def test_a_bos_past_the_embedding_rows_is_refused_at_load(tmp_path):
    path = random_llama(tmp_path / "bos.gguf", rows=250,
                        extra={"tokenizer.ggml.bos_token_id": 260, "tokenizer.ggml.add_bos_token": True})
    with pytest.raises(BadInputError, match="BOS id 260 is past the model's 250 embedding rows"):
        create_engine(path, backend="cpu", n_ctx=256)


def test_ids_past_the_embedding_rows_are_refused_at_submit(tmp_path):
    """The tokenizer knows 300 tokens, the embedding has 250 rows: the rows bound the ids."""
    path = random_llama(tmp_path / "short.gguf", rows=250)

    async def go():
        async with create_engine(path, backend="cpu", n_slots=1, n_ctx=256) as engine:
            with pytest.raises(BadInputError, match="token id 260 is out of range .* 250 embedding rows"):
                engine.submit(Request(tokens=[1, 260]))
            _, _, final = await collect(engine.submit(Request(tokens=[1, 249], max_tokens=2)))
            assert final.finish_reason in ("length", "stop") and engine.running

    run(go())


POISON = 77  # a prompt starting with this id is the request whose model calls fail


@pytest.mark.parametrize("where", ["prefill", "decode", "sampler"])
def test_a_failure_inside_the_loop_ends_only_its_request(tiny_path, monkeypatch, where):
    """A real model method (or the sampler's) raises for one request; the others finish as alone."""
    expected = alone(tiny_path, GOOD)
    poisoned_slots = set()

    async def go():
        async with create_engine(tiny_path, backend="cpu", n_slots=4, n_ctx=512) as engine:
            model = engine.model
            real_prefill, real_decode, real_sample = model.prefill_layers, model.decode, Sampler.sample

            def prefill_layers(job, n_layers):
                if job.tokens[0] == POISON:
                    poisoned_slots.add(job.slot)
                    if where == "prefill":
                        raise RuntimeError("planted failure")
                return real_prefill(job, n_layers)

            def decode(tokens, cache, slots, positions):
                if where == "decode" and poisoned_slots & set(slots.tolist()):
                    raise RuntimeError("planted failure")
                return real_decode(tokens, cache, slots, positions)

            def sample(self, logits, history=()):
                if where == "sampler" and self.seed == 666:
                    raise FloatingPointError("planted failure")
                return real_sample(self, logits, history)

            model.prefill_layers, model.decode = prefill_layers, decode  # instance attributes, removed below
            monkeypatch.setattr(Sampler, "sample", sample)
            try:
                bad = engine.submit(Request(tokens=[POISON, 1, 2], max_tokens=6,
                                            sampling=SamplingParams(seed=666)))
                good = [engine.submit(r) for r in GOOD]
                results = await asyncio.gather(collect(bad), *[collect(s) for s in good])
            finally:
                del model.prefill_layers, model.decode
                monkeypatch.undo()
            assert engine.running and engine.free_slot_count == 4
            after = summary(await collect(engine.submit(GOOD[0])))
        return results, after

    results, after = run(go())
    (_, _, bad_final), *good_results = results
    assert bad_final.finish_reason == "error" and "planted failure" in bad_final.error
    assert [summary(r) for r in good_results] == expected and after == expected[0]


def test_stop_during_a_long_prefill_is_prompt(tmp_path):
    """stop() waits only for the unit of prefill work in flight: no unit starts once stop() is called,
    and a CPU unit holds at most 64 tokens' worth of work through the whole model (a chunk of T
    tokens through L' layers: T * L' <= 64 * n_layers), so the wait is one 64-token chunk's at most,
    ~60 ms on this model; the issue measured 8.6 s with whole-prompt prefill. Counted, not timed: a
    loaded machine slows every unit alike, and a count does not care."""
    path = random_llama(tmp_path / "deep.gguf", d=256, n_heads=16, n_kv=4, hd=64, ffn=256, n_layers=4)
    prompt = np.random.default_rng(1).integers(0, VOCAB, 4000).tolist()
    deep = threading.Event()
    stopping = threading.Event()
    units_after_stop, units = [], []

    async def go():
        engine = create_engine(path, backend="cpu", n_slots=1, n_ctx=4096)
        await engine.start()
        real_prefill = engine.model.prefill_layers

        def prefill_layers(job, n_layers):
            units.append((len(job.tokens), min(n_layers, engine.model.args.n_layers - job.layer)))
            if stopping.is_set():
                units_after_stop.append((job.start, job.layer))
            if job.start >= 2560:
                deep.set()  # a unit deep into the prompt has just begun
            return real_prefill(job, n_layers)

        engine.model.prefill_layers = prefill_layers
        try:
            stream = engine.submit(Request(tokens=prompt, max_tokens=4, sampling=GREEDY))
            while not deep.is_set():
                await asyncio.sleep(0.005)
            stopping.set()
            t1 = time.perf_counter()
            await engine.stop()
            t2 = time.perf_counter()
        finally:
            del engine.model.prefill_layers
        return t2 - t1, [e async for e in stream]

    latency, events = run(go())
    print(f"\nstop() during a 4,000-token prefill took {latency * 1e3:.0f} ms")
    assert events[-1].finish_reason == "cancelled"
    assert units_after_stop == [], f"prefill units started after stop(): {units_after_stop}"
    assert max(tokens * layers for tokens, layers in units) <= 64 * 4, units


def test_a_long_prompt_is_prefilled_in_units_between_the_others_decode_steps(tmp_path):
    """While one request's 1,500-token prompt is prefilled (CPU units of 64 tokens' worth, see
    above), a request that is already generating keeps streaming: its tokens arrive between the long
    prompt's units, not only after the last one. Counted in the order things happened, not timed."""
    path = random_llama(tmp_path / "chunks.gguf", n_layers=2)
    long_prompt = np.random.default_rng(2).integers(0, VOCAB - 1, 1500).tolist()
    order: list[str] = []

    async def go():
        async with create_engine(path, backend="cpu", n_slots=2, n_ctx=2048) as engine:
            real_prefill = engine.model.prefill_layers

            def prefill_layers(job, n_layers):
                if len(job.tokens) > 3 or job.start > 0:  # the long prompt's units (the other prompt is 3 tokens)
                    order.append("unit")
                return real_prefill(job, n_layers)

            engine.model.prefill_layers = prefill_layers
            streaming = engine.submit(Request(tokens=[5, 6, 7], max_tokens=60, sampling=GREEDY, ignore_eos=True))
            first = await streaming.__anext__()
            assert first.finish_reason is None
            long = engine.submit(Request(tokens=long_prompt, max_tokens=2, sampling=GREEDY))
            async for event in streaming:
                if event.token_id is not None:
                    order.append("token")
            chunk = engine.prefill_chunk
            sizes = [min(chunk, 1500 - lo) for lo in range(0, 1500, chunk)]
            return [e async for e in long], [(n, engine.prefill_layers(n)) for n in sizes]

    events, chunks = run(go())
    assert events[-1].finish_reason in ("length", "stop")
    assert max(n * layers for n, layers in chunks) <= 64 * 2, chunks
    units = [i for i, what in enumerate(order) if what == "unit"]
    assert len(units) == sum(-(-2 // layers) for _, layers in chunks), order
    between = order[units[0]:units[-1]].count("token")
    assert between >= 10, f"only {between} tokens of the other stream arrived during the long prefill"


def test_a_tiny_temperature_is_greedy_and_prints_no_numpy_warning(tiny_path):
    """temperature 1e-308 overflowed logits / T to inf, then inf - inf = NaN: RuntimeWarnings on stderr
    and draws from NaN probabilities. The limit of a tiny temperature is the greedy choice."""
    logits = np.random.default_rng(2).standard_normal(VOCAB).astype(np.float32) * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Sampler(SamplingParams(temperature=1e-308, seed=1)).sample(logits) == int(np.argmax(logits))
    greedy = Request(prompt="Hello there", max_tokens=8, sampling=GREEDY)
    tiny = Request(prompt="Hello there", max_tokens=8, sampling=SamplingParams(temperature=1e-308, seed=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert alone(tiny_path, [tiny]) == alone(tiny_path, [greedy])
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
