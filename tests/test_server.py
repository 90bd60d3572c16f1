"""`rocmforge serve` end to end: the real uvicorn server on a loopback port, a tiny random chat model,
and the official `openai` client (errors and raw SSE through httpx)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from rocmforge_core.engine import Request, collect, create_engine  # noqa: E402
from rocmforge_core.sampler import SamplingParams  # noqa: E402
from server_harness import API_KEY, ServerThread  # noqa: E402
from tiny_chat_model import make_chat_model  # noqa: E402

HI = [{"role": "user", "content": "Hi there"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat.gguf")


@pytest.fixture(scope="module")
def server(model_path):
    with ServerThread(model_path, n_slots=2, api_key=API_KEY, max_body_bytes=64 * 1024) as s:
        yield s


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30) as c:
        yield c


def post(server, path: str, body, *, headers=AUTH, timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, timeout=timeout,
                      headers={"content-type": "application/json", **headers})


def metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def engine_greedy(model_path, request: Request) -> tuple[str, list[int], object]:
    """The same request on an engine of our own, as `rocmforge generate` runs it."""

    async def go():
        async with create_engine(model_path, backend="cpu", n_ctx=4096, n_slots=1) as engine:
            return await collect(engine.submit(request))

    return asyncio.run(asyncio.wait_for(go(), 60))


# ---- models, health, plain answers ---------------------------------------------------------------

def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    assert client.models.retrieve("tiny").id == "tiny-chat"  # the MODEL argument is accepted too
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_health_is_503_until_the_engine_runs(model_path):
    """The app alone, before its lifespan has started the engine: what a probe sees while loading."""
    from rocmforge_server.app import ServerOptions, build_app

    engine = create_engine(model_path, backend="cpu", n_slots=1)
    app = build_app(engine, ServerOptions(model_id="tiny-chat"))

    async def probe():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/health")

    response = asyncio.run(probe())
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"


def test_greedy_chat_equals_the_engine(model_path, client):
    reply = client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=24, temperature=0)
    text, ids, final = engine_greedy(model_path, Request(messages=HI, max_tokens=24,
                                                         sampling=SamplingParams(temperature=0)))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == text and len(text) > 5
    assert choice.finish_reason == "length"
    assert reply.usage.prompt_tokens == final.timings.prompt_tokens
    assert reply.usage.completion_tokens == 24 == len(ids)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 24
    assert reply.id.startswith("chatcmpl-") and reply.model == "tiny-chat"


def test_a_continued_conversation_reuses_the_cached_prefix(client):
    """Like llama-server's prompt cache: a second turn resends the first turn and its answer, and the
    server finds them in a slot's KV cache (usage.prompt_tokens_details.cached_tokens, OpenAI's field)
    instead of prefilling them again."""
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    first = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And the mountains?"}]
    second = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=4, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    cold = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=4, temperature=0,
                                          extra_body={"cache_prompt": False})  # llama-server's switch
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert cold.choices[0].message.content == second.choices[0].message.content


def test_greedy_completion_equals_the_engine(model_path, client):
    reply = client.completions.create(model="tiny-chat", prompt="The answer is", max_tokens=16,
                                      temperature=0)
    text, _, final = engine_greedy(model_path, Request(prompt="The answer is", max_tokens=16,
                                                       sampling=SamplingParams(temperature=0)))
    assert reply.choices[0].text == text and reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == final.timings.prompt_tokens
    assert reply.usage.completion_tokens == 16


def test_token_prompts_and_batches(client):
    ids = [40, 41, 42]
    one = client.completions.create(model="tiny-chat", prompt=ids, max_tokens=6, temperature=0)
    two = client.completions.create(model="tiny-chat", prompt=[ids, [50, 51]], max_tokens=6, temperature=0,
                                    n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]  # prompt-major, n per prompt
    assert two.choices[0].text == two.choices[1].text == one.choices[0].text  # greedy
    assert two.usage.prompt_tokens == 3 + 2  # each prompt counted once, not once per choice
    assert two.usage.completion_tokens == 4 * 6
    texts = client.completions.create(model="tiny-chat", prompt=["a b", "c"], max_tokens=2, temperature=0)
    assert len(texts.choices) == 2


# ---- streaming -----------------------------------------------------------------------------------

def test_chat_stream_matches_the_plain_answer(client):
    plain = client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=20,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_framing(server):
    body = {"messages": HI, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=AUTH,
                      timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first  # only with stream_options.include_usage


def test_completion_stream(client):
    plain = client.completions.create(model="tiny-chat", prompt="Once", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="tiny-chat", prompt="Once", max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert len({c.id for c in chunks}) == 1 and chunks[-1].usage.total_tokens == plain.usage.total_tokens


# ---- n, seeds, stop, logprobs --------------------------------------------------------------------

def test_n_choices_and_seeds(client):
    def sample(seed: int, stream: bool = False) -> list[str]:
        args = dict(model="tiny-chat", messages=HI, max_tokens=16, temperature=1.0, seed=seed, n=2)
        if not stream:
            reply = client.chat.completions.create(**args)
            assert [c.index for c in reply.choices] == [0, 1]
            assert reply.usage.completion_tokens == 32
            return [c.message.content for c in reply.choices]
        texts = ["", ""]
        for chunk in client.chat.completions.create(**args, stream=True):
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
        return texts

    first = sample(7)
    assert first == sample(7) == sample(7, stream=True)  # same seed, same choices, streamed or not
    assert first[0] != first[1]  # choice i draws with seed + i
    assert sample(8) != first


def test_stop_strings_end_the_text_and_are_not_echoed(client):
    full = client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=40,
                                          temperature=0).choices[0].message.content
    stop = full[12:15]
    cut = full.index(stop)
    for stops in (stop, [stop, "never-appears"]):
        reply = client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=40,
                                               temperature=0, stop=stops)
        assert reply.choices[0].message.content == full[:cut]
        assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-chat", messages=HI, max_tokens=40, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == full[:cut]


def test_chat_logprobs(client):
    reply = client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=10, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == 10
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        best = token.top_logprobs[0]
        assert (best.token, best.logprob) == (token.token, token.logprob)  # greedy takes the best
        lps = [t.logprob for t in token.top_logprobs]
        assert lps == sorted(lps, reverse=True) and sum(math.exp(x) for x in lps) <= 1 + 1e-9
        assert bytes(token.bytes).decode() == token.token
    assert client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=3,
                                          temperature=0).choices[0].logprobs is None


def test_completion_logprobs_and_streamed_logprobs(client):
    reply = client.completions.create(model="tiny-chat", prompt="Once", max_tokens=6, temperature=0,
                                      logprobs=2)
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == reply.choices[0].text and len(lp.token_logprobs) == 6
    assert all(len(top) <= 2 and max(top.values()) == v for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    streamed = [t for c in client.chat.completions.create(
        model="tiny-chat", messages=HI, max_tokens=6, temperature=0, logprobs=True, stream=True)
        if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert len(streamed) == 6 and all(t.top_logprobs == [] for t in streamed)


# ---- errors --------------------------------------------------------------------------------------

GOOD = {"messages": HI, "max_tokens": 2, "temperature": 0}
BAD_BODIES = [
    ('{"messages": [', "invalid_json", None),
    ({"messages": "hello"}, "invalid_value", "messages"),
    ({"messages": []}, "invalid_value", "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_value", "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "invalid_value", "messages[0].content"),
    ({**GOOD, "max_tokens": -1}, "invalid_value", "max_tokens"),
    ({**GOOD, "max_tokens": "5"}, "invalid_value", "max_tokens"),
    ({**GOOD, "temperature": -0.5}, "invalid_value", "temperature"),
    ({**GOOD, "temperature": "hot"}, "invalid_value", "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "invalid_value", "temperature"),
    ({**GOOD, "top_p": 0}, "invalid_value", "top_p"),
    ({**GOOD, "top_k": -3}, "invalid_value", "top_k"),
    ({**GOOD, "min_p": 1.5}, "invalid_value", "min_p"),
    ({**GOOD, "repeat_penalty": 0}, "invalid_value", "repeat_penalty"),
    ({**GOOD, "presence_penalty": 3}, "invalid_value", "presence_penalty"),
    ({**GOOD, "n": 0}, "invalid_value", "n"),
    ({**GOOD, "top_logprobs": 50}, "invalid_value", "top_logprobs"),
    ({**GOOD, "stop": 7}, "invalid_value", "stop"),
]


@pytest.mark.parametrize("body,code,param", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_requests_are_400_in_openai_shape(server, body, code, param):
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"]


def test_bad_completion_requests(server):
    for body, param in [({"prompt": [10, 10**6]}, "prompt"), ({"prompt": []}, "prompt"),
                        ({"prompt": "x", "logprobs": 9}, "logprobs"), ({"prompt": ""}, "prompt")]:
        response = post(server, "/v1/completions", body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_auth_model_context_and_size_errors(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = post(server, "/v1/chat/completions", GOOD, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    response = post(server, "/v1/chat/completions", {**GOOD, "model": "gpt-4o"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"
    long = {"messages": [{"role": "user", "content": "x " * 5000}]}
    response = post(server, "/v1/chat/completions", long)
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert re.search(r"context is 4096 tokens, but the prompt is \d{5} tokens", error["message"])
    huge = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    response = post(server, "/v1/chat/completions", huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit applies while the body is read
        yield json.dumps(huge).encode()

    response = httpx.post(server.url + "/v1/chat/completions", content=chunked(), headers=AUTH, timeout=30)
    assert response.status_code == 413
    assert post(server, "/v1/nothing-here", GOOD).json()["error"]["type"] == "not_found_error"


def test_unknown_fields_are_ignored_and_the_server_keeps_serving(server):
    body = {**GOOD, "user": "someone", "frobnicate": {"x": 1}, "tools": None, "max_completion_tokens": 3}
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3  # max_completion_tokens wins


# ---- capacity, cancellation, metrics -------------------------------------------------------------

def long_stream(server, client: httpx.Client):
    body = {"messages": HI, "max_tokens": 4000, "temperature": 0, "stream": True}
    return client.stream("POST", server.url + "/v1/chat/completions", json=body, headers=AUTH)


CANCELLED, LENGTH = 'finish_reason="cancelled"', 'finish_reason="length"'


def test_client_leaving_mid_stream_frees_its_slot(server):
    """The finish reasons counted are the engine's own: "cancelled" only if it really stopped."""
    before = metric(server, "rocmforge_sequences_finished_total", CANCELLED)
    lengths = metric(server, "rocmforge_sequences_finished_total", LENGTH)
    assert metric(server, "rocmforge_active_slots") == 0
    with httpx.Client(timeout=30) as c:
        with long_stream(server, c) as response:
            lines = response.iter_lines()
            for _ in range(4):  # role, then text: the sequence is decoding
                next(lines)
            assert metric(server, "rocmforge_active_slots") == 1
    assert wait_for(lambda: metric(server, "rocmforge_sequences_finished_total", CANCELLED) == before + 1)
    assert metric(server, "rocmforge_sequences_finished_total", LENGTH) == lengths
    assert wait_for(lambda: metric(server, "rocmforge_active_slots") == 0)
    assert server.engine.free_slot_count == server.engine.n_slots


def test_client_leaving_a_plain_request_cancels_it(server):
    before = metric(server, "rocmforge_sequences_finished_total", CANCELLED)
    lengths = metric(server, "rocmforge_sequences_finished_total", LENGTH)
    body = {"messages": HI, "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/chat/completions", body, timeout=0.5)
    assert wait_for(lambda: metric(server, "rocmforge_sequences_finished_total", CANCELLED) == before + 1)
    assert metric(server, "rocmforge_sequences_finished_total", LENGTH) == lengths
    assert wait_for(lambda: metric(server, "rocmforge_active_slots") == 0)


def test_full_queue_is_503_and_recovers(model_path):
    with ServerThread(model_path, n_slots=1, max_queue=1) as server, httpx.Client(timeout=30) as c:
        with long_stream(server, c) as first, long_stream(server, c) as second:
            assert first.status_code == second.status_code == 200
            lines = first.iter_lines()
            for _ in range(4):  # role, then text: the first holds the slot, the second waits
                next(lines)
            assert metric(server, "rocmforge_queue_depth") == 1
            response = c.post(server.url + "/v1/chat/completions", json=GOOD)
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "queue_full"
            two = c.post(server.url + "/v1/completions", json={"prompt": "x", "n": 3, "max_tokens": 2})
            assert two.status_code == 503
        assert wait_for(lambda: metric(server, "rocmforge_active_slots") == 0)
        assert c.post(server.url + "/v1/chat/completions", json=GOOD).status_code == 200


def test_metrics_count_requests_tokens_and_latency(server, client):
    ok = 'path="/v1/chat/completions",status="200"'
    requests, tokens = metric(server, "rocmforge_requests_total", ok), metric(
        server, "rocmforge_completion_tokens_total")
    client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=5, temperature=0)
    assert metric(server, "rocmforge_requests_total", ok) == requests + 1
    assert metric(server, "rocmforge_completion_tokens_total") == tokens + 5
    assert metric(server, "rocmforge_prompt_tokens_total") > 0
    assert metric(server, "rocmforge_time_to_first_token_seconds_count") >= 1
    assert metric(server, "rocmforge_generation_tokens_per_second_count") >= 1
    assert metric(server, "rocmforge_slots") == 2
    post(server, "/v1/chat/completions", {"messages": []})
    assert metric(server, "rocmforge_requests_total", 'path="/v1/chat/completions",status="400"') >= 1


def test_shutdown_lets_short_streams_finish_and_cancels_the_rest(model_path):
    """What SIGTERM does (the signal handler sets should_exit): within the grace period a stream ends
    normally; after it, the stream still running gets an error event, and the server stops."""
    with ServerThread(model_path, n_slots=2, grace=1.5) as server, httpx.Client(timeout=30) as c:
        short = {"messages": HI, "max_tokens": 300, "temperature": 0, "stream": True}
        with c.stream("POST", server.url + "/v1/chat/completions", json=short) as a, \
                long_stream(server, c) as b:
            a_lines = (line for line in a.iter_lines() if line)
            b_lines = (line for line in b.iter_lines() if line)
            head = [next(a_lines) for _ in range(3)] + [next(b_lines) for _ in range(3)]
            server.server.should_exit = True
            a_rest, b_rest = list(a_lines), list(b_lines)
        assert all(line.startswith("data: {") for line in head)
        assert a_rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in a_rest[-2]
        assert json.loads(b_rest[-1][6:])["error"]["code"] == "cancelled"
        server.thread.join(timeout=30)
        assert not server.thread.is_alive() and not server.engine.running


# ---- rocmforge generate --server -----------------------------------------------------------------

def generate_via(url: str, *args: str) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = dict(os.environ, ROCMFORGE_API_KEY=API_KEY)
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", "generate", "--server", url, *args],
                          capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def test_generate_against_the_server_equals_the_local_engine(model_path, server):
    text, ids, _ = engine_greedy(model_path, Request(messages=HI, max_tokens=12,
                                                     sampling=SamplingParams(temperature=0)))
    proc = generate_via(server.url, "-p", "Hi there", "--temperature", "0", "-n", "12")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == text + "\n"
    proc = generate_via(server.url, "tiny", "-p", "The answer is", "--raw", "--temperature", "0", "-n", "6",
                        "--json")
    out = json.loads(proc.stdout)
    raw, _, final = engine_greedy(model_path, Request(prompt="The answer is", max_tokens=6,
                                                      sampling=SamplingParams(temperature=0)))
    assert (out["text"], out["completion_tokens"], out["finish_reason"]) == (raw, 6, "length")
    assert out["prompt_tokens"] == final.timings.prompt_tokens


def test_generate_server_errors_are_one_line(server):
    proc = generate_via(server.url, "gpt-4", "-p", "Hi")
    assert proc.returncode == 2 and proc.stderr.startswith("error: the server answered 404")
    assert len(proc.stderr.strip().splitlines()) == 1
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = generate_via(f"http://127.0.0.1:{port}", "-p", "Hi")
    # nobody listening is bad input (a wrong URL or no server started): exit 2, and the line says so
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot reach the server" in proc.stderr and "connection refused" in proc.stderr
