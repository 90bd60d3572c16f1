"""Prompt chunks through captured graphs, for models whose chunk is bound by the host's launches.

A 512-token chunk of a 135M model is ~420 kernel launches: ~7 ms of Python against ~7 ms of device
work, so the host sets the pace. Replaying a captured chunk pays that once. As with the decode step
(gpu/decode_step.py), a graph bakes in every address: the chunk's inputs live in buffers of its own
(int32 tokens | positions | slots, one entry per row, uploaded before each replay) and the forward runs
over those device arrays; the rows belong to one sequence (ops.one_sequence), so the prompt attention
still takes the flash-attention tiles, reading each row's slot and position from the buffers. Only
chunks of the lengths in ops.prefill_graph_rows get a graph (the engine's full chunks); the others, and
any chunk whose capture fails, run op by op. One graph per model, cache and length, kept by the cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rocmforge_core.gpu.memory import BufferPool, DeviceArray


def run(ops, model, tokens: np.ndarray, cache, slot: int, start: int) -> np.ndarray | None:
    """The last position's logits (vocab,) of a checked prompt chunk through its graph (capturing it
    the first time), or None where this chunk runs op by op."""
    n = len(tokens)
    if n not in ops.prefill_graph_rows:
        return None
    key = (id(model), n)
    graphs = cache.prefill_graphs
    if key not in graphs:
        graph = PrefillGraph(ops, model, cache, n)
        try:
            out = graph.warm_up(tokens, cache, slot, start)
        except Exception:
            graph.close()
            raise
        try:
            graph.capture(cache)
            graphs[key] = graph
        except Exception as exc:  # a runtime that cannot capture this: the op-by-op path from now on
            ops.graph_failures.append(f"prefill: {type(exc).__name__}: {exc}")
            graph.close()
            graphs[key] = None
        return out
    graph = graphs[key]
    return None if graph is None else graph.replay(tokens, slot, start)


class PrefillGraph:
    """One captured prompt chunk of `rows` tokens for one model and cache (see the module docstring)."""

    def __init__(self, ops, model: Any, cache, rows: int):
        self.ops, self.model, self.rows = ops, model, rows
        self.keep = ops.reserve_rope(set(model.args.ropes), cache.n_ctx)
        self.pool = BufferPool(ops.rt, ops.stream)
        block = self.pool.get(3 * rows * 4)
        self.inputs = block
        i32 = np.dtype(np.int32)
        self.tokens = DeviceArray(ops, block.ptr, (rows,), i32, block)
        self.positions = DeviceArray(ops, block.ptr + 4 * rows, (rows,), i32, block)
        self.slots = DeviceArray(ops, block.ptr + 8 * rows, (rows,), i32, block)
        logits = self.pool.get(4 * model.args.vocab_size)
        self.logits = DeviceArray(ops, logits.ptr, (1, model.args.vocab_size), block=logits)
        self.exe: Any = None

    def warm_up(self, tokens, cache, slot: int, start: int) -> np.ndarray:
        host = self._upload_inputs(tokens, slot, start)
        self._forward(cache, capturing=False)
        out = self._download_logits()  # synchronises: `host` was read by then
        del host
        return out

    def capture(self, cache) -> None:
        rt, stream = self.ops.rt, self.ops.stream
        rt.capture_begin(stream)
        try:
            self._forward(cache, capturing=True)
        finally:
            self.exe = rt.capture_end(stream)

    def replay(self, tokens, slot: int, start: int) -> np.ndarray:
        host = self._upload_inputs(tokens, slot, start)
        self.ops.launches += 1
        self.ops.rt.graph_launch(self.exe, self.ops.stream)
        out = self._download_logits()
        del host
        return out

    def _forward(self, cache, capturing: bool) -> None:
        ops, n = self.ops, self.rows
        with ops.step_scope(self.pool, self.logits, capturing), ops.one_sequence():
            self.model._forward(self.tokens, self.positions, cache, self.slots, self.positions, [1] * n,
                                np.array([n - 1]))

    def _upload_inputs(self, tokens, slot: int, start: int) -> np.ndarray:
        n = self.rows
        host = np.concatenate([np.asarray(tokens), np.arange(start, start + n), np.full(n, slot)]).astype(np.int32)
        self.ops.rt.copy_htod(self.inputs.ptr, host, host.nbytes, self.ops.stream)
        return host

    def _download_logits(self) -> np.ndarray:
        ops = self.ops
        out = np.empty(self.logits.shape, dtype=np.float32)
        ops.rt.copy_dtoh(out, self.logits.ptr, out.nbytes, ops.stream)
        ops.sync()
        cap = self.model.args.final_softcap
        return (ops.softcap(out, cap) if cap else out)[0]

    def close(self) -> None:
        if self.exe is not None:
            exe, self.exe = self.exe, None
            self.ops.rt.synchronize()
            self.ops.rt.graph_destroy(exe)
        self.logits = self.tokens = self.positions = self.slots = None
        self.inputs = None
        self.pool.close()
