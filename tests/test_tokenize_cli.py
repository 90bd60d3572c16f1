"""`rocmforge tokenize` in a real subprocess: ids equal llama.cpp's (the committed fixtures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def _tokenize(model: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", "tokenize", str(model), "--text", text, *flags],
                          capture_output=True, timeout=120)


def _entry(name: str, text: str) -> dict:
    corpus = json.loads((DATA / f"tokenizer_{name}.json").read_text(encoding="utf-8"))["corpus"]
    return next(e for e in corpus if e["text"] == text)


@pytest.mark.parametrize("name,text,flags,case", [
    ("smollm2", "<|im_start|>user\nhi<|im_end|>", ["--special"], "add_special=True,parse_special=True"),
    ("smollm2", "café naïve Åström résumé façade", ["--no-bos"], "add_special=False,parse_special=False"),
    ("gemma3", "<start_of_turn>user\n", ["--special"], "add_special=True,parse_special=True"),
    ("gemma3", "<start_of_turn>user\n", ["--no-bos"], "add_special=False,parse_special=False"),
])
def test_json_ids_equal_llama_cpp(request, name, text, flags, case):
    model = request.getfixturevalue(f"{name}_path")
    proc = _tokenize(model, text, "--json", *flags)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == _entry(name, text)["cases"][case]["ids"]


def test_human_output_is_one_line_per_token(gemma3_path):
    proc = _tokenize(gemma3_path, "Hello world")
    assert proc.returncode == 0, proc.stderr.decode()
    ids = _entry("gemma3", "Hello world")["cases"]["add_special=True,parse_special=False"]["ids"]
    lines = proc.stdout.decode().splitlines()
    assert [int(line.split(" -> ")[0]) for line in lines] == ids
    assert lines[0].endswith("-> '<bos>'") and lines[1].endswith("-> 'Hello'")


def test_missing_model_file_is_one_line_error(tmp_path):
    proc = _tokenize(tmp_path / "missing.gguf", "hi", "--json")
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
