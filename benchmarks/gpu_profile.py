"""Where a GPU decode step's time goes: each mat-vec at a model's shapes (GB/s against the copy
bandwidth), the captured step's replay alone, and the whole token (replay + logits + host sampling).

    python benchmarks/gpu_profile.py MODEL.gguf [--backend cuda] [--steps 64]

Weights of each timed mat-vec are rotated over enough copies to exceed the L2 cache, so the numbers
are DRAM streaming rates, not cache hits. Event-timed medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

L2_BYTES = 64 << 20


def event_ms(ops, fn, reps: int = 30) -> float:
    rt = ops.rt
    start, stop = rt.event_create(), rt.event_create()
    fn()
    times = []
    for _ in range(reps):
        rt.event_record(start, ops.stream)
        fn()
        rt.event_record(stop, ops.stream)
        rt.event_synchronize(stop)
        times.append(rt.event_elapsed_ms(start, stop))
    return statistics.median(times)


def graph_ms(ops, fn, n: int = 20) -> float:
    """Device time of one fn() call: n calls captured into a graph, replayed, divided by n (no host
    launch cost in the number, as inside the decode step's own graph)."""
    rt = ops.rt
    rt.capture_begin(ops.stream)
    try:
        for _ in range(n):
            fn()
    finally:
        exe = rt.capture_end(ops.stream)
    ms = event_ms(ops, lambda: rt.graph_launch(exe, ops.stream), reps=10) / n
    rt.graph_destroy(exe)
    return ms


def matvec_rates(ops, model, rows: int = 1) -> list[str]:
    """Device time of each projection (and the output) on `rows` activation rows (x already quantized;
    the weight bytes over the time is the streaming rate a decode step of `rows` sequences sees)."""
    w = model.weights
    layer = w.layers[0]
    lines = []
    for name, lin in (("qkv", layer.qkv), ("wo", layer.wo), ("gate_up", layer.gate_up), ("down", layer.down),
                      ("output", w.output)):
        nbytes = sum(p.row_bytes * p.n_out for p in lin.parts)
        x = ops.upload(np.random.default_rng(0).standard_normal((rows, lin.n_in)).astype(np.float32))
        if any(p.split for p in lin.parts):
            from rocmforge_core.gpu import mvq
            x.q8 = mvq.quantize(ops, x)
        y = ops.empty((rows, lin.n_out))
        # the layers' own copies of this projection rotate the weights past the L2
        layers = [getattr(l, name) for l in w.layers] if name != "output" else [lin]
        need = max(1, min(len(layers), -(-2 * L2_BYTES // nbytes)))
        copies = layers[:need]
        state = {"i": 0}

        def one():
            ops.matmul_into(x, copies[state["i"] % len(copies)], y)
            state["i"] += 1
        ms = graph_ms(ops, one)
        kinds = ",".join(sorted({p.kernel + ("/q8" if p.split else "") for p in lin.parts}))
        lines.append(f"{name:8s} {lin.n_out:6d}x{lin.n_in:<6d} rows {rows} {kinds:12s} {nbytes / 1e6:8.1f} MB "
                     f"{ms * 1e3:8.1f} us {nbytes / ms / 1e6:7.0f} GB/s")
    return lines


def prefill_rates(ops, model, rows: int) -> list[str]:
    """Device time of each projection of layer 0 on `rows` activation rows (a prompt chunk), with the
    rate in TFLOP/s (2 n_out n_in rows flops) and the whole chunk's
    matrix time summed over the layers."""
    w = model.weights
    layer = w.layers[0]
    lines, total = [], 0.0
    for name, lin in (("qkv", layer.qkv), ("wo", layer.wo), ("gate_up", layer.gate_up), ("down", layer.down),
                      ("output", w.output)):
        x = ops.upload(np.random.default_rng(0).standard_normal((rows, lin.n_in)).astype(np.float32))
        y = ops.empty((rows, lin.n_out))
        ms = event_ms(ops, lambda: ops.matmul_into(x, lin, y), reps=10)
        total += ms * (len(w.layers) if name != "output" else 1)
        flops = 2.0 * lin.n_out * lin.n_in * rows
        lines.append(f"{name:8s} {lin.n_out:6d}x{lin.n_in:<6d} rows {rows}: {ms * 1e3:9.1f} us "
                     f"{flops / ms / 1e9:7.1f} TFLOP/s")
    lines.append(f"all projections of a {rows}-row chunk: {total:.2f} ms ({rows / total * 1e3:.0f} tok/s "
                 f"if nothing else ran)")
    return lines


def replay_at_depths(ops, model, pairs: str, rows: int = 1) -> list[str]:
    """The captured step's device time after `depth` cached tokens in a cache of `n_ctx` positions,
    for each DEPTH:N_CTX pair, `rows` sequences per step: what a long context adds to a token, what a
    cache's size alone adds (its attention splits), and what a batch costs over one sequence."""
    lines = []
    for pair in pairs.split(","):
        depth, n_ctx = (int(v) for v in pair.split(":"))
        cache = model.make_cache(rows, n_ctx)
        for slot in range(rows):
            for start in range(0, depth, 2048):  # the prompt in chunks, as the engine feeds it
                model.prefill([7] * min(2048, depth - start), cache, slot, start)
        tok, slots = np.full(rows, 5), np.arange(rows)
        for pos in range(depth, depth + 3):  # capture + warm
            model.decode(tok, cache, slots, np.full(rows, pos))
        graph = next(g for g in cache.graphs.values() if g is not None)
        graph._upload_inputs(tok, slots, np.full(rows, depth + 3))
        ms = event_ms(ops, lambda: ops.rt.graph_launch(graph.exe, ops.stream), reps=20)
        t0 = time.perf_counter()
        for i in range(8):
            model.decode_greedy(tok, cache, slots, np.full(rows, depth + 3 + i))
        whole = (time.perf_counter() - t0) / 8 * 1e3
        lines.append(f"rows {rows} depth {depth:6d} n_ctx {n_ctx:6d}: step replay {ms:.3f} ms, "
                     f"decode_greedy {whole:.3f} ms; graph failures {ops.graph_failures[-2:]}")
        del cache
    return lines


def finite_after(ops, model, depth: int) -> tuple[bool, str]:
    """Prefill `depth` random tokens in the engine's chunks, then decode 3 steps: are every cached
    key and value and every logit finite? (A synthetic model's activations can leave f16's range; a
    kernel that overflows shows here long before any benchmark number looks wrong.)"""
    from rocmforge_core.engine import PREFILL_CHUNK

    cache = model.make_cache(1, depth + 8)
    toks = np.random.default_rng(1).integers(0, model.args.vocab_size, depth).tolist()
    ok = True
    for lo in range(0, depth, PREFILL_CHUNK):
        ok &= bool(np.isfinite(model.prefill(toks[lo:lo + PREFILL_CHUNK], cache, 0, lo)).all())
    worst = 0.0
    for layer in range(model.args.n_layers):
        for part in (cache.keys(layer, 0, 0, depth), cache.values(layer, 0, 0, depth)):
            part = part.astype(np.float32)
            ok &= bool(np.isfinite(part).all())
            worst = max(worst, float(np.nanmax(np.abs(part))))
    for step in range(3):
        ok &= bool(np.isfinite(model.decode(np.array([5]), cache, np.array([0]), np.array([depth + step]))).all())
    return ok, (f"{depth} prompt tokens + 3 decode steps: logits and cache "
                f"{'all finite' if ok else 'NOT FINITE'}; largest |K|,|V| {worst:.3g}")


def step_times(ops, model, steps: int) -> list[str]:
    cache = model.make_cache(1, 512)
    model.prefill([1, 2, 3, 4], cache, 0, 0)
    pos = 4
    tok = np.array([5])
    for _ in range(3):  # capture + warm
        model.decode(tok, cache, np.array([0]), np.array([pos]))
        pos += 1
    graph = next(g for g in cache.graphs.values() if g is not None)
    graph._upload_inputs(tok, np.array([0]), np.array([pos]))
    replay_ms = event_ms(ops, lambda: ops.rt.graph_launch(graph.exe, ops.stream), reps=20)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model.decode(tok, cache, np.array([0]), np.array([pos]))
        tok = np.array([int(np.argmax(logits[0]))])
        pos = 4 + (pos - 3) % 400
    whole = (time.perf_counter() - t0) / steps * 1e3
    return [f"graph replay alone {replay_ms:.3f} ms; decode + download + argmax per token {whole:.3f} ms"
            f" ({1e3 / whole:.0f} tok/s)"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--matvec-only", action="store_true", help="only the mat-vec rates")
    ap.add_argument("--lanes", type=int, help="cap the int8 mat-vec's lanes per row (an experiment)")
    ap.add_argument("--threads", type=int, help="the int8 mat-vec's block size (an experiment)")
    ap.add_argument("--profile-depth", type=int, default=64, help="cached tokens before --profile-step's step")
    ap.add_argument("--rows", default="1", help="sequences per step for --depths, --matvec-only (a comma "
                    "list: each in turn) and --profile-step (the first)")
    ap.add_argument("--profile-step", action="store_true",
                    help="after warm-up, one op-by-op decode step between cuProfilerStart/Stop (for ncu "
                         "--profile-from-start off)")
    ap.add_argument("--profile-matvec", action="store_true", help="one gate/up mat-vec for ncu")
    ap.add_argument("--prefill", type=int, metavar="ROWS", help="only the projections' rates on ROWS rows")
    ap.add_argument("--depths", metavar="D:N,...", help="only the step's replay time after D cached tokens "
                    "in a cache of N positions, per pair (e.g. 64:576,64:4160,4096:4160)")
    ap.add_argument("--profile-prefill", type=int, metavar="ROWS", help="one gate/up product on ROWS rows for ncu")
    ap.add_argument("--check-finite", type=int, metavar="DEPTH",
                    help="only: are the cache and logits finite after a DEPTH-token prompt? (exit 1 if not)")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    from rocmforge_core.backends.gpu import make_ops
    from rocmforge_core.gguf_file import GGUFFile
    from rocmforge_core.models import load_model

    from rocmforge_core.gpu import mvq

    if args.lanes:
        full = mvq.lanes_per_row
        mvq.lanes_per_row = lambda ops, n_items: min(args.lanes, full(ops, n_items))
    if args.threads:
        mvq.THREADS = args.threads
    ops = make_ops(args.backend)
    t0 = time.perf_counter()
    model = load_model(GGUFFile(args.model), ops)
    ops.sync()
    load_s = time.perf_counter() - t0
    tensor_bytes = sum(t.n_bytes for t in GGUFFile(args.model).tensors.values())
    print(f"{Path(args.model).name}: loaded in {load_s:.2f} s on {ops.device.name}; device memory for the "
          f"weights {ops.pool.allocated / 1e9:.3f} GB = {ops.pool.allocated / tensor_bytes:.4f}x the file's "
          f"tensor bytes ({tensor_bytes / 1e9:.3f} GB)")
    for line in ops.matvec_tuning:
        print(f"mat-vec variant: {line}")
    if args.profile_step:
        return profile_one_step(ops, model, args.profile_depth, rows[0])
    if args.profile_matvec:
        return profile_one_matvec(ops, model)
    if args.profile_prefill:
        return profile_one_prefill(ops, model, args.profile_prefill)
    if args.check_finite:
        ok, line = finite_after(ops, model, args.check_finite)
        print(line, flush=True)
        raise SystemExit(0 if ok else 1)
    if args.matvec_only or args.depths:  # either or both, for each row count
        for r in rows:
            for line in (matvec_rates(ops, model, r) if args.matvec_only else []) + (
                    replay_at_depths(ops, model, args.depths, r) if args.depths else []):
                print(line, flush=True)
        return
    if args.prefill:
        for line in prefill_rates(ops, model, args.prefill):
            print(line, flush=True)
        return
    for line in matvec_rates(ops, model) + step_times(ops, model, args.steps):
        print(line, flush=True)


def profile_one_matvec(ops, model) -> None:
    """One gate/up mat-vec of layer 1 between cuProfilerStart/Stop (for ncu's per-kernel sections)."""
    from cuda.bindings import driver

    lin = model.weights.layers[1].gate_up
    x = ops.upload(np.random.default_rng(0).standard_normal((1, lin.n_in)).astype(np.float32))
    y = ops.empty((1, lin.n_out))
    ops.matmul_into(x, lin, y)
    ops.sync()
    driver.cuProfilerStart()
    ops.matmul_into(x, lin, y)
    ops.sync()
    driver.cuProfilerStop()


def profile_one_prefill(ops, model, rows: int) -> None:
    """One gate/up product of layer 1 on `rows` activation rows between cuProfilerStart/Stop (ncu)."""
    from cuda.bindings import driver

    lin = model.weights.layers[1].gate_up
    x = ops.upload(np.random.default_rng(0).standard_normal((rows, lin.n_in)).astype(np.float32))
    y = ops.empty((rows, lin.n_out))
    ops.matmul_into(x, lin, y)
    ops.sync()
    driver.cuProfilerStart()
    ops.matmul_into(x, lin, y)
    ops.sync()
    driver.cuProfilerStop()


def profile_one_step(ops, model, depth: int = 64, rows: int = 1) -> None:
    """One op-by-op decode step of `rows` sequences after `depth` cached tokens each, between
    cuProfilerStart/Stop (ncu)."""
    from cuda.bindings import driver

    cache = model.make_cache(rows, max(512, depth + 64))
    for slot in range(rows):
        for start in range(0, depth, 2048):
            model.prefill([7] * min(2048, depth - start), cache, slot, start)
    ops.use_graphs = False
    tok, slots = np.full(rows, 5), np.arange(rows)
    model.decode(tok, cache, slots, np.full(rows, depth))
    ops.sync()
    driver.cuProfilerStart()
    model.decode(tok, cache, slots, np.full(rows, depth + 1))
    ops.sync()
    driver.cuProfilerStop()


if __name__ == "__main__":
    main()
