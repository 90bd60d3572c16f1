"""`rocmforge generate` driven as a real subprocess on the default model: text, JSON, seeds, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def rocmforge(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, env=env,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2, needle: str = "") -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]


def test_piped_prompt_answers_sensibly(smollm2_path):
    proc = rocmforge("generate", str(smollm2_path), "--temperature", "0", "-n", "48",
                     stdin="Name three colors.")
    assert proc.returncode == 0, proc.stderr
    colors = {"red", "blue", "green", "yellow", "orange", "purple", "black", "white", "pink"}
    found = {c for c in colors if c in proc.stdout.lower()}
    assert len(found) >= 2, proc.stdout
    assert proc.stderr == ""  # stats only with --verbose


def test_json_has_every_spec_field(smollm2_path):
    proc = rocmforge("generate", str(smollm2_path), "-p", "Say hello.", "--temperature", "0", "-n", "8",
                     "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"text", "tokens", "prompt_tokens", "completion_tokens", "finish_reason", "timings"}
    assert set(out["timings"]) >= {"load_ms", "ttft_ms", "prompt_tokens_per_s", "gen_tokens_per_s"}
    assert out["finish_reason"] in ("stop", "length")
    assert out["prompt_tokens"] > 5 and 1 <= out["completion_tokens"] <= 8
    assert all(isinstance(t, int) for t in out["tokens"]) and out["text"]


def test_seeds(smollm2_path):
    def sample(seed: int) -> str:
        proc = rocmforge("generate", str(smollm2_path), "--raw", "-p", "Once upon a time", "-n", "24",
                         "--temperature", "0.8", "--seed", str(seed), "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["text"]

    first, again, other = sample(7), sample(7), sample(8)
    assert first == again
    assert first != other


def test_stdin_and_prompt_combine(smollm2_path):
    proc = rocmforge("generate", str(smollm2_path), "--raw", "-p", "Summary:", "-n", "1", "--json",
                     "--temperature", "0", stdin="The cat sat on the mat.")
    assert proc.returncode == 0, proc.stderr
    # "The cat sat on the mat.\n\nSummary:" tokenized: more tokens than either part alone
    assert json.loads(proc.stdout)["prompt_tokens"] >= 10


@pytest.mark.parametrize("args, needle", [
    (["-p", ""], "empty"),
    (["-p", "hi", "--max-tokens", "0"], "--max-tokens"),
    (["-p", "hi", "-n", "-3"], "--max-tokens"),
    (["-p", "hi", "--temperature", "-1"], "temperature"),
    (["-p", "hi", "--top-p", "0"], "top-p"),
    (["-p", "hi", "--top-p", "1.5"], "top-p"),
])
def test_bad_flags(smollm2_path, args, needle):
    assert_one_line_error(rocmforge("generate", str(smollm2_path), *args), needle=needle)


def test_prompt_longer_than_context(smollm2_path):
    proc = rocmforge("generate", str(smollm2_path), "--raw", "--ctx", "16", "-p", "word " * 40)
    assert_one_line_error(proc, needle="context")


def test_unparseable_chat_template(smollm2_path, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }")
    proc = rocmforge("generate", str(smollm2_path), "-p", "hi", "--chat-template-file", str(bad))
    assert_one_line_error(proc, needle="template")


def test_stop_string_not_printed(smollm2_path):
    base = rocmforge("generate", str(smollm2_path), "--raw", "-p", "1, 2, 3, 4,", "-n", "12",
                     "--temperature", "0", "--json")
    text = json.loads(base.stdout)["text"]
    assert " 7" in text, text
    stopped = rocmforge("generate", str(smollm2_path), "--raw", "-p", "1, 2, 3, 4,", "-n", "12",
                        "--temperature", "0", "--stop", " 7", "--json")
    out = json.loads(stopped.stdout)
    assert out["text"] == text[: text.index(" 7")]
    assert out["finish_reason"] == "stop"


@pytest.mark.parametrize("name, case", [("smollm2", 0), ("smollm2", 4), ("gemma3", 1)])
def test_greedy_text_identical_to_llama_cpp_with_its_numerics(name, case, request):
    """`generate --numerics llama.cpp --temperature 0 --raw -n 32` prints llama.cpp's continuation
    (tests/data/generate_*.json, made with llama-cpp-python) token for token. Case 4 of SmolLM2 (French
    text, multi-byte characters) is one where the default float32 numerics part from llama.cpp's."""
    from pathlib import Path

    fixture = json.loads((Path(__file__).parent / "data" / f"generate_{name}.json").read_text())
    expected = fixture["runs"]["quantized"]["cases"][case]
    path = request.getfixturevalue(f"{name}_path")
    proc = rocmforge("generate", str(path), "--numerics", "llama.cpp", "--temperature", "0", "--raw",
                     "-n", "32", "-p", expected["prompt"], "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["tokens"] == expected["ids"][:len(out["tokens"])]
    assert out["text"] == expected["text"][:len(out["text"])]
    assert len(out["tokens"]) == 32 or out["finish_reason"] == "stop"


def test_numerics_needs_the_cpu_backend(smollm2_path):
    proc = rocmforge("generate", str(smollm2_path), "--numerics", "llama.cpp", "--backend", "cuda", "-p", "hi")
    assert_one_line_error(proc, needle="CPU backend")
