"""Chat templates: render a model's Jinja `tokenizer.chat_template` (or an override file) into prompt text.

The environment matches what Hugging Face's `apply_chat_template` gives templates (and so what template
authors test against): a sandbox that cannot mutate its inputs, trim_blocks + lstrip_blocks, loop
controls, `raise_exception`, `strftime_now`, and a `tojson` that keeps non-ASCII text as it is.

Which template a model gets (`ChatTemplate.for_model`):
1. `--chat-template-file` when given;
2. else the GGUF's `tokenizer.chat_template`;
3. else ChatML, but only for a model whose metadata marks it as tuned for chat (see
   `looks_like_chat_model`); a base model gets None and is prompted with raw text.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from rocmforge_core.errors import BadInputError, RocmforgeError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_HINT = "use --chat-template-file or --raw"

# What one render may spend. Real templates take a few thousand steps per conversation; a template
# (from a file we did not write) that loops for ever or builds a huge string stops here instead.
MAX_STEPS = 1_000_000          # sandbox calls, attribute and item lookups, range() items, output chunks
MAX_SECONDS = 5.0
MAX_RANGE = 100_000
MAX_OUTPUT_CHARS = 32 * 2**20  # also the longest string or list an operator or a call may build

# Words in a model's name/finetune/tags that mean it was tuned to follow a chat ("gemma-3-1b-it",
# "Qwen2.5 0.5B Instruct", "Llama-2-7b-chat", "...-SFT"/"-DPO"). Matched as whole words.
_CHAT_MARKERS = {"instruct", "chat", "it", "sft", "dpo", "rlhf", "conversational", "assistant"}
_MARKER_FIELDS = ("general.finetune", "general.name", "general.basename", "general.type", "general.tags")


class ChatTemplateError(BadInputError):
    """A template refused the conversation through `raise_exception` (e.g. roles not alternating)."""


class TemplateLimitError(BadInputError):
    """A template render went past its work, time or output-size budget."""


class _Budget:
    """The work one render may still do; the sandbox's hooks spend it (cooperative: checked at each
    hook, so a single call between hooks is bounded by the argument and size checks instead)."""

    def __init__(self, max_output: int):
        self.steps, self.max_chars = MAX_STEPS, MAX_OUTPUT_CHARS
        self.max_output = min(max_output, MAX_OUTPUT_CHARS)  # the caller's (the context's) bound
        self.deadline = time.monotonic() + MAX_SECONDS

    def spend(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise TemplateLimitError(f"the chat template did more than {MAX_STEPS:,} steps of work", hint=_HINT)
        if self.steps % 256 == 0 and time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the chat template took more than {MAX_SECONDS:g} s to render", hint=_HINT)

    def size(self, n: int, what: str, limit: int | None = None) -> None:
        """Refuse `n` past the size limit; `what` is a phrase with an `{n}` for the count."""
        limit = self.max_chars if limit is None else limit
        if n > limit:
            raise TemplateLimitError(f"the chat template {what.format(n=f'{n:,}')} (the limit is "
                                     f"{limit:,})", hint=_HINT)


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("rocmforge_template_budget", default=None)


def _spend(n: int = 1) -> _Budget | None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend(n)
    return budget


def _check_args(args, kwargs) -> None:
    """A whole-number argument larger than the output limit (a width, a count, a repeat) can only
    build something too large, in one call our hooks cannot interrupt."""
    budget = _spend()
    if budget is None:
        return
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > budget.max_chars:
            budget.size(abs(value), "passed a function the number {n}")


def _sized(value) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _check_binop(operator: str, left, right) -> None:
    budget = _spend()
    if budget is None:
        return
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if _sized(seq) is not None and isinstance(count, int):
                budget.size(_sized(seq) * max(count, 0), "would build a string or list of {n} items")
    elif operator == "+" and _sized(left) is not None and _sized(right) is not None:
        budget.size(_sized(left) + _sized(right), "would build a string or list of {n} items")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        budget.size(abs(left).bit_length() * right // 8, "would compute a number of {n} bytes")


class _Range:
    """range() for templates: the same sequence, each item iterated spending one step."""

    def __init__(self, *args):
        self._range = range(*args)
        if len(self._range) > MAX_RANGE:  # jinja's own sandbox limit, which our range replaces
            raise TemplateLimitError(f"the chat template asked for a range of {len(self._range):,} items "
                                     f"(the limit is {MAX_RANGE:,})", hint=_HINT)

    def __iter__(self):
        for item in self._range:
            _spend()
            yield item

    def __len__(self):
        return len(self._range)

    def __getitem__(self, index):
        item = self._range[index]
        return _Range.of(item) if isinstance(item, range) else item

    def __reversed__(self):
        return iter(_Range.of(self._range[::-1]))

    def __contains__(self, item):
        return item in self._range

    @staticmethod
    def of(r: range) -> "_Range":
        out = _Range()
        out._range = r
        return out


def _guarded(fn):
    """A filter or global with its arguments checked and a step spent per call (filters do not pass
    through the sandbox's call hook)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _check_args(args, kwargs)
        return fn(*args, **kwargs)
    return wrapper


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    from jinja2.utils import generate_lorem_ipsum

    budget = _BUDGET.get()
    if budget is not None:
        budget.size(int(n) * int(max) * 8, "asked lipsum() for about {n} characters")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def looks_like_chat_model(metadata: Mapping[str, Any]) -> bool:
    """True when general.finetune/name/basename/type/tags contain a chat marker word.

    Words are split on anything not a letter or digit and compared case-insensitively, so
    "gemma-3-270m-it" and "Mistral-7B-Instruct-v0.2" are chat models while "Gemma 3 270m"
    (no finetune, type "model") is a base model.
    """
    words: set[str] = set()
    for key in _MARKER_FIELDS:
        value = metadata.get(key)
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(text, str):
                words.update(re.split(r"[^a-z0-9]+", text.lower()))
    return bool(words & _CHAT_MARKERS) or any(w.startswith("instruct") for w in words)


def strip_leading_bos(rendered: str, bos_token: str) -> tuple[str, bool]:
    """Drop a BOS the template wrote itself, so the tokenizer adds exactly one. -> (text, had_bos)"""
    if bos_token and rendered.startswith(bos_token):
        return rendered[len(bos_token):], True
    return rendered, False


def _raise_exception(message: str = "") -> None:
    raise ChatTemplateError(f"the chat template rejected the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <>&' for HTML and every non-ASCII character: wrong inside a prompt.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox with each hook spending the render's budget (see _Budget)."""

        intercepted_binops = frozenset({"*", "+", "**"})

        def call(self, context, obj, *args, **kwargs):  # noqa: D102
            _check_args(args, kwargs)
            return super().call(context, obj, *args, **kwargs)

        def getattr(self, obj, attribute):  # noqa: D102
            _spend()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):  # noqa: D102
            _spend()
            return super().getitem(obj, argument)

        def call_binop(self, context, operator, left, right):  # noqa: D102
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def unsafe_undefined(self, obj, attribute):
            # Jinja's sandbox returns an undefined value here, which prints as nothing: an escape
            # attempt such as {{ range.__globals__ }} would "work" by rendering empty. Say no instead.
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _Range
    env.globals["lipsum"] = _lipsum
    env.filters["tojson"] = _tojson
    env.filters = {name: _guarded(fn) for name, fn in env.filters.items()}
    return env


def _origin(name: str) -> str:
    """Where a template came from, in words for an error message."""
    if name.startswith("file:"):
        return name[len("file:"):]
    return {"gguf": "the model's tokenizer.chat_template"}.get(name, "the ChatML fallback")


def _compile(source: str, name: str):
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as exc:
        line = f"line {exc.lineno} of " if exc.lineno else ""
        raise BadInputError(f"the chat template could not be parsed: {exc.message} ({line}{_origin(name)})",
                            hint=_HINT) from None


def _special_text(metadata: Mapping[str, Any], key: str) -> str:
    """Token text of tokenizer.ggml.<key>_token_id from the vocabulary, '' when unknown."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
    if tokens is None or not isinstance(token_id, int) or not 0 <= token_id < len(tokens):
        return ""
    text = tokens[token_id]
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _read_override(path: str) -> str:
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInputError(f"cannot read the chat template file {path}: {reason}") from None
    if not source.strip():
        raise BadInputError(f"the chat template file {path} is empty")
    return source


class ChatTemplate:
    """A parsed chat template. `name` says where it came from: "gguf", "file:<path>", "chatml-fallback"."""

    def __init__(self, source: str, name: str = "gguf", bos_token: str = "", eos_token: str = ""):
        self.source = source
        self.name = name
        self.bos_token = bos_token  # the model's, used when render() is not given one
        self.eos_token = eos_token
        self._template = _compile(source, name)  # parse now: a broken template fails at load

    @classmethod
    def for_model(cls, metadata: Mapping[str, Any], override_file: str | None = None) -> "ChatTemplate | None":
        """The template to use for a model (see the module docstring), or None for a base model."""
        specials = dict(bos_token=_special_text(metadata, "bos"), eos_token=_special_text(metadata, "eos"))
        if override_file:
            return cls(_read_override(override_file), f"file:{override_file}", **specials)
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source.strip():
            return cls(source, "gguf", **specials)
        if looks_like_chat_model(metadata):
            return cls(CHATML_TEMPLATE, "chatml-fallback", **specials)
        return None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, bos_token: str | None = None,
               eos_token: str | None = None, tools: list | None = None, *,
               max_chars: int = MAX_OUTPUT_CHARS, **extra: Any) -> str:
        """The prompt text for `messages` ([{"role", "content"}, ...]); BadInputError if the template fails.

        bos_token/eos_token default to the model's token texts; extra keywords reach the template as
        variables (e.g. enable_thinking). The render stops with TemplateLimitError past MAX_STEPS,
        MAX_SECONDS or `max_chars` characters of output.
        """
        context = dict(extra, messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                       bos_token=self.bos_token if bos_token is None else bos_token,
                       eos_token=self.eos_token if eos_token is None else eos_token)
        budget = _Budget(max_chars)
        token = _BUDGET.set(budget)
        try:
            return self._generate(context, budget)
        except RocmforgeError:
            raise  # raise_exception's message, meant for the user as it is
        except Exception as exc:  # noqa: BLE001 - any template failure is bad input, never a crash
            raise BadInputError(f"the chat template could not be rendered: {type(exc).__name__}: {exc}"
                                f" ({_origin(self.name)})", hint=_HINT) from None
        finally:
            _BUDGET.reset(token)

    def _generate(self, context: dict, budget: _Budget) -> str:
        parts, total = [], 0
        for chunk in self._template.generate(**context):
            total += len(chunk)
            budget.size(total, "rendered more than {n} characters", budget.max_output)
            budget.spend()
            parts.append(chunk)
        return "".join(parts)

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, {len(self.source)} chars)"
