"""The chat's reply view without a terminal: the streaming word wrapper (chunks cut mid-word, newlines,
long words, wide characters, resizes) and the Renderer's Markdown pass after a reply ends."""

from __future__ import annotations

import io
import re

import pytest
from wcwidth import wcswidth

from rocmforge_cli.render import Display, Renderer, WordWrapper, looks_like_markdown, terminal_rows

TEXT = ("The river ran past the old mill, under three stone bridges and on towards the sea, "
        "where the fishing boats waited for the morning tide.\nA new paragraph starts here, "
        "and it too is long enough to need a few lines.")


def wrap(text: str, width, chunk: int | None = None) -> tuple[str, WordWrapper]:
    widths = width if callable(width) else (lambda: width)
    wrapper = WordWrapper(widths)
    step = chunk or len(text) or 1
    out = "".join(wrapper.feed(text[i:i + step]) for i in range(0, len(text), step)) + wrapper.flush()
    return out, wrapper


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, None])
def test_words_are_never_split_whatever_the_chunks(chunk):
    out, wrapper = wrap(TEXT, 24, chunk)
    lines = out.split("\n")
    assert all(wcswidth(line) <= 24 for line in lines)
    assert out.split() == TEXT.split()  # a split word would show up as two words
    assert out == wrap(TEXT, 24)[0]     # the same text however the chunks were cut
    assert wrapper.breaks == out.count("\n") > TEXT.count("\n")


def test_lines_are_filled_greedily_and_wrap_spaces_are_dropped():
    out, _ = wrap("aaa bbb ccc ddd", 7)
    assert out == "aaa bbb\nccc ddd"
    out, _ = wrap("aaa bbb  ", 7)
    assert out == "aaa bbb"


def test_newlines_and_indentation_are_kept():
    text = "Here:\n\n    indented line\n- item one\n- item two\n"
    out, _ = wrap(text, 40, 2)
    assert out == text


def test_a_word_longer_than_the_line_is_broken_where_the_line_is_full():
    out, _ = wrap("see https://example.org/a/very/long/path ok", 12, 5)
    assert out == "see https://\nexample.org/\na/very/long/\npath ok"
    out, _ = wrap("abcdefghij", 10)  # exactly the width: not broken
    assert out == "abcdefghij"


def test_wide_characters_count_two_columns_and_may_start_a_line():
    text = "漢字の文章は空白なしで書かれます。" * 2
    out, _ = wrap(text, 10, 3)
    lines = out.split("\n")
    assert all(wcswidth(line) <= 10 for line in lines) and "".join(lines) == text
    assert [wcswidth(line) for line in lines[:-1]] == [10] * (len(lines) - 1)
    out, _ = wrap("ok 🙂🙂 fine words", 6)
    assert all(wcswidth(line) <= 6 for line in out.split("\n"))
    assert out.replace("\n", "").replace(" ", "") == "ok🙂🙂finewords"


def test_a_resize_applies_from_the_next_line_on():
    width = {"now": 30}
    wrapper = WordWrapper(lambda: width["now"])
    first = wrapper.feed("one two three four five six seven eight nine ten ")
    width["now"] = 12
    second = wrapper.feed("eleven twelve thirteen fourteen fifteen") + wrapper.flush()
    lines = (first + second).split("\n")
    assert wcswidth(lines[0]) <= 30 and wcswidth(lines[0]) > 12
    assert all(wcswidth(line) <= 12 for line in lines[2:])
    assert (first + second).split() == ("one two three four five six seven eight nine ten eleven twelve "
                                        "thirteen fourteen fifteen").split()


def test_terminal_rows_counts_the_terminals_own_wrapping():
    assert terminal_rows("abc", 10) == 0
    assert terminal_rows("a" * 10, 10) == 0       # a full line leaves the cursor on it
    assert terminal_rows("a" * 11 + "\nb\n", 10) == 3
    assert terminal_rows("漢" * 6, 10) == 1


@pytest.mark.parametrize("text, expected", [
    ("```python\nprint(1)\n```", True), ("Use `ls -l` here.", True), ("- one\n- two", True),
    ("1. first\n2. second", True), ("# Title\ntext", True), ("This is **bold**.", True),
    ("Just a plain sentence, with 3 numbers: 1 2 3.", False), ("a - b = c", False),
])
def test_looks_like_markdown(text, expected):
    assert looks_like_markdown(text) is expected


# ---- the Renderer on a (fake) terminal -------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CODE_REPLY = ("Here is the function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
              "- it adds\n- it returns")


def renderer(monkeypatch, *, columns=40, lines=30, display=None) -> tuple[Renderer, FakeTerminal]:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    out = FakeTerminal()
    ui = Renderer(out=out, interactive=True, display=display)
    monkeypatch.setattr(ui, "_size", lambda: (columns, lines))
    return ui, out


def stream(ui: Renderer, text: str, reason: str = "stop", chunk: int = 3) -> None:
    for i in range(0, len(text), chunk):
        ui.delta(text[i:i + chunk])
    ui.end_reply(reason)


def test_a_finished_reply_with_code_is_erased_and_shown_rendered(monkeypatch):
    ui, out = renderer(monkeypatch)
    stream(ui, CODE_REPLY)
    raw, _, rendered = out.getvalue().partition("\x1b[J")
    assert raw.count("\n") == CODE_REPLY.count("\n")  # nothing needed wrapping at 40 columns
    assert raw.endswith(f"\r\x1b[{CODE_REPLY.count(chr(10))}A")  # back to the reply's first line
    assert "```" in raw and "```" not in rendered
    assert "\x1b[38;5;" in rendered  # syntax colour
    plain = ANSI.sub("", rendered)
    assert "def add(a, b):" in plain and "• it adds" in plain


def test_a_reply_taller_than_the_screen_is_rendered_below_a_rule(monkeypatch):
    ui, out = renderer(monkeypatch, lines=5)
    stream(ui, CODE_REPLY)
    text = out.getvalue()
    assert "\x1b[J" not in text and re.search(r"\x1b\[\d+A", text) is None
    raw, _, rendered = text.partition("─" * 10)
    assert "```" in raw and "```" not in rendered and "def add" in ANSI.sub("", rendered)


def test_a_resize_while_streaming_renders_below_a_rule(monkeypatch):
    ui, out = renderer(monkeypatch)
    sizes = iter([(40, 30)] * 5 + [(50, 30)] * 1000)
    monkeypatch.setattr(ui, "_size", lambda: next(sizes))
    stream(ui, CODE_REPLY)
    assert "\x1b[J" not in out.getvalue() and "─" * 10 in out.getvalue()


@pytest.mark.parametrize("display, reason", [(Display(markdown=False), "stop"), (None, "cancelled")])
def test_plain_and_stopped_replies_stay_as_streamed(monkeypatch, display, reason):
    ui, out = renderer(monkeypatch, display=display)
    stream(ui, CODE_REPLY, reason)
    text = out.getvalue()
    assert text.startswith(CODE_REPLY + "\n") and "\x1b[J" not in text
    assert "\x1b[38;5;" not in text


def test_a_reply_without_markdown_is_not_redrawn(monkeypatch):
    ui, out = renderer(monkeypatch, columns=30)
    stream(ui, TEXT)
    assert "\x1b" not in out.getvalue()
    assert all(len(line) <= 30 for line in out.getvalue().split("\n"))


def test_nowordwrap_leaves_breaking_to_the_terminal_and_counts_its_rows(monkeypatch):
    ui, out = renderer(monkeypatch, columns=20, display=Display(wordwrap=False))
    reply = "A line much longer than twenty columns.\n`code` too"
    stream(ui, reply)
    raw, _, _ = out.getvalue().partition("\x1b[J")
    assert raw.startswith(reply) and raw.endswith("\r\x1b[2A")  # 1 newline + 1 row the terminal wrapped


def test_off_a_terminal_the_reply_is_the_text_exactly(monkeypatch):
    out = io.StringIO()
    ui = Renderer(out=out, interactive=True)
    stream(ui, CODE_REPLY + " " + "word " * 40)
    assert out.getvalue() == CODE_REPLY + " " + "word " * 40 + "\n"


def test_load_spinner_only_on_a_terminal(monkeypatch):
    from rocmforge_cli.render import load_spinner

    monkeypatch.setenv("TERM", "xterm-256color")
    piped, terminal = io.StringIO(), FakeTerminal()
    with load_spinner("loading model.gguf", stream=piped):
        pass
    with load_spinner("loading model.gguf", stream=terminal):
        pass
    assert piped.getvalue() == ""
    assert "loading model.gguf" in terminal.getvalue()
