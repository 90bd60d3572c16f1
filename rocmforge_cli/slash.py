"""Slash commands of `rocmforge chat`: the conversation state they act on, their parsing and dispatch,
the `/save` file format, and the assembly of `\"\"\"` multi-line input.

Nothing here touches a terminal or the engine: the REPL (repl.py) hands every line that starts with "/"
to `dispatch`, prints the returned Outcome's message or error, and performs its action (exit, reply
again, forget the KV cache). That keeps every command testable as plain function calls.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shlex
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from rocmforge_cli.render import Display
from rocmforge_core.errors import BadInputError
from rocmforge_core.sampler import SamplingParams
from rocmforge_core.validate import is_int

SAVE_FORMAT = "rocmforge-chat"
SAVE_VERSION = 1
MAX_FILE_BYTES = 16 * 2**20  # a chat file larger than this is refused before it is read
MAX_DEPTH = 8                # the format nests 3 deep (document, messages list, message)

# Outcome actions the REPL carries out after a command.
EXIT = "exit"
REGEN = "regen"
CLEAR = "clear"


@dataclass
class ModelInfo:
    """What /show model and /show template report; filled in by the REPL from the loaded engine."""

    name: str
    path: str
    architecture: str
    backend: str
    backend_reason: str
    n_ctx: int
    template_name: str | None = None  # None: no chat template, raw completion mode
    template_source: str | None = None
    parameters: int | None = None       # weights' element count (None: not known)
    quantization: str | None = None     # the file type, e.g. Q4_1
    context_length: int | None = None   # the length the model was trained for


@dataclass
class ChatState:
    """The conversation and the settings a reply is generated with. `messages` holds the user and
    assistant turns only; the system prompt lives apart so /clear can keep it."""

    model: ModelInfo
    sampling: dict = field(default_factory=lambda: sampling_dict(SamplingParams()))
    max_tokens: int = 1024
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    show_stats: bool = False
    last_stats: str | None = None
    display: Display = field(default_factory=Display)  # shared with the Renderer

    def conversation(self) -> list[dict]:
        """The messages as the chat template sees them: the system prompt first, when there is one."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.messages]

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.sampling)


@dataclass
class Outcome:
    """What a command asks of the REPL: a message to print, a one-line error, and/or an action."""

    message: str | None = None
    error: str | None = None
    action: str | None = None


def sampling_dict(params: SamplingParams) -> dict:
    return {f.name: getattr(params, f.name) for f in fields(SamplingParams)}


# ---- parsing ---------------------------------------------------------------------------------------


def is_command(line: str) -> bool:
    """A line is a command when it starts with "/"; "//text" sends "/text" as an ordinary message."""
    text = line.lstrip()
    return text.startswith("/") and not text.startswith("//")


def unescape(line: str) -> str:
    """The message text of a non-command line ("//x" -> "/x")."""
    text = line.lstrip()
    return text[1:] if text.startswith("//") else line


def parse(line: str) -> tuple[str, str]:
    """'/set temp 0.5' -> ('set', 'temp 0.5'). The name is lower-cased; the argument keeps its case."""
    text = line.strip()[1:]
    name, _, arg = text.partition(" ")
    return name.strip().lower(), arg.strip()


def dispatch(state: ChatState, line: str) -> Outcome:
    """Run one slash command against `state`. Bad input gives Outcome(error=...), never an exception."""
    name, arg = parse(line)
    command = COMMANDS.get(ALIASES.get(name, name))
    if command is None:
        return Outcome(error=f"unknown command /{name} (type /help for the list)")
    try:
        return command.handler(state, arg)
    except BadInputError as exc:
        return Outcome(error=exc.one_line())
    except Exception as exc:  # a bug in one command must not end the chat and lose the conversation
        return Outcome(error=f"/{name} failed: {type(exc).__name__}: {exc}")


# ---- the commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    handler: Callable[[ChatState, str], Outcome]
    usage: str
    help: str


# more ways to call /set, listed after it in /help
_SET_FORMS = [("/set parameter NAME VALUE", "ollama's names (num_predict = max_tokens)"),
              ("/set verbose|quiet", "a stats line after each reply, or none"),
              ("/set [no]wordwrap", "wrap replies at word boundaries (default on)"),
              ("/set [no]markdown", "show finished replies rendered as Markdown (default on)")]


def _help(state: ChatState, arg: str) -> Outcome:
    rows = []
    for name, c in COMMANDS.items():
        rows.append((c.usage, c.help))
        if name == "set":
            rows += _SET_FORMS
    width = max(len(usage) for usage, _ in rows)
    lines = [f"  {usage:<{width}}  {text}" for usage, text in rows]
    lines += ["", '  """ starts a multi-line message; a line ending in """ sends it. Pasted text is kept whole.',
              "  Ctrl-C stops a reply; Ctrl-C or Ctrl-D at an empty prompt leaves. //text sends /text."]
    return Outcome(message="\n".join(lines))


def _exit(state: ChatState, arg: str) -> Outcome:
    return Outcome(action=EXIT)


def _clear(state: ChatState, arg: str) -> Outcome:
    state.messages.clear()
    state.last_stats = None
    kept = " (system prompt kept)" if state.system else ""
    return Outcome(message=f"conversation cleared{kept}", action=CLEAR)


def _regen(state: ChatState, arg: str) -> Outcome:
    if not any(m["role"] == "user" for m in state.messages):
        return Outcome(error="nothing to regenerate yet: send a message first")
    while state.messages and state.messages[-1]["role"] == "assistant":
        state.messages.pop()
    return Outcome(action=REGEN)


def _system(state: ChatState, arg: str) -> Outcome:
    if not arg:
        current = state.system if state.system else "(none)"
        return Outcome(message=f"system prompt: {current}")
    text = _unquote(arg)
    state.system = text or None
    return Outcome(message="system prompt set" if text else "system prompt removed")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


# /set names: what the user may type -> the field it sets. Flags' spellings work too (--top-k, temp).
_SET_NAMES = {
    "temperature": "temperature", "temp": "temperature", "top_k": "top_k", "top_p": "top_p",
    "min_p": "min_p", "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
    "seed": "seed", "max_tokens": "max_tokens", "n": "max_tokens", "system": "system",
}
_INT_FIELDS = {"top_k", "repeat_last_n", "seed", "max_tokens"}
_SET_USAGE = ("usage: /set PARAM VALUE (temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, "
              "seed, max_tokens, system), /set parameter NAME VALUE, or /set verbose|quiet|wordwrap|"
              "nowordwrap|markdown|nomarkdown")
# ollama's `/set parameter NAME VALUE` names (its Modelfile's); num_ctx sizes the KV cache at load
_OLLAMA_NAMES = {
    "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
    "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n", "seed": "seed",
    "num_predict": "max_tokens",
}
_PARAMETER_USAGE = f"usage: /set parameter NAME VALUE ({', '.join([*_OLLAMA_NAMES, 'num_ctx'])})"
# /set switches: (what they set, the value, what the REPL prints)
_SET_SWITCHES = {
    "verbose": ("show_stats", True, "stats on: a line after each reply"),
    "quiet": ("show_stats", False, "stats off"),
    "wordwrap": ("wordwrap", True, "word wrap on"),
    "nowordwrap": ("wordwrap", False, "word wrap off: the terminal breaks long lines"),
    "markdown": ("markdown", True, "Markdown on: finished replies are shown rendered"),
    "nomarkdown": ("markdown", False, "Markdown off: replies stay as the model wrote them"),
}


def _set(state: ChatState, arg: str) -> Outcome:
    raw_name, _, value = arg.partition(" ")
    value = value.strip()
    if raw_name.lower() == "parameter":
        return _set_parameter(state, value)
    if raw_name.lower() in _SET_SWITCHES and not value:
        return _set_switch(state, raw_name.lower())
    if not raw_name or not value:
        return Outcome(error=_SET_USAGE)
    key = _SET_NAMES.get(raw_name.lower().lstrip("-").replace("-", "_"))
    if key is None:
        return Outcome(error=f"unknown parameter '{raw_name}' ({_SET_USAGE})")
    if key == "system":
        return _system(state, value)
    return _set_value(state, key, value)


def _set_parameter(state: ChatState, arg: str) -> Outcome:
    """ollama's spelling: `/set parameter num_predict 64` sets max_tokens."""
    name, _, value = arg.partition(" ")
    value = value.strip()
    if not name or not value:
        return Outcome(error=_PARAMETER_USAGE)
    if name.lower() == "num_ctx":
        return Outcome(error=f"num_ctx cannot change during a chat: the KV cache is sized when the model "
                             f"loads (ctx {state.model.n_ctx} now); restart with --ctx N")
    key = _OLLAMA_NAMES.get(name.lower())
    if key is None:
        return Outcome(error=f"unknown parameter '{name}' ({_PARAMETER_USAGE})")
    return _set_value(state, key, value)


def _set_switch(state: ChatState, name: str) -> Outcome:
    attr, value, message = _SET_SWITCHES[name]
    setattr(state if attr == "show_stats" else state.display, attr, value)
    return Outcome(message=message)


def _set_value(state: ChatState, key: str, value: str) -> Outcome:
    parsed = _parse_value(key, value)
    if key == "max_tokens":
        if parsed < 1:
            return Outcome(error=f"max_tokens must be at least 1 (got {parsed})")
        state.max_tokens = parsed
    else:
        candidate = dict(state.sampling, **{key: parsed})
        SamplingParams(**candidate).validate()  # BadInputError names the flag and the rule
        state.sampling = candidate
    return Outcome(message=f"{key} = {_show_value(key, parsed)}")


def _parse_value(key: str, value: str):
    if key == "seed" and value.lower() in ("random", "none", "-1"):
        return None
    try:
        return int(value) if key in _INT_FIELDS else float(value)
    except ValueError:
        kind = "a whole number" if key in _INT_FIELDS else "a number"
        raise BadInputError(f"{key} needs {kind} (got '{value}')") from None


def _show_value(key: str, value) -> str:
    if key == "seed" and value is None:
        return "random"
    return f"{value:g}" if isinstance(value, float) else str(value)


_SHOWN_PARAMS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed")


_SHOW_USAGE = "usage: /show info|params|system|template|model"


def _show(state: ChatState, arg: str) -> Outcome:
    what = arg.lower()
    if what == "info":
        return Outcome(message=_table(_info_rows(state.model)))
    if what == "system":
        return Outcome(message=state.system if state.system else "no system prompt (/system TEXT sets one)")
    if what in ("params", "parameters"):
        rows = [(k, _show_value(k, state.sampling[k])) for k in _SHOWN_PARAMS]
        rows += [("max_tokens", str(state.max_tokens)), ("ctx", str(state.model.n_ctx))]
        return Outcome(message=_table(rows))
    if what == "template":
        if state.model.template_source is None:
            return Outcome(message="no chat template: raw completion mode (the model continues the "
                                   "conversation's text; give one with --chat-template-file)")
        return Outcome(message=f"# chat template ({state.model.template_name})\n"
                               f"{state.model.template_source}")
    if what == "model":
        m = state.model
        template = m.template_name or "none (raw completion mode)"
        rows = [("name", m.name), ("path", m.path), ("architecture", m.architecture),
                ("backend", f"{m.backend} ({m.backend_reason})"), ("ctx", str(m.n_ctx)),
                ("template", template)]
        return Outcome(message=_table(rows))
    return Outcome(error=_SHOW_USAGE)


def _info_rows(m: ModelInfo) -> list[tuple[str, str]]:
    """ollama's /show info: what the model is and how it runs here."""
    rows = [("architecture", m.architecture)]
    if m.parameters:
        rows.append(("parameters", format_parameters(m.parameters)))
    if m.quantization:
        rows.append(("quantization", m.quantization))
    if m.context_length:
        rows.append(("context length", str(m.context_length)))
    rows += [("ctx", f"{m.n_ctx} (this chat's KV cache)"), ("backend", f"{m.backend} ({m.backend_reason})"),
             ("template", m.template_name or "none (raw completion mode)")]
    return rows


def format_parameters(n: int) -> str:
    """135,000,000 -> 135M, as ollama writes a model's size."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def file_facts(gguf) -> dict:
    """ModelInfo's parameters, quantization and trained context from an open GGUF file. The
    quantization is the file type the file declares (general.file_type, llama.cpp's enum), else the
    tensor type that holds the most bytes."""
    tensors = list(gguf.tensors.values())
    quantization = None
    file_type = gguf.get("general.file_type")
    if is_int(file_type):
        from gguf import LlamaFileType

        with contextlib.suppress(ValueError):
            quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    if quantization is None and tensors:
        by_type: dict[str, int] = {}
        for t in tensors:
            by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + t.n_bytes
        quantization = max(by_type, key=by_type.get)
    trained = gguf.get(f"{gguf.get('general.architecture')}.context_length")
    return {"parameters": sum(t.n_elements for t in tensors) or None, "quantization": quantization,
            "context_length": trained if is_int(trained) else None}


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _stats(state: ChatState, arg: str) -> Outcome:
    state.show_stats = not state.show_stats
    if not state.show_stats:
        return Outcome(message="stats off")
    last = f"\nlast reply: {state.last_stats}" if state.last_stats else ""
    return Outcome(message=f"stats on: a line after each reply{last}")


def _save(state: ChatState, arg: str) -> Outcome:
    path = _path_arg(arg, "/save FILE")
    data = to_json(state)
    try:
        _write_atomically(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: text that UTF-8 cannot hold (a lone surrogate)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInputError(f"cannot write {path}: {reason}") from None
    return Outcome(message=f"saved {len(data['messages'])} messages to {path}")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename it over `path`, so a failed save never leaves
    half a file where a good one was. The temporary name is short: a target name near the 255-byte
    limit must still have room for it."""
    tmp = path.parent / f".rocmforge-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            os.unlink(tmp)
        raise


def _load(state: ChatState, arg: str) -> Outcome:
    path = _path_arg(arg, "/load FILE")
    try:
        text = _read_chat_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInputError(f"cannot read {path}: {reason}") from None
    depth = _nesting_depth(text)
    if depth > MAX_DEPTH:
        raise BadInputError(f"{path} is not a rocmforge chat file (JSON nested {depth} deep; "
                            f"a chat file nests {MAX_DEPTH} at most)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    from_json(state, data, source=str(path))
    return Outcome(message=f"loaded {len(state.conversation())} messages from {path}")


def _read_chat_file(path: Path) -> str:
    """The file's text, refusing what is not a regular file of at most MAX_FILE_BYTES *before* reading:
    /dev/zero never ends and a FIFO blocks until a writer comes."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(f"cannot read {path}: not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise BadInputError(f"{path} is {st.st_size / 2**20:.1f} MiB; a chat file is at most "
                            f"{MAX_FILE_BYTES >> 20} MiB")
    # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it must not hang
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BadInputError(f"cannot read {path}: not a regular file")
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:  # it grew after the stat
        raise BadInputError(f"{path} is over {MAX_FILE_BYTES >> 20} MiB; a chat file is at most that")
    return raw.decode("utf-8")


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _nesting_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest, measured without parsing it: json.loads
    recurses once per level and a file of 100,000 "[" ends in RecursionError."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def _path_arg(arg: str, usage: str) -> Path:
    if not arg:
        raise BadInputError(f"usage: {usage}")
    try:
        parts = shlex.split(arg)
    except ValueError:
        parts = [arg]
    if len(parts) != 1:
        raise BadInputError(f"usage: {usage} (quote a path that has spaces)")
    return Path(parts[0]).expanduser()


COMMANDS: dict[str, Command] = {
    "help": Command(_help, "/help", "this list"),
    "bye": Command(_exit, "/bye, /exit", "leave (Ctrl-D does too)"),
    "clear": Command(_clear, "/clear", "forget the conversation (keeps the system prompt)"),
    "regen": Command(_regen, "/regen", "answer the last message again"),
    "system": Command(_system, "/system TEXT", 'set the system prompt (/system "" removes it)'),
    "set": Command(_set, "/set PARAM VALUE", "change a sampling parameter, max_tokens or system"),
    "show": Command(_show, "/show info|params|system|template|model",
                    "model facts, settings, system prompt, template, file"),
    "stats": Command(_stats, "/stats", "toggle the stats line after each reply"),
    "save": Command(_save, "/save FILE", "write the conversation and parameters as JSON"),
    "load": Command(_load, "/load FILE", "restore a conversation written by /save"),
}
ALIASES = {"exit": "bye", "quit": "bye", "?": "help"}


# ---- the /save file --------------------------------------------------------------------------------


def to_json(state: ChatState) -> dict:
    """The /save document: the conversation (system prompt first) and the generation parameters."""
    return {
        "format": SAVE_FORMAT,
        "version": SAVE_VERSION,
        "model": state.model.name,
        "messages": state.conversation(),
        "params": dict(state.sampling, max_tokens=state.max_tokens),
    }


_TOP_LEVEL = ("format", "version", "model", "messages", "params")
_MESSAGE_KEYS = {"role", "content"}


def from_json(state: ChatState, data, source: str = "the file") -> None:
    """Restore a /save document into `state`, checked field by field; BadInputError (state untouched)
    when it is not one. "format" and "version" may be left out of a hand-written file."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise BadInputError(f"{source} is not a rocmforge chat file (no \"messages\" list)")
    _check_header(data, source)
    system, messages = _check_messages(data["messages"], source)
    params = data.get("params")
    sampling, max_tokens = _check_params({} if params is None else params, state, source)
    state.system, state.messages = system, messages
    state.sampling, state.max_tokens = sampling, max_tokens
    state.last_stats = None


def _check_header(data: dict, source: str) -> None:
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise BadInputError(f"{source}: unknown field(s) {', '.join(map(repr, unknown))}")
    if data.get("format", SAVE_FORMAT) != SAVE_FORMAT:
        raise BadInputError(f"{source}: \"format\" is {data['format']!r}, not {SAVE_FORMAT!r}")
    version = data.get("version", SAVE_VERSION)
    if not is_int(version) or not 1 <= version <= SAVE_VERSION:
        raise BadInputError(f"{source}: version {version!r} is not one this rocmforge reads "
                            f"(1..{SAVE_VERSION})")
    if not isinstance(data.get("model", ""), str):
        raise BadInputError(f"{source}: \"model\" must be a text name")


def _check_messages(items: list, source: str) -> tuple[str | None, list[dict]]:
    system, messages = None, []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("content"), str)
                and item.get("role") in ("system", "user", "assistant")):
            raise BadInputError(f"{source}: message {i + 1} needs a role (system, user or assistant) "
                                "and a text content")
        if set(item) != _MESSAGE_KEYS:
            raise BadInputError(f"{source}: message {i + 1} has unknown field(s) "
                                f"{', '.join(map(repr, sorted(set(item) - _MESSAGE_KEYS)))}")
        if item["role"] == "system":
            if i != 0:
                raise BadInputError(f"{source}: a system message may only come first (message {i + 1})")
            system = item["content"] or None
        else:
            messages.append({"role": item["role"], "content": item["content"]})
    return system, messages


def _check_params(params, state: ChatState, source: str) -> tuple[dict, int]:
    if not isinstance(params, dict):
        raise BadInputError(f"{source}: \"params\" must be an object")
    known = set(state.sampling) | {"max_tokens"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadInputError(f"{source}: unknown parameter(s) {', '.join(unknown)}")
    sampling = dict(state.sampling, **{k: v for k, v in params.items() if k != "max_tokens"})
    try:  # types and ranges of every field: a float top_k here would fail at the next reply
        SamplingParams(**sampling).validate()
    except BadInputError as exc:
        raise BadInputError(f"{source}: bad parameter value: {exc.message}") from None
    max_tokens = params.get("max_tokens", state.max_tokens)
    if not is_int(max_tokens) or max_tokens < 1:
        raise BadInputError(f"{source}: max_tokens must be a whole number >= 1 (got {max_tokens!r})")
    return sampling, max_tokens


# ---- multi-line input ------------------------------------------------------------------------------


class LineAssembler:
    '''Turns typed lines into messages: a line starting with """ opens a block that runs until a line
    ending with """ (ollama's rule); any other line is a message on its own.'''

    def __init__(self):
        self._lines: list[str] | None = None

    @property
    def in_block(self) -> bool:
        return self._lines is not None

    def cancel(self) -> None:
        self._lines = None

    def feed(self, line: str) -> str | None:
        """The finished message, or None while a block is still open."""
        if self._lines is None:
            head = line.lstrip()
            if not head.startswith('"""'):
                return line
            rest = head[3:]
            if rest.rstrip().endswith('"""'):  # """one line"""
                return rest.rstrip()[:-3].strip("\n")
            self._lines = [rest] if rest.strip() else []
            return None
        tail = line.rstrip()
        if tail.endswith('"""'):
            self._lines.append(tail[:-3])
            text, self._lines = "\n".join(self._lines), None
            return text.strip("\n")
        self._lines.append(line)
        return None
