"""Decode-kernel rates of the packed CPU backend: one activation row times a random packed weight.

    python benchmarks/cpu_kernel_rates.py [--types Q4_K Q6_K] [--shape 4096 4096] [--threads 1 2] [--rows 1]
                                          [--isa portable avx2]

For each type and thread count, the best of `--rounds` medians of `--repeat` timed calls of
cpu_kernels.matvec_<type> (after a warm-up call), as weight elements per second and packed bytes read
per second; the best, because on a shared machine a slow round is someone else's work. `--isa` names
the kernel sets to time (cpu_kernels.kernel(type, isa); default: this host's, cpu_kernels.ISA), one after
the other for each type and thread count, so that their rates come from the same minutes. The weight
at the default shape (4,096 x 4,096, a Llama-3-8B projection) is 9-28 MB, about the last-level cache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gguf_factory import random_blocks  # noqa: E402
from rocmforge_core import quants  # noqa: E402
from rocmforge_core.backends import cpu_kernels as k  # noqa: E402


def rate(qtype: QT, n_out: int, n_in: int, rows: int, threads: int, repeat: int, rounds: int,
         isa: str) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    block, size = quants.BLOCK_SIZES[qtype]
    w = random_blocks(qtype, (n_out, n_in), rng).reshape(n_out, n_in // block, size)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    out = np.empty((rows, n_out), np.float32)
    ws = (w, w[:0], w[:0])
    ends = np.array([n_out, n_out, n_out], np.int64)
    fn = k.kernel(qtype.name, isa)
    k.set_threads(threads)
    fn(ws, ends, x, k.F16, out, 0)
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(ws, ends, x, k.F16, out, 0)
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times))
    t = min(medians)
    return n_out * n_in / t / 1e9, w.nbytes / t / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
    ap.add_argument("--shape", nargs=2, type=int, default=[4096, 4096], metavar=("N_OUT", "N_IN"))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--isa", nargs="+", default=[k.ISA], choices=["portable", "avx2"])
    args = ap.parse_args()
    n_out, n_in = args.shape
    print(f"| type | threads | kernels | Gelem/s | GB/s packed |  ({n_out} x {n_in}, {args.rows} row(s))")
    for name in args.types:
        for t in args.threads:
            for isa in args.isa:
                g, b = rate(QT[name], n_out, n_in, args.rows, t, args.repeat, args.rounds, isa)
                print(f"| {name} | {t} | {isa} | {g:.2f} | {b:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
