"""How `rocmforge chat` shows replies in a real pseudo-terminal 60 columns wide: words are never split
across lines as the reply streams, and a reply holding a code block is shown again rendered as Markdown
once it ends (left raw with --plain, switched back on by /set markdown)."""

from __future__ import annotations

import io
import os
import re
import sys

import pytest

from test_chat_pty import ANSI, LOAD_TIMEOUT, PROMPT, STEP_TIMEOUT, command, finish, saved, screen

pexpect = pytest.importorskip("pexpect")

COLUMNS = 60
CODE_PROMPT = "Write a Python function that adds two numbers."
ERASE = re.compile(r"\r(\x1b\[\d+A)?\x1b\[J")  # the renderer's: back to the reply's first line, erase


def spawn(model_path, tmp_path, *extra):
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"),
               TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
    for name in ("NO_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    args = ["-m", "rocmforge_cli", "chat", str(model_path), "--temperature", "0",
            "--history-file", str(tmp_path / "history"), *extra]
    child = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=STEP_TIMEOUT,
                          dimensions=(50, COLUMNS))
    child.logfile_read = io.StringIO()
    child.expect(PROMPT, timeout=LOAD_TIMEOUT)
    return child


def ask(child, text: str) -> str:
    """Send a message, wait for the next prompt; the terminal output in between, escape codes kept."""
    start = len(child.logfile_read.getvalue())
    child.send(text + "\r")
    child.expect(re.escape(text) + r"[^\n]*\n")  # the line as typed, then the reply
    child.expect(PROMPT)
    shown = child.logfile_read.getvalue()[start:].rsplit(text, 1)[-1]
    return shown.split("\x1b[?2004l", 1)[-1]  # from where prompt_toolkit lets go of the terminal


def test_streamed_words_wrap_whole_and_code_is_rendered_after_the_reply(smollm2_path, tmp_path):
    child = spawn(smollm2_path, tmp_path, "--plain", "-n", "60")

    # --plain: the reply stays raw text, wrapped at words by the stream itself
    story = ask(child, "Write a story about a dragon.")
    assert not ERASE.search(story)
    lines = ANSI.sub("", story).replace("\r\n", "\n").replace("\r", "").split("\n")
    lines = [line for line in lines if line.strip()][:-1]  # the last one is the next prompt
    assert len(lines) > 3 and all(len(line) <= COLUMNS for line in lines)
    path = tmp_path / "story.json"
    command(child, f"/save {path}", "saved 2 messages")
    reply = saved(path)["messages"][1]["content"]
    assert sum(len(line) for line in reply.split("\n")) > 3 * COLUMNS  # long enough to need wrapping
    shown_words = " ".join(lines).split()
    assert shown_words == reply.split()  # a word split across lines would show up as two words

    command(child, "/clear", "conversation cleared")
    command(child, "/set max_tokens 28", "max_tokens = 28")  # the code block, closed
    raw = ask(child, CODE_PROMPT)
    assert "```" in raw and not ERASE.search(raw) and "\x1b[38;5;" not in raw

    # Markdown on: once the reply ends, the raw lines are erased and rich's rendering replaces them
    command(child, "/set markdown", "Markdown on")
    rendered = ask(child, "/regen")
    erase = ERASE.search(rendered)
    assert erase, "the streamed reply was not erased"
    streamed, shown = rendered[:erase.start()], rendered[erase.end():]
    assert "```" in streamed and "def add" in streamed
    assert "```" not in shown and "\x1b[38;5;" in shown  # fences gone, syntax colour
    assert "def add" in ANSI.sub("", shown)

    child.sendcontrol("d")
    assert finish(child) == 0
    assert "Traceback" not in screen(child)
