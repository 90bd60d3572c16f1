"""`rocmforge bench`: prompt-processing (pp) and generation (tg) speed, measured like llama-bench.

pp = one batch of N random prompt tokens; tg = N tokens decoded one at a time, from an empty context or
after `-d` random tokens already in it (their prefill is not timed), as llama-bench's -d.
Both go through the same engine as chat and generate; the median of the repetitions is reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import platform
import statistics
import sys

from rocmforge_core.errors import BadInputError
from rocmforge_core.sampler import SamplingParams


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_prompt(tokenizer, n: int, seed: int) -> list[int]:
    """n ordinary (non-special) token ids, reproducible per seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids: list[int] = []
    while len(ids) < n:
        for t in rng.integers(0, tokenizer.vocab_size, size=2 * n):
            if not tokenizer.is_special(int(t)):
                ids.append(int(t))
                if len(ids) == n:
                    break
    return ids


async def _run(engine, request) -> object:
    """One request through the engine; its final event. A request that ended in an error (say, a
    model whose numbers went non-finite) has no speed to report: that is an error here too."""
    from rocmforge_core.engine import collect
    from rocmforge_core.errors import RocmforgeError

    _, _, final = await collect(engine.submit(request))
    if final.finish_reason == "error":
        raise RocmforgeError(f"the benchmark's request failed: {final.error}")
    return final


async def measure(engine, n_prompt: int, n_gen: int, repetitions: int, depth: int = 0,
                  sampling: SamplingParams | None = None) -> dict:
    """pp and tg medians over `repetitions` (after one warm-up round); tg draws with `sampling` (greedy
    if None), the prompt test's one token greedily."""
    from rocmforge_core.engine import Request

    greedy = SamplingParams(temperature=0.0)
    sampling = sampling or greedy
    start = engine.tokenizer.bos_id if engine.tokenizer.bos_id is not None else 0
    pp, tg = [], []
    async with engine:
        for rep in range(repetitions + 1):  # the first round warms up and is not counted
            if n_prompt:
                prompt = random_prompt(engine.tokenizer, n_prompt, seed=rep)
                final = await _run(engine, Request(tokens=prompt, max_tokens=1, sampling=greedy, ignore_eos=True))
                if rep:
                    pp.append(final.timings.prompt_tokens_per_s)
            if n_gen:
                context = [start] + random_prompt(engine.tokenizer, depth, seed=1000 + rep) if depth else [start]
                final = await _run(engine, Request(tokens=context, max_tokens=n_gen + 1, sampling=sampling,
                                                   ignore_eos=True))
                if rep:
                    tg.append(final.timings.gen_tokens_per_s)
    return {"pp": statistics.median(pp) if pp else None, "tg": statistics.median(tg) if tg else None}


def run(*, model, n_prompt, n_gen, repetitions, backend, json_out, numerics=None, depth=0,
        cache_type=None, sampling: dict | None = None) -> None:
    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise BadInputError("-p and -n must be >= 0 and not both 0")
    if depth < 0:
        raise BadInputError(f"-d must be >= 0 (got {depth})")
    if repetitions < 1:
        raise BadInputError(f"-r must be at least 1 (got {repetitions})")
    from rocmforge_cli.common import resolve_model_path
    from rocmforge_core.engine import create_engine

    params = SamplingParams(**(sampling or {"temperature": 0.0})).validate()  # bad flags fail before the load
    path = resolve_model_path(model)
    engine = create_engine(path, backend=backend, n_ctx=max(n_prompt + 8, depth + n_gen + 8, 64), n_slots=1,
                           numerics=numerics, cache_type=cache_type)
    device = cpu_name() if engine.backend == "cpu" else engine.model.ops.device.name
    numerics = engine.model.ops.numerics if engine.backend == "cpu" else numerics
    result = asyncio.run(measure(engine, n_prompt, n_gen, repetitions, depth, params))
    cache_kind, args = getattr(engine.model.ops, "kv_cache_type", "f32"), engine.model.args
    report = {
        "model": str(path), "backend": engine.backend, "device": device, "numerics": numerics,
        "cache_type": cache_kind, "load_ms": round(engine.load_ms),
        "kv_bytes_per_token": 2 * args.n_layers * args.n_kv_heads * args.head_dim * (2 if cache_kind == "f16" else 4),
        "pp": {"n_tokens": n_prompt, "tokens_per_s": round(result["pp"] or 0.0, 2)},
        "tg": {"n_tokens": n_gen, "tokens_per_s": round(result["tg"] or 0.0, 2), "depth": depth,
               "sampling": "greedy" if params.greedy else {k: v for k, v in dataclasses.asdict(params).items()
                                                            if k != "seed"}},
    }
    if json_out:
        print(json.dumps(report))
        return
    from rich.console import Console
    from rich.table import Table

    suffix = f", {numerics} numerics" if numerics else ""
    table = Table(title=f"{path.name} on {engine.backend} ({device}{suffix})")
    for col in ("test", "tokens", "tokens/s"):
        table.add_column(col, justify="right" if col != "test" else "left")
    if n_prompt:
        table.add_row(f"pp{n_prompt}", str(n_prompt), f"{report['pp']['tokens_per_s']:.2f}")
    if n_gen:
        table.add_row(f"tg{n_gen}" + (f" @ d{depth}" if depth else ""), str(n_gen), f"{report['tg']['tokens_per_s']:.2f}")
    Console(file=sys.stdout).print(table)
