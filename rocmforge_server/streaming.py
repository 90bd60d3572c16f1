"""Server-sent events for stream: true, in OpenAI's chunk format, ending with `data: [DONE]`."""

from __future__ import annotations

import json
import time

from starlette.responses import StreamingResponse

from rocmforge_server import openai_format as fmt
from rocmforge_server.generation import Sequences


class EventStream(StreamingResponse):
    """A text/event-stream response that always closes its generator, so a client that leaves
    mid-stream cancels its sequences at once rather than when the generator is garbage-collected."""

    def __init__(self, events):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _failure(event) -> bytes | None:
    """An error event for a sequence that ended badly (the model failed, or the server is stopping)."""
    if event.finish_reason == "error":
        return sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error",
                              "param": None, "code": "generation_failed"}})
    if event.finish_reason == "cancelled":
        return sse({"error": {"message": "the request was cancelled: the server is stopping",
                              "type": "server_error", "param": None, "code": "cancelled"}})
    return None


async def chat_events(seqs: Sequences, body, ctx):
    created, want = int(time.time()), body.logprob_count() is not None

    def chunk(choices, usage_=None) -> bytes:
        return sse(fmt.chat_chunk(rid=ctx.rid, created=created, model=ctx.model,
                                  fingerprint=ctx.fingerprint, choices=choices,
                                  with_usage=body.include_usage, usage_=usage_))

    try:
        for i in range(len(seqs.streams)):  # the role comes first, alone, as OpenAI sends it
            yield chunk([fmt.chat_delta(i, None, role=True, want_logprobs=want, text_of=ctx.text_of)])
        async for i, event in seqs:
            failed = _failure(event)
            if failed is not None:
                yield failed
                return
            if event.text or event.finish_reason or (want and event.logprob is not None):
                yield chunk([fmt.chat_delta(i, event, role=False, want_logprobs=want, text_of=ctx.text_of)])
        if body.include_usage:
            yield chunk([], fmt.usage(seqs.prompt_tokens, seqs.finals, ctx.n_per_prompt))
        yield DONE
    finally:
        seqs.close()


async def completion_events(seqs: Sequences, body, ctx):
    created, want = int(time.time()), body.logprob_count() is not None

    def chunk(choices, usage_=None) -> bytes:
        return sse(fmt.completion_object(rid=ctx.rid, created=created, model=ctx.model,
                                         fingerprint=ctx.fingerprint, choices=choices, usage_=usage_,
                                         with_usage=body.include_usage))

    try:
        async for i, event in seqs:
            failed = _failure(event)
            if failed is not None:
                yield failed
                return
            has_logprob = want and event.logprob is not None
            if event.text or event.finish_reason or has_logprob:
                reason = fmt.finish_reason(event) if event.finish_reason else None
                logprobs = [event] if has_logprob else ([] if want else None)
                yield chunk([fmt.completion_choice(i, event.text, logprobs, reason, ctx.text_of)])
        if body.include_usage:
            yield chunk([], fmt.usage(seqs.prompt_tokens, seqs.finals, ctx.n_per_prompt))
        yield DONE
    finally:
        seqs.close()
