"""OpenAI's response shapes: chat.completion(.chunk) and text_completion objects, usage, logprobs.

A `Choices` collects the engine events of an API request per choice; the same events feed either one
JSON response or the stream of chunks, so the streamed and the plain answers cannot drift apart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from rocmforge_core.engine import Event


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: list[int], finals: dict[int, Event], choices_per_prompt: int) -> dict:
    """Prompt tokens count once per prompt (not once per choice), as OpenAI counts them; of those,
    `cached_tokens` were found in a slot's KV cache and not prefilled again."""
    prompt = sum(prompt_tokens[::choices_per_prompt])
    completion = sum(e.timings.completion_tokens for e in finals.values() if e.timings is not None)
    cached = sum(e.timings.reused_tokens for i, e in finals.items()
                 if e.timings is not None and i % choices_per_prompt == 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class TokenText:
    """Token ids -> (text, bytes) for logprobs, cached: the same few thousand tokens come back often."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self._cache:
            piece = self._tok.token_piece(token_id)
            self._cache[token_id] = (piece.decode("utf-8", errors="replace"), list(piece))
        return self._cache[token_id]


def chat_logprob(event: Event, text_of: TokenText) -> dict:
    token, raw = text_of(event.token_id)
    top = []
    for tid, lp in event.top_logprobs or []:
        alt, alt_raw = text_of(tid)
        top.append({"token": alt, "logprob": lp, "bytes": alt_raw})
    return {"token": token, "logprob": event.logprob, "bytes": raw, "top_logprobs": top}


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[Event] = field(default_factory=list)  # the token events, when logprobs were asked
    final: Event | None = None


class Choices:
    """Accumulates (index, Event) pairs into per-choice text, logprobs and finish reasons."""

    def __init__(self, n: int, want_logprobs: bool):
        self.items = [Choice() for _ in range(n)]
        self.want_logprobs = want_logprobs

    def add(self, index: int, event: Event) -> None:
        choice = self.items[index]
        if event.text:
            choice.text.append(event.text)
        if self.want_logprobs and event.token_id is not None and event.logprob is not None:
            choice.logprobs.append(event)
        if event.finish_reason is not None:
            choice.final = event


def finish_reason(event: Event) -> str:
    return event.finish_reason if event.finish_reason in ("stop", "length") else "stop"


# ---- chat ------------------------------------------------------------------------------------------

def chat_response(*, rid: str, model: str, choices: Choices, text_of: TokenText, usage_: dict,
                  fingerprint: str) -> dict:
    out = []
    for i, c in enumerate(choices.items):
        logprobs = ({"content": [chat_logprob(e, text_of) for e in c.logprobs]}
                    if choices.want_logprobs else None)
        out.append({"index": i, "message": {"role": "assistant", "content": "".join(c.text)},
                    "logprobs": logprobs, "finish_reason": finish_reason(c.final)})
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint, "choices": out, "usage": usage_}


def chat_chunk(*, rid: str, created: int, model: str, fingerprint: str, choices: list[dict],
               with_usage: bool, usage_: dict | None = None) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": fingerprint, "choices": choices}
    if with_usage:
        chunk["usage"] = usage_  # null on every chunk but the last, as OpenAI sends it
    return chunk


def chat_delta(index: int, event: Event | None, *, role: bool, want_logprobs: bool,
               text_of: TokenText) -> dict:
    """One choice's entry in a chunk: the role (first chunk), text, logprobs and finish reason."""
    delta: dict = {"role": "assistant", "content": ""} if role else {}
    logprobs = None
    if event is not None:
        if event.text:
            delta["content"] = event.text
        if want_logprobs and event.token_id is not None and event.logprob is not None:
            logprobs = {"content": [chat_logprob(event, text_of)]}
    reason = finish_reason(event) if event is not None and event.finish_reason else None
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


# ---- completions -----------------------------------------------------------------------------------

def legacy_logprobs(events: list[Event], text_of: TokenText) -> dict:
    """The completions endpoint's older logprobs shape: parallel lists and text offsets."""
    tokens, lps, tops, offsets, at = [], [], [], [], 0
    for e in events:
        token, _ = text_of(e.token_id)
        tokens.append(token)
        lps.append(e.logprob)
        tops.append({text_of(t)[0]: lp for t, lp in e.top_logprobs or []})
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def completion_choice(index: int, text: str, events: list[Event] | None, reason: str | None,
                      text_of: TokenText) -> dict:
    logprobs = legacy_logprobs(events, text_of) if events is not None else None
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}


def completion_object(*, rid: str, created: int, model: str, fingerprint: str, choices: list[dict],
                      usage_: dict | None, with_usage: bool = True) -> dict:
    obj = {"id": rid, "object": "text_completion", "created": created, "model": model,
           "system_fingerprint": fingerprint, "choices": choices}
    if with_usage:
        obj["usage"] = usage_
    return obj
