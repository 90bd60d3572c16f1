"""The FastAPI app: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics.

`build_app(engine, ...)` takes an engine from `create_engine` that is not started yet; the app's
lifespan awaits `engine.start()`, and uvicorn runs the lifespan before it binds the socket, so the
first connection already finds the inference loop running. Shutdown stops the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rocmforge_core.engine import Request
from rocmforge_core.sampler import SamplingParams
from rocmforge_server import errors, openai_format as fmt
from rocmforge_server.errors import APIError
from rocmforge_server.generation import Runner, Sequences, fit_messages, sampling_for
from rocmforge_server.metrics import Metrics
from rocmforge_server.middleware import ApiKey, BodyLimit, CountRequests
from rocmforge_server.schemas import ChatCompletionRequest, CompletionRequest
from rocmforge_server.streaming import EventStream, chat_events, completion_events

COUNTED_PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")


@dataclass
class ServerOptions:
    model_id: str
    aliases: tuple[str, ...] = ()  # other names a request may use for the model (the MODEL argument)
    api_key: str | None = None
    max_queue: int = 16
    max_body_bytes: int = 8 << 20
    defaults: SamplingParams = field(default_factory=SamplingParams)
    context_shift: bool = False  # drop a chat's oldest exchanges when it overflows, instead of a 400


def build_app(engine, options: ServerOptions) -> FastAPI:
    runner = Runner(engine, options.defaults, options.max_queue)
    metrics = runner.metrics = Metrics(runner)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="rocmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runner, app.state.metrics, app.state.options = runner, metrics, options
    errors.install(app)
    app.add_middleware(CountRequests, counter=metrics.requests, paths=COUNTED_PATHS)
    app.add_middleware(ApiKey, key=options.api_key)
    app.add_middleware(BodyLimit, limit=options.max_body_bytes)  # added last: runs first
    _routes(app, engine, runner, metrics, options)
    return app


def _routes(app: FastAPI, engine, runner: Runner, metrics: Metrics, options: ServerOptions) -> None:
    names = {options.model_id, *options.aliases}
    fingerprint = f"rocmforge-{engine.backend}"
    text_of = fmt.TokenText(engine.tokenizer)

    def check_model(name: str | None) -> None:
        if name is not None and name not in names:
            raise APIError(404, f"the model '{name}' does not exist: this server serves '{options.model_id}'",
                           param="model", code="model_not_found")

    created = int(engine.gguf_file.path.stat().st_mtime)

    def model_card() -> dict:
        return {"id": options.model_id, "object": "model", "created": created, "owned_by": "rocmforge",
                "meta": {"n_ctx": engine.n_ctx, "n_slots": engine.n_slots, "backend": engine.backend}}

    @app.get("/health")
    async def health():
        if engine.running:
            return {"status": "ok"}
        body = APIError(503, "the model is loading or the server is stopping", code="unavailable").body()
        return JSONResponse({"status": "unavailable", **body}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, http: HTTPRequest):
        check_model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        max_tokens = body.token_limit() or engine.n_ctx
        ids = fit_messages(engine, messages, max_tokens, options.context_shift)
        requests = [Request(tokens=ids, max_tokens=max_tokens, sampling=sampling_for(body, options.defaults, i),
                            stop=body.stops(), logprobs=body.logprob_count(), cache_prompt=body.cache_prompt)
                    for i in range(body.n)]
        seqs = runner.start(requests, param="messages")
        ctx = _Context(rid=fmt.new_id("chatcmpl"), model=options.model_id, fingerprint=fingerprint,
                       text_of=text_of, n_per_prompt=body.n)
        if body.stream:
            return EventStream(chat_events(seqs, body, ctx))
        choices = await _run_to_end(http, seqs, body.logprob_count() is not None)
        return fmt.chat_response(rid=ctx.rid, model=ctx.model, choices=choices, text_of=text_of,
                                 usage_=fmt.usage(seqs.prompt_tokens, seqs.finals, body.n),
                                 fingerprint=fingerprint)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        check_model(body.model)
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported")
        requests = []
        for prompt in body.prompts():
            for j in range(body.n):
                requests.append(_completion_request(engine, body, prompt, j, options.defaults))
        seqs = runner.start(requests, param="prompt")
        ctx = _Context(rid=fmt.new_id("cmpl"), model=options.model_id, fingerprint=fingerprint,
                       text_of=text_of, n_per_prompt=body.n)
        if body.stream:
            return EventStream(completion_events(seqs, body, ctx))
        want = body.logprob_count() is not None
        choices = await _run_to_end(http, seqs, want)
        items = [fmt.completion_choice(i, "".join(c.text), c.logprobs if want else None,
                                       fmt.finish_reason(c.final), text_of)
                 for i, c in enumerate(choices.items)]
        return fmt.completion_object(rid=ctx.rid, created=int(time.time()), model=ctx.model,
                                     fingerprint=fingerprint, choices=items,
                                     usage_=fmt.usage(seqs.prompt_tokens, seqs.finals, body.n))


@dataclass
class _Context:
    """What the streaming generators need besides the events."""

    rid: str
    model: str
    fingerprint: str
    text_of: fmt.TokenText
    n_per_prompt: int


def _completion_request(engine, body: CompletionRequest, prompt, index: int, defaults) -> Request:
    common = dict(max_tokens=body.token_limit() or engine.n_ctx, stop=body.stops(),
                  sampling=sampling_for(body, defaults, index), logprobs=body.logprob_count(),
                  cache_prompt=body.cache_prompt)
    if isinstance(prompt, str):
        return Request(prompt=prompt, **common)
    vocab = engine.tokenizer.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:  # the model would index out of its embedding: refuse here, before the engine sees it
        raise APIError(400, f"token id {bad[0]} is out of range (the vocabulary has {vocab} tokens)",
                       param="prompt", code="invalid_value")
    return Request(tokens=prompt, **common)


async def _run_to_end(http: HTTPRequest, seqs: Sequences, want_logprobs: bool) -> fmt.Choices:
    """Collect every sequence; a client that disconnects first cancels them (their slots free at once)."""
    choices = fmt.Choices(len(seqs.streams), want_logprobs)

    async def drain():
        async for index, event in seqs:
            choices.add(index, event)

    task = asyncio.ensure_future(drain())
    gone = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()
        seqs.close()
    if not task.done() or task.cancelled():
        raise APIError(499, "the client closed the connection", code="client_closed")
    task.result()
    _raise_failures(seqs)
    return choices


async def _disconnected(http: HTTPRequest) -> None:
    # the body has been read, so the next ASGI message is the disconnect
    while (await http.receive())["type"] != "http.disconnect":
        pass


def _raise_failures(seqs: Sequences) -> None:
    for event in seqs.finals.values():
        if event.finish_reason == "error":
            raise APIError(500, f"generation failed: {event.error}", code="generation_failed")
        if event.finish_reason == "cancelled":
            raise APIError(503, "the request was cancelled: the server is stopping", code="cancelled")
