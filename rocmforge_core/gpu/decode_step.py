"""The decode step as a layer above the GPU ops: capture one step into a graph, then replay it.

Why: for small models the per-op host cost (argument packing, one driver call per kernel) bounds
decode speed, and a replay pays it once per step. A graph bakes in every address it touches, so the
step's inputs live in buffers of its own (int32 tokens | positions | slots, uploaded before each
replay) and the model's forward runs over those device arrays: the ops read every per-step value
from them (a row's attention length is its position + 1). The step also owns the logits buffer,
downloaded after each replay. One graph per model, cache and batch size, kept by the cache (it
writes the cache's addresses, so it dies with it). Prefill keeps the op-by-op path, as does any step
whose capture fails (ops.graph_failures says why).

Greedy steps run one ahead. The argmax of a greedy step is written straight into the graph's token
input, so the step after it (same slots, positions + 1) can be queued on the device before the host
has even read this step's ids: while the engine streams a token, the GPU already computes the next.
When the engine's next call is exactly that step, it only waits for it; anything else (another
batch, other tokens, any other launch on the stream) drops the speculation. Sampled steps run one
ahead the same way when the caller gives the next step's sampling table (its uniform draws made in
advance: the engine keeps a dropped step's draws for the real one) and, with penalties, the next
step's history window with its newest id left pending (filled on the device from this step's draw).
A dropped step wrote the keys and values of one position past each sequence's end, which no
attention reads before the real step at that position writes them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rocmforge_core.gpu.memory import BufferPool, DeviceArray
from rocmforge_core.gpu.runtime import PinnedArray
from rocmforge_core.sampler import WINDOW_PENDING


def run(ops, model, tokens: np.ndarray, cache, slots: np.ndarray, positions: np.ndarray,
        greedy: bool = False, sample: np.ndarray | None = None, penalties=None,
        next_sample: np.ndarray | None = None, next_penalties=None) -> np.ndarray:
    """One checked decode step of `model` on `cache`: a replay, or the first run and its capture.
    Returns the logits, or with `greedy` each row's argmax token id, or with a `sample` table each
    row's token drawn on the device after the `penalties` if any (ops.penalize; only the ids are
    downloaded); `next_sample` (and `next_penalties`, its window's newest ids sampler.WINDOW_PENDING):
    the table of the step after this one, which is then queued ahead."""
    key = (id(model), len(tokens))

    def host_logits(logits):
        if sample is not None:
            return ops.sample_rows(ops.upload(np.ascontiguousarray(logits, np.float32)), sample, penalties)
        return np.argmax(logits, axis=-1).astype(np.int64) if greedy else logits

    if key not in cache.graphs:
        return host_logits(_capture(ops, model, key, tokens, cache, slots, positions))
    graph = cache.graphs[key]
    if graph is None:  # capture failed once for this step: op by op from now on
        return host_logits(model.forward_decode(tokens, cache, slots, positions))
    if sample is not None:
        return graph.step_sample(tokens, slots, positions, sample, penalties, next_sample, cache.n_ctx,
                                 next_penalties)
    if greedy:
        return graph.step_greedy(tokens, slots, positions, cache.n_ctx)
    return graph.replay(tokens, slots, positions)


def _capture(ops, model, key, tokens, cache, slots, positions) -> np.ndarray:
    """Run this step op by op through a new graph's pool and inputs (allocating everything the step
    needs, and giving this step's logits), then capture the same sequence for replays. Capturing
    runs nothing, so the cache holds exactly what this step wrote."""
    graph = DecodeGraph(ops, model, cache, len(tokens))
    try:
        out = graph.warm_up(tokens, cache, slots, positions)
    except Exception:
        graph.close()
        raise
    try:
        graph.capture(cache)
        cache.graphs[key] = graph
    except Exception as exc:  # a runtime that cannot capture this: keep the op-by-op path
        ops.graph_failures.append(f"{type(exc).__name__}: {exc}")
        graph.close()
        cache.graphs[key] = None
    return out


class DecodeGraph:
    """One captured decode step of `batch` rows for one model and cache.

    Everything the captured kernels touch stays allocated at a fixed address until `close`: the
    weights and the rope tables (referenced here), the cache (the owner of this object), the step's
    inputs, its logits and every intermediate (this graph's own pool, never shared with the op-by-op
    path).
    """

    def __init__(self, ops, model: Any, cache, batch: int):
        self.ops, self.model, self.batch = ops, model, batch
        # Tables for every position the cache can hold, so no capture ever needs a larger one.
        self.keep = ops.reserve_rope(set(model.args.ropes), cache.n_ctx)
        self.pool = BufferPool(ops.rt, ops.stream)
        block = self.pool.get(3 * batch * 4)
        self.inputs = block
        i32 = np.dtype(np.int32)
        self.tokens = DeviceArray(ops, block.ptr, (batch,), i32, block)
        self.positions = DeviceArray(ops, block.ptr + 4 * batch, (batch,), i32, block)
        self.slots = DeviceArray(ops, block.ptr + 8 * batch, (batch,), i32, block)
        logits = self.pool.get(4 * batch * model.args.vocab_size)
        self.logits = DeviceArray(ops, logits.ptr, (batch, model.args.vocab_size), block=logits)
        self.exe: Any = None
        # Greedy steps: page-locked inputs (two, alternating: one may still be read by a queued copy)
        # and ids, one event per queued step, and the step queued ahead (see the module docstring).
        self.pinned_in = [PinnedArray(ops.rt, (3 * batch,), np.int32) for _ in range(2)]
        self.pinned_ids = [PinnedArray(ops.rt, (batch,), np.int32) for _ in range(2)]
        # Sampled steps: their tables (B, 5) the same way, pinned and on the device, one per turn.
        self.pinned_table = [PinnedArray(ops.rt, (batch, 5), np.float32) for _ in range(2)]
        table_block = self.pool.get(2 * batch * 5 * 4)
        self.tables = [DeviceArray(ops, table_block.ptr + t * batch * 20, (batch, 5), block=table_block)
                       for t in range(2)]
        self.events = [ops.rt.event_create() for _ in range(2)]
        self.turn = 0
        # (slots, positions, launch count, turn, sampling table or None for greedy, penalties or None)
        # of the queued step
        self.ahead: tuple | None = None
        self.served_ahead = 0  # steps that were already queued when asked for

    def warm_up(self, tokens, cache, slots, positions) -> np.ndarray:
        host = self._upload_inputs(tokens, slots, positions)
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
            self.exe = rt.capture_end(stream)  # always leave capture mode

    def replay(self, tokens, slots, positions) -> np.ndarray:
        self.drop_ahead()
        host = self._upload_inputs(tokens, slots, positions)
        self.ops.launches += 1
        self.ops.rt.graph_launch(self.exe, self.ops.stream)
        out = self._download_logits()
        del host
        return out

    def step_sample(self, tokens, slots, positions, table: np.ndarray, penalties=None,
                    next_table: np.ndarray | None = None, n_ctx: int = 0, next_penalties=None) -> np.ndarray:
        """This step's tokens drawn on the device (ops.sample_into over the step's logits, soft-capped
        there first where the model caps them, then penalized if asked): only B int32 come back. With
        `next_table` (and, when this step has penalties, `next_penalties`: the next window, its newest
        ids pending), the step after it is queued behind it, as step_greedy does."""
        slots, positions = np.asarray(slots), np.asarray(positions)
        table = np.ascontiguousarray(table, np.float32)
        ahead, self.ahead = self.ahead, None
        if (ahead is not None and ahead[4] is not None and np.array_equal(ahead[4], table)
                and self._is_ahead(ahead, tokens, slots, positions)
                and self._same_penalties(ahead[5], penalties, tokens)):
            turn = ahead[3]
            self.served_ahead += 1
        else:
            if ahead is not None:
                self.ops.rt.event_synchronize(self.events[ahead[3]])
            turn = self._queue(slots, positions, tokens, table, penalties)
        if next_table is not None and (penalties is None or next_penalties is not None) \
                and int(positions.max()) + 1 < n_ctx:
            next_table = np.ascontiguousarray(next_table, np.float32)
            queued = self._queue(slots, positions + 1, None, next_table, next_penalties, pending=True)
            self.ahead = (slots, positions + 1, self.ops.launches, queued, next_table, next_penalties)
        self.ops.rt.event_synchronize(self.events[turn])
        return self.pinned_ids[turn].array.astype(np.int64)

    @staticmethod
    def _same_penalties(queued, penalties, tokens) -> bool:
        """Did the queued step penalize exactly as `penalties` asks, its pending ids being `tokens`?"""
        if queued is None or penalties is None:
            return queued is None and penalties is None
        (q_window, q_pen), (window, pen) = queued, penalties
        if np.shape(q_window) != np.shape(window) or not np.array_equal(q_pen, pen):
            return False
        filled = np.where(q_window == WINDOW_PENDING, np.asarray(tokens).reshape(-1, 1), q_window)
        return np.array_equal(filled, window)

    def step_greedy(self, tokens, slots, positions, n_ctx: int) -> np.ndarray:
        """This step's argmax ids (only B int32 come back), with the next step queued behind it. (The
        logit soft-cap is monotonic, so the raw logits' argmax is the capped one's.)"""
        slots, positions = np.asarray(slots), np.asarray(positions)
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead[4] is None and self._is_ahead(ahead, tokens, slots, positions):
            turn = ahead[3]
            self.served_ahead += 1
        else:
            if ahead is not None:
                self.ops.rt.event_synchronize(self.events[ahead[3]])  # its pinned buffers are free again
            turn = self._queue(slots, positions, tokens)
        if int(positions.max()) + 1 < n_ctx:
            queued = self._queue(slots, positions + 1, None)
            self.ahead = (slots, positions + 1, self.ops.launches, queued, None, None)
        self.ops.rt.event_synchronize(self.events[turn])
        return self.pinned_ids[turn].array.astype(np.int64)

    def _is_ahead(self, ahead, tokens, slots, positions) -> bool:
        """Is the queued step exactly this call (nothing else launched since, same inputs)?"""
        a_slots, a_positions, launches, turn = ahead[:4]
        if launches != self.ops.launches:
            return False
        same = np.array_equal(a_slots, slots) and np.array_equal(a_positions, positions)
        # its tokens are the argmax of the step before it, whose ids sit in the other pinned buffer
        return same and np.array_equal(self.pinned_ids[turn ^ 1].array, np.asarray(tokens))

    def _queue(self, slots, positions, tokens, table: np.ndarray | None = None, penalties=None,
               pending: bool = False) -> int:
        """Queue one step: inputs up (tokens too unless they are the last step's ids, already in place on
        the device), replay, the argmax (or with a sampling `table` the device draw, after the soft-cap
        and the penalties if any; with `pending`, their windows' pending ids are the step's input
        tokens) into the token input, ids down, an event. -> its turn"""
        ops, turn = self.ops, self.turn
        self.turn ^= 1
        b = self.batch
        host = self.pinned_in[turn].array
        host[b:2 * b], host[2 * b:] = positions, slots
        if tokens is None:
            ops.rt.copy_htod(self.inputs.ptr + 4 * b, host[b:], 8 * b, ops.stream)
        else:
            host[:b] = tokens
            ops.rt.copy_htod(self.inputs.ptr, host, 12 * b, ops.stream)
        ops.launches += 1
        ops.rt.graph_launch(self.exe, ops.stream)
        if table is None:
            ops.argmax_into(self.logits, self.tokens)
        else:
            logits = self.logits
            cap = self.model.args.final_softcap
            if cap:
                logits = ops.softcap(logits, cap)
            if penalties is not None:  # in place: the next replay writes the logits anew
                ops.penalize(logits, penalties, self.tokens if pending else None)
            self.pinned_table[turn].array[:] = table
            ops.rt.copy_htod(self.tables[turn].ptr, self.pinned_table[turn].array, table.nbytes, ops.stream)
            ops.sample_into(logits, self.tables[turn], self.tokens)  # the token input is free until the next step
        ops.rt.copy_dtoh(self.pinned_ids[turn].array, self.tokens.ptr, 4 * b, ops.stream)
        ops.rt.event_record(self.events[turn], ops.stream)
        return turn

    def _forward(self, cache, capturing: bool) -> None:
        """The model's decode forward over the step's device inputs, drawing memory from its pool."""
        with self.ops.step_scope(self.pool, self.logits, capturing):
            self.model.forward_decode(self.tokens, cache, self.slots, self.positions)

    def _upload_inputs(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Queue the step's inputs; returns the host array, which must live until the next sync."""
        host = np.concatenate([tokens, positions, slots]).astype(np.int32)
        self.ops.rt.copy_htod(self.inputs.ptr, host, host.nbytes, self.ops.stream)
        return host

    def _download_logits(self) -> np.ndarray:
        """The step's logits on the host, softcapped exactly as the op-by-op path does (on the host)."""
        ops = self.ops
        out = np.empty(self.logits.shape, dtype=np.float32)
        ops.rt.copy_dtoh(out, self.logits.ptr, out.nbytes, ops.stream)
        ops.sync()
        cap = self.model.args.final_softcap
        return ops.softcap(out, cap) if cap else out

    def drop_ahead(self) -> None:
        """Forget the queued greedy step (waiting for it first: it still reads our pinned inputs)."""
        if self.ahead is not None:
            self.ops.rt.event_synchronize(self.events[self.ahead[3]])
            self.ahead = None

    def close(self) -> None:
        self.drop_ahead()
        for p in self.pinned_in + self.pinned_ids + self.pinned_table:
            p.close()
        for e in self.events:
            self.ops.rt.event_destroy(e)
        self.pinned_in, self.pinned_ids, self.pinned_table, self.events = [], [], [], []
        if self.exe is not None:
            exe, self.exe = self.exe, None
            self.ops.rt.synchronize()
            self.ops.rt.graph_destroy(exe)
        self.logits = self.tokens = self.positions = self.slots = None
        self.inputs = None
        self.pool.close()
