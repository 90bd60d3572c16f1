"""Token sampling with llama.cpp's default chain: penalties -> top-k -> top-p -> min-p -> temperature -> draw.

What is implemented, and how it relates to llama.cpp's `common_sampler` chain (common/sampling.cpp):
- penalties: repeat penalty over the last `repeat_last_n` tokens of the history (positive logits divided,
  zero/negative multiplied), plus additive frequency (count * f) and presence (f if seen) penalties.
  llama.cpp counts prompt tokens too when the caller feeds them as history (llama-cli does); so do we:
  `history` is whatever the caller passes, normally prompt + generated ids.
- top-k (0 = off), top-p (smallest sorted prefix whose cumulative probability reaches p; p = 1 is off),
  min-p (keep p_i >= min_p * p_max; 0 is off), temperature (divides logits), then a draw from the softmax.
  Probabilities for top-p are the softmax of the candidates left by top-k at temperature 1, as in llama.cpp.
- Temperature <= 0 is greedy: argmax of the penalised logits, ties to the lowest id. (llama.cpp's chain at
  temp 0 keeps only the max logit, which top-k/top-p/min-p never remove, so it is the same token.)
- Not implemented, all off by default in llama.cpp: DRY, typical-p, XTC, top-n-sigma, dynamic temperature,
  mirostat, grammars. The RNG is numpy's PCG64, so draws are not bit-identical to llama.cpp's mt19937;
  the distribution drawn from is the same.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rocmforge_core.errors import BadInputError
from rocmforge_core.validate import INT32_MAX, check_number, is_int, is_number

# Without top-k, top-p first looks for the nucleus among this many best tokens, then 16x more, and so
# on (llama.cpp has the same adaptive idea): a full sort of 262k logits costs ~30-90 ms on numpy.
_TOP_P_SHORTLIST = 256
SEED_MAX = 2**64 - 1  # numpy's generator takes any size, but clients store seeds as 64-bit at most
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty")
_INT_FIELDS = ("top_k", "repeat_last_n", "seed")
_FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "min_p": "--min-p",
          "repeat_penalty": "--repeat-penalty", "frequency_penalty": "frequency_penalty",
          "presence_penalty": "presence_penalty", "top_k": "--top-k", "repeat_last_n": "--repeat-last-n",
          "seed": "--seed"}


# In a penalty window handed to a device sampler: the history's newest id, not known on the host yet
# (a step queued ahead; the device fills it in from the previous step's draw: sample.hip
# RF_WINDOW_PENDING). -1 pads a window.
WINDOW_PENDING = -2


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; defaults are llama.cpp's. `seed` None (or -1) means a fresh random seed."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def validate(self) -> "SamplingParams":
        """Return self, or raise BadInputError naming the first bad flag (wrong type, range or NaN)."""
        self._check_types()
        checks = [
            ("--temperature", self.temperature, self.temperature >= 0, "must be >= 0", "; 0 = greedy"),
            ("--top-k", self.top_k, self.top_k >= 0, "must be >= 0", "; 0 = off"),
            ("--top-k", self.top_k, self.top_k <= INT32_MAX, f"must be <= {INT32_MAX}", ""),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "must be in (0, 1]", ""),
            ("--min-p", self.min_p, 0 <= self.min_p <= 1, "must be in [0, 1]", ""),
            ("--repeat-penalty", self.repeat_penalty, self.repeat_penalty > 0, "must be > 0", "; 1 = off"),
            ("--repeat-last-n", self.repeat_last_n, self.repeat_last_n >= -1, "must be >= -1",
             "; -1 = whole context, 0 = off"),
            ("--repeat-last-n", self.repeat_last_n, self.repeat_last_n <= INT32_MAX, f"must be <= {INT32_MAX}", ""),
            ("--seed", self.seed, self.seed is None or self.seed >= -1, "must be >= 0", "; -1 = random"),
            ("--seed", self.seed, self.seed is None or self.seed <= SEED_MAX, "must fit in 64 bits", ""),
        ]
        for flag, value, ok, rule, note in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise BadInputError(f"{flag} {rule} (got {_fmt(value)}{note})")
        for name in _FLOAT_FIELDS:
            check_number(_FLAGS[name], getattr(self, name))  # inf, and ints too large for a float
        return self

    def _check_types(self) -> None:
        """Numbers where numbers belong: a float top-k or a bool temperature would pass the range
        checks and then fail deep inside the sampler (or the GPU kernel it feeds)."""
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not is_number(value):
                raise BadInputError(f"{_FLAGS[name]} must be a number (got {value!r})")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not (is_int(value) or (name == "seed" and value is None)):
                raise BadInputError(f"{_FLAGS[name]} must be a whole number (got {_fmt(value)})")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


# ---- chain stages (each usable on its own; the tests call them directly) -----------------------------


def apply_penalties(logits: np.ndarray, history: Sequence[int], repeat_penalty: float = 1.0,
                    last_n: int = 64, frequency_penalty: float = 0.0,
                    presence_penalty: float = 0.0) -> np.ndarray:
    """Penalise tokens seen in the last `last_n` history ids (-1 = all, 0 = none). Returns a new array
    when anything changes, else `logits` itself (no copy on the default settings)."""
    off = repeat_penalty == 1.0 and frequency_penalty == 0.0 and presence_penalty == 0.0
    if off or last_n == 0 or len(history) == 0:
        return logits
    recent = np.asarray(history[-last_n:] if last_n > 0 else history, dtype=np.int64)
    recent = recent[(recent >= 0) & (recent < logits.shape[-1])]
    ids, counts = np.unique(recent, return_counts=True)
    out = logits.copy()
    seen = out[ids].astype(np.float64)
    # Dividing a negative logit would raise its probability, so negatives are multiplied instead.
    with np.errstate(over="ignore"):
        seen = np.where(seen <= 0, seen * repeat_penalty, seen / repeat_penalty)
        seen = seen - counts * frequency_penalty - presence_penalty
    # Huge penalties stop at the most negative finite logit: an -inf row has no distribution to draw from.
    limit = float(np.finfo(out.dtype).max)
    out[ids] = np.clip(np.nan_to_num(seen, nan=-limit), -limit, limit).astype(out.dtype)
    return out


def top_k_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (ids, logits) of each row, best first; k <= 0 or k >= vocab keeps all, fully sorted.

    logits (B, V) -> ids (B, K), values (B, K). argpartition keeps this O(V) for k << V.
    """
    vocab = logits.shape[-1]
    if 0 < k < vocab:
        part = np.argpartition(logits, vocab - k, axis=-1)[:, vocab - k:]  # (B, k), unordered
        part = np.sort(part, axis=-1)
        # argpartition picks any of the logits equal to the k-th best; take the lowest ids among them
        # (so top_k = 1 is greedy's argmax, and a device sampler can choose the same set).
        kth = np.take_along_axis(logits, part, axis=-1).min(axis=-1)
        for b in range(logits.shape[0]):
            row = logits[b]
            ties = np.flatnonzero(row == kth[b])
            if len(ties) > 1:
                above = np.flatnonzero(row > kth[b])
                part[b] = np.sort(np.concatenate([above, ties[:k - len(above)]]))
    else:
        part = np.broadcast_to(np.arange(vocab), logits.shape)
    vals = np.take_along_axis(logits, part, axis=-1)
    # With ids ascending, a stable sort on the negated values puts the best first and keeps equal
    # logits in id order, so ties resolve to the lowest id like a greedy argmax.
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1), np.take_along_axis(vals, order, -1)


def _log_softmax_rows(vals: np.ndarray, log_z: np.ndarray | None = None) -> np.ndarray:
    vals = vals.astype(np.float64, copy=False)
    if log_z is None:
        top = np.max(vals, axis=-1, keepdims=True)
        log_z = top + np.log(np.sum(np.exp(vals - top), axis=-1, keepdims=True))
    return vals - log_z


def top_p_mask(sorted_vals: np.ndarray, p: float, log_z: np.ndarray | None = None) -> np.ndarray:
    """Keep-mask over best-first logits (B, K): the shortest prefix whose probability reaches p.

    Probabilities are the softmax over the row, or over a larger set whose log-normaliser is `log_z`
    (B, 1) when the row is only a shortlist. The first token is always kept.
    """
    if p >= 1.0:
        return np.ones(sorted_vals.shape, dtype=bool)
    probs = np.exp(_log_softmax_rows(sorted_vals, log_z))
    before = np.cumsum(probs, axis=-1) - probs  # probability of everything ranked above each token
    return before < p


def min_p_mask(vals: np.ndarray, min_p: float) -> np.ndarray:
    """Keep-mask (B, K): tokens whose probability is at least min_p times the best one's."""
    if min_p <= 0.0:
        return np.ones(vals.shape, dtype=bool)
    top = np.max(vals, axis=-1, keepdims=True).astype(np.float64)
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p): no softmax needed.
    return vals >= top + math.log(min_p)


def _full_log_z(logits: np.ndarray) -> np.ndarray:
    top = np.max(logits, axis=-1, keepdims=True).astype(np.float64)
    return top + np.log(np.sum(np.exp(logits - top), axis=-1, keepdims=True, dtype=np.float64))


def _shortlist(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Candidates left by top-k, top-p and min-p: (ids, logits) (B, K), -inf marking removed ones."""
    if 0 < params.top_k < logits.shape[-1]:
        ids, vals = top_k_candidates(logits, params.top_k)
        keep = top_p_mask(vals, params.top_p) & min_p_mask(vals, params.min_p)
        return ids, np.where(keep, vals, -np.inf)
    rows = [_untruncated_row(row, params) for row in logits]
    width = max(len(ids) for ids, _ in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    vals = np.full((len(rows), width), -np.inf, dtype=logits.dtype)
    for i, (row_ids, row_vals) in enumerate(rows):
        ids[i, :len(row_ids)], vals[i, :len(row_vals)] = row_ids, row_vals
    return ids, vals


def _untruncated_row(row: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """top-p then min-p over a whole vocabulary row (V,) without sorting it when that can be avoided."""
    # min-p and top-p each keep a best-first prefix, so cutting by min-p first leaves the same set,
    # as long as top-p still measures probability against the whole row (log_z).
    ids = np.flatnonzero(min_p_mask(row, params.min_p)) if params.min_p > 0 else np.arange(len(row))
    if params.top_p >= 1.0:
        return ids, row[ids]  # order does not matter to the draw
    log_z = _full_log_z(row[None, :])
    sub = row[ids][None, :]
    k = _TOP_P_SHORTLIST
    while True:  # widen the shortlist until it holds the nucleus (flat rows end in a full sort)
        best, vals = top_k_candidates(sub, k)
        if k >= sub.shape[-1] or np.exp(_log_softmax_rows(vals, log_z)).sum() >= params.top_p:
            break
        k *= 16
    keep = top_p_mask(vals, params.top_p, log_z)[0]
    return ids[best[0][keep]], vals[0][keep]


def candidate_probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The distribution the draw uses, for (already penalised) logits (B, V) or (V,).

    Returns (ids, probs), each (B, K) (or (K,)): probs are zero for removed tokens and sum to 1.
    Greedy settings give a one-hot on the argmax.
    """
    row = logits.ndim == 1
    logits2d = logits[None, :] if row else logits
    if params.greedy:
        ids = np.argmax(logits2d, axis=-1)[:, None]
        out = ids, np.ones(ids.shape, dtype=np.float64)
    else:
        ids, vals = _shortlist(logits2d, params)
        # Shift to the best logit before dividing: a tiny temperature then sends the others to -inf
        # (probability 0, the greedy limit) instead of overflowing to inf, and inf - inf = NaN.
        vals = vals.astype(np.float64)
        vals -= np.max(vals, axis=-1, keepdims=True)
        with np.errstate(over="ignore"):
            vals /= params.temperature
        out = ids, np.exp(_log_softmax_rows(vals))
    return (out[0][0], out[1][0]) if row else out


def token_logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) and the k most likely (id, log p), best first, under the model's own distribution:
    the softmax of the raw logits (V,), before penalties, truncation and temperature, as OpenAI's API
    reports them, so they do not depend on the sampling settings."""
    logp = _log_softmax_rows(np.asarray(logits)[None, :])[0]
    top: list[tuple[int, float]] = []
    if k > 0:
        ids, vals = top_k_candidates(logp[None, :], k)
        top = [(int(i), float(v)) for i, v in zip(ids[0], vals[0])]
    return float(logp[token]), top


class Sampler:
    """Draws token ids with one seeded numpy Generator; `seed` is the seed actually used."""

    def __init__(self, params: SamplingParams | None = None):
        self.params = (params or SamplingParams()).validate()
        seed = self.params.seed
        # llama.cpp's seeds are 32-bit and -1 asks for a random one; keep the same range to report.
        self.seed = secrets.randbits(32) if seed is None or seed == -1 else int(seed)
        self.rng = np.random.default_rng(self.seed)
        self._ahead: list[float] = []  # uniforms drawn in advance (peek_uniform), used first

    def uniform(self) -> float:
        """The next uniform of this sampler's sequence (one per sampled token)."""
        return self._ahead.pop(0) if self._ahead else float(self.rng.random())

    def peek_uniform(self) -> float:
        """The uniform the next token will use, drawn now (a step computed ahead needs it); the
        sequence is unchanged: uniform() returns it next."""
        self._ahead.append(float(self.rng.random()))
        return self._ahead[-1]

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """One token id from logits (vocab,)."""
        return int(self.sample_batch(np.asarray(logits)[None, :], [history])[0])

    def sample_batch(self, logits: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """One token id per row of logits (B, vocab), row i penalised with histories[i]. -> (B,) int64"""
        logits = np.asarray(logits)
        if logits.ndim != 2 or len(histories) != logits.shape[0]:
            raise ValueError(f"logits {logits.shape} need one history per row (got {len(histories)})")
        p = self.params
        rows = [logits[i] for i in range(logits.shape[0])]
        penalised = [apply_penalties(row, h, p.repeat_penalty, p.repeat_last_n, p.frequency_penalty,
                                     p.presence_penalty) for row, h in zip(rows, histories)]
        if any(new is not old for new, old in zip(penalised, rows)):
            logits = np.stack(penalised)
        if p.greedy:
            return np.argmax(logits, axis=-1).astype(np.int64)
        ids, probs = candidate_probs(logits, p)
        return self._draw(ids, probs)

    def _draw(self, ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Inverse-CDF draw per row: the first candidate whose cumulative probability exceeds u."""
        cdf = np.cumsum(probs, axis=-1)  # (B, K)
        u = np.array([[self.uniform()] for _ in range(probs.shape[0])]) * cdf[:, -1:]
        pick = np.sum(cdf <= u, axis=-1)
        # Rounding can leave u at the very top of the cdf; fall back to the last token with mass.
        last = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
        pick = np.minimum(pick, last)
        return np.take_along_axis(ids, pick[:, None], -1)[:, 0].astype(np.int64)
