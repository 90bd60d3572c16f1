"""`rocmforge inspect` as a user runs it (a subprocess): good files summarised, bad ones refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf_factory import patch, random_blocks, tensor_info_positions, truncate, write_gguf

from rocmforge_core.gguf_file import GGUFFile

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def inspect(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ROCMFORGE_DEBUG"}
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", "inspect", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def tiny_model(path, arch="llama", template=True):
    rng = np.random.default_rng(0)
    tokens = [f"t{i}" for i in range(32)]
    metadata = {
        "general.name": "tiny",
        f"{arch}.block_count": 1, f"{arch}.context_length": 128, f"{arch}.embedding_length": 64,
        f"{arch}.feed_forward_length": 256, f"{arch}.attention.head_count": 4,
        f"{arch}.attention.head_count_kv": 2, f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
    }
    if template:
        metadata["tokenizer.chat_template"] = TEMPLATE
    tensors = {
        "token_embd.weight": (rng.standard_normal((32, 64)), QT.Q8_0),
        "output_norm.weight": (np.ones(64), QT.F32),
        "blk.0.attn_q.weight": (rng.standard_normal((64, 64)), QT.Q4_0),
        "blk.0.ffn_down.weight": (random_blocks(QT.Q6_K, (64, 256), rng), QT.Q6_K),
    }
    # the rest of the one layer, which the load-time check asks for
    for name, shape in LAYER_REST.items():
        tensors[f"blk.0.{name}"] = (rng.standard_normal(shape), QT.F32 if len(shape) == 1 else QT.Q8_0)
    if arch == "qwen3":
        tensors.update({f"blk.0.attn_{x}_norm.weight": (np.ones(16), QT.F32) for x in "qk"})
    return write_gguf(path, arch, metadata, tensors)


LAYER_REST = {"attn_norm.weight": (64,), "ffn_norm.weight": (64,), "attn_k.weight": (32, 64),
              "attn_v.weight": (32, 64), "attn_output.weight": (64, 64), "ffn_gate.weight": (256, 64),
              "ffn_up.weight": (256, 64)}


@pytest.fixture
def good(tmp_path):
    return tiny_model(tmp_path / "tiny.gguf")


def test_good_file_json(good):
    result = inspect(good, "--json")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["architecture"] == "llama" and s["name"] == "tiny"
    rest = sum(int(np.prod(shape)) for shape in LAYER_REST.values())
    assert s["parameters"] == 32 * 64 + 64 + 64 * 64 + 64 * 256 + rest
    assert s["file_size"] == good.stat().st_size
    assert (s["layers"], s["embedding_length"], s["heads"], s["kv_heads"], s["head_dim"]) == (1, 64, 4, 2, 16)
    assert s["context_length"] == 128 and s["vocab_size"] == 32 and s["rope_base"] == 10000.0
    assert s["tokenizer_model"] == "gpt2" and s["chat_template"] is True
    assert s["n_tensors"] == 4 + len(LAYER_REST)
    assert s["tensor_types"]["Q6_K"] == {"count": 1, "parameters": 64 * 256, "bytes": 64 * 210}
    assert set(s["tensor_types"]) == {"Q8_0", "F32", "Q4_0", "Q6_K"}


def test_good_file_table(tmp_path):
    path = tiny_model(tmp_path / "base.gguf", arch="qwen3", template=False)
    result = inspect(path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "qwen3" in out and "neox" in out and "Q6_K" in out
    assert "chat template" in out and "no" in out.split("chat template")[1].split("\n")[0]


def test_text_file(tmp_path):
    path = tmp_path / "README.txt"
    path.write_text("just some text, not a model\n")
    assert_refused(inspect(path), "not a GGUF file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert_refused(inspect(path), "empty")


def test_missing_file_and_directory(tmp_path):
    assert_refused(inspect(tmp_path / "nope.gguf"), "no such file")
    assert_refused(inspect(tmp_path), "directory")


def test_bad_magic(good, tmp_path):
    raw = bytearray(good.read_bytes())
    raw[:4] = b"GGJT"
    (tmp_path / "magic.gguf").write_bytes(raw)
    assert_refused(inspect(tmp_path / "magic.gguf"), "bad magic")


def test_bad_version(good):
    patch(good, 4, "<I", 99)
    assert_refused(inspect(good), "unsupported GGUF version 99")


def test_truncated_everywhere(good, tmp_path):
    gf = GGUFFile(good)
    emb = gf.tensor("token_embd.weight")
    last = list(gf.tensors)[-1]  # a cut in the last info: the header's tensor count still fits
    in_infos = tensor_info_positions(good, last)["dims"]
    in_metadata = good.read_bytes().find(b"tokenizer.ggml.tokens") + 40
    cuts = {
        10: "header is cut short",
        in_metadata: "metadata cut short",
        in_infos: "tensor info cut short",
        gf.data_offset + emb.n_bytes // 2: "runs past the end",
        good.stat().st_size - 1: "runs past the end",
    }
    for cut, fragment in cuts.items():
        assert_refused(inspect(truncate(good, cut, tmp_path / f"cut{cut}.gguf")), fragment)


def test_tensor_offset_past_end(good):
    patch(good, tensor_info_positions(good, "blk.0.ffn_down.weight")["offset"], "<Q", 10**9)
    assert_refused(inspect(good), "runs past the end")


def test_unknown_architecture(tmp_path):
    path = tiny_model(tmp_path / "mamba.gguf", arch="mamba9")
    assert_refused(inspect(path), "unsupported architecture 'mamba9'")


@pytest.mark.parametrize("type_id, name", [(int(QT.IQ2_XXS), "IQ2_XXS"), (99, "type id 99")])
def test_unsupported_tensor_type(good, type_id, name):
    patch(good, tensor_info_positions(good, "blk.0.attn_q.weight")["type"], "<I", type_id)
    assert_refused(inspect(good), f"unsupported tensor type {name}")


@pytest.mark.slow
@pytest.mark.parametrize("name, fixture, expected", [
    ("smollm2", "smollm2_path", {"architecture": "llama", "layers": 30, "heads": 9, "kv_heads": 3,
                                 "vocab_size": 49152, "chat_template": True,
                                 "tensor_types": {"Q4_1", "Q8_0", "F32"}}),
    ("gemma3-270m", "gemma3_path", {"architecture": "gemma3", "layers": 18, "heads": 4, "kv_heads": 1,
                                    "vocab_size": 262144, "chat_template": False,
                                    "tensor_types": {"Q5_0", "Q4_K", "Q6_K", "Q8_0", "F32"}}),
])
def test_inspect_default_models_by_name(name, fixture, expected, request):
    path = request.getfixturevalue(fixture)  # fetched (once) through the store
    result = inspect(name, "--json")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["path"] == str(path.resolve()) and s["file_size"] == path.stat().st_size
    for key, value in expected.items():
        assert (set(s[key]) if key == "tensor_types" else s[key]) == value, key
