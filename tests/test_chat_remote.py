"""`rocmforge chat --server URL` against the real server (uvicorn + FastAPI on loopback, a tiny random
chat model): piped stdin answers once with the local chat's greedy text, errors are one line with exit
code 2, a failed turn in the REPL keeps the conversation, and the REPL in a pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import socket
import sys

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from cli_run import assert_one_line_error, run_main  # noqa: E402
from server_harness import API_KEY, ServerThread  # noqa: E402
from tiny_chat_model import make_chat_model  # noqa: E402

GREEDY = ["--temperature", "0", "-n", "12"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat.gguf")


@pytest.fixture(scope="module")
def server(model_path):
    with ServerThread(model_path, n_slots=2, n_ctx=256) as s:
        yield s


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("ROCMFORGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def free_port() -> int:
    with socket.socket() as s:  # bound, then closed: nobody listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- piped stdin: one answer ---------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--system", "Answer briefly."]])
def test_piped_answer_equals_the_local_chat(server, model_path, extra):
    remote = run_main("chat", "--server", server.url, *GREEDY, *extra, stdin="Hi there\n")
    assert remote.code == 0, remote.stderr
    assert remote.stderr == "" and remote.stdout.strip()
    local = run_main("chat", str(model_path), "--ctx", "256", *GREEDY, *extra, stdin="Hi there\n")
    assert local.code == 0, local.stderr
    assert remote.stdout == local.stdout


def test_piped_verbose_stats_on_stderr_and_model_name_sent(server):
    result = run_main("chat", "tiny", "--server", server.url + "/", *GREEDY, "--verbose", stdin="Hello")
    assert result.code == 0, result.stderr
    assert "tiny-chat" in result.stderr and "reply 12 tok" in result.stderr and "length" in result.stderr
    assert "ttft" not in result.stdout


def test_unknown_model_is_a_404_line(server):
    assert_one_line_error(run_main("chat", "gpt-4", "--server", server.url, stdin="Hi"),
                          "the server answered 404")


def test_no_server_listening_is_bad_input_that_says_refused():
    line = assert_one_line_error(run_main("chat", "--server", f"http://127.0.0.1:{free_port()}", stdin="Hi"))
    assert "cannot reach the server" in line and "connection refused" in line


@pytest.mark.parametrize("args, needle", [
    (["--server", "127.0.0.1:8080"], "http:// or https://"),
    (["--server", "http://127.0.0.1:9", "--ctx", "64"], "--ctx"),
    (["--server", "http://127.0.0.1:9", "--context-shift"], "--context-shift"),
    (["--server", "http://127.0.0.1:9", "--top-p", "2"], "--top-p"),
])
def test_bad_flags_fail_before_connecting(args, needle):
    assert_one_line_error(run_main("chat", *args, stdin="Hi"), needle)


def test_a_conversation_over_the_servers_context_is_a_400_line(server):
    line = assert_one_line_error(run_main("chat", "--server", server.url, *GREEDY,
                                          stdin="a very long message " * 80))
    assert "the server answered 400" in line and "context" in line


def test_api_key_from_the_environment(model_path, monkeypatch):
    with ServerThread(model_path, n_slots=1, n_ctx=256, api_key=API_KEY) as keyed:
        assert_one_line_error(run_main("chat", "--server", keyed.url, stdin="Hi"), "401")
        monkeypatch.setenv("ROCMFORGE_API_KEY", API_KEY)
        result = run_main("chat", "--server", keyed.url, *GREEDY, stdin="Hi")
    assert result.code == 0 and result.stdout.strip(), result.stderr


# ---- the REPL's turns, in process ----------------------------------------------------------------

def remote_chat(url, client, *, max_tokens=8):
    from rocmforge_cli import remote_chat as rc, slash
    from rocmforge_cli.render import Renderer

    out = io.StringIO()
    from rocmforge_core.sampler import SamplingParams

    state = slash.ChatState(model=rc.model_info(url, None, {}), max_tokens=max_tokens,
                            sampling=slash.sampling_dict(SamplingParams(temperature=0.0)))
    return rc.RemoteChat(client, url, None, state, Renderer(out=out, interactive=True)), out


def test_a_failed_turn_keeps_the_conversation(server, capsys):
    import asyncio

    from rocmforge_cli import remote

    async def go():
        async with remote.async_client() as client:
            chat, out = remote_chat(server.url, client)
            chat.state.messages.append({"role": "user", "content": "Hi"})
            assert await chat.reply(watch_keys=False) == "length"
            kept = [dict(m) for m in chat.state.messages]
            chat.state.messages.append({"role": "user", "content": "word " * 400})  # over the context
            assert await chat.reply(watch_keys=False) == "error"
            assert chat.state.messages == kept
            chat.state.messages.append({"role": "user", "content": "And now?"})
            assert await chat.reply(watch_keys=False) == "length"  # the chat goes on
            return chat, out.getvalue()

    chat, shown = asyncio.run(asyncio.wait_for(go(), 60))
    assert [m["role"] for m in chat.state.messages] == ["user", "assistant"] * 2
    assert shown.count("\n") == 2  # two replies shown (stdout is no terminal: the error went to stderr)
    assert "error: the server answered 400" in capsys.readouterr().err
    assert chat.state.last_stats and "reply 8 tok" in chat.state.last_stats


# ---- the REPL in a pseudo-terminal ---------------------------------------------------------------

def test_repl_in_a_terminal(server, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    from test_chat_pty import PROMPT, command, finish, screen

    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), TERM="xterm-256color",
               PROMPT_TOOLKIT_NO_CPR="1")
    args = ["-m", "rocmforge_cli", "chat", "--server", server.url, "--temperature", "0", "-n", "3000",
            "--history-file", str(tmp_path / "history")]
    child = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=60, dimensions=(50, 250))
    child.logfile_read = io.StringIO()
    child.expect(PROMPT)
    assert "tiny-chat · server " in screen(child)

    child.send("Tell me a long story.\r")  # 3000 tokens: Ctrl-C comes first
    child.expect(r"story\.[^\n]*\n")
    child.expect(r"\S{20}")
    child.send("\x03")
    child.expect(r"\[stopped\]", timeout=20)
    child.expect(PROMPT)

    command(child, "/set max_tokens 5", "max_tokens = 5")
    command(child, "/show model", r"backend\s+cpu \(served by http://127\.0\.0\.1")
    child.send("Say hi.\r")
    child.expect(PROMPT)
    command(child, "/stats", r"last reply: ttft \d+ ms .* reply 5 tok .*length")
    path = tmp_path / "chat.json"
    command(child, f"/save {path}", "saved 4 messages")
    data = json.loads(path.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
    assert data["messages"][1]["content"].strip() and data["params"]["max_tokens"] == 5
    command(child, "/clear", "conversation cleared")
    command(child, f"/load {path}", "loaded 4 messages")
    command(child, "/regen", r"reply 5 tok")
    child.send("/bye\r")
    assert finish(child) == 0
    assert "Traceback" not in screen(child)


def test_a_server_gone_mid_chat_is_one_error_line_and_the_chat_stays(model_path, capsys):
    import asyncio

    from rocmforge_cli import remote

    async def go(url):
        async with remote.async_client() as client:
            chat, _ = remote_chat(url, client)
            chat.state.messages.append({"role": "user", "content": "Hi"})
            first = await chat.reply(watch_keys=False)
            kept = [dict(m) for m in chat.state.messages]
            await asyncio.to_thread(gone.__exit__, None, None, None)  # the server stops between turns
            chat.state.messages.append({"role": "user", "content": "Still there?"})
            second = await chat.reply(watch_keys=False)
            return first, second, kept, chat.state.messages

    gone = ServerThread(model_path, n_slots=1, n_ctx=256).__enter__()
    first, second, kept, messages = asyncio.run(asyncio.wait_for(go(gone.url), 60))
    assert (first, second) == ("length", "error") and messages == kept
    err = capsys.readouterr().err
    assert "error: cannot reach the server" in err and "connection refused" in err
