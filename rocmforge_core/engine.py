"""The inference engine: one background asyncio loop that owns the model and serves every front end.

Contract (SPEC.md, "Engine contract"): front ends get an engine only from `create_engine`; they
`await engine.start()` before accepting input, and `start()` returns only once the loop task is running;
`submit()` returns an async stream of events; closing the stream cancels the request and frees its KV
slot; model compute runs on one worker thread so the event loop stays responsive; `stop()` cancels what
is in flight, joins the loop task and the worker thread, and frees the cache. Requests that are active
together are decoded as one batch per step (continuous batching).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

import numpy as np

from rocmforge_core import context, footprint
from rocmforge_core.context import DEFAULT_CAP as DEFAULT_CTX  # noqa: F401  (context.py picks n_ctx)
from rocmforge_core.errors import BadInputError, RocmforgeError
from rocmforge_core.sampler import WINDOW_PENDING, Sampler, SamplingParams, token_logprobs
from rocmforge_core.stops import StopMatcher
from rocmforge_core.validate import check_int

PREFILL_CHUNK = 512  # tokens per prefill batch, like llama.cpp's default micro-batch
# stop() and a cancel wait for the unit of prefill work in flight. On the CPU a 512-token chunk run
# through every layer deep into a long prompt takes seconds, so a CPU prompt runs layer-major: a chunk
# of up to 512 tokens goes through a few layers per unit (Decoder.prefill_layers), and a unit never
# holds more token-layers than CPU_PREFILL_CHUNK tokens through the whole model (tests/test_engine.py
# holds the CPU to that). Each weight then serves the whole chunk at once: the packed backend
# dequantizes it once per 512 tokens, where 64-token chunks through all layers dequantized it eight
# times (~0.75x llama.cpp's pp512; BENCHMARKS.md, packed CPU). See prefill_shape.
CPU_PREFILL_CHUNK = 64
DEVICE_SAMPLE_MAX_K = 256  # the largest top_k a backend's device sampler takes (gpu.SAMPLE_MAX_K)
DEVICE_PENALTY_WINDOW = 1024  # longest penalty window (repeat_last_n, or the history for -1) it takes


def prefill_shape(backend: str, numerics: str, n_layers: int) -> tuple[int, int | None]:
    """(tokens per prefill chunk, token-layers per unit of work: None = a whole chunk per unit)."""
    if backend != "cpu":
        return PREFILL_CHUNK, None  # a GPU runs a 512-token chunk through every layer in ms
    budget = CPU_PREFILL_CHUNK * n_layers  # one 64-token chunk's worth
    # llama.cpp numerics reproduce llama.cpp's 512-token batches, whatever the unit
    return (PREFILL_CHUNK if numerics == "llama.cpp" else min(PREFILL_CHUNK, budget)), budget


class EngineBusyError(RocmforgeError):
    """The request queue is full: the caller should retry later."""


class ContextOverflowError(BadInputError):
    """A prompt (or a conversation) that does not fit the context window."""

    def __init__(self, n_tokens: int, n_ctx: int, message: str | None = None, hint: str | None = None):
        super().__init__(
            message or f"the prompt is {n_tokens} tokens, but the context holds {n_ctx}",
            hint=hint or f"shorten it by at least {n_tokens - n_ctx + 1} tokens, /clear the chat or raise --ctx")
        self.n_tokens, self.n_ctx = n_tokens, n_ctx


class EngineStateError(RocmforgeError):
    """submit() before start() or after stop()."""


@dataclass
class Request:
    """One generation request. Exactly one of prompt (raw text), messages (chat) or tokens is given."""

    prompt: str | None = None
    messages: Sequence[Mapping[str, str]] | None = None
    tokens: Sequence[int] | None = None
    max_tokens: int = 512
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # benchmarks decode a fixed count
    session: "ChatSession | None" = None  # keep the KV cache between the turns of one conversation
    logprobs: int | None = None  # report each token's logprob and this many top alternatives (None: off)
    # Reuse what a free slot's KV cache holds of this prompt's beginning (llama-server's cache_prompt);
    # False prefills it all (benchmarks measuring a cold prompt). Sessions always reuse theirs.
    cache_prompt: bool = True


class ChatSession:
    """A conversation that owns one KV-cache slot between turns, so a new turn prefills only new tokens.

    `cached` lists the tokens whose keys and values sit in the slot, in order. Get one from
    `engine.open_session()`; `close()` gives the slot back.
    """

    def __init__(self, engine: "Engine", slot: int):
        self._engine = engine
        self.slot = slot
        self.cached: list[int] = []
        self.closed = False
        self.busy = False

    def reset(self) -> None:
        """Forget the cached tokens (e.g. after /clear); the slot stays ours."""
        self.cached = []

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # An idle session's tokens stay usable: a later request that starts the same way reuses them.
            self._engine._release_slot(self.slot, () if self.busy else self.cached)


@dataclass
class Timings:
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    gen_ms: float = 0.0
    reused_tokens: int = 0  # prompt tokens found already in a session's KV cache (not prefilled)

    @property
    def prompt_tokens_per_s(self) -> float:
        """Prefill speed over the tokens actually computed (a session's cached prefix is free)."""
        computed = self.prompt_tokens - self.reused_tokens
        return computed / (self.prompt_ms / 1e3) if self.prompt_ms > 0 else 0.0

    @property
    def gen_tokens_per_s(self) -> float:
        # the first token comes from the prefill; the rest are decode steps
        steps = max(self.completion_tokens - 1, 0)
        return steps / (self.gen_ms / 1e3) if self.gen_ms > 0 and steps else 0.0


@dataclass
class Event:
    """One streamed event: a text delta with its token, or the final event with a finish reason."""

    text: str = ""
    token_id: int | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    timings: Timings | None = None
    error: str | None = None
    logprob: float | None = None  # with Request.logprobs: the token's log-probability (see token_logprobs)
    top_logprobs: list[tuple[int, float]] | None = None  # the best alternatives, (id, logprob), best first


class RequestStream:
    """Async iterator over a request's events. Closing it (or leaving `async with`) cancels the request."""

    def __init__(self, state: "_Active"):
        self._state = state

    @property
    def prompt_tokens(self) -> list[int]:
        return list(self._state.prompt)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> Event:
        if self._state.finished_delivered:
            raise StopAsyncIteration
        event = await self._state.events.get()
        if event.finish_reason is not None:
            self._state.finished_delivered = True
        return event

    async def aclose(self) -> None:
        self._state.cancelled = True

    def cancel(self) -> None:
        self._state.cancelled = True

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


@dataclass
class _Active:
    """Book-keeping for one request inside the loop."""

    request: Request
    prompt: list[int]
    sampler: Sampler
    stops: StopMatcher
    decoder: Any
    events: asyncio.Queue
    submitted: float
    slot: int = -1
    position: int = 0
    generated: list[int] = field(default_factory=list)
    fed: list[int] = field(default_factory=list)  # tokens written into the KV slot, in order
    history: list[int] = field(default_factory=list)
    next_token: int | None = None
    cancelled: bool = False
    done: bool = False  # its final event is queued
    finished_delivered: bool = False
    timings: Timings = field(default_factory=Timings)
    prefill_start: float = 0.0
    gen_start: float = 0.0
    job: Any = None  # the prompt chunk part way through the model (models.base.PrefillJob)


class Engine:
    """Owns a loaded model, its KV cache and the inference loop. Build it with `create_engine`."""

    def __init__(self, *, model, tokenizer, chat_template, gguf_file, backend: str, backend_reason: str,
                 n_ctx: int, n_slots: int, max_queue: int, load_ms: float,
                 prefill_chunk: int = PREFILL_CHUNK, prefill_budget: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.gguf_file = gguf_file
        self.backend = backend
        self.backend_reason = backend_reason
        self.n_ctx = n_ctx
        self.n_slots = n_slots
        self.max_queue = max_queue
        self.load_ms = load_ms
        self.prefill_chunk = prefill_chunk
        # token-layers of prefill per turn of the loop (and per wait of stop()); None = a whole chunk
        self.prefill_budget = prefill_budget
        # The embedding's rows bound the ids a prompt may hold; the tokenizer's list can be longer.
        self.n_vocab = int(model.args.vocab_size)
        self.ctx_reason = ""  # why n_ctx is what it is (create_engine fills it in)
        self._cache = None
        self._free_slots: list[int] = []
        # What the KV cache of each free slot still holds (the tokens its last request fed, in order): a
        # new request that starts the same way - a chat client resending the conversation each turn -
        # takes that slot and prefills only the rest, like llama-server's prompt cache.
        self._slot_cached: dict[int, list[int]] = {}
        self._intake: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._accepting = False

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> "Engine":
        """Launch the loop task; return once it runs and accepts work."""
        if self._task is not None:
            return self
        self._cache = self.model.make_cache(self.n_slots, self.n_ctx)
        self._free_slots = list(range(self.n_slots))
        self._slot_cached = {}
        self._intake = asyncio.Queue(maxsize=self.max_queue)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rocmforge-worker")
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(ready), name="rocmforge-engine")
        await ready.wait()
        self._accepting = True
        return self

    async def stop(self) -> None:
        """Stop intake, cancel in-flight requests, join the loop task and the worker, free the cache."""
        self._accepting = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # already reported to every request as an "error" event
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._cache = None
        self._free_slots = []
        self._intake = None

    async def __aenter__(self) -> "Engine":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def free_slot_count(self) -> int:
        return len(self._free_slots)

    def open_session(self) -> ChatSession:
        """Reserve a KV slot for a conversation (see ChatSession)."""
        if not self._accepting:
            raise EngineStateError("the engine is not running", hint="await engine.start() first")
        if not self._free_slots:
            raise EngineBusyError("no free KV-cache slot for a new conversation", hint="try again shortly")
        slot = self._free_slots.pop()
        self._slot_cached.pop(slot, None)  # the session's turns overwrite whatever the slot held
        return ChatSession(self, slot)

    def _release_slot(self, slot: int, cached: Sequence[int] = ()) -> None:
        if self._accepting and slot not in self._free_slots:
            self._slot_cached[slot] = list(cached)
            self._free_slots.append(slot)

    def _take_slot(self, prompt: Sequence[int]) -> int:
        """A free slot for a request without a session: the one whose cache starts like the prompt for
        longest, else the one freed longest ago (recently used caches are the likeliest to be continued)."""
        best, best_len = self._free_slots[0], 0
        for slot in self._free_slots:
            n = common_prefix(prompt, self._slot_cached.get(slot, ()))
            if n > best_len:
                best, best_len = slot, n
        self._free_slots.remove(best)
        return best

    # ---- intake ----------------------------------------------------------------------------------

    def prepare_prompt(self, request: Request) -> list[int]:
        """Token ids for a request: chat template for messages, raw text otherwise."""
        tok = self.tokenizer
        if request.tokens is not None:
            ids = [int(t) for t in request.tokens]
        elif request.messages is not None:
            if self.chat_template is None:
                raise BadInputError("this model has no chat template",
                                    hint="use --raw, or give one with --chat-template-file")
            text = self.chat_template.render(list(request.messages), add_generation_prompt=True,
                                             bos_token=self._special_text(tok.bos_id),
                                             eos_token=self._special_text(tok.eos_id),
                                             max_chars=self._max_prompt_bytes())
            from rocmforge_core.chat_template import strip_leading_bos

            text, had_bos = strip_leading_bos(text, self._special_text(tok.bos_id))
            self._check_prompt_size(text)
            ids = tok.encode(text, add_bos=True if had_bos else None, parse_special=True)
        else:
            self._check_prompt_size(request.prompt or "")
            ids = tok.encode(request.prompt or "", add_bos=None, parse_special=False)
        if not ids:
            raise BadInputError("the prompt is empty", hint="give some text with --prompt or on stdin")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(len(ids), self.n_ctx)
        return ids

    def _max_prompt_bytes(self) -> int:
        """More text bytes than this cannot fit the context, whatever the tokenizer makes of them."""
        return self.n_ctx * self.tokenizer.max_token_bytes

    def _check_prompt_size(self, text: str) -> None:
        """Refuse a text too long for the context before tokenizing it (which costs time and memory in
        proportion to its length). Characters bound bytes from below, so most texts skip the encode."""
        limit = self._max_prompt_bytes()
        if len(text) <= limit // 4:
            return
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
        if n_bytes > limit:
            per = self.tokenizer.max_token_bytes
            raise ContextOverflowError(
                n_bytes // per, self.n_ctx,
                message=f"the prompt is {n_bytes:,} bytes: more than the {self.n_ctx:,}-token context can "
                        f"hold at {per} bytes per token at most ({limit:,} bytes)",
                hint="shorten it or raise --ctx")

    def _check_request(self, request: Request) -> None:
        """Every field of a request, so that nothing a client sends can fail later inside the loop."""
        if not isinstance(request, Request):
            raise BadInputError(f"submit() takes a Request (got {type(request).__name__})")
        given = [n for n in ("prompt", "messages", "tokens") if getattr(request, n) is not None]
        if len(given) > 1:
            raise BadInputError(f"a request takes one of prompt, messages or tokens (got {' and '.join(given)})")
        if request.prompt is not None and not isinstance(request.prompt, str):
            raise BadInputError(f"the prompt must be text (got {type(request.prompt).__name__})")
        if request.messages is not None:
            _check_messages(request.messages)
        if request.tokens is not None:
            self._check_ids(_token_list(request.tokens), "tokens")
        check_int("--max-tokens", request.max_tokens, lo=1)
        _check_stops(request.stop)
        if not isinstance(request.ignore_eos, bool):
            raise BadInputError(f"ignore_eos must be true or false (got {request.ignore_eos!r})")
        if not isinstance(request.sampling, SamplingParams):
            raise BadInputError(f"sampling must be SamplingParams (got {type(request.sampling).__name__})")
        session = request.session
        if session is not None and (not isinstance(session, ChatSession) or session._engine is not self):
            raise BadInputError("the session does not belong to this engine", hint="use engine.open_session()")

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        """Token ids index the embedding, so its row count bounds them (the tokenizer's list may be longer)."""
        n = self.n_vocab
        bad = next((t for t in ids if not 0 <= t < n), None)
        if bad is not None:
            raise BadInputError(f"{what}: token id {bad} is out of range for the model's {n} embedding rows "
                                f"(ids 0..{n - 1})")

    def _special_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.tokenizer.token_piece(token_id).decode("utf-8", errors="replace")

    def submit(self, request: Request) -> RequestStream:
        """Queue a request; returns its event stream. Raises BadInputError or EngineBusyError at once."""
        if not self._accepting or self._intake is None:
            raise EngineStateError("the engine is not running", hint="await engine.start() first")
        self._check_request(request)
        params = request.sampling.validate()
        session = request.session
        if session is not None and (session.closed or session.busy):
            raise EngineStateError("this chat session is closed or already answering")
        prompt = self.prepare_prompt(request)
        self._check_ids(prompt, "the prompt")
        if session is not None:
            session.busy = True
        state = _Active(request=request, prompt=prompt, sampler=Sampler(params),
                        stops=StopMatcher(list(request.stop)), decoder=self.tokenizer.stream(special=False),
                        events=asyncio.Queue(), submitted=time.perf_counter(), history=list(prompt))
        try:
            self._intake.put_nowait(state)
        except asyncio.QueueFull:
            raise EngineBusyError(f"the engine is busy ({self.max_queue} requests queued)",
                                  hint="try again shortly") from None
        return RequestStream(state)

    # ---- the loop --------------------------------------------------------------------------------

    async def _loop(self, ready: asyncio.Event) -> None:
        active: list[_Active] = []
        waiting: deque[_Active] = deque()
        # Admitted (slot held), prompt not all fed yet: one chunk per turn of the loop, each followed
        # by a decode step of the active sequences, so a long prompt never freezes the others' streams.
        prefilling: list[_Active] = []
        ready.set()
        try:
            while True:
                if not active and not waiting and not prefilling:
                    waiting.append(await self._intake.get())
                while not self._intake.empty():
                    waiting.append(self._intake.get_nowait())
                self._drop_cancelled(active, waiting, prefilling)
                while waiting and (self._free_slots or waiting[0].request.session is not None):
                    state = waiting.popleft()
                    session = state.request.session
                    state.slot = session.slot if session is not None else self._take_slot(state.prompt)
                    self._prefill_begin(state)
                    prefilling.append(state)
                if prefilling:
                    state = prefilling[0]  # oldest first: the earliest request gets its first token soonest
                    await self._contained(state, self._prefill_chunk(state))
                    if state.done or state.cancelled or state.position:
                        prefilling.pop(0)
                        if not state.done and not self._maybe_finish(state):
                            active.append(state)
                if active:
                    await self._decode_step(active)
                    active = [s for s in active if not s.done and not self._maybe_finish(s)]
                await asyncio.sleep(0)  # let streams and new submissions run between steps
        except asyncio.CancelledError:
            for state in prefilling + active + list(waiting):
                state.cancelled = True
                self._finish(state, "cancelled")
            raise
        except Exception as exc:  # a bug in the loop itself: no more intake, every request told why
            self._accepting = False
            for state in prefilling + active + list(waiting) + self._drain_intake():
                self._finish(state, "error", error=f"{type(exc).__name__}: {exc}")
            raise

    def _drain_intake(self) -> list[_Active]:
        states = []
        while self._intake is not None and not self._intake.empty():
            states.append(self._intake.get_nowait())
        return states

    def _drop_cancelled(self, active: list[_Active], waiting: deque, prefilling: list[_Active]) -> None:
        for group in (waiting, active, prefilling):
            for state in [s for s in group if s.cancelled]:
                group.remove(state)
                self._finish(state, "cancelled")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, _quietly, fn, *args)

    async def _contained(self, state: _Active, work) -> None:
        """Await one request's work; if the model or sampler raises, only that request ends ("error")."""
        try:
            await work
        except Exception as exc:
            self._fail(state, exc)

    def _fail(self, state: _Active, exc: BaseException) -> None:
        text = exc.one_line() if isinstance(exc, RocmforgeError) else f"{type(exc).__name__}: {exc}"
        self._finish(state, "error", error=text)

    def _prefill_begin(self, state: _Active) -> None:
        """A newly admitted request: what its session's cache already holds counts as fed."""
        state.prefill_start = time.perf_counter()
        state.timings.queue_ms = (state.prefill_start - state.submitted) * 1e3
        state.timings.prompt_tokens = len(state.prompt)
        session = state.request.session
        # From here the slot's cache holds this request's tokens: only `fed` says which are valid.
        cached = session.cached if session is not None else self._slot_cached.pop(state.slot, [])
        if session is None and not state.request.cache_prompt:
            cached = []
        reuse = min(common_prefix(state.prompt, cached), len(state.prompt) - 1)  # prefill >= 1 token: its logits
        state.timings.reused_tokens = reuse
        state.fed = state.prompt[:reuse]

    def prefill_layers(self, n_tokens: int) -> int:
        """Layers of an n_tokens chunk per unit of work: as many as the budget allows, at least one."""
        n_layers = int(self.model.args.n_layers)
        if self.prefill_budget is None:
            return n_layers
        return min(n_layers, max(1, self.prefill_budget // n_tokens))

    async def _prefill_chunk(self, state: _Active) -> None:
        """Run the next few layers of the prompt's current chunk (starting the next chunk if none is
        part way); after the last chunk's last layer, sample the first token (which sets
        state.position). A cancelled request is left alone: the loop ends it between units."""
        if state.cancelled:
            return
        if state.job is None:
            lo = len(state.fed)
            chunk = state.prompt[lo:lo + self.prefill_chunk]
            state.job = self.model.begin_prefill(chunk, self._cache, state.slot, lo)
        layers = self.prefill_layers(len(state.job.tokens))
        logits = await self._run(self.model.prefill_layers, state.job, layers)
        if logits is None:
            return
        state.fed.extend(state.job.tokens.tolist())
        state.job = None
        if len(state.fed) < len(state.prompt):
            return
        token, logprobs = await self._run(self._sample, state, logits)
        state.position = len(state.prompt)
        now = time.perf_counter()
        state.timings.prompt_ms = (now - state.prefill_start) * 1e3
        state.timings.ttft_ms = (now - state.submitted) * 1e3
        state.gen_start = now
        self._accept_token(state, token, logprobs)

    async def _decode_step(self, active: list[_Active]) -> None:
        """One batched decode step. If the batch fails, each request is stepped alone to find the one
        that fails: it ends with "error" and the others go on (writing a position's K/V again is harmless)."""
        try:
            results = await self._run(self._step, active)
        except Exception:
            results = [await self._step_alone(s) for s in active]
        for state, result in zip(active, results):
            if isinstance(result, Exception):
                self._fail(state, result)
                continue
            state.fed.append(state.next_token)
            state.position += 1
            if not state.cancelled:
                try:
                    self._accept_token(state, *result)
                except Exception as exc:  # e.g. a sampled id the tokenizer cannot show
                    self._fail(state, exc)

    def _step(self, batch: list[_Active]) -> list:
        """On the worker: decode the batch, then sample each row; a sampler error is that row's result.
        When every row is plain greedy, the backend picks the tokens itself (on a GPU only the ids
        cross to the host)."""
        tokens = np.array([s.next_token for s in batch], dtype=np.int64)
        slots = np.array([s.slot for s in batch], dtype=np.int64)
        positions = np.array([s.position for s in batch], dtype=np.int64)
        if all(self._plain_greedy(s) for s in batch):
            ids = self.model.decode_greedy(tokens, self._cache, slots, positions)
            return [(int(t), None) for t in ids]
        if getattr(self.model.ops, "samples_on_device", False) and all(self._device_samplable(s) for s in batch):
            # Each request's own generator draws its uniform here, as its CPU draw would. The next
            # step's table is drawn too (and its penalty windows, their newest id left for the device
            # to fill in), so the device can run that step before this one's tokens are streamed; a
            # draw made for a step that does not happen is the request's next one all the same
            # (Sampler.peek_uniform).
            table = np.array([self._device_row(s) for s in batch], dtype=np.float32)
            penalties = self._device_penalties(batch)
            next_penalties = None if penalties is None else self._device_penalties(batch, ahead=True)
            ahead = None
            if penalties is None or next_penalties is not None:
                ahead = np.array([self._device_row(s, ahead=True) for s in batch], dtype=np.float32)
            ids = self.model.decode_sampled(tokens, self._cache, slots, positions, table, penalties, ahead,
                                            next_penalties)
            return [(int(t), None) for t in ids]
        logits = self.model.decode(tokens, self._cache, slots, positions)
        results = []
        for i, state in enumerate(batch):
            try:
                results.append(self._sample(state, logits[i]))
            except Exception as exc:
                results.append(exc)
        return results

    @staticmethod
    def _plain_greedy(state: _Active) -> bool:
        """Greedy with nothing that reads the logits besides argmax (penalties, logprobs)."""
        p = state.sampler.params
        return (p.greedy and p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0
                and p.presence_penalty == 0.0 and state.request.logprobs is None)

    def _device_samplable(self, state: _Active) -> bool:
        """A token the device sampler picks as the CPU chain would: no logprobs (they need the logits
        on the host), greedy or 1 <= top_k <= the device's limit, a penalty window it takes."""
        p = state.sampler.params
        return (state.request.logprobs is None
                and (p.greedy or 1 <= p.top_k <= min(DEVICE_SAMPLE_MAX_K, self.model.args.vocab_size - 1))
                and len(self._penalty_window(state)) <= DEVICE_PENALTY_WINDOW)

    @staticmethod
    def _device_row(state: _Active, ahead: bool = False) -> list[float]:
        """temperature, top_k, top_p, min_p, u (with `ahead`, the next token's u, drawn in advance).
        Greedy is top_k = 1 (the best logit, equal ones to the lowest id, as argmax) and draws no
        uniform, as the CPU's greedy path draws none."""
        p = state.sampler.params
        if p.greedy:
            return [1.0, 1, 1.0, 0.0, 0.0]
        u = state.sampler.peek_uniform() if ahead else state.sampler.uniform()
        return [p.temperature, p.top_k, p.top_p, p.min_p, u]

    @staticmethod
    def _penalty_window(state: _Active, ahead: bool = False) -> Sequence[int]:
        """The history ids the row's penalties read (sampler.apply_penalties), [] when they are off;
        with `ahead`, those of the next step, its newest id (this step's draw) WINDOW_PENDING."""
        p = state.sampler.params
        off = p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0
        if off or p.repeat_last_n == 0:
            return []
        n = p.repeat_last_n
        if not ahead:
            return state.history[-n:] if n > 0 else state.history
        kept = (state.history[-(n - 1):] if n > 1 else []) if n > 0 else state.history
        return list(kept) + [WINDOW_PENDING]

    def _device_penalties(self, batch: list[_Active], ahead: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """(window (B, W) int32, -1 padded; (B, 3) float64 repeat, frequency, presence) for
        decode_sampled, or None when no row has penalties (or, `ahead`, for the next step, when a
        window would be too long for the device)."""
        windows = [self._penalty_window(s, ahead) for s in batch]
        width = max(len(w) for w in windows)
        if width == 0 or (ahead and width > DEVICE_PENALTY_WINDOW):
            return None
        ids = np.full((len(batch), width), -1, np.int32)
        pen = np.zeros((len(batch), 3), np.float64)
        for i, (state, w) in enumerate(zip(batch, windows)):
            p = state.sampler.params
            ids[i, :len(w)] = w
            pen[i] = (p.repeat_penalty, p.frequency_penalty, p.presence_penalty) if len(w) else (1.0, 0.0, 0.0)
        return ids, pen

    async def _step_alone(self, state: _Active):
        try:
            return (await self._run(self._step, [state]))[0]
        except Exception as exc:
            return exc

    @staticmethod
    def _sample(state: _Active, logits) -> tuple[int, tuple | None]:
        """(token, its logprobs if the request asked for them); runs on the worker thread."""
        token = int(state.sampler.sample(logits, state.history))
        k = state.request.logprobs
        return token, (None if k is None else token_logprobs(logits, token, k))

    def _accept_token(self, state: _Active, token: int, logprobs: tuple | None = None) -> None:
        """Record a sampled token; emit its text unless it ends generation."""
        state.history.append(token)
        state.generated.append(token)
        state.next_token = token
        if token in self.tokenizer.eog_ids and not state.request.ignore_eos:
            state.next_token = None  # finished: "stop"
            return
        delta = state.decoder.add(token)
        shown, stopped = state.stops.feed(delta)
        logprob, top = logprobs if logprobs is not None else (None, None)
        state.events.put_nowait(Event(text=shown, token_id=token, logprob=logprob, top_logprobs=top))
        if stopped:
            state.next_token = None

    def _maybe_finish(self, state: _Active) -> bool:
        if state.cancelled:
            self._finish(state, "cancelled")
            return True
        if state.next_token is None:
            self._finish(state, "stop")
            return True
        limit_hit = len(state.generated) >= state.request.max_tokens
        if limit_hit or state.position >= self.n_ctx:
            self._finish(state, "length")
            return True
        return False

    def _finish(self, state: _Active, reason: str, error: str | None = None) -> None:
        state.done = True
        session = state.request.session
        if session is not None:
            session.cached = list(state.fed)
            session.busy = False
        elif state.slot >= 0:
            self._slot_cached[state.slot] = list(state.fed)
            self._free_slots.append(state.slot)
        state.slot = -1
        tail = ""
        if reason in ("stop", "length") and not state.stops.stopped:
            tail = state.decoder.flush()
            shown, _ = state.stops.feed(tail)
            tail = shown + state.stops.flush()
        t = state.timings
        t.completion_tokens = len(state.generated)
        if state.gen_start:
            t.gen_ms = (time.perf_counter() - state.gen_start) * 1e3
        state.events.put_nowait(Event(text=tail, finish_reason=reason, timings=t, error=error))


def _quietly(fn, *args):
    """Run model or sampler work with numpy's float warnings off: they would print to stderr in the
    middle of a streamed reply. Failures reach the caller as exceptions, and so as "error" events."""
    with np.errstate(all="ignore"):
        return fn(*args)


_LOADED: dict[tuple, tuple] = {}  # one loaded model per process: (key) -> (gguf, config, tokenizer, model)


def _load(path: Path, backend: str, numerics: str = "packed"):
    """Load (or reuse) the model files. Keeping the last model lets a process build engines cheaply."""
    from rocmforge_core.backends import cpu
    from rocmforge_core.gguf_file import GGUFFile
    from rocmforge_core.model_check import check_model
    from rocmforge_core.models import load_model
    from rocmforge_core.tokenizer import Tokenizer

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, backend, numerics)
    if key not in _LOADED:
        _LOADED.clear()  # free the previous model before loading another
        gguf_file = GGUFFile(path)
        config = check_model(gguf_file)  # the same checks as `rocmforge inspect`
        free, where = _free_memory(backend)
        footprint.check_weights_fit(gguf_file, backend, numerics, free, where)  # before allocating
        ops = cpu.make_ops("cpu", numerics) if backend == "cpu" else backend
        # The tokenizer (pure Python, ~0.4 s for a 128k vocabulary) is built while the weights load: their
        # copies out of the mapped file run without the GIL. Its metadata passed check_model already.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rocmforge-tokenizer") as pool:
            pending = pool.submit(Tokenizer.from_gguf, gguf_file)
            model = load_model(gguf_file, backend=ops)
            tokenizer = pending.result()
        _LOADED[key] = (gguf_file, config, tokenizer, model)
    return _LOADED[key]


def _free_memory(backend: str) -> tuple[int | None, str]:
    """(bytes the weights and cache may come from, what that memory is called in messages)."""
    if backend == "cpu":
        return context.host_free_bytes(), "memory"
    from rocmforge_core.gpu import open_runtime

    total = getattr(open_runtime(backend).device, "total_memory", None)
    return (total if isinstance(total, int) and total > 0 else None), "device memory (the card's total)"


def _check_special_ids(tokenizer, n_rows: int) -> None:
    """Refuse a file whose tokenizer adds a BOS or EOS id past the embedding: every prompt would fail."""
    for name, token_id, added in (("BOS", tokenizer.bos_id, tokenizer.add_bos),
                                  ("EOS", tokenizer.eos_id, tokenizer.add_eos)):
        if added and token_id is not None and token_id >= n_rows:
            raise BadInputError(f"the tokenizer's {name} id {token_id} is past the model's {n_rows} "
                                "embedding rows", hint="the file's tokenizer and weights disagree")


def create_engine(model: str | Path | None = None, backend: str = "auto", *, n_ctx: int | None = None,
                  n_slots: int = 4, max_queue: int = 64, chat_template_file: str | None = None,
                  numerics: str | None = None, progress=None, cache_type: str | None = None) -> Engine:
    """The one way to build an engine: resolve and load the model, tokenizer and template (not started).

    `numerics` (CPU backend only): None or "packed" (the default: weights in the file's blocks, 8-bit
    activations in decode; backends/cpu_packed.py), "float32" (the reference: float32 copies of the
    weights), or "llama.cpp" to reproduce llama.cpp's CPU results bit for bit (many times slower).
    `cache_type`: the KV cache's element type, "f16" (the GPU default) or "f32" (the CPU's only one).
    """
    from rocmforge_core.backends import select_backend
    from rocmforge_core.backends.cpu import NUMERICS
    from rocmforge_core.chat_template import ChatTemplate
    from rocmforge_core.store import resolve_model

    t0 = time.perf_counter()
    if numerics is not None and numerics not in NUMERICS:
        raise BadInputError(f"unknown numerics '{numerics}'", hint="choose " + ", ".join(NUMERICS))
    if numerics not in (None, "float32"):
        if (backend or "auto").lower() not in ("auto", "cpu"):
            raise BadInputError(f"--numerics {numerics} runs on the CPU backend only",
                                hint="use --backend cpu")
        backend = "cpu"
    name, reason = select_backend(backend)
    numerics = numerics or "packed"  # what the CPU runs; the GPU backends have one arithmetic
    if cache_type not in (None, "f16", "f32"):
        raise BadInputError(f"unknown cache type '{cache_type}'", hint="choose f16 or f32")
    if name == "cpu" and cache_type == "f16":
        raise BadInputError("the CPU backend keeps its KV cache in float32", hint="drop --cache-type f16 or use a GPU")
    if n_ctx is not None and n_ctx < 8:
        raise BadInputError(f"--ctx must be at least 8 (got {n_ctx})")
    if n_slots < 1 or max_queue < 1:
        raise BadInputError("an engine needs at least one slot and a queue of at least one")
    path = resolve_model(None if model is None else str(model), progress=progress)
    gguf_file, config, tokenizer, loaded = _load(path, name, numerics)
    if name != "cpu":  # before the engine allocates its cache
        loaded.ops.kv_cache_type = cache_type or "f16"
    _check_special_ids(tokenizer, int(loaded.args.vocab_size))
    template = ChatTemplate.for_model(gguf_file.metadata, override_file=chat_template_file)
    ctx, ctx_reason = _context_size(config, n_ctx, n_slots, name, loaded, path)
    need = footprint.footprint(gguf_file, config, name, ctx, n_slots, numerics,
                               None if name == "cpu" else loaded.ops.kv_cache_type)
    if n_ctx is not None:  # a size the user asked for; the default one is already capped by free memory
        free = (context.host_free_bytes() if name == "cpu"
                else context.device_free_bytes(loaded, need.weights))
        footprint.check_cache_fits(need, free, "memory" if name == "cpu" else "device memory")
    chunk, budget = prefill_shape(name, numerics, int(loaded.args.n_layers))
    engine = Engine(model=loaded, tokenizer=tokenizer, chat_template=template, gguf_file=gguf_file,
                    backend=name, backend_reason=reason, n_ctx=ctx, n_slots=n_slots, max_queue=max_queue,
                    load_ms=(time.perf_counter() - t0) * 1e3, prefill_chunk=chunk, prefill_budget=budget)
    engine.ctx_reason = ctx_reason
    engine.footprint = need
    return engine


def _context_size(config, requested, n_slots, backend, model, path) -> tuple[int, str]:
    """rocmforge_core.context's choice, with the memory the cache would come from on this backend."""
    free = (context.host_free_bytes() if backend == "cpu"
            else context.device_free_bytes(model, path.stat().st_size))
    per_value = 4 if backend == "cpu" else footprint.CACHE_BYTES[model.ops.kv_cache_type]
    return context.choose_ctx(config, requested, n_slots=n_slots, free_bytes=free, kv_bytes_per_value=per_value)


def _token_list(tokens) -> list[int]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, (Sequence, np.ndarray)):
        raise BadInputError(f"tokens must be a list of token ids (got {type(tokens).__name__})")
    for t in tokens:
        check_int("a token id", t)
    return [int(t) for t in tokens]


def _check_messages(messages) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise BadInputError(f"messages must be a list (got {type(messages).__name__})")
    for i, m in enumerate(messages):
        if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise BadInputError(f"message {i + 1} needs a text role and a text content")


def _check_stops(stop) -> None:
    # a bare string would be read as a list of one-character stops
    if isinstance(stop, (str, bytes)) or not isinstance(stop, Sequence):
        raise BadInputError(f"stop must be a list of strings (got {type(stop).__name__})")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise BadInputError(f"each stop string must be non-empty text (got {s!r})")



def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


async def collect(stream: AsyncIterator[Event]) -> tuple[str, list[int], Event]:
    """Drain a stream: (text, token ids, final event)."""
    parts, ids = [], []
    final = Event()
    async for event in stream:
        parts.append(event.text)
        if event.token_id is not None:
            ids.append(event.token_id)
        if event.finish_reason is not None:
            final = event
    return "".join(parts), ids, final
