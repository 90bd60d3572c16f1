"""The engine contract on the real default model: no start-up race, clean stop, cancellation,
continuous batching and KV reuse between chat turns."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc

import pytest

from rocmforge_core.engine import Request, collect, create_engine
from rocmforge_core.sampler import SamplingParams

pytestmark = pytest.mark.slow

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


def test_start_then_submit_immediately_200_times(smollm2_path, reference):
    expected = reference[PROMPTS[0]][0][:]

    async def once():
        engine = create_engine(smollm2_path, backend="cpu", n_slots=1, n_ctx=256)
        await engine.start()
        try:
            text, _, final = await collect(engine.submit(
                Request(prompt=PROMPTS[0], max_tokens=12, sampling=GREEDY)))
        finally:
            await engine.stop()
        return text, final.finish_reason

    for i in range(200):
        text, reason = run(once(), timeout=60)  # a race would hang here and fail on the timeout
        assert (text, reason) == (expected, "length"), f"iteration {i}"


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


def test_eight_concurrent_requests_match_alone_and_batch(smollm2_path, reference):
    """Same texts as alone; decoded as batched steps (counted, not timed: timing lives in benchmarks/,
    where engine_batching.py measures the throughput; the time ratio is printed here for the record)."""
    batch_sizes: list[int] = []

    async def go():
        async with create_engine(smollm2_path, backend="cpu", n_slots=8, n_ctx=512) as engine:
            real_decode = engine.model.decode

            def counting_decode(tokens, *args):
                batch_sizes.append(len(tokens))
                return real_decode(tokens, *args)

            t0 = time.perf_counter()
            await collect(engine.submit(Request(prompt=PROMPTS[0], max_tokens=12, sampling=GREEDY)))
            single = time.perf_counter() - t0
            engine.model.decode = counting_decode  # instance attribute; removed below
            try:
                t0 = time.perf_counter()
                results = await asyncio.gather(*[
                    collect(engine.submit(Request(prompt=p, max_tokens=12, sampling=GREEDY)))
                    for p in PROMPTS])
                total = time.perf_counter() - t0
            finally:
                del engine.model.decode
        return results, single, total

    results, single, total = run(go(), timeout=300)
    for prompt, (text, ids, final) in zip(PROMPTS, results):
        assert (text, ids) == reference[prompt][:2], prompt
    print(f"\n8 concurrent requests took {total:.2f}s vs {single:.2f}s alone: {total / single:.2f}x "
          f"(serial would be ~8x); decode batch sizes {batch_sizes}")
    # 8 requests x 11 decode steps each: one at a time would be 88 steps of 1; batched, ~11 steps of 8
    assert sum(batch_sizes) == 8 * 11
    assert len(batch_sizes) <= 11 + 7 and max(batch_sizes) == 8


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


def test_submit_before_start_is_refused(smollm2_path):
    from rocmforge_core.engine import EngineStateError

    engine = create_engine(smollm2_path, backend="cpu", n_slots=1, n_ctx=256)
    with pytest.raises(EngineStateError):
        engine.submit(Request(prompt="hi"))


def test_a_failing_model_fails_its_requests_and_stops_intake(smollm2_path):
    from rocmforge_core.engine import EngineStateError

    async def go():
        engine = create_engine(smollm2_path, backend="cpu", n_slots=1, n_ctx=256)
        async with engine:
            real = engine.model.prefill

            def broken(*args, **kwargs):
                raise RuntimeError("planted failure")

            engine.model.prefill = broken  # instance attribute: the shared model class is untouched
            try:
                _, _, final = await collect(engine.submit(Request(prompt=PROMPTS[0], max_tokens=4)))
            finally:
                del engine.model.prefill
            assert final.finish_reason == "error" and "planted failure" in final.error
            assert engine.model.prefill == real
            with pytest.raises(EngineStateError):
                engine.submit(Request(prompt=PROMPTS[0], max_tokens=4))
        assert not engine.running

    run(go())
