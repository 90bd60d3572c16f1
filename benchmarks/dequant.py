"""Dequantization speed per tensor type: rocmforge's numpy decoders next to gguf.quants, same run.

    python benchmarks/dequant.py [--mb 16] [--repeat 5]

For each type, ~16 MB of random packed blocks (fp16 scales finite) are decoded to float32; the median
of `--repeat` runs is reported as MB/s of packed input and MB/s of float32 output (1 MB = 10^6 bytes).
Our F32 "dequantization" is a copy (callers may write to the result); gguf's is a view, so not timed.
Prints a Markdown table headed by the date, the CPU and the numpy/gguf versions, for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import gguf
import gguf.quants
import numpy as np

from rocmforge_core import quants

QT = gguf.GGMLQuantizationType
# Where each block keeps its fp16 scales (ggml-common.h); random bytes there could be NaN/Inf.
FP16_FIELDS = {QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
               QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}


def random_tensor(qtype: QT, n_bytes: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int]]:
    block, type_size = quants.BLOCK_SIZES[qtype]
    n_blocks = n_bytes // type_size
    if qtype in (QT.F32, QT.F16, QT.BF16):
        values = rng.standard_normal(n_blocks, dtype=np.float32)
        raw = {QT.F32: values, QT.F16: values.astype(np.float16),
               QT.BF16: (values.view(np.uint32) >> 16).astype(np.uint16)}[qtype].view(np.uint8)
        return raw, (n_blocks,)
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        scale = rng.uniform(0.001, 0.1, n_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1), (n_blocks * block,)


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{os.cpu_count()}-core {platform.machine()} ({model})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0, help="packed megabytes per type")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    print(f"Dequantization, {datetime.datetime.now(datetime.timezone.utc).date()}, {cpu_name()}, "
          f"Python {platform.python_version()}, numpy {np.__version__}, gguf {_gguf_version()}; "
          f"{args.mb:g} MB packed per type, median of {args.repeat}\n")
    print("| type | packed MB | rocmforge in MB/s | rocmforge out MB/s | gguf.quants in MB/s | gguf.quants out MB/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for qtype in sorted(quants.SUPPORTED_TYPES, key=int):
        raw, shape = random_tensor(qtype, int(args.mb * 1e6), rng)
        out_bytes = 4 * shape[0]
        ours = median_seconds(lambda: quants.dequantize(raw, qtype, shape), args.repeat)
        mine = f"| {qtype.name} | {raw.nbytes / 1e6:.1f} | {raw.nbytes / ours / 1e6:,.0f} | {out_bytes / ours / 1e6:,.0f} |"
        if qtype == QT.F32:  # gguf.quants returns a view of the input here: nothing to time
            print(f"{mine} view | view | - |", flush=True)
            continue
        theirs = median_seconds(lambda: gguf.quants.dequantize(raw, qtype), args.repeat)
        print(f"{mine} {raw.nbytes / theirs / 1e6:,.0f} | {out_bytes / theirs / 1e6:,.0f} | "
              f"{theirs / ours:.1f}x |", flush=True)
    return 0


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    sys.exit(main())
