"""Hostile model files: `rocmforge inspect` and `rocmforge generate` refuse each with the same one line
and exit code 2, from the shared load-time check (rocmforge_core/model_check.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from cli_run import assert_one_line_error, run_main
from gguf_factory import patch, random_blocks, tensor_info_positions
from tiny_byte_model import write_byte_model

from rocmforge_core import quants

NAN, INF = float("nan"), float("inf")


def refused_everywhere(path, needle: str) -> str:
    """Both commands fail with one `error:` line holding `needle`, exit 2; returns the line."""
    line = assert_one_line_error(run_main("inspect", str(path)), needle)
    assert_one_line_error(run_main("generate", str(path), "--prompt", "hi", "-n", "1", "--raw",
                                   "--backend", "cpu"), needle)
    return line


def q8_blocks(shape, bad_blocks=(), value=NAN):
    """Q8_0 blocks for a tensor of `shape` with the fp16 scale of `bad_blocks` set to `value`."""
    blocks = random_blocks(QT.Q8_0, shape, np.random.default_rng(1)).reshape(-1, 34)
    blocks[list(bad_blocks), 0:2] = np.array([value] * len(bad_blocks), "<f2").view(np.uint8).reshape(-1, 2)
    return blocks.reshape(*shape[:-1], -1), QT.Q8_0


def test_the_good_file_passes(tmp_path):
    path = write_byte_model(tmp_path / "good.gguf")
    assert run_main("inspect", str(path)).code == 0
    assert run_main("generate", str(path), "--prompt", "hi", "-n", "1", "--raw", "--backend", "cpu").code == 0


BAD_METADATA = {
    "rope_scaling_int": ({"llama.rope.scaling.type": 1}, "llama.rope.scaling.type = 1 is not a string"),
    "scores_strings": ({"tokenizer.ggml.scores": ["a"] * 258}, "tokenizer.ggml.scores"),
    "types_strings": ({"tokenizer.ggml.token_type": ["normal"] * 258}, "tokenizer.ggml.token_type"),
    "merges_ints": ({"tokenizer.ggml.merges": [1, 2]}, "tokenizer.ggml.merges = [1, 2] is not an array of str"),
    "bos_array": ({"tokenizer.ggml.bos_token_id": [256]}, "bos_token_id = [256] is not an integer"),
    "eos_nan": ({"tokenizer.ggml.eos_token_id": NAN}, "eos_token_id = nan is not an integer"),
    "bos_outside": ({"tokenizer.ggml.bos_token_id": 5000}, "bos_token_id 5000 is outside the vocabulary of 258"),
    "eot_outside": ({"tokenizer.ggml.eot_token_id": 999}, "eot_token_id 999 is outside the vocabulary of 258"),
    "pad_outside_is_ignored_as_llama_cpp_does": ({"tokenizer.ggml.padding_token_id": 258}, None),
    "add_bos_string": ({"tokenizer.ggml.add_bos_token": "false"}, "add_bos_token = 'false' is not a boolean"),
    "tokens_ints": ({"tokenizer.ggml.tokens": list(range(258))}, "tokenizer.ggml.tokens"),
    "eps_nan": ({"llama.attention.layer_norm_rms_epsilon": NAN}, "layer_norm_rms_epsilon = nan is not a finite"),
    "eps_negative": ({"llama.attention.layer_norm_rms_epsilon": -1e-5}, "epsilon -1e-05 is negative"),
    "rope_base_zero": ({"llama.rope.freq_base": 0.0}, "rope.freq_base 0 must be positive"),
    "rope_base_nan": ({"llama.rope.freq_base": NAN}, "rope.freq_base = nan is not a finite"),
    "rope_base_negative": ({"llama.rope.freq_base": -5.0}, "rope.freq_base -5 must be positive"),
    "rope_base_inf": ({"llama.rope.freq_base": INF}, "is not a finite"),
    "block_count_huge": ({"llama.block_count": 2**28}, "block_count is 268435456, but the file holds tensors "
                                                       "for 2 layers"),
    "name_not_text": ({"general.name": 7}, "general.name is not a string"),
    "context_string": ({"llama.context_length": ("64", VT.STRING)}, "context_length = '64' is not a positive"),
}


@pytest.mark.timeout(30)  # block_count 2**28 must be refused before any per-layer list is built
@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_is_one_line(tmp_path, case):
    meta, needle = BAD_METADATA[case]
    if needle is None:  # accepted on purpose
        path = write_byte_model(tmp_path / f"{case}.gguf", meta=meta)
        assert run_main("inspect", str(path)).code == 0
        return
    refused_everywhere(write_byte_model(tmp_path / f"{case}.gguf", meta=meta), needle)


BAD_TENSORS = {
    # the second layer's FFN down projection transposed: llama.cpp's shape check, every layer
    "swapped_blk1": ({"blk.1.ffn_down.weight": (np.zeros((48, 32), np.float32), QT.F32)},
                     "blk.1.ffn_down.weight has shape (48, 32), but the metadata implies (32, 48)"),
    "missing_blk1": ({"blk.1.attn_v.weight": None}, "tensor 'blk.1.attn_v.weight' not found"),
    "norm_nan": ({"blk.1.attn_norm.weight": (np.array([1.0] * 31 + [NAN], np.float32), QT.F32)},
                 "tensor 'blk.1.attn_norm.weight' holds NaN or Inf (element 31)"),
    "norm_inf_f16": ({"output_norm.weight": (np.array([INF] + [1.0] * 31, np.float32), QT.F16)},
                     "tensor 'output_norm.weight' holds NaN or Inf (element 0)"),
    "scale_nan_first": ({"blk.1.attn_q.weight": q8_blocks((32, 32), [0])},
                        "tensor 'blk.1.attn_q.weight' holds NaN or Inf (the scale of block 0)"),
    "scale_inf_all": ({"blk.0.attn_output.weight": q8_blocks((32, 32), range(32), INF)},
                      "tensor 'blk.0.attn_output.weight' holds NaN or Inf (the scale of block 0)"),
    "scale_nan_last": ({"blk.0.attn_k.weight": q8_blocks((16, 32), [15])}, "(the scale of block 15)"),
    "quantized_norm": ({"blk.0.ffn_norm.weight": (np.ones(32, np.float32), QT.Q8_0)},
                       "blk.0.ffn_norm.weight is stored as Q8_0"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_are_one_line(tmp_path, case):
    tensors, needle = BAD_TENSORS[case]
    refused_everywhere(write_byte_model(tmp_path / f"{case}.gguf", tensors=tensors), needle)


def _offset(path, name) -> int:
    at = tensor_info_positions(path, name)["offset"]
    return struct.unpack_from("<Q", path.read_bytes(), at)[0]


def test_overlapping_tensors(tmp_path):
    path = write_byte_model(tmp_path / "overlap.gguf")
    patch(path, tensor_info_positions(path, "blk.1.ffn_up.weight")["offset"], "<Q",
          _offset(path, "blk.1.ffn_gate.weight") + 64)
    refused_everywhere(path, "overlaps tensor")


def test_zero_dimensions(tmp_path):
    path = write_byte_model(tmp_path / "ndims.gguf")
    patch(path, tensor_info_positions(path, "blk.0.attn_norm.weight")["n_dims"], "<I", 0)
    refused_everywhere(path, "0 dimensions")


def test_a_token_that_is_not_utf8(tmp_path):
    path = write_byte_model(tmp_path / "utf8.gguf")
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<Q", 4) + b"</s>") + 8
    raw[at:at + 4] = b"<\xff\xfe>"
    path.write_bytes(raw)
    line = refused_everywhere(path, "token 257 of tokenizer.ggml.tokens is not valid UTF-8")
    assert "TypeError" not in line


@pytest.mark.parametrize("qtype", sorted(quants.SCALE_FIELDS, key=int), ids=lambda q: q.name)
def test_every_scale_field_is_checked(qtype):
    """NaN in each fp16 scale field of each block type is found, in the block where it is."""
    block, size = quants.BLOCK_SIZES[qtype]
    blocks = random_blocks(qtype, (4, block), np.random.default_rng(0)).reshape(4, size)
    assert quants.first_nonfinite_scale(blocks.reshape(-1), qtype) is None
    for offset in quants.SCALE_FIELDS[qtype]:
        bad = blocks.copy()
        bad[2, offset:offset + 2] = np.array([NAN], "<f2").view(np.uint8)
        assert quants.first_nonfinite_scale(bad.reshape(-1), qtype) == 2


@pytest.mark.parametrize("stored,claimed", [(QT.F16, QT.BF16), (QT.BF16, QT.F16)])
def test_a_16_bit_type_swapped_for_the_other(tmp_path, stored, claimed):
    """F16 and BF16 have the same size, so a swapped type id passes the size checks; the values it
    decodes to do not look like weights (nothing near zero, or an RMS of ~1e-19) and are refused."""
    w = (np.random.default_rng(3).standard_normal((48, 32)) * 0.05).astype(np.float32)
    good = write_byte_model(tmp_path / "good.gguf", tensors={"blk.0.ffn_up.weight": (w, stored)})
    assert run_main("inspect", str(good)).code == 0  # the genuine type passes
    path = write_byte_model(tmp_path / "swapped.gguf", tensors={"blk.0.ffn_up.weight": (w, stored)})
    patch(path, tensor_info_positions(path, "blk.0.ffn_up.weight")["type"], "<I", int(claimed))
    refused_everywhere(path, f"tensor 'blk.0.ffn_up.weight' does not hold {claimed.name} weights")
