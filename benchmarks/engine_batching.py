"""Engine benchmarks: continuous-batching throughput, and a chat turn's TTFT with and without KV reuse.

    python benchmarks/engine_batching.py [MODEL] [--backend cpu] [-n 32] [--write]
    python benchmarks/engine_batching.py MODEL --backend cuda --history 2000


1. batching: N greedy requests submitted together vs the same N one after another, on one engine.
2. chat TTFT: turn 2 of a conversation on a session (prefills only the new tokens) vs the same prompt
   prefilled from scratch. Both numbers come from the same run; --write appends rows to BENCHMARKS.md.
3. --history N (instead of 1 and 2; any model, no chat template needed): the first token of a turn
   that follows N tokens of history (fixed random token ids) plus 24 new ones - prefilled from
   scratch, and with the history already in the session's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
    "The three primary colors are", "1, 2, 3, 4, 5,", "Water boils at a temperature of",
    "My favourite food is", "The quick brown fox",
]
HISTORY = ("Tell me about the history of Paris in a few sentences.",)


async def batching(engine, n_tokens: int) -> dict:
    from rocmforge_core.engine import Request, collect
    from rocmforge_core.sampler import SamplingParams

    greedy = SamplingParams(temperature=0.0)

    def req(p):
        return Request(prompt=p, max_tokens=n_tokens, sampling=greedy, ignore_eos=True)

    # Warm-up, untimed: one request, then the batch once (a GPU backend captures one decode graph per
    # batch size the first time it meets it; that one-off cost is not the batching speed).
    await collect(engine.submit(req(PROMPTS[0])))
    await asyncio.gather(*[collect(engine.submit(req(p))) for p in PROMPTS])
    t0 = time.perf_counter()
    for p in PROMPTS:
        await collect(engine.submit(req(p)))
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    await asyncio.gather(*[collect(engine.submit(req(p))) for p in PROMPTS])
    together = time.perf_counter() - t0
    total = len(PROMPTS) * n_tokens
    return {"serial_s": serial, "together_s": together, "serial_tps": total / serial,
            "together_tps": total / together}


async def chat_ttft(engine, reps: int = 5) -> dict:
    from rocmforge_core.engine import Request, collect
    from rocmforge_core.sampler import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    reuse, fresh, n_new, n_all = [], [], 0, 0
    for _ in range(reps):
        session = engine.open_session()
        messages = [{"role": "user", "content": HISTORY[0]}]
        reply, _, _ = await collect(engine.submit(Request(messages=messages, session=session,
                                                          max_tokens=96, sampling=greedy)))
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": "And what happened there in 1789?"}]
        _, _, fin = await collect(engine.submit(Request(messages=messages, session=session, max_tokens=1,
                                                        sampling=greedy)))
        reuse.append(fin.timings.ttft_ms)
        n_all, n_new = fin.timings.prompt_tokens, fin.timings.prompt_tokens - fin.timings.reused_tokens
        session.close()
        _, _, fin = await collect(engine.submit(Request(messages=messages, max_tokens=1, sampling=greedy,
                                                        cache_prompt=False)))
        fresh.append(fin.timings.ttft_ms)
    return {"reuse_ms": statistics.median(reuse), "fresh_ms": statistics.median(fresh),
            "prompt_tokens": n_all, "new_tokens": n_new}


async def history_ttft(engine, n_history: int, reps: int = 3) -> dict:
    import numpy as np

    from rocmforge_core.engine import Request, collect
    from rocmforge_core.sampler import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    rng = np.random.default_rng(0)
    vocab = engine.model.args.vocab_size
    history = [int(t) for t in rng.integers(100, min(vocab, 30000), n_history)]
    turn = history + [int(t) for t in rng.integers(100, min(vocab, 30000), 24)]
    fresh, cached = [], []
    await collect(engine.submit(Request(tokens=turn, max_tokens=1, sampling=greedy)))  # warm-up
    for _ in range(reps):
        _, _, fin = await collect(engine.submit(Request(tokens=turn, max_tokens=1, sampling=greedy,
                                                        cache_prompt=False)))
        assert fin.timings.reused_tokens == 0
        fresh.append(fin.timings.ttft_ms)
        session = engine.open_session()
        await collect(engine.submit(Request(tokens=history, session=session, max_tokens=1, sampling=greedy)))
        _, _, fin = await collect(engine.submit(Request(tokens=turn, session=session, max_tokens=1,
                                                        sampling=greedy)))
        cached.append(fin.timings.ttft_ms)
        reused = fin.timings.reused_tokens
        session.close()
    return {"fresh_ms": statistics.median(fresh), "cached_ms": statistics.median(cached),
            "prompt_tokens": len(turn), "reused": reused}


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("-n", type=int, default=32, help="tokens per request in the batching test")
    ap.add_argument("--write", action="store_true", help="append the rows to BENCHMARKS.md")
    ap.add_argument("--no-chat", action="store_true", help="only the batching test (models without a chat template)")
    ap.add_argument("--history", type=int, metavar="N", help="only the TTFT of a turn after N tokens of history")
    args = ap.parse_args()
    from rocmforge_core.engine import create_engine

    n_ctx = max(1024, (args.history or 0) + 256)
    engine = create_engine(args.model, backend=args.backend, n_slots=2 if args.history else len(PROMPTS),
                           n_ctx=n_ctx)
    device = cpu_name() if engine.backend == "cpu" else engine.model.ops.device.name
    today = datetime.date.today().isoformat()
    where = f"{device}, {os.cpu_count()} cores" if engine.backend == "cpu" else device
    name = Path(str(engine.gguf_file.path)).name
    if args.history:
        async def go_history():
            async with engine:
                return await history_ttft(engine, args.history)

        h = asyncio.run(go_history())
        rows = [f"| {today} | {where} | {name} | {engine.backend} | first token after {args.history} tokens of "
                f"history + 24 new ({h['prompt_tokens']} prompt tokens) | full prefill {h['fresh_ms']:.0f} ms | "
                f"history cached ({h['reused']} reused) {h['cached_ms']:.0f} ms | "
                f"**{h['fresh_ms'] / h['cached_ms']:.1f}x** |"]
        print("\n".join(rows))
        if args.write:
            with open(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", "a") as f:
                f.write("\n".join(rows) + "\n")
        return 0

    async def go():
        async with engine:
            return await batching(engine, args.n), None if args.no_chat else await chat_ttft(engine)

    b, c = asyncio.run(go())
    rows = [
        f"| {today} | {where} | {Path(str(engine.gguf_file.path)).name} | {engine.backend} | batching: "
        f"{len(PROMPTS)} requests x {args.n} tokens | one after another {b['serial_s']:.2f} s "
        f"({b['serial_tps']:.1f} tok/s) | together {b['together_s']:.2f} s ({b['together_tps']:.1f} tok/s) | "
        f"**{b['serial_s'] / b['together_s']:.2f}x** |",
    ]
    if c is not None:
        rows.append(
        f"| {today} | {where} | {Path(str(engine.gguf_file.path)).name} | {engine.backend} | chat turn 2 TTFT "
        f"({c['prompt_tokens']} prompt tokens, {c['new_tokens']} new) | full prefill {c['fresh_ms']:.0f} ms | "
        f"session reuse {c['reuse_ms']:.0f} ms | **{c['fresh_ms'] / c['reuse_ms']:.2f}x** |")
    print("\n".join(rows))
    if args.write:
        with open(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", "a") as f:
            f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
