"""`rocmforge serve` as a real subprocess: served from the instant its port opens, and a clean exit 0 on
SIGTERM or SIGINT even with a stream in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tiny_chat_model import make_chat_model  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(model_path, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "rocmforge_cli", "serve", str(model_path), "--backend",
                             "cpu", "--port", str(port), "--shutdown-grace", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def connect_when_open(port: int, proc: subprocess.Popen, timeout: float = 60) -> socket.socket:
    """Connect at the first moment the port accepts (polling every 5 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.005)
    raise AssertionError("the server never opened its port")


def http_post(sock: socket.socket, path: str, body: dict) -> None:
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


def read_until(sock: socket.socket, needle: bytes, count: int) -> bytes:
    data = b""
    while data.count(needle) < count:
        part = sock.recv(65536)
        assert part, data.decode(errors="replace")
        data += part
    return data


def ended(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the server did not exit after the signal")
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)  # reaped, nothing left behind
    return proc.returncode, err


def test_first_connection_is_served_and_sigterm_mid_stream_exits_0(model_path):
    port = free_port()
    proc = start_serve(model_path, port)
    try:
        sock = connect_when_open(port, proc)
        # the connection accepted the instant the port opened asks for a completion straight away
        http_post(sock, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 4000, "temperature": 0, "stream": True})
        head = read_until(sock, b"data: ", 5)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        assert b'"role":"assistant"' in head
        proc.send_signal(signal.SIGTERM)
        rest = b""
        while part := sock.recv(65536):  # the stream ends after the grace period, then the socket closes
            rest += part
        sock.close()
        assert b'"code":"cancelled"' in rest and rest.endswith(b"0\r\n\r\n")  # a complete chunked body
        code, err = ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0, err
    assert "Traceback" not in err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_sigint_when_idle_exits_0(model_path):
    port = free_port()
    proc = start_serve(model_path, port, "--parallel", "1")
    try:
        connect_when_open(port, proc).close()
        proc.send_signal(signal.SIGINT)
        code, err = ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("flags,needle", [(["--port", "70000"], "--port"), (["--parallel", "0"], "--parallel"),
                                          (["--temperature", "-1"], "--temperature")])
def test_bad_flags_are_one_line_errors(model_path, flags, needle):
    proc = subprocess.run([sys.executable, "-m", "rocmforge_cli", "serve", str(model_path), *flags],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
