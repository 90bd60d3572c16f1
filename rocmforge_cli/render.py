"""Terminal output of `rocmforge chat`: the load spinner, the banner, streamed replies, stats and notices.

Replies go to stdout as raw text, delta by delta, so they appear as they are generated and never
flicker (nothing is redrawn). Everything else (banner, command output, stats, errors) goes through a
rich Console: on stdout in the interactive REPL on a terminal, else on stderr, so `rocmforge chat > file`
captures only the replies. Off a terminal there is no colour, no spinner and no banner.
"""

from __future__ import annotations

import contextlib
import sys


class Renderer:
    def __init__(self, *, out=None, interactive: bool = True):
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
               ctx_reason: str = "") -> None:
        if not self.tty:
            return
        self.console.print(f"[bold]{_escape(name)}[/] · ctx {n_ctx} · loaded in {load_ms / 1e3:.1f} s")
        if ctx_reason:
            self.console.print(f"[dim]ctx {n_ctx}: {_escape(ctx_reason)}[/]")
        self.console.print(f"backend [bold cyan]{backend}[/] [dim]({_escape(backend_reason)})[/]")
        self.console.print("[dim]Type a message; /help for commands; Ctrl-D or /bye to leave.[/]")

    # ---- replies ---------------------------------------------------------------------------------

    def delta(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()
        self._line_open = not text.endswith("\n")

    def end_reply(self, finish_reason: str | None) -> None:
        """Close the reply's line; mark a reply that was stopped by the user."""
        if finish_reason == "cancelled":
            self._close_line()
            self.console.print("[dim]\\[stopped][/]")
            return
        self._close_line()

    def _close_line(self) -> None:
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
