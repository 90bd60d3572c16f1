"""GGUFFile: metadata and tensors read back from files the gguf writer made, and every corrupt file refused."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf_factory import patch, random_blocks, tensor_info_positions, truncate, write_gguf

from rocmforge_core.config import config_from_metadata
from rocmforge_core.errors import BadInputError, UnsupportedModelError
from rocmforge_core.gguf_file import GGUFFile, TensorInfo

TOKENS = ["<s>", "</s>", "a", "b", "ab", "\u00e9t\u00e9", "\U0001F600"]


def sample_metadata() -> dict:
    return {
        "general.name": "tiny test",
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.context_length": 256,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.scores": np.linspace(-3, 0, len(TOKENS), dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([3, 3, 1, 1, 1, 1, 1], dtype=np.int32),
        "some.int_list": [1, -2, 3],
        "some.negative": -7,
        "some.u64": 2**40,
        "some.u8": (200, VT.UINT8),
    }


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return {
        "token_embd.weight": (rng.standard_normal((7, 64)).astype(np.float32), QT.F16),
        "output_norm.weight": (rng.standard_normal(64).astype(np.float32), QT.F32),
        "blk.0.attn_q.weight": (rng.standard_normal((32, 64)).astype(np.float32), QT.Q8_0),
        "blk.0.ffn_down.weight": (random_blocks(QT.Q4_K, (4, 256), rng), QT.Q4_K),
    }


@pytest.fixture
def good_file(tmp_path, weights):
    return write_gguf(tmp_path / "tiny.gguf", "llama", sample_metadata(), weights)


def test_metadata_values_are_plain_python(good_file):
    gf = GGUFFile(good_file)
    md = gf.metadata
    assert gf.architecture == "llama" and gf.get("general.architecture") == "llama"
    assert md["general.name"] == "tiny test"
    assert md["llama.block_count"] == 2 and isinstance(md["llama.block_count"], int)
    assert md["llama.rope.freq_base"] == 10000.0
    assert np.float32(md["llama.attention.layer_norm_rms_epsilon"]) == np.float32(1e-5)
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.ggml.tokens"] == TOKENS
    assert md["tokenizer.ggml.merges"] == ["a b"]
    assert md["some.int_list"] == [1, -2, 3] and md["some.negative"] == -7
    assert md["some.u64"] == 2**40 and md["some.u8"] == 200
    scores, types = md["tokenizer.ggml.scores"], md["tokenizer.ggml.token_type"]
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
    assert np.array_equal(scores, np.linspace(-3, 0, len(TOKENS), dtype=np.float32))
    assert types.dtype == np.int32 and types.tolist() == [3, 3, 1, 1, 1, 1, 1]
    assert gf.get("missing.key", 5) == 5
    assert gf.alignment == 32


def test_tensors_in_file_order_with_numpy_shapes(good_file, weights):
    gf = GGUFFile(good_file)
    assert list(gf.tensors) == list(weights)
    q = gf.tensor("blk.0.attn_q.weight")
    assert isinstance(q, TensorInfo) and q.qtype == QT.Q8_0
    assert q.shape == (32, 64) and q.n_elements == 2048 and q.n_bytes == 64 * 34
    assert gf.tensor("blk.0.ffn_down.weight").shape == (4, 256)
    assert gf.tensor("output_norm.weight").shape == (64,)
    # The data is a read-only window on the file, not a copy.
    assert q.data.dtype == np.uint8 and q.data.size == q.n_bytes
    assert not q.data.flags.owndata and not q.data.flags.writeable


def test_dequant_gives_float32_in_numpy_shape(good_file, weights):
    gf = GGUFFile(good_file)
    norm = gf.dequant("output_norm.weight")
    assert norm.dtype == np.float32 and np.array_equal(norm, weights["output_norm.weight"][0])
    emb = gf.dequant("token_embd.weight")
    assert np.array_equal(emb, weights["token_embd.weight"][0].astype(np.float16).astype(np.float32))
    q = gf.dequant("blk.0.attn_q.weight")
    assert q.shape == (32, 64)
    assert np.allclose(q, weights["blk.0.attn_q.weight"][0], atol=0.05)


def test_agrees_with_gguf_reader(good_file):
    ours, theirs = GGUFFile(good_file), gguf.GGUFReader(good_file)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        value = value.tolist() if isinstance(value, np.ndarray) else value
        assert value == field.contents(), key
    for t in theirs.tensors:
        info = ours.tensor(t.name)
        assert info.qtype == t.tensor_type and info.n_bytes == t.n_bytes
        assert np.array_equal(info.data, t.data.reshape(-1).view(np.uint8))


def test_custom_alignment(tmp_path, weights):
    path = write_gguf(tmp_path / "a.gguf", "llama", {}, weights, alignment=256)
    gf = GGUFFile(path)
    assert gf.alignment == 256 and gf.data_offset % 256 == 0
    assert np.array_equal(gf.dequant("output_norm.weight"), weights["output_norm.weight"][0])


def test_missing_tensor_names_it(good_file):
    gf = GGUFFile(good_file)
    assert gf.has_tensor("output_norm.weight") and not gf.has_tensor("output.weight")
    with pytest.raises(BadInputError, match="'output.weight' not found"):
        gf.tensor("output.weight")


# --- refusing bad files ---------------------------------------------------------------------------

def refused(path, match: str, kind=BadInputError) -> str:
    with pytest.raises(kind, match=match) as err:
        GGUFFile(path)
    line = err.value.one_line()
    assert "\n" not in line
    return line


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "nope.gguf", "no such file")
    refused(tmp_path, "is a directory")


def test_empty_and_text_files(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    refused(empty, "empty")
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a model\n")
    refused(text, "not a GGUF file")


def test_bad_magic_and_version(good_file, tmp_path):
    raw = bytearray(good_file.read_bytes())
    raw[:4] = b"GGML"
    (tmp_path / "magic.gguf").write_bytes(raw)
    refused(tmp_path / "magic.gguf", "bad magic")
    for version in (1, 99):
        patch(good_file, 4, "<I", version)
        refused(good_file, f"unsupported GGUF version {version}")


def test_every_truncation_is_refused(good_file, tmp_path):
    gf = GGUFFile(good_file)
    size = good_file.stat().st_size
    last = list(gf.tensors.values())[-1]
    header_end = gf.data_offset
    cuts = list(range(0, header_end)) + [header_end, header_end + 10, size - last.n_bytes // 2, size - 1]
    messages = set()
    for cut in cuts:
        path = truncate(good_file, cut, tmp_path / "cut.gguf")
        with pytest.raises(BadInputError) as err:
            GGUFFile(path)
        messages.add(err.value.one_line())
    text = " | ".join(sorted(messages))
    for expected in ("header is cut short", "metadata cut short", "tensor info cut short", "runs past the end"):
        assert expected in text


def test_tensor_offset_past_end(good_file):
    pos = tensor_info_positions(good_file, "blk.0.attn_q.weight")
    patch(good_file, pos["offset"], "<Q", 1 << 20)
    line = refused(good_file, "runs past the end of the file")
    assert "blk.0.attn_q.weight" in line


def test_huge_dimension_does_not_wrap(good_file):
    pos = tensor_info_positions(good_file, "token_embd.weight")
    patch(good_file, pos["dims"] + 8, "<Q", 2**63)  # 64 * 2**63 elements would wrap a uint64 to 0
    refused(good_file, "runs past the end")


@pytest.mark.parametrize("type_id, name", [(int(QT.IQ2_XXS), "IQ2_XXS"), (int(QT.Q8_K), "Q8_K"), (77, "type id 77")])
def test_unsupported_tensor_type(good_file, type_id, name):
    patch(good_file, tensor_info_positions(good_file, "output_norm.weight")["type"], "<I", type_id)
    line = refused(good_file, "unsupported tensor type", UnsupportedModelError)
    assert name in line and "output_norm.weight" in line


def test_no_architecture(tmp_path):
    raw = bytearray(write_gguf(tmp_path / "x.gguf", "llama").read_bytes())
    at = raw.find(b"general.architecture")
    raw[at:at + 7] = b"GENERAL"
    (tmp_path / "x.gguf").write_bytes(raw)
    refused(tmp_path / "x.gguf", "no general.architecture")


def test_random_corruption_only_ever_raises_bad_input(good_file, tmp_path):
    """Flip bytes all over the header: every outcome is a clean open or a BadInputError."""
    raw = good_file.read_bytes()
    header_end = GGUFFile(good_file).data_offset
    rng = np.random.default_rng(1234)
    path = tmp_path / "fuzz.gguf"
    for _ in range(400):
        mutated = bytearray(raw)
        for pos in rng.integers(4, header_end, size=rng.integers(1, 4)):
            mutated[pos] = rng.integers(0, 256)
        path.write_bytes(mutated)
        try:
            GGUFFile(path)
        except BadInputError:
            pass


# --- the model config built from metadata ---------------------------------------------------------

def arch_metadata(arch: str, **extra) -> dict:
    md = {"general.architecture": arch, f"{arch}.block_count": 4, f"{arch}.embedding_length": 256,
          f"{arch}.feed_forward_length": 512, f"{arch}.attention.head_count": 8,
          f"{arch}.context_length": 4096, "tokenizer.ggml.tokens": TOKENS}
    md.update({f"{arch}.{k.replace('__', '.')}": v for k, v in extra.items()})
    return md


@pytest.mark.parametrize("arch, neox", [("llama", False), ("gemma3", True), ("qwen2", True),
                                        ("qwen3", True), ("phi3", True)])
def test_config_defaults_per_architecture(arch, neox):
    c = config_from_metadata(arch_metadata(arch))
    assert (c.architecture, c.n_layers, c.dim, c.ffn_dim, c.n_heads) == (arch, 4, 256, 512, 8)
    assert c.n_kv_heads == 8 and c.head_dim == 32 and c.value_dim == 32 and c.rope_dim == 32
    assert c.vocab_size == len(TOKENS) and c.context_length == 4096
    assert c.rope_base == 10000.0 and c.norm_eps == 1e-5 and c.rope_neox is neox
    assert c.rope_scaling_type is None and c.rope_scaling_factor == 1.0


def test_config_reads_every_key():
    md = arch_metadata("qwen3", attention__head_count_kv=2, attention__key_length=64,
                       attention__value_length=48, rope__freq_base=1e6, rope__dimension_count=32,
                       attention__layer_norm_rms_epsilon=1e-6, vocab_size=1000,
                       rope__scaling__type="yarn", rope__scaling__factor=4.0,
                       rope__scaling__original_context_length=32768)
    c = config_from_metadata(md)
    assert (c.n_kv_heads, c.n_rep, c.head_dim, c.value_dim, c.rope_dim) == (2, 4, 64, 48, 32)
    assert c.rope_base == 1e6 and c.norm_eps == 1e-6 and c.vocab_size == 1000
    assert (c.rope_scaling_type, c.rope_scaling_factor, c.rope_original_context) == ("yarn", 4.0, 32768)
    assert c.sliding_window is None and not c.is_sliding_layer(0)


def test_config_gemma3_sliding_window_and_softcaps():
    c = config_from_metadata(arch_metadata("gemma3", attention__sliding_window=512,
                                           final_logit_softcapping=30.0))
    assert c.sliding_window == 512 and c.rope_base_local == 10000.0
    assert [c.is_sliding_layer(i) for i in range(12)] == [True] * 5 + [False] + [True] * 5 + [False]
    assert c.final_logit_softcapping == 30.0 and c.attn_logit_softcapping is None


def test_config_of_a_written_file(good_file):
    c = config_from_metadata(GGUFFile(good_file).metadata)
    assert (c.architecture, c.n_layers, c.dim, c.n_heads, c.head_dim) == ("llama", 2, 64, 4, 16)
    assert c.vocab_size == len(TOKENS) and c.context_length == 256


def test_config_unknown_architecture_lists_supported():
    with pytest.raises(UnsupportedModelError) as err:
        config_from_metadata(arch_metadata("mamba9"))
    line = err.value.one_line()
    assert "mamba9" in line and all(a in line for a in ("llama", "gemma3", "qwen2", "qwen3", "phi3"))


@pytest.mark.parametrize("md, fragment", [
    ({"llama.block_count": None}, "lacks llama.block_count"),
    ({"llama.attention.head_count": 0}, "not a positive integer"),
    ({"llama.attention.head_count_kv": 3}, "do not split"),
    ({"llama.rope.freq_base": "fast"}, "not a number"),
    ({"tokenizer.ggml.tokens": None}, "neither llama.vocab_size nor tokenizer.ggml.tokens"),
])
def test_config_bad_values(md, fragment):
    metadata = {k: v for k, v in {**arch_metadata("llama"), **md}.items() if v is not None}
    with pytest.raises(BadInputError, match=fragment):
        config_from_metadata(metadata)


@pytest.mark.slow
def test_config_of_the_default_models(smollm2_path, gemma3_path):
    s = config_from_metadata(GGUFFile(smollm2_path).metadata)
    assert (s.n_layers, s.dim, s.n_heads, s.n_kv_heads, s.head_dim, s.rope_base) == (30, 576, 9, 3, 64, 1e5)
    assert s.vocab_size == 49152 and not s.rope_neox
    g = config_from_metadata(GGUFFile(gemma3_path).metadata)
    assert (g.n_layers, g.dim, g.n_heads, g.n_kv_heads, g.head_dim, g.rope_base) == (18, 640, 4, 1, 256, 1e6)
    assert g.sliding_window == 512 and g.vocab_size == 262144 and g.rope_neox
