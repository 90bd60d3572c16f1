"""Our numpy dequantizers against gguf.quants, bit for bit: random blocks of every type, then real tensors."""

from __future__ import annotations

import gguf
import gguf.quants
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf_factory import FP16_FIELDS

from rocmforge_core import quants
from rocmforge_core.errors import BadInputError, UnsupportedModelError
from rocmforge_core.gguf_file import GGUFFile

ALL_TYPES = sorted(quants.SUPPORTED_TYPES, key=int)
FLOAT_BITS = {QT.F32: (np.uint32, 8, 23), QT.F16: (np.uint16, 5, 10), QT.BF16: (np.uint16, 8, 7)}


def finite_float_bits(rng: np.random.Generator, n: int, dtype, exp_bits: int, man_bits: int) -> np.ndarray:
    """Random bit patterns of every sign, exponent (subnormals included) and mantissa, minus Inf/NaN."""
    bits = rng.integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
    exp_mask = dtype(((1 << exp_bits) - 1) << man_bits)
    all_ones = (bits & exp_mask) == exp_mask
    bits[all_ones] ^= dtype(1 << man_bits)  # drop one exponent bit: now finite
    return bits


def random_raw(qtype: QT, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """n_blocks of random bytes for qtype, with every fp16 scale field a random finite value."""
    block, type_size = quants.BLOCK_SIZES[qtype]
    if qtype in FLOAT_BITS:
        dtype, e, m = FLOAT_BITS[qtype]
        return finite_float_bits(rng, n_blocks, dtype, e, m).view(np.uint8)
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        scale = finite_float_bits(rng, n_blocks, np.uint16, 5, 10)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def reference(raw: np.ndarray, qtype: QT, shape) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("n_blocks", [1, 7, 256])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_random_blocks_equal_gguf_quants(qtype, n_blocks):
    rng = np.random.default_rng([int(qtype), n_blocks])
    block, _ = quants.BLOCK_SIZES[qtype]
    raw = random_raw(qtype, n_blocks, rng)
    shape = (n_blocks, block) if n_blocks % 2 else (2, n_blocks * block // 2)
    ours = quants.dequantize(raw, qtype, shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.isfinite(ours).all()
    assert np.array_equal(ours, reference(raw, qtype, shape))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_block_tables_match_gguf(qtype):
    assert quants.BLOCK_SIZES[qtype] == gguf.GGML_QUANT_SIZES[qtype]


def test_supported_types_are_exactly_the_issue_list():
    names = {t.name for t in quants.SUPPORTED_TYPES}
    assert names == {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                     "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def test_known_values_q8_0():
    # One block by hand: d = 0.5, quants -16..15 -> -8.0 .. 7.5.
    block = np.concatenate([np.array([0.5], np.float16).view(np.uint8),
                            np.arange(-16, 16, dtype=np.int8).view(np.uint8)])
    assert np.array_equal(quants.dequantize(block, QT.Q8_0, (32,)), np.arange(-16, 16) * 0.5)


def test_known_values_q4_0_nibble_order():
    # Low nibbles are elements 0-15, high nibbles elements 16-31; quant q means (q - 8) * d.
    qs = (np.arange(16, dtype=np.uint8) | (np.uint8(15) << 4)).astype(np.uint8)
    block = np.concatenate([np.array([2.0], np.float16).view(np.uint8), qs])
    out = quants.dequantize(block, QT.Q4_0, (32,))
    assert np.array_equal(out[:16], (np.arange(16) - 8) * 2.0)
    assert np.array_equal(out[16:], np.full(16, 14.0))


@pytest.mark.parametrize("qtype", [QT.IQ2_XXS, QT.Q8_K, QT.I32, 99], ids=str)
def test_unsupported_type_is_named(qtype):
    with pytest.raises(UnsupportedModelError) as err:
        quants.dequantize(np.zeros(64, np.uint8), qtype, (16,))
    expected = QT(qtype).name if qtype != 99 else "type id 99"
    assert expected in err.value.one_line()
    assert isinstance(err.value, BadInputError)


def test_wrong_byte_count_is_bad_input():
    with pytest.raises(BadInputError, match="does not hold"):
        quants.dequantize(np.zeros(33, np.uint8), QT.Q8_0, (32,))
    with pytest.raises(BadInputError):
        quants.dequantize(np.zeros(34, np.uint8), QT.Q8_0, (31,))


def _smallest_tensor_per_type(gf: GGUFFile) -> dict[QT, str]:
    chosen: dict[QT, str] = {}
    for name, info in gf.tensors.items():
        if info.qtype not in chosen or info.n_bytes < gf.tensors[chosen[info.qtype]].n_bytes:
            chosen[info.qtype] = name
    return chosen


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_real_tensors_equal_gguf_quants(model, request):
    gf = GGUFFile(request.getfixturevalue(model))
    chosen = _smallest_tensor_per_type(gf)
    expected = {"smollm2_path": {"F32", "Q4_1", "Q8_0"},
                "gemma3_path": {"F32", "Q5_0", "Q4_K", "Q6_K", "Q8_0"}}[model]
    assert {t.name for t in chosen} == expected
    for qtype, name in chosen.items():
        info = gf.tensor(name)
        ours = gf.dequant(name)
        assert np.array_equal(ours, reference(info.data, qtype, info.shape)), name
