"""rocmforge from Python: one engine, two requests in flight at once (their decode steps are batched),
each streamed as it is generated.

    python examples/python_api.py [MODEL] [--max-tokens N] [--backend auto|cpu|hip|cuda]

MODEL is a .gguf path or a known name (default: smollm2, fetched once into the cache).
"""

from __future__ import annotations

import argparse
import asyncio

QUESTIONS = ["Name three colors.", "What is the capital of France?"]


def request_for(engine, question: str, max_tokens: int):
    from rocmforge_core.engine import Request
    from rocmforge_core.sampler import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    if engine.chat_template is None:  # a base model: plain text to continue
        return Request(prompt=question, max_tokens=max_tokens, sampling=greedy)
    return Request(messages=[{"role": "user", "content": question}], max_tokens=max_tokens, sampling=greedy)


async def answer(index: int, stream) -> tuple[str, object]:
    """Read one request's events: text deltas as they come, then the final event."""
    parts, final = [], None
    async for event in stream:
        if event.text:
            parts.append(event.text)
            print(f"[{index}] {event.text!r}", flush=True)  # the two streams interleave
        if event.finish_reason is not None:
            final = event
    return "".join(parts), final


async def main(model: str, backend: str, max_tokens: int) -> None:
    from rocmforge_core.engine import create_engine

    engine = create_engine(model, backend=backend, n_slots=2)  # loads the model; the loop is not running yet
    async with engine:  # engine.start() ... engine.stop()
        streams = [engine.submit(request_for(engine, q, max_tokens)) for q in QUESTIONS]
        results = await asyncio.gather(*(answer(i, s) for i, s in enumerate(streams)))
    for i, (text, final) in enumerate(results):
        t = final.timings
        print(f"answer {i}: {text.strip()!r} ({final.finish_reason}, {t.completion_tokens} tokens, "
              f"ttft {t.ttft_ms:.0f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.backend, args.max_tokens))
