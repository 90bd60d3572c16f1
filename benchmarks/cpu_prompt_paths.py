"""Prompt-sized products on packed Q8_0 weights, three ways, on one core or more (numba's threads):

1. a compiled blocked mat-mat on the blocks: each weight row decoded once into int16, then integer
   dot products with every activation row (int16 activations, as the decode kernels use);
2. what the packed backend runs: dequantize a slice of rows into a float32 scratch, then BLAS sgemm;
3. sgemm alone on float32 weights (the ceiling of 2).

    python benchmarks/cpu_prompt_paths.py [--rows 64 512]

Q8_0 is the mat-mat's best case (its quants need no unpacking). The mat-mat below is kept here, not
in the backend, because it measured slower than 2 at every size tried (BENCHMARKS.md, packed CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rocmforge_core.backends import cpu_kernels  # noqa: E402  (sets numba's SLP and threading options)


@njit(parallel=True, cache=True, fastmath=True, boundscheck=False)
def matmat_q8_0(w, xq, xd, f16, out):
    n_out, nb = w.shape[0], w.shape[1]
    for r in prange(n_out):
        wq = np.empty((nb, 32), np.int16)
        wd = np.empty(nb, np.float32)
        for k in range(nb):
            bl = w[r, k]
            wd[k] = f16[np.int32(bl[0]) | (np.int32(bl[1]) << 8)]
            for j in range(32):
                wq[k, j] = np.int16(np.int8(bl[2 + j]))
        for b in range(xq.shape[0]):
            s = np.float32(0.0)
            for k in range(nb):
                acc = np.int32(0)
                for j in range(32):
                    acc = np.int32(acc + np.int32(wq[k, j]) * np.int32(xq[b, k, j]))
                s += wd[k] * xd[b, k] * np.float32(acc)
            out[b, r] = s


def rate(fn, flops: float, reps: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    from gguf import GGMLQuantizationType as QT

    from gguf_factory import random_blocks
    from rocmforge_core import quants
    from rocmforge_core.backends.cpu_packed import PackedCpuBackend, PackedLinear, PackedPart

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 512])
    args = ap.parse_args()
    rng, ops = np.random.default_rng(0), PackedCpuBackend()
    print(f"numba threads: {numba.get_num_threads()}")
    for n_out, n_in in ((3072, 576), (576, 1536), (2048, 640)):
        raw = random_blocks(QT.Q8_0, (n_out, n_in), rng)
        blocks = raw.reshape(n_out, -1, 34)
        lin = PackedLinear((PackedPart(QT.Q8_0, blocks, 0, n_out),))
        wf = quants.dequantize(raw, QT.Q8_0, (n_out, n_in))
        for rows in args.rows:
            x = rng.standard_normal((rows, n_in)).astype(np.float32)
            xq = np.empty((rows, n_in // 32, 32), np.int16)
            xd, xs = np.empty((rows, n_in // 32), np.float32), np.empty((rows, n_in // 16), np.float32)
            cpu_kernels.quantize_rows(x, xq, xd, xs)
            out = np.empty((rows, n_out), np.float32)
            flops = 2.0 * rows * n_in * n_out
            mm = rate(lambda: matmat_q8_0(blocks, xq, xd, cpu_kernels.F16, out), flops)
            ds = rate(lambda: ops._dense_product(x, lin), flops)
            sg = rate(lambda: x @ wf.T, flops)
            err = np.abs(out - x @ wf.T).max() / np.abs(x @ wf.T).max()
            print(f"{n_out}x{n_in}, {rows} rows: mat-mat {mm:.1f}, dequantize+sgemm {ds:.1f}, "
                  f"sgemm alone {sg:.1f} GFLOP/s (mat-mat error {err:.1e})")


if __name__ == "__main__":
    main()
