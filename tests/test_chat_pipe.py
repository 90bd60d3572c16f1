"""`rocmforge chat` off a terminal: piped stdin gets one answer (the same text `generate` gives), plain
stdout, stats only on stderr; and the context-window rules (overflow message, --context-shift)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rocmforge_core.errors import BadInputError


def run_cli(args, stdin_text, tmp_path, timeout=300):
    # a colour-capable TERM: plain output must come from stdout being a pipe, nothing else
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", *args], input=stdin_text, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_piped_hi_prints_one_answer_like_generate(smollm2_path, tmp_path):
    greedy = ["--temperature", "0", "-n", "24"]
    chat = run_cli(["chat", str(smollm2_path), *greedy, "--verbose"], "hi\n", tmp_path)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip(), "no answer on stdout"
    assert "\x1b" not in chat.stdout and "\x1b" not in chat.stderr
    assert ">>>" not in chat.stdout and "/help" not in chat.stdout  # no prompt, no banner
    assert "Traceback" not in chat.stderr
    assert "ttft" in chat.stderr and "ttft" not in chat.stdout  # --verbose stats go to stderr only

    generate = run_cli(["generate", str(smollm2_path), *greedy, "-p", "hi"], "", tmp_path)
    assert generate.returncode == 0, generate.stderr
    assert chat.stdout == generate.stdout  # the same chat-template prompt, so the same greedy text


def test_piped_text_to_a_model_without_template_is_continued(gemma3_path, tmp_path):
    prompt = "The capital of France is"
    greedy = ["--temperature", "0", "-n", "8"]
    chat = run_cli(["chat", str(gemma3_path), *greedy], prompt + "\n", tmp_path)
    assert chat.returncode == 0, chat.stderr
    generate = run_cli(["generate", str(gemma3_path), *greedy, "--raw", "-p", prompt], "", tmp_path)
    assert chat.stdout.strip() and chat.stdout == generate.stdout


def test_empty_stdin_is_bad_input(tmp_path):
    result = run_cli(["chat", "/nonexistent/model.gguf"], "  \n", tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: nothing to answer: stdin is empty")
    assert result.stdout == ""


def test_bad_flag_fails_before_loading(tmp_path):
    result = run_cli(["chat", "/nonexistent/model.gguf", "--top-p", "2"], "hi", tmp_path, timeout=60)
    assert result.returncode == 2 and "--top-p" in result.stderr and "Traceback" not in result.stderr


LONG_TEXT = "Tell me everything about the history of the river, the town and its bridges. " * 6


def test_overflow_says_how_far_over_and_what_to_do(smollm2_path, tmp_path):
    result = run_cli(["chat", str(smollm2_path), "--ctx", "32", "-n", "4"], LONG_TEXT, tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("error: the conversation is ") and "over the context of 32" in line
    assert "/clear" in line and "--ctx" in line and "\n" not in line


# ---- the context window, in process on the real model (no terminal needed) ---------------------------


@pytest.fixture(scope="module")
def small_ctx_engine(smollm2_path):
    from rocmforge_core.engine import create_engine

    return create_engine(smollm2_path, backend="cpu", n_ctx=160, n_slots=1)


def make_chat(engine, *, context_shift: bool, max_tokens: int = 16):
    import io

    from rocmforge_cli import repl, slash
    from rocmforge_cli.render import Renderer

    state = slash.ChatState(model=repl.model_info(engine, engine.gguf_file.path), max_tokens=max_tokens,
                            system="You are terse.")
    for i in range(6):
        state.messages += [{"role": "user", "content": f"Question {i}: what is {i} times {i + 3}? Explain."},
                           {"role": "assistant", "content": f"It is {i * (i + 3)}, because {i} groups of "
                                                            f"{i + 3} make {i * (i + 3)}."}]
    state.messages.append({"role": "user", "content": "And what is 7 times 8?"})
    out = io.StringIO()
    return repl.Chat(engine, None, state, Renderer(out=out, interactive=True), context_shift=context_shift)


def test_overflow_without_context_shift_keeps_the_conversation(small_ctx_engine):
    from rocmforge_cli.repl import ContextOverflow

    chat = make_chat(small_ctx_engine, context_shift=False)
    before = [dict(m) for m in chat.state.messages]
    with pytest.raises(ContextOverflow) as info:
        chat.prompt_ids()
    assert "over the context of 160" in info.value.message and "/clear" in info.value.hint
    assert chat.state.messages == before


def test_context_shift_drops_the_oldest_exchanges_and_keeps_the_system_prompt(small_ctx_engine):
    chat = make_chat(small_ctx_engine, context_shift=True, max_tokens=16)
    ids = chat.prompt_ids()
    messages = chat.state.messages
    assert len(ids) + 16 <= 160  # room is left for the reply
    assert 1 < len(messages) < 13 and len(messages) % 2 == 1  # whole exchanges went, oldest first
    assert messages[0]["role"] == "user" and messages[0]["content"].startswith("Question ")
    assert int(messages[0]["content"].split()[1].rstrip(":")) > 0
    assert messages[-1] == {"role": "user", "content": "And what is 7 times 8?"}
    assert chat.state.conversation()[0] == {"role": "system", "content": "You are terse."}
    text = small_ctx_engine.tokenizer.decode(ids)
    assert text.count("You are terse.") == 1 and text.count("Question ") == len(messages) // 2


def test_context_shift_cannot_drop_the_message_being_answered(small_ctx_engine):
    from rocmforge_cli.repl import ContextOverflow

    chat = make_chat(small_ctx_engine, context_shift=True)
    chat.state.messages = [{"role": "user", "content": LONG_TEXT * 2}]
    with pytest.raises(BadInputError) as info:
        chat.prompt_ids()
    assert isinstance(info.value, ContextOverflow) and "does not fit" in info.value.message


def test_context_shift_answers_a_lone_message_that_fits_without_full_room(small_ctx_engine):
    from rocmforge_core.engine import Request

    chat = make_chat(small_ctx_engine, context_shift=True, max_tokens=64)  # room wanted: 160 // 4 = 40
    words = "apple"
    while len(small_ctx_engine.prepare_prompt(Request(messages=[
            {"role": "system", "content": "You are terse."}, {"role": "user", "content": words}]))) < 130:
        words += " apple"
    chat.state.messages = [{"role": "user", "content": words}]
    ids = chat.prompt_ids()
    assert 130 <= len(ids) < 160 and chat.state.messages == [{"role": "user", "content": words}]
