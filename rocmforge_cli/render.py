"""Terminal output of `rocmforge chat`: the load spinner, the banner, streamed replies, stats and notices.

Replies go to stdout as text, delta by delta, so they appear as they are generated. In the REPL on a
terminal the text is wrapped at word boundaries as it streams (WordWrapper), and a finished reply that
holds Markdown is shown again rendered by rich (code blocks with syntax colour, lists). Off a terminal,
or with piped stdin, the reply is the model's text exactly as generated. Everything else (banner, command
output, stats, errors) goes through a rich Console: on stdout in the interactive REPL on a terminal, else
on stderr, so `rocmforge chat > file` captures only the replies. Off a terminal there is no colour, no
spinner and no banner.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Display:
    """How replies are shown; the REPL's /set markdown|nomarkdown|wordwrap|nowordwrap change it."""

    markdown: bool = True
    wordwrap: bool = True


class WordWrapper:
    """Breaks streamed text into lines of at most `width()` columns at spaces, chunk by chunk.

    A word is held back until the whitespace after it arrives (or `flush()`), since only then is it
    known whether it fits on the line; chunks are sub-word tokens, so that holds back a few characters.
    A word wider than a whole line is broken where the line is full. Wide characters (CJK, emoji) count
    two columns and may begin a new line anywhere, as those scripts are written without spaces. The
    width is read once per chunk, so after a resize the new width applies from the next line break on.
    `breaks` counts the line breaks written (the text's own and the wrapper's).
    """

    def __init__(self, width: Callable[[], int]):
        self._width = width
        self.col = 0             # columns already on the cursor's line
        self.breaks = 0
        self._space = ""         # whitespace between the line's text and the held word
        self._word: list[str] = []
        self._word_cols = 0
        self._breaking = False   # the current word is longer than a line: written as it comes

    def feed(self, text: str) -> str:
        w = max(1, self._width())
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                out.append(self._place(w))
                out.append(self._newline())
                self._space = ""
            elif ch in " \t":
                out.append(self._place(w))
                self._space += ch
            elif (cw := _char_width(ch)) == 2:
                out.append(self._place(w))
                self._word, self._word_cols = [ch], cw
                out.append(self._place(w))
            elif self._breaking:
                out.append(self._hard(ch, cw, w))
            else:
                self._word.append(ch)
                self._word_cols += cw
                if self._word_cols > w:  # no line can hold it: break it where lines end
                    self._breaking = True
                    word, self._word, self._word_cols = self._word, [], 0
                    out.append(self._lead(w, 1))
                    out.extend(self._hard(c, _char_width(c), w) for c in word)
        return "".join(out)

    def flush(self) -> str:
        """The held word, at the end of the text."""
        return self._place(max(1, self._width()))

    def _place(self, w: int) -> str:
        """Write the held word: on this line after its space when it fits, else on the next line."""
        self._breaking = False
        if not self._word:
            return ""
        word, cols = "".join(self._word), self._word_cols
        self._word, self._word_cols = [], 0
        space_cols = _space_cols(self._space, self.col)
        if self.col + space_cols + cols <= w:
            text = self._space + word
            self.col += space_cols + cols
        elif self.col == 0:  # an indent too deep for the word: the word alone
            text = word
            self.col = cols
        else:
            text = self._newline() + word
            self.col = cols
        self._space = ""
        return text

    def _lead(self, w: int, cols: int) -> str:
        """The held space before a word that is broken across lines (dropped where a line ends)."""
        space, self._space = self._space, ""
        if self.col and self.col + _space_cols(space, self.col) + cols > w:
            return self._newline()
        self.col += _space_cols(space, self.col)
        return space

    def _hard(self, ch: str, cw: int, w: int) -> str:
        head = self._newline() if self.col and self.col + cw > w else ""
        self.col += cw
        return head + ch

    def _newline(self) -> str:
        self.col = 0
        self.breaks += 1
        return "\n"


def _char_width(ch: str) -> int:
    from wcwidth import wcwidth

    return max(0, wcwidth(ch))  # control characters (-1) take no column


def _space_cols(space: str, col: int) -> int:
    end = col
    for ch in space:
        end = (end // 8 + 1) * 8 if ch == "\t" else end + 1
    return end - col


def terminal_rows(text: str, width: int) -> int:
    """Line breaks a terminal shows for `text` written unwrapped at `width` columns (its own wrapping
    included): what /set nowordwrap needs to know how far up the reply starts."""
    breaks = text.count("\n")
    for line in text.split("\n"):
        cols = sum(_char_width(c) for c in line)
        breaks += max(0, -(-cols // max(1, width)) - 1)
    return breaks


# A reply "holds Markdown" when it has one of these; a plain reply is left as it streamed, since
# rendering it would only re-flow its lines (Markdown joins the lines of a paragraph).
_MARKDOWN = re.compile(r"^\s*(```|~~~|#{1,6} |[-*+] |\d+[.)] |> |\|)|`[^`\n]+`|\*\*[^*\n]+\*\*"
                       r"|\[[^\]\n]+\]\([^)\n]+\)", re.MULTILINE)


def looks_like_markdown(text: str) -> bool:
    return bool(_MARKDOWN.search(text))


@contextlib.contextmanager
def load_spinner(text: str, *, stream=None):
    """A rich spinner on `stream` (stderr by default) while a model loads; nothing off a terminal."""
    from rich.console import Console

    stream = sys.stderr if stream is None else stream
    if not _isatty(stream):
        yield
        return
    with Console(file=stream, highlight=False).status(text, spinner="dots"):
        yield


class Renderer:
    def __init__(self, *, out=None, interactive: bool = True, display: Display | None = None):
        from rich.console import Console

        self.out = out if out is not None else sys.stdout
        self.tty = _isatty(self.out)
        self.interactive = interactive
        # piped stdin behaves like `generate`: stdout carries the answer alone, even on a terminal
        ui_file = self.out if self.tty and interactive else sys.stderr
        self.console = Console(file=ui_file, highlight=False, soft_wrap=True,
                               force_terminal=None if _isatty(ui_file) else False,
                               no_color=None if self.tty else True)
        self._line_open = False  # the cursor sits after reply text that did not end in a newline
        self.display = display if display is not None else Display()
        self._reply: _Reply | None = None

    # ---- around the model load -------------------------------------------------------------------

    @contextlib.contextmanager
    def loading(self, text: str):
        """A spinner while the model loads: only on a terminal (the load is sync, rich animates it)."""
        if not (self.tty and self.interactive):
            yield
            return
        with self.console.status(text, spinner="dots"):
            yield

    def banner(self, *, name: str, backend: str, backend_reason: str, n_ctx: int, load_ms: float,
               ctx_reason: str = "", memory: str = "") -> None:
        if not self.tty:
            return
        self.console.print(f"[bold]{_escape(name)}[/] · ctx {n_ctx} · loaded in {load_ms / 1e3:.1f} s")
        if ctx_reason:
            self.console.print(f"[dim]ctx {n_ctx}: {_escape(ctx_reason)}[/]")
        if memory:
            self.console.print(f"[dim]memory: {_escape(memory)}[/]")
        self.console.print(f"backend [bold cyan]{backend}[/] [dim]({_escape(backend_reason)})[/]")
        self.console.print("[dim]Type a message; /help for commands; Ctrl-D or /bye to leave.[/]")

    # ---- replies ---------------------------------------------------------------------------------

    def delta(self, text: str) -> None:
        if not text:
            return
        if self.tty and self.interactive:
            text = self._view(text)
        self._write(text)

    def _view(self, text: str) -> str:
        """The reply as the terminal shows it: wrapped at words (unless /set nowordwrap)."""
        reply = self._reply
        if reply is None:
            reply = self._reply = _Reply(WordWrapper(self.columns) if self.display.wordwrap else None)
        reply.parts.append(text)
        reply.widths.add(self.columns())
        return reply.wrapper.feed(text) if reply.wrapper is not None else text

    def _write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()
        self._line_open = not text.endswith("\n")

    def columns(self) -> int:
        return self._size()[0]

    def _size(self) -> tuple[int, int]:
        """(columns, lines) of the reply's terminal, read now: the user may have resized it."""
        try:
            size = os.get_terminal_size(self.out.fileno())
            return size.columns, size.lines
        except (AttributeError, ValueError, OSError):
            return self.console.width, 0

    def end_reply(self, finish_reason: str | None) -> None:
        """Close the reply's line; mark a reply that was stopped by the user; show a finished reply
        that holds Markdown rendered (in the REPL on a terminal, unless --plain or /set nomarkdown)."""
        reply, self._reply = self._reply, None
        if reply is not None and reply.wrapper is not None:
            self._write(reply.wrapper.flush())
        if finish_reason == "cancelled":
            self._close_line()
            self.console.print("[dim]\\[stopped][/]")
            return
        if reply is not None and self.display.markdown and finish_reason in ("stop", "length"):
            text = "".join(reply.parts)
            if looks_like_markdown(text):
                self._render_markdown(text, reply)
                return
        self._close_line()

    def _render_markdown(self, text: str, reply: "_Reply") -> None:
        """Replace the streamed text with rich's rendering of it.

        When the whole reply is still on the screen and the width never changed while it streamed,
        the cursor goes back to the reply's first line (CR, then cursor-up by the line breaks written:
        exact, because the wrapper, or terminal_rows without it, counts every row) and erases to the end
        of the screen. Cursor-up cannot reach lines that scrolled away, and a resize lets the terminal
        re-flow rows uncountably; then the rendering follows a rule instead, below the raw text.
        """
        from rich.markdown import Markdown

        width, height = self._size()
        breaks = reply.wrapper.breaks if reply.wrapper is not None else terminal_rows(text, width)
        if reply.widths == {width} and breaks < height - 1:
            self.out.write("\r" + (f"\x1b[{breaks}A" if breaks else "") + "\x1b[J")
            self.out.flush()
            self._line_open = False
        else:
            self._close_line()
            self.console.rule(style="dim")
        self.console.print(Markdown(text), soft_wrap=False, width=width)

    def _close_line(self) -> None:
        if self._reply is not None and self._reply.wrapper is not None:
            self._write(self._reply.wrapper.flush())
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    # ---- everything else -------------------------------------------------------------------------

    def message(self, text: str) -> None:
        self._close_line()
        self.console.print(text, markup=False)

    def notice(self, text: str) -> None:
        self._close_line()
        self.console.print(text, style="yellow", markup=False)

    def error(self, text: str) -> None:
        self._close_line()
        self.console.print(f"error: {text}", style="red", markup=False)

    def stats(self, text: str) -> None:
        self._close_line()
        self.console.print(text, style="dim", markup=False)

    def gap(self) -> None:
        """A blank line between a reply and the next prompt (only in the interactive view)."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()


@dataclass
class _Reply:
    """The reply being streamed: its text, its wrapper (None with /set nowordwrap), the widths seen."""

    wrapper: WordWrapper | None
    parts: list[str] = field(default_factory=list)
    widths: set[int] = field(default_factory=set)


def format_stats(timings, finish_reason: str | None) -> str:
    """One line: time to first token, prompt and reply token counts and speeds, why it ended."""
    t = timings
    cached = f", {t.reused_tokens} cached" if t.reused_tokens else ""
    return (f"ttft {t.ttft_ms:.0f} ms · prompt {t.prompt_tokens} tok{cached} "
            f"({t.prompt_tokens_per_s:.1f} tok/s) · reply {t.completion_tokens} tok "
            f"({t.gen_tokens_per_s:.1f} tok/s) · {finish_reason}")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
