"""The bridge from API requests to the engine: engine Requests per choice, admission against the queue
limit, and one merged event stream per API request whose closing cancels every sequence in it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from rocmforge_core.engine import (ContextOverflowError, EngineBusyError, EngineStateError, Event, Request,
                                   RequestStream)
from rocmforge_core.errors import BadInputError
from rocmforge_core.sampler import SamplingParams

from rocmforge_server.errors import APIError

_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                    "frequency_penalty", "presence_penalty")


def sampling_for(body, defaults: SamplingParams, index: int) -> SamplingParams:
    """The server's defaults overridden by the body's fields. Choice i of n gets seed + i, so that
    n > 1 with a seed gives n different, reproducible samples."""
    given = {name: getattr(body, name) for name in _SAMPLING_FIELDS if getattr(body, name) is not None}
    params = replace(defaults, **given)
    seed = body.seed if body.seed is not None else defaults.seed
    if seed is not None and seed >= 0:
        params = replace(params, seed=seed + index)
    elif seed == -1:
        params = replace(params, seed=None)
    return params


@dataclass
class Runner:
    """Admits API requests onto the engine: at most `n_slots + max_queue` sequences at once."""

    engine: object
    defaults: SamplingParams
    max_queue: int
    metrics: object | None = None  # metrics.Metrics, told about every sequence
    in_flight: int = 0  # sequences submitted whose final event has not come yet
    pumps: set = field(default_factory=set)
    live: set = field(default_factory=set)  # Sequences not finished yet

    def cancel_all(self) -> None:
        """Cancel every sequence in flight; each request still ends normally (shutdown's last step)."""
        for seqs in list(self.live):
            seqs.cancel()

    @property
    def active_slots(self) -> int:
        return self.engine.n_slots - self.engine.free_slot_count if self.engine.running else 0

    @property
    def waiting(self) -> int:
        return max(self.in_flight - self.active_slots, 0)

    def start(self, requests: list[Request], param: str) -> "Sequences":
        limit = self.engine.n_slots + self.max_queue
        if self.in_flight + len(requests) > limit:
            raise APIError(503, f"the server is busy: {self.in_flight} sequences in flight, the limit is "
                           f"{limit} (--parallel + --max-queue); retry shortly", code="queue_full",
                           headers={"Retry-After": "1"})
        streams: list[RequestStream] = []
        try:
            for request in requests:
                streams.append(self.engine.submit(request))
        except BaseException as exc:
            for stream in streams:
                stream.cancel()
            raise _api_error(exc, param) from exc
        return Sequences(self, streams)


def fit_messages(engine, messages: list[dict], max_tokens: int, shift: bool) -> list[int]:
    """A chat's prompt ids, fitted to the context as the chat REPL fits them (rocmforge_core.conversation);
    a chat that does not fit, or a model without a chat template, is a 400."""
    from rocmforge_core.conversation import fit_conversation

    try:
        return fit_conversation(engine, messages, max_new=max_tokens, shift=shift, raw=False).ids
    except BadInputError as exc:
        raise _api_error(exc, "messages") from exc


def _api_error(exc: BaseException, param: str) -> BaseException:
    if isinstance(exc, ContextOverflowError):
        return APIError(400, f"this model's context is {exc.n_ctx} tokens, but the prompt is "
                        f"{exc.n_tokens} tokens", param=param, code="context_length_exceeded")
    if isinstance(exc, BadInputError):
        return APIError(400, exc.message, param=param, code="invalid_value")
    if isinstance(exc, (EngineBusyError, EngineStateError)):
        return APIError(503, exc.message, code="unavailable", headers={"Retry-After": "1"})
    return exc


@dataclass
class Sequences:
    """The engine streams of one API request, merged in the order their events arrive.

    Iterate for (choice index, Event). `close()` cancels what is still running (the client left, a
    handler failed); each stream is still read to its end, so the counts and metrics record what the
    engine really did (a cancelled sequence ends "cancelled" within one decode step).
    """

    runner: Runner
    streams: list[RequestStream]
    prompt_tokens: list[int] = field(default_factory=list)  # per choice
    finals: dict[int, Event] = field(default_factory=dict)

    def __hash__(self) -> int:  # kept in Runner.live, by identity
        return id(self)

    def __post_init__(self):
        self.runner.in_flight += len(self.streams)
        self.prompt_tokens = [len(s.prompt_tokens) for s in self.streams]
        self._queue: asyncio.Queue = asyncio.Queue()
        self._delivered = 0
        self._closed = False
        self.runner.live.add(self)
        if self.runner.metrics is not None:
            self.runner.metrics.started(self.prompt_tokens)
        for i, stream in enumerate(self.streams):
            task = asyncio.ensure_future(self._pump(i, stream))
            self.runner.pumps.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.runner.pumps.discard)

    async def _pump(self, index: int, stream: RequestStream) -> None:
        metrics = self.runner.metrics
        async for event in stream:
            if event.token_id is not None and metrics is not None:
                metrics.token()
            if event.finish_reason is not None:
                self.finals[index] = event
                self.runner.in_flight -= 1
                if len(self.finals) == len(self.streams):
                    self.runner.live.discard(self)
                if metrics is not None:
                    metrics.finished(event)
            if not self._closed:
                self._queue.put_nowait((index, event))

    def __aiter__(self) -> "Sequences":
        return self

    async def __anext__(self) -> tuple[int, Event]:
        if self._delivered == len(self.streams):
            raise StopAsyncIteration
        index, event = await self._queue.get()
        if event.finish_reason is not None:
            self._delivered += 1
        return index, event

    def close(self) -> None:
        """Nobody reads on: cancel what still runs and drop its events."""
        self._closed = True
        self.cancel()

    def cancel(self) -> None:
        """Cancel what still runs; the reader gets the "cancelled" final events."""
        for i, stream in enumerate(self.streams):
            if i not in self.finals:
                stream.cancel()
