"""Perplexity of a text under a model, computed the way llama.cpp's llama-perplexity does.

The tokens (BOS first when the model adds one) are cut into non-overlapping windows of n_ctx tokens;
the first token of every window is set to BOS, as llama-perplexity does, so each window starts like a
fresh prompt. Each window runs through the model once with logits for every position, and only the
second half is scored: the tokens at positions n_ctx/2 + 1 .. n_ctx - 1, each predicted from at least
n_ctx/2 tokens of context. A window's first half only gives the scored tokens something to go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rocmforge_core.errors import BadInputError

PREFILL_CHUNK = 512  # positions per forward pass, like the engine's prefill


@dataclass
class Perplexity:
    """Running totals over the scored tokens; `ppl`, `nll` and `ppl_err` read them."""

    ctx: int
    n_windows: int = 0
    n_tokens: int = 0
    nll_sum: float = 0.0
    nll2_sum: float = 0.0

    def add(self, nll: np.ndarray) -> None:
        self.n_windows += 1
        self.n_tokens += len(nll)
        self.nll_sum += float(nll.sum())
        self.nll2_sum += float((nll * nll).sum())

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per scored token (nats)."""
        return self.nll_sum / self.n_tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def ppl_err(self) -> float:
        """llama-perplexity's ± : ppl times the standard error of the mean NLL."""
        if self.n_tokens < 2:
            return 0.0
        var = self.nll2_sum / self.n_tokens - self.nll ** 2
        return self.ppl * math.sqrt(max(var, 0.0) / (self.n_tokens - 1))


def windows(tokens: Sequence[int], ctx: int, bos_id: int | None) -> list[list[int]]:
    """Non-overlapping windows of ctx tokens (a shorter tail is dropped), each starting with BOS."""
    if ctx < 4:
        raise BadInputError(f"-c must be at least 4 for perplexity (got {ctx})")
    out = []
    for lo in range(0, len(tokens) - ctx + 1, ctx):
        window = [int(t) for t in tokens[lo:lo + ctx]]
        if bos_id is not None:
            window[0] = bos_id
        out.append(window)
    if not out:
        raise BadInputError(f"the text is {len(tokens)} tokens, shorter than one window of {ctx}",
                            hint="give a longer text or a smaller -c")
    return out


def window_nll(logits: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """-log p(token i+1 | tokens ..i) for the second half: i = ctx/2 .. ctx-2. logits: (ctx, vocab)."""
    first = len(window) // 2
    rows = np.asarray(logits[first:len(window) - 1], dtype=np.float64)  # (n, vocab)
    targets = np.asarray(window[first + 1:], dtype=np.int64)
    peak = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
    return log_z - rows[np.arange(len(targets)), targets]


def all_logits(model, cache, window: Sequence[int]) -> np.ndarray:
    """Logits of every position of one window, prefilled from position 0 of slot 0."""
    parts = [np.asarray(model.prefill(window[lo:lo + PREFILL_CHUNK], cache, 0, lo, all_logits=True))
             for lo in range(0, len(window), PREFILL_CHUNK)]
    return np.concatenate(parts, axis=0)


def perplexity(model, tokens: Sequence[int], ctx: int, bos_id: int | None,
               on_window: Callable[[Perplexity], None] | None = None) -> Perplexity:
    """Score `tokens` window by window; `on_window` sees the running totals after each window."""
    chunks = windows(tokens, ctx, bos_id)
    cache = model.make_cache(1, ctx)
    totals = Perplexity(ctx=ctx)
    try:
        for window in chunks:
            totals.add(window_nll(all_logits(model, cache, window), window))
            if on_window is not None:
                on_window(totals)
    finally:
        close = getattr(cache, "close", None)
        if close is not None:  # device memory goes back now, not when the GC gets to it
            close()
    return totals
