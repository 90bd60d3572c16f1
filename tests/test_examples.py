"""The scripts in examples/ run as a user runs them (a subprocess, the model as argument) on the tiny
random chat model; the openai one against the real server on loopback."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_chat_model import make_chat_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat.gguf")


def run_example(name: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    root = str(EXAMPLES.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def greedy_alone(model_path, question: str, max_tokens: int) -> str:
    """The same chat request alone on an engine of its own."""
    from rocmforge_core.engine import Request, collect, create_engine
    from rocmforge_core.sampler import SamplingParams

    async def go():
        async with create_engine(model_path, backend="cpu", n_slots=1) as engine:
            text, _, _ = await collect(engine.submit(Request(
                messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
                sampling=SamplingParams(temperature=0.0))))
            return text

    return asyncio.run(go())


def test_python_api_streams_two_requests_at_once(model_path):
    out = run_example("python_api.py", model_path, "--max-tokens", "10", "--backend", "cpu").stdout
    lines = out.splitlines()
    deltas = [line[:3] for line in lines if line.startswith("[")]
    assert deltas.count("[0]") == 10 and deltas.count("[1]") == 10
    # both were in flight together: request 1 streamed before request 0 was done
    assert deltas.index("[1]") < len(deltas) - 1 - deltas[::-1].index("[0]")
    answers = [line for line in lines if line.startswith("answer ")]
    assert len(answers) == 2 and all("(length, 10 tokens" in a for a in answers)
    expected = greedy_alone(model_path, "What is the capital of France?", 10)
    assert answers[1].startswith(f"answer 1: {expected.strip()!r}")


def test_batch_prompts_gives_json_lines_in_order(model_path, tmp_path):
    prompts = ["Name three colors.", "", "What is 2+2?", "Say hi.", "Tell me a joke.", "Count to five."]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = run_example("batch_prompts.py", path, model_path, "--parallel", "2", "--max-tokens", "6",
                      "--backend", "cpu").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    given = [p for p in prompts if p]
    assert [r["prompt"] for r in rows] == given and [r["index"] for r in rows] == list(range(len(given)))
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 6 and r["prompt_tokens"] > 0
               for r in rows)
    assert rows[2]["text"] == greedy_alone(model_path, "What is 2+2?", 6)


def test_openai_client_against_the_real_server(model_path):
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from server_harness import API_KEY, ServerThread

    with ServerThread(model_path, n_slots=1, api_key=API_KEY) as server:
        out = run_example("openai_client.py", "tiny-chat", "--base-url", server.url + "/v1",
                          "--api-key", API_KEY, "--max-tokens", "8").stdout
    lines = out.splitlines()
    assert lines[0] == "models: tiny-chat"
    assert lines[1].startswith("answer: ") and "(length, " in lines[1] and "+ 8 reply tokens" in lines[1]
    plain = lines[1][len("answer: "):].rsplit(" (length", 1)[0]
    streamed = lines[2][len("streamed: "):]
    assert ast.literal_eval(plain) == streamed.strip()  # the same greedy reply, whole and streamed
