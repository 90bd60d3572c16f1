"""Fitting a conversation into the context window: render it (the chat template, or plain text for a
model without one), count its tokens, and optionally drop the oldest exchanges until a reply fits.

The chat REPL and the server's chat completions both call `fit_conversation`, so a conversation is
measured, refused or shortened the same way whichever front end sends it.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from rocmforge_core.engine import ContextOverflowError, Request, _check_messages


class Fit(NamedTuple):
    """What a conversation became once it fits: its prompt ids, the messages kept (the leading system
    messages included), and how many of the oldest exchanges were dropped to get there."""

    ids: list[int]
    messages: list[dict]
    dropped: int


def fit_conversation(engine, messages: Sequence[Mapping[str, str]], *, max_new: int, shift: bool = False,
                     raw: bool | None = None) -> Fit:
    """Prompt ids for answering `messages` ([{"role", "content"}], system messages first) on `engine`.

    Without `shift`, a conversation that does not fit raises ContextOverflowError saying how far over it
    is. With `shift`, the oldest exchanges (a user message and the replies after it) go first until the
    prompt leaves room for min(max_new, n_ctx // 4) tokens of reply; the system messages and the last
    user message always stay, and when that last message alone does not fit, ContextOverflowError.
    `raw`: None renders plain text for a model without a chat template; False requires the template.
    """
    _check_messages(messages)
    n_ctx = engine.n_ctx
    head, turns = _split(messages)
    room = min(max_new, n_ctx // 4) if shift else 0
    ids, count = _measure(engine, head + turns, raw)
    if ids is None and not shift:
        raise ContextOverflowError(
            count, n_ctx, f"the conversation is {count} tokens, {count - n_ctx + 1} over the context of {n_ctx}",
            hint="/clear starts over; or restart with a larger --ctx or with --context-shift")
    dropped = 0
    while ids is None or count + room > n_ctx:
        shorter = _without_oldest_exchange(turns)
        if shorter is None:
            if ids is not None:
                break  # only the message being answered is left: it fits, with a shorter reply
            raise ContextOverflowError(count, n_ctx,
                                       f"the last message alone does not fit the context of {n_ctx} tokens",
                                       hint="send a shorter message or restart with a larger --ctx")
        turns = shorter
        dropped += 1
        ids, count = _measure(engine, head + turns, raw)
    return Fit(ids, head + turns, dropped)


def raw_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt of a model without a chat template: the system prompt and a blank line, then each
    message with the model's continuation appended directly; a new user message starts on its own line."""
    head, turns = _split(messages)
    text = "".join(f"{m['content']}\n\n" for m in head if m["content"])
    for message in turns:
        if message["role"] == "user" and text and not text.endswith(("\n", " ")):
            text += "\n"
        text += message["content"]
    return text


def _split(messages) -> tuple[list[dict], list[dict]]:
    """(leading system messages, the rest), as fresh dicts: the caller's list is never changed."""
    items = [dict(m) for m in messages]
    n = 0
    while n < len(items) and items[n]["role"] == "system":
        n += 1
    return items[:n], items[n:]


def _measure(engine, messages: list[dict], raw: bool | None) -> tuple[list[int] | None, int]:
    """(ids, token count) of the conversation; ids is None when it does not fit the context."""
    if engine.chat_template is None and raw is not False:
        request = Request(prompt=raw_text(messages))
    else:
        request = Request(messages=messages)
    try:
        ids = engine.prepare_prompt(request)
    except ContextOverflowError as exc:
        return None, exc.n_tokens
    return ids, len(ids)


def _without_oldest_exchange(turns: list[dict]) -> list[dict] | None:
    """The turns less the oldest user message and the replies after it; None when the message being
    answered is the only user message left."""
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if len(users) < 2:
        return None
    return turns[users[1]:]
