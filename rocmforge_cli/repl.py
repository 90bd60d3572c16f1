"""The `rocmforge chat` conversation loop: read a message, stream the reply, keep the KV cache warm.

One asyncio loop runs everything: the engine's inference loop (started before the first prompt is
read), prompt_toolkit's input (`prompt_async`, so the engine keeps running while we wait for keys) and
the reply stream. While a reply streams, the terminal is in raw mode and Ctrl-C arrives as a key, so the
reply stops within one decode step; a SIGINT handler covers a signal sent from elsewhere.

Models without a chat template (base models such as gemma3-270m) chat in raw completion mode: the
conversation is one growing text (system prompt, then each message followed directly by the model's
continuation) and the model continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from rocmforge_cli import slash
from rocmforge_cli.render import Renderer, format_stats
from rocmforge_core.engine import ContextOverflowError
from rocmforge_core.errors import RocmforgeError

PROMPT = ">>> "
CONTINUATION = "... "

# The conversation no longer fits the context window (the name the REPL's callers know it by).
ContextOverflow = ContextOverflowError


class Chat:
    """One conversation on one engine session: builds each turn's prompt and streams the reply."""

    def __init__(self, engine, session, state: slash.ChatState, ui: Renderer, *, context_shift: bool):
        self.engine = engine
        self.session = session
        self.state = state
        self.ui = ui
        self.context_shift = context_shift
        self._draining = None  # the task still reading a reply the user stopped
        self.typeahead = TypeAhead()

    @property
    def n_ctx(self) -> int | None:
        return self.engine.n_ctx

    def forget_cache(self) -> None:
        """After /clear: the KV cache no longer holds a prefix of the conversation."""
        if self.session is not None:
            self.session.reset()

    # ---- the prompt ------------------------------------------------------------------------------

    def prompt_ids(self) -> list[int]:
        """Token ids for the next reply (rocmforge_core.conversation's rules). With --context-shift the
        oldest exchanges dropped to make room leave the conversation for good; without it, an
        overflow raises ContextOverflow saying how far over it is, the conversation untouched."""
        from rocmforge_core.conversation import fit_conversation

        conversation = self.state.conversation()
        fit = fit_conversation(self.engine, conversation, max_new=self.state.max_tokens,
                               shift=self.context_shift)
        if fit.dropped:
            n_head = len(conversation) - len(self.state.messages)  # the system prompt, when there is one
            self.state.messages = fit.messages[n_head:]
            self.ui.notice(f"context full: dropped the {fit.dropped} oldest exchange(s); the system prompt stays")
        return fit.ids

    # ---- the reply -------------------------------------------------------------------------------

    async def reply(self, *, watch_keys: bool) -> str | None:
        """Answer the last user message; returns the finish reason, or None when nothing was sent."""
        await self.settle()
        stream = self._submit()
        if stream is None:
            return None
        try:
            text, final = await self._stream(stream, watch_keys)
        except RocmforgeError as exc:  # a remote reply refused or cut off: the turn did not happen
            self.ui.end_reply(None)
            if not self.ui.interactive:
                raise
            self.ui.error(exc.one_line())
            _drop_unanswered(self.state)
            return "error"
        self._finish_turn(text, final)
        return final.finish_reason if final else "cancelled"

    def _submit(self):
        """The reply's stream; in the REPL a refusal (context overflow, busy engine) is shown as one
        line and the unanswered message dropped, so the conversation stays as it was."""
        from rocmforge_core.engine import Request

        try:
            request = Request(tokens=self.prompt_ids(), session=self.session,
                              max_tokens=self.state.max_tokens, sampling=self.state.sampling_params())
            return self.engine.submit(request)
        except RocmforgeError as exc:
            if not self.ui.interactive:
                raise
            self.ui.error(exc.one_line())
            _drop_unanswered(self.state)
            return None

    async def _stream(self, stream, watch_keys: bool):
        """Show the reply as it streams -> (text shown, final event). Ctrl-C returns at once with the
        text shown so far and final None: the engine stops the request within one decode step, and
        `settle()` waits for that before the session is used again."""
        shown: list[str] = []
        interrupted = asyncio.Event()
        consume = asyncio.ensure_future(self._consume(stream, shown, interrupted))

        def on_interrupt() -> None:
            stream.cancel()
            interrupted.set()  # from here on, text still queued behind the cancel is not shown

        with _interrupt_watch(on_interrupt, typeahead=self.typeahead if watch_keys else None):
            waiter = asyncio.ensure_future(interrupted.wait())
            await asyncio.wait({consume, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if consume.done():
            return "".join(shown), consume.result()
        self._draining = consume
        consume.add_done_callback(self._late_stats)
        return "".join(shown), None

    async def _consume(self, stream, shown: list[str], interrupted: asyncio.Event):
        final = None
        async for event in stream:
            if event.text and not interrupted.is_set():
                shown.append(event.text)
                self.ui.delta(event.text)
            if event.finish_reason is not None:
                final = event
        return final

    async def settle(self) -> None:
        """Wait until a stopped reply's request has really ended (one decode step at most)."""
        draining, self._draining = self._draining, None
        if draining is not None:
            await asyncio.gather(draining, return_exceptions=True)

    def _late_stats(self, task) -> None:
        if task.cancelled() or task.exception() is not None or task.result() is None:
            return
        final = task.result()
        if final.timings is not None:
            self.state.last_stats = format_stats(final.timings, final.finish_reason)

    def _finish_turn(self, text: str, final) -> None:
        reason = final.finish_reason if final else "cancelled"
        self.ui.end_reply(reason)
        if reason == "error":
            message = f"generation failed: {final.error}"
            if not self.ui.interactive:
                raise RocmforgeError(message)
            self.ui.error(message)
            _drop_unanswered(self.state)
            return
        # a stopped reply is kept as it stands: the next turn continues the conversation after it
        self.state.messages.append({"role": "assistant", "content": text})
        t = final.timings if final else None
        if t is not None:
            self.state.last_stats = format_stats(t, reason)
            if self.state.show_stats:
                self.ui.stats(self.state.last_stats)
            if reason == "length" and self.n_ctx and t.prompt_tokens + t.completion_tokens >= self.n_ctx:
                self.ui.notice("the context is full: /clear starts over (or restart with a larger --ctx "
                               "or with --context-shift)")


def raw_document(state: slash.ChatState) -> str:
    """Raw completion mode's prompt (see rocmforge_core.conversation.raw_text)."""
    from rocmforge_core.conversation import raw_text

    return raw_text(state.conversation())


def _drop_unanswered(state: slash.ChatState) -> None:
    if state.messages and state.messages[-1]["role"] == "user":
        state.messages.pop()


class TypeAhead:
    """Keys typed while a reply streams, handled as a cooked terminal would: each line ended with Enter
    is sent in turn once the reply is done; an unfinished line waits on the next prompt, to edit."""

    def __init__(self):
        self.lines: list[str] = []
        self.partial = ""

    def feed(self, key_press) -> None:
        from prompt_toolkit.keys import Keys

        key = key_press.key
        if key in (Keys.ControlM, Keys.ControlJ):
            self.lines.append(self.partial)
            self.partial = ""
        elif key == Keys.ControlH:  # Backspace
            self.partial = self.partial[:-1]
        elif key == Keys.BracketedPaste:
            self.partial += key_press.data.replace("\r\n", "\n").replace("\r", "\n")
        elif not isinstance(key, Keys) and key.isprintable():
            self.partial += key

    def next(self) -> tuple[str, bool]:
        """(text for the next prompt, whether to send it at once)."""
        if self.lines:
            return self.lines.pop(0), True
        text, self.partial = self.partial, ""
        return text, False


@contextlib.contextmanager
def _interrupt_watch(on_interrupt, *, typeahead: TypeAhead | None):
    """While a reply streams: Ctrl-C typed on the terminal (read as a key in raw mode, so it is neither
    echoed nor a signal) or a SIGINT from elsewhere calls `on_interrupt`. Other keys go to `typeahead`;
    without one (no terminal) only the signal is watched."""
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as stack:
        if typeahead is not None:
            from prompt_toolkit.input import create_input
            from prompt_toolkit.keys import Keys

            keys = create_input()

            def keys_ready() -> None:
                for key_press in keys.read_keys():
                    if key_press.key == Keys.ControlC:
                        on_interrupt()
                    else:
                        typeahead.feed(key_press)

            stack.enter_context(keys.raw_mode())
            stack.enter_context(keys.attach(keys_ready))
        try:
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            stack.callback(loop.remove_signal_handler, signal.SIGINT)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
        yield


# ---- the interactive loop ------------------------------------------------------------------------


def model_info(engine, path) -> slash.ModelInfo:
    gguf = engine.gguf_file
    template = engine.chat_template
    return slash.ModelInfo(
        name=str(gguf.get("general.name") or path.stem), path=str(path),
        architecture=str(gguf.get("general.architecture", "?")), backend=engine.backend,
        backend_reason=engine.backend_reason, n_ctx=engine.n_ctx,
        template_name=template.name if template is not None else None,
        template_source=template.source if template is not None else None,
        **slash.file_facts(gguf),
    )


async def run_interactive(engine, state: slash.ChatState, ui: Renderer, *, history_path,
                          context_shift: bool) -> None:
    """The REPL. The engine's loop is running before the first prompt is read (SPEC's seed race)."""
    async with engine:
        session = engine.open_session()
        try:
            chat = Chat(engine, session, state, ui, context_shift=context_shift)
            if engine.chat_template is None:
                ui.notice("this model has no chat template: raw completion mode (each message is added "
                          "to the text so far and the model continues it)")
            await converse(chat, ui, history_path=history_path)
        finally:
            session.close()


async def converse(chat: Chat, ui: Renderer, *, history_path) -> None:
    """Read messages and commands until the user leaves; a local or a remote chat alike."""
    prompt = _prompt_session(history_path, ui)
    await _loop(chat, prompt, ui)
    await chat.settle()


async def _loop(chat: Chat, prompt, ui: Renderer) -> None:
    assembler = slash.LineAssembler()
    while True:
        line = await _read_line(prompt, assembler, chat.typeahead)
        if line is None:
            return
        await chat.settle()  # a reply stopped with Ctrl-C has ended before the session is touched
        from_block = assembler.in_block or line.lstrip().startswith('"""')
        text = assembler.feed(line)
        if text is None or not text.strip():
            continue
        # a command is one typed line; a block or a paste that starts with "/" is a message
        if not from_block and "\n" not in text.strip() and slash.is_command(text):
            outcome = slash.dispatch(chat.state, text)
            if outcome.message:
                ui.message(outcome.message)
            if outcome.error:
                ui.error(outcome.error)
            if outcome.action == slash.EXIT:
                return
            if outcome.action == slash.CLEAR:
                chat.forget_cache()
            if outcome.action != slash.REGEN:
                continue
        else:
            chat.state.messages.append({"role": "user", "content": slash.unescape(text)})
        await chat.reply(watch_keys=True)
        ui.gap()


async def _read_line(prompt, assembler: slash.LineAssembler, typeahead: TypeAhead) -> str | None:
    """One line, typed now or ahead; None to leave (Ctrl-D, or Ctrl-C at an empty prompt). Ctrl-C with
    text on the line clears it; Ctrl-C inside a \"\"\" block drops the block."""
    while True:
        default, send = typeahead.next()
        try:
            return await prompt.prompt_async(CONTINUATION if assembler.in_block else PROMPT,
                                             default=default, accept_default=send)
        except EOFError:
            return None
        except KeyboardInterrupt:
            if not assembler.in_block:
                return None
            assembler.cancel()
            prompt.history.cancel_block()


def _prompt_session(history_path, ui: Renderer):
    from prompt_toolkit import PromptSession
    from rocmforge_cli.history import BlockFileHistory, BlockMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.output import create_output

    history = BlockMemoryHistory()
    try:
        history_path.parent.mkdir(parents=True, exist_ok=True)
        history_path.touch(exist_ok=True)
        history = BlockFileHistory(str(history_path))
    except OSError as exc:
        ui.notice(f"input history not saved: cannot use {history_path} ({exc.strerror or exc})")

    bindings = KeyBindings()

    @bindings.add("c-c")
    def _(event) -> None:
        # Ctrl-C with text on the line clears the line, like a shell; on an empty line it leaves
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    # off a terminal stdout carries the replies only; the prompt is drawn on stderr
    output = None if ui.tty else create_output(stdout=sys.stderr)
    return PromptSession(history=history, key_bindings=bindings, output=output,
                         enable_history_search=False, mouse_support=False)


# ---- piped stdin ---------------------------------------------------------------------------------


async def answer_once(engine, state: slash.ChatState, ui: Renderer, text: str, *,
                      context_shift: bool) -> str | None:
    """Piped stdin: answer the text once, like `generate` (the stats line follows with --verbose)."""
    async with engine:
        session = engine.open_session()
        try:
            return await answer(Chat(engine, session, state, ui, context_shift=context_shift), text)
        finally:
            session.close()


async def answer(chat: Chat, text: str) -> str | None:
    """One reply to `text`, then done: the finish reason."""
    chat.state.messages.append({"role": "user", "content": text})
    reason = await chat.reply(watch_keys=False)
    await chat.settle()
    return reason
