"""`rocmforge chat` driven for real in a pseudo-terminal (pexpect): streaming, Ctrl-C mid-reply keeps the
partial reply, slash commands, /save + /load, multi-line input and paste, and clean exits (code 0, no
traceback, no "Aborted!")."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time

import pytest

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")
PROMPT = ">>>"
LOAD_TIMEOUT = 240  # the model load shares 2 cores with other work
STEP_TIMEOUT = 120


def spawn_chat(model_path, tmp_path, *extra):
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), TERM="xterm-256color",
               PROMPT_TOOLKIT_NO_CPR="1")  # pexpect does not answer cursor-position requests
    env.pop("NO_COLOR", None)
    args = ["-m", "rocmforge_cli", "chat", str(model_path), "--temperature", "0",
            "--history-file", str(tmp_path / "history"), *extra]
    child = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=STEP_TIMEOUT,
                          dimensions=(50, 250))
    child.logfile_read = io.StringIO()  # everything the terminal showed, for the final checks
    child.expect(PROMPT, timeout=LOAD_TIMEOUT)
    return child


def screen(child) -> str:
    return ANSI.sub("", child.logfile_read.getvalue()).replace("\r\n", "\n").replace("\r", "")


def command(child, line: str, expect: str) -> None:
    """Type a slash command, see its output, and wait for the next prompt."""
    child.send(line + "\r")
    child.expect(expect)
    child.expect(PROMPT)


def finish(child) -> int:
    child.expect(pexpect.EOF, timeout=STEP_TIMEOUT)
    child.close()
    text = screen(child)
    assert "Traceback" not in text and "Aborted!" not in text
    return child.exitstatus


def wait_for_reply_words(child, *, after: str, count: int) -> None:
    """Read until the terminal shows `count` words after the last `after` (escape codes removed)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while len(screen(child).rsplit(after, 1)[-1].split()) < count:
        assert time.monotonic() < deadline, "the reply did not stream"
        try:
            child.read_nonblocking(4096, timeout=1)  # logged into child.logfile_read
        except pexpect.TIMEOUT:
            pass


def saved(path):
    return json.loads(path.read_text())


def test_stream_interrupt_commands_and_ctrl_d(smollm2_path, tmp_path):
    child = spawn_chat(smollm2_path, tmp_path, "-n", "400")
    text = screen(child)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in text and "ctx" in text  # the banner, with the backend
    assert re.search(r"backend (cpu|hip|cuda) \(", text)

    # a long reply streams; Ctrl-C stops it within a moment and the prompt comes back
    child.send("Write a long story about a dragon.\r")
    child.expect(r"dragon\.[^\n]*\n")
    wait_for_reply_words(child, after="dragon.", count=8)  # words arrive while generation goes on
    child.send("/show mod")  # typed during the reply: not echoed into it, kept for the next prompt
    pressed = time.monotonic()
    child.send("\x03")
    child.expect(r"\[stopped\]", timeout=10)
    print(f"Ctrl-C to [stopped]: {(time.monotonic() - pressed) * 1e3:.0f} ms")
    assert time.monotonic() - pressed < 5
    child.expect(PROMPT)
    command(child, "el", r"architecture\s+llama")

    first = tmp_path / "first.json"
    command(child, f"/save {first}", "saved 2 messages")
    data = saved(first)
    user, partial = data["messages"]
    assert user == {"role": "user", "content": "Write a long story about a dragon."}
    assert partial["role"] == "assistant" and len(partial["content"].split()) >= 8
    assert partial["content"].strip() in screen(child)  # exactly what was shown before Ctrl-C
    assert data["params"]["temperature"] == 0 and data["params"]["max_tokens"] == 400

    command(child, "/stats", r"stats on.*\n.*last reply: ttft .*cancelled")
    command(child, "/set max_tokens 12", "max_tokens = 12")
    # the next turn continues after the partial reply and reuses its KV cache
    child.send("Now say hello.\r")
    child.expect(r"ttft \d+ ms · prompt \d+ tok, (\d+) cached")
    assert int(child.match.group(1)) > 20
    child.expect(PROMPT)

    command(child, "/clear", "conversation cleared")
    cleared = tmp_path / "cleared.json"
    command(child, f"/save {cleared}", "saved 0 messages")
    assert saved(cleared)["messages"] == []

    command(child, f"/load {first}", "loaded 2 messages")
    command(child, "/show params", r"max_tokens\s+400")
    again = tmp_path / "again.json"
    command(child, f"/save {again}", "saved 2 messages")
    assert saved(again) == data  # /save + /load round-trip

    command(child, f"/load {tmp_path / 'missing.json'}", "error: cannot read")
    command(child, "/frobnicate", r"error: unknown command /frobnicate")

    child.sendcontrol("d")
    assert finish(child) == 0
    history = (tmp_path / "history").read_text()
    assert "Write a long story about a dragon." in history and "/frobnicate" in history


def test_multiline_paste_and_ctrl_c_at_empty_prompt(smollm2_path, tmp_path):
    child = spawn_chat(smollm2_path, tmp_path, "-n", "4", "--verbose")

    child.send('"""\r')
    child.expect(r"\.\.\.")  # the continuation prompt
    child.send("Reply with one word:\r")
    child.expect(r"\.\.\.")
    child.send('hello"""\r')
    child.expect(r"ttft \d+ ms")  # --verbose: a stats line after each reply
    child.expect(PROMPT)

    # bracketed paste: a pasted block with newlines is one message, sent with one Enter
    child.send("\x1b[200~first line\nsecond line\x1b[201~")
    child.send("\r")
    child.expect(r"ttft \d+ ms")
    child.expect(PROMPT)

    path = tmp_path / "multi.json"
    command(child, f"/save {path}", "saved 4 messages")
    users = [m["content"] for m in saved(path)["messages"] if m["role"] == "user"]
    assert users == ["Reply with one word:\nhello", "first line\nsecond line"]

    # Ctrl-C with text on the line clears the line; at the empty prompt it leaves with code 0
    child.send("some text")
    child.sendcontrol("c")
    command(child, "/stats", "stats off")
    child.sendcontrol("c")
    assert finish(child) == 0
