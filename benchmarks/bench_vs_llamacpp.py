"""Run `rocmforge bench` and llama.cpp (through llama-cpp-python) on the same GGUF, in the same run,
and append one row with both numbers and their ratio to BENCHMARKS.md.

    python benchmarks/bench_vs_llamacpp.py MODEL --llama-python /opt/llcpp/bin/python [-p 512 -n 128 -r 3]

llama-cpp-python is not a dependency of rocmforge: point --llama-python at a venv that has it. Its side
runs with n_threads = -t (default: the machine's core count, 2 here), as rocmforge does, n_batch = n_ubatch = the prompt size so pp is one
batch, like llama-bench; tg decodes one token at a time from an empty context.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

LLAMA_SIDE = r"""
import json, sys, time, statistics
import numpy as np
import llama_cpp
path, n_prompt, n_gen, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(model_path=path, n_ctx=max(n_prompt, n_gen) + 16, n_batch=max(n_prompt, 32),
                      n_ubatch=max(n_prompt, 32), n_threads=threads, n_threads_batch=threads, verbose=False)
n_vocab = llm.n_vocab()
pp, tg = [], []
for rep in range(reps + 1):
    rng = np.random.default_rng(rep)
    toks = [int(t) for t in rng.integers(100, n_vocab - 100, size=n_prompt)]
    llm.reset(); llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
    t0 = time.perf_counter(); llm.eval(toks); t1 = time.perf_counter()
    if rep: pp.append(n_prompt / (t1 - t0))
    llm.reset(); llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
    t0 = time.perf_counter()
    for i in range(n_gen):
        llm.eval([int(toks[i % len(toks)])])
    t1 = time.perf_counter()
    if rep: tg.append(n_gen / (t1 - t0))
print(json.dumps({"pp": statistics.median(pp), "tg": statistics.median(tg),
                  "version": llama_cpp.__version__}))
"""


TABLE_HEADING = "## Generation speed vs llama.cpp (CPU)"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--numerics", default="packed", help="rocmforge's CPU numerics (packed, float32 or llama.cpp)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1, help="threads on both sides")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    threads = args.threads

    ours = json.loads(subprocess.run(
        [sys.executable, "-m", "rocmforge_cli", "bench", args.model, "-p", str(args.p), "-n", str(args.n),
         "-r", str(args.r), "--backend", args.backend, "--numerics", args.numerics, "-t", str(threads), "--json"],
        check=True, capture_output=True, text=True).stdout)
    theirs = json.loads(subprocess.run(
        [args.llama_python, "-c", LLAMA_SIDE, ours["model"], str(args.p), str(args.n), str(args.r),
         str(threads)], check=True, capture_output=True, text=True).stdout)

    pp_ours, tg_ours = ours["pp"]["tokens_per_s"], ours["tg"]["tokens_per_s"]
    backend = ours["backend"] + ("" if args.numerics == "float32" else f", {args.numerics} numerics")
    if ours.get("load_ms") is not None:
        print(f"rocmforge load {ours['load_ms']:.0f} ms", file=sys.stderr)
    row = (f"| {datetime.date.today().isoformat()} | {cpu_name()}, {threads} threads | "
           f"{Path(ours['model']).name} | {backend} | pp{args.p}: {pp_ours:.1f} | "
           f"pp{args.p}: {theirs['pp']:.1f} | **{pp_ours / theirs['pp']:.2f}x** | "
           f"tg{args.n}: {tg_ours:.1f} | tg{args.n}: {theirs['tg']:.1f} | **{tg_ours / theirs['tg']:.2f}x** | "
           f"llama-cpp-python {theirs['version']} |")
    print(row)
    if not args.no_write:
        add_row(Path(args.out), row)
    return 0


def add_row(path: Path, row: str) -> None:
    """Insert the row after the last row of the "vs llama.cpp (CPU)" table (or append if none)."""
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(TABLE_HEADING)), None)
    if start is None:
        lines.append(row)
    else:
        i = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, row)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
