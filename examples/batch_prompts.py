"""A batch of prompts through one engine: one prompt per line of a file (blank lines skipped), several
answered at once, results printed as JSON lines in the file's order.

    python examples/batch_prompts.py PROMPTS.txt [MODEL] [--parallel 4] [--max-tokens N] [--temperature T]

Each output line: {"index", "prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens"}.
MODEL is a .gguf path or a known name (default: smollm2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path


def read_prompts(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


async def run_one(engine, index: int, prompt: str, args, slots: asyncio.Semaphore) -> dict:
    from rocmforge_core.engine import Request, collect
    from rocmforge_core.sampler import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, seed=args.seed)
    if engine.chat_template is None:
        request = Request(prompt=prompt, max_tokens=args.max_tokens, sampling=sampling)
    else:
        request = Request(messages=[{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                          sampling=sampling)
    async with slots:  # at most --parallel in the engine at once; the rest wait here
        stream = engine.submit(request)
        text, _ids, final = await collect(stream)
    return {"index": index, "prompt": prompt, "text": text, "finish_reason": final.finish_reason,
            "prompt_tokens": len(stream.prompt_tokens), "completion_tokens": final.timings.completion_tokens}


async def main(args) -> None:
    from rocmforge_core.engine import create_engine

    prompts = read_prompts(args.prompts)
    engine = create_engine(args.model, backend=args.backend, n_slots=args.parallel)
    slots = asyncio.Semaphore(args.parallel)
    async with engine:
        tasks = [asyncio.ensure_future(run_one(engine, i, p, args, slots)) for i, p in enumerate(prompts)]
        for task in tasks:  # in the file's order; later prompts keep running meanwhile
            print(json.dumps(await task, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", help="a text file, one prompt per line")
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--parallel", type=int, default=4, help="requests decoded together")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--backend", default="auto")
    asyncio.run(main(parser.parse_args()))
