"""The int8-activation mat-vec (hip_kernels/mmvq.hip): weight repacking at load, activation
quantization, and the launch geometry.

Weights of the types below are split at load, on the device, into [bulk | meta] (the quants of every
block, then the scales), the same bytes as the file's. Activations are quantized to blocks of 32 int8
values once per producer (the norm before a projection does it in the same kernel), and every weight
row is an integer dot product of 16-byte loads. Other weight types keep the float mat-vec.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Sequence

import numpy as np

from rocmforge_core.gpu.runtime import cache_dir, kernel_source

# GGUF type -> (values per block, bytes per block, first bulk byte, bulk bytes); as in mmvq.hip.
SPLIT_TYPES = {
    "Q4_0": (32, 18, 2, 16), "Q4_1": (32, 20, 4, 16), "Q5_0": (32, 22, 6, 16), "Q5_1": (32, 24, 8, 16),
    "Q8_0": (32, 34, 2, 32), "Q4_K": (256, 144, 16, 128), "Q5_K": (256, 176, 48, 128),
    "Q6_K": (256, 210, 0, 192),
}
ITEMS_PER_BLOCK = {32: 1, 256: 8}
COLUMN_BUCKETS = (1, 2, 4, 8)  # activation rows per launch: kernels mvq_<type>_<n>_r<R>u<U>
# The variants mmvq.hip instantiates per bucket: (R weight rows per lane group, U items in flight per
# lane). `tune` times them on each weight shape at load; the first is what an untuned weight uses
# (the best on most 8B shapes measured on an H200). All of them compute the same sums in one order.
VARIANTS = {1: ((2, 1), (1, 2), (2, 2)), 2: ((2, 1), (1, 2)), 4: ((4, 1), (2, 1)), 8: ((4, 1), (2, 1))}
Q8_BLOCK = 32
THREADS = 128


def splits(type_name: str, n_in: int) -> bool:
    """Whether a weight of this type and row length takes the int8 path."""
    spec = SPLIT_TYPES.get(type_name)
    return spec is not None and n_in % spec[0] == 0


def split_on_device(ops, raws: Sequence[np.ndarray], type_name: str) -> Any:
    """Upload the raw GGUF blocks of one or more tensors of one type (stacked rows, e.g. Q|K|V) and split
    them into one [bulk | meta] array on the device; returns the new array. The raw copies pass through
    one reused device scratch (ops.raw_scratch, freed when the weights are all up, so loading leaves
    nothing but the split weights); the bytes go through ops.stage (pinned, overlapped with reading the
    file), and nothing here waits for the device."""
    qk, block_bytes, at, bulk = SPLIT_TYPES[type_name]
    total = sum(r.nbytes for r in raws)
    out = ops.empty((total,), np.uint8)
    n_total, done = total // block_bytes, 0
    for raw in raws:
        staged = ops.raw_scratch(raw.nbytes)
        ops.stage(staged, raw)
        n_blocks = raw.nbytes // block_bytes
        t = ops.threads(256)
        ops.launch("repack_blocks", ((n_blocks + t - 1) // t,), t, staged, out.ptr + done * bulk,
                   out.ptr + n_total * bulk + done * (block_bytes - bulk), n_blocks, block_bytes, at, bulk)
        done += n_blocks
    return out


def q8_launch(ops, n: int, rows: int) -> tuple[tuple[int, int], int]:
    """(grid, block) of the kernels that quantize rows of n values (quantize_q8, swiglu_q8, ...): one
    value per thread in groups of 32 lanes on GPUs, one block of 32 per thread in host emulation."""
    per_thread = 1 if ops.warp >= Q8_BLOCK else Q8_BLOCK
    block = ops.threads(256)
    return ((n // per_thread + block - 1) // block, rows), block


def empty_q8(ops, rows: int, n: int) -> tuple[Any, Any]:
    return ops.empty((rows, n), np.int8), ops.empty((rows, n // Q8_BLOCK, 2))


def quantize(ops, x, ldx: int | None = None) -> tuple[Any, Any]:
    """Rows of x (n_rows, n), ldx apart -> (xq int8 (n_rows, n), xd float32 (n_rows, n / 32, 2))."""
    n = x.shape[-1] if x.ndim == 2 else x.size // x.shape[0]
    rows = x.shape[0]
    xq, xd = empty_q8(ops, rows, n)
    grid, block = q8_launch(ops, n, rows)
    ops.launch("quantize_q8", grid, block, x.ptr, ldx or n, xq.ptr, xd.ptr, n)
    return xq, xd


def lanes_per_row(ops, n_items: int) -> int:
    """The largest power of two <= the row's items, capped at the warp: short rows share a warp."""
    lpr = 1
    while lpr * 2 <= min(n_items, ops.warp):
        lpr *= 2
    return lpr


def bucket(rows: int) -> int:
    return next((c for c in COLUMN_BUCKETS if c >= rows), COLUMN_BUCKETS[-1])


def launch(ops, part, q8: tuple[Any, Any], rows: int, y_ptr: int, ldy: int, bias_ptr: int = 0,
           res_ptr: int = 0, variant: tuple[int, int] | None = None) -> None:
    """y[r, col_off + i] = part[i, :] . x[r, :] (+ bias) (+ res) for every activation row r, with the
    part's tuned kernel variant for this many rows (or `variant`)."""
    qk = SPLIT_TYPES[part.type_name][0]
    n_items = part.n_in // qk * ITEMS_PER_BLOCK[qk]
    lpr = lanes_per_row(ops, n_items)
    block = ops.threads(THREADS)
    nc = bucket(rows)
    r, u = variant or part.mvq.get(nc) or VARIANTS[nc][0]
    per_block = block // lpr * r
    grid = ((part.n_out + per_block - 1) // per_block, (rows + nc - 1) // nc)
    xq, xd = q8
    ops.launch(f"mvq_{part.kernel}_{nc}_r{r}u{u}", grid, block, part.block.ptr, part.n_out, part.n_in, xq.ptr,
               xd.ptr, y_ptr, ldy, bias_ptr, res_ptr, rows, lpr)


NORM_MAX = 4096  # longest activation row mvq_norm_<type> takes (RF_MVQ_NORM_MAX in mmvq.hip)


def launch_norm(ops, part, x, weight, eps: float, y_ptr: int, ldy: int, bias_ptr: int = 0) -> None:
    """y[0, col_off + i] = part[i, :] . rms_norm(x, weight, eps) for one activation row x (n_in f32),
    the norm computed and quantized in every block's prologue (mvq_norm_<type>, variant r1u2)."""
    qk = SPLIT_TYPES[part.type_name][0]
    lpr = lanes_per_row(ops, part.n_in // qk * ITEMS_PER_BLOCK[qk])
    block = ops.threads(THREADS)
    per_block = block // lpr
    ops.launch(f"mvq_norm_{part.kernel}", ((part.n_out + per_block - 1) // per_block,), block, part.block.ptr,
               part.n_out, part.n_in, x.ptr, weight.ptr, float(eps), y_ptr, ldy, bias_ptr, 0, lpr)


def launch_glu(ops, part, gate_up, act: str, y_ptr: int, ldy: int, bias_ptr: int = 0, res_ptr: int = 0) -> None:
    """y[0, col_off + i] = part[i, :] . act(gate) * up (+ bias) (+ res) for one row gate|up (2 n_in f32),
    the activation computed and quantized in every block's prologue (mvq_<swiglu|geglu>_<type>, r1u2)."""
    qk = SPLIT_TYPES[part.type_name][0]
    lpr = lanes_per_row(ops, part.n_in // qk * ITEMS_PER_BLOCK[qk])
    block = ops.threads(THREADS)
    per_block = block // lpr
    ops.launch(f"mvq_{act}_{part.kernel}", ((part.n_out + per_block - 1) // per_block,), block, part.block.ptr,
               part.n_out, part.n_in, gate_up.ptr, y_ptr, ldy, bias_ptr, res_ptr, lpr)


def tune(ops, linears: Sequence[Any], repeats: int = 3, cache: bool = False) -> list[str]:
    """Time every kernel variant of each split weight shape (type, rows, row length) for each row
    bucket, and give every part of that shape the fastest. A variant's time is one pass over all the
    model's weights of that shape (so the bytes come from memory, not the L2 cache), captured as one
    graph (no host launch cost in it), the median of `repeats` replays. Returns one line per shape and
    one with the time tuning took (part of the model's load time). With `cache`, choices made before
    on the same device, kernels and shape are reused from disk (TuningCache) and new ones kept there."""
    t0 = time.perf_counter()
    rt = ops.rt
    shapes: dict[tuple, list] = {}
    for lin in linears:
        for part in lin.parts:
            if part.split:
                shapes.setdefault((part.kernel, part.n_out, part.n_in), []).append(part)
    if not shapes:
        return []
    known = TuningCache(ops) if cache else None
    lines = []
    if known is not None:
        for shape in list(shapes):
            parts = shapes[shape]
            chosen = known.get(shape, len(parts))
            if chosen is not None:
                for part in parts:
                    part.mvq.update(chosen)
                del shapes[shape]
                lines.append(_chosen_line(shape, len(parts), chosen) + " (cached)")
    if not shapes:
        lines.append(f"{len(lines)} shapes from the tuning cache in {(time.perf_counter() - t0) * 1e3:.0f} ms")
        return lines
    rows = COLUMN_BUCKETS[-1]
    n_out = max(k[1] for k in shapes)
    y = ops.empty((rows, n_out))
    acts = {}
    rng = np.random.default_rng(0)
    start, stop = rt.event_create(), rt.event_create()
    try:
        _tune_shapes(ops, shapes, acts, rng, y, n_out, rows, start, stop, repeats, lines)
        if known is not None:
            known.store({(shape, len(parts)): dict(parts[0].mvq) for shape, parts in shapes.items()})
    except Exception as exc:  # a runtime that cannot capture or time this: the defaults, and why
        for parts in shapes.values():
            for part in parts:
                part.mvq.clear()
        lines.append(f"tuning failed, default variants: {type(exc).__name__}: {exc}")
    finally:
        rt.event_destroy(start)
        rt.event_destroy(stop)
    ops.sync()
    lines.append(f"{len(shapes)} shapes tuned in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    return lines


def _chosen_line(shape: tuple, count: int, chosen: dict) -> str:
    kernel, n, k = shape
    return f"{kernel} {n}x{k} (x{count}): " + ", ".join(f"{nc} rows r{r}u{u}" for nc, (r, u) in chosen.items())


class TuningCache:
    """tune's choices on disk (mvq-tuning.json beside the compiled kernels), one entry per device,
    mat-vec source, variant table and weight shape, so a model loaded again skips the timing (~0.25 s
    for an 8B file on an H200). A file that cannot be read or written only costs a new timing."""

    def __init__(self, ops):
        dev = ops.rt.device
        h = hashlib.sha256()
        for part in (ops.rt.name, dev.name, dev.arch, repr(VARIANTS), repr(COLUMN_BUCKETS), kernel_source("mmvq")):
            h.update(str(part).encode())
            h.update(b"\x01")
        self.prefix = h.hexdigest()[:24]
        self.path = cache_dir() / "mvq-tuning.json"

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _key(self, shape: tuple, count: int) -> str:
        kernel, n, k = shape
        return f"{self.prefix}:{kernel}:{n}x{k}:x{count}"

    def get(self, shape: tuple, count: int) -> dict | None:
        entry = self._read().get(self._key(shape, count))
        try:
            chosen = {int(nc): tuple(int(v) for v in rv) for nc, rv in entry.items()}
        except (AttributeError, TypeError, ValueError):
            return None
        if set(chosen) != set(COLUMN_BUCKETS) or any(chosen[nc] not in VARIANTS[nc] for nc in chosen):
            return None
        return chosen

    def store(self, choices: dict) -> None:
        data = self._read()
        for (shape, count), chosen in choices.items():
            if set(chosen) == set(COLUMN_BUCKETS):
                data[self._key(shape, count)] = {str(nc): list(rv) for nc, rv in chosen.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass


def _tune_shapes(ops, shapes, acts, rng, y, n_out, rows, start, stop, repeats, lines) -> None:
    rt = ops.rt
    for (kernel, n, k), parts in shapes.items():
        if k not in acts:
            acts[k] = quantize(ops, ops.upload(rng.standard_normal((rows, k)).astype(np.float32)))
        chosen = {}
        for nc in COLUMN_BUCKETS:
            times = {}
            for variant in VARIANTS[nc]:
                def one_pass():
                    for part in parts:
                        launch(ops, part, acts[k], nc, y.ptr, n_out, variant=variant)
                one_pass()  # loads the kernel before the capture
                rt.capture_begin(ops.stream)
                try:
                    one_pass()
                finally:
                    exe = rt.capture_end(ops.stream)
                samples = []
                for _ in range(repeats):
                    rt.event_record(start, ops.stream)
                    rt.graph_launch(exe, ops.stream)
                    rt.event_record(stop, ops.stream)
                    rt.event_synchronize(stop)
                    samples.append(rt.event_elapsed_ms(start, stop))
                rt.graph_destroy(exe)
                times[variant] = sorted(samples)[len(samples) // 2] / len(parts)
            chosen[nc] = min(times, key=times.get)
            for part in parts:
                part.mvq[nc] = chosen[nc]
        lines.append(_chosen_line((kernel, n, k), len(parts), chosen))
