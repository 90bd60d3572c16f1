"""The context-size policy (rocmforge_core/context.py): trained length, memory and default caps, refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rocmforge_core.config import config_from_metadata
from rocmforge_core.context import DEFAULT_CAP, choose_ctx, kv_bytes_per_token, max_trained_ctx
from rocmforge_core.errors import BadInputError


def config(context_length=8192, **scaling):
    meta = {"general.architecture": "llama", "llama.block_count": 30, "llama.embedding_length": 576,
            "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
            "llama.attention.head_count_kv": 3, "llama.context_length": context_length,
            "llama.vocab_size": 100}
    meta.update({f"llama.{k.replace('_', '.')}": v for k, v in scaling.items()})
    return config_from_metadata(meta)


def test_bytes_per_token_counts_keys_and_values_of_every_layer_and_slot():
    c = config()  # SmolLM2-135M: 30 layers, 3 kv heads of 64
    assert kv_bytes_per_token(c) == 2 * 30 * 3 * 64 * 4 == 46080
    assert kv_bytes_per_token(c, n_slots=4) == 4 * 46080


def test_default_is_the_trained_length_when_small():
    assert choose_ctx(config(2048), None, free_bytes=64 << 30) == (2048, "the model's trained length")


def test_default_cap_says_so_and_names_the_trained_length():
    n, why = choose_ctx(config(8192), None, free_bytes=64 << 30)
    assert n == DEFAULT_CAP and "default cap" in why and "8192" in why


def test_memory_caps_the_default():
    free = 100 * 46080 * 2  # half of it holds 100 positions
    n, why = choose_ctx(config(8192), None, free_bytes=free)
    assert n == 100 and "free memory" in why and "45 KiB per token" in why
    n4, _ = choose_ctx(config(8192), None, n_slots=4, free_bytes=free)
    assert n4 == 25


def test_requested_is_kept_exactly():
    assert choose_ctx(config(8192), 8192, free_bytes=1 << 20) == (8192, "as requested with --ctx")


def test_beyond_the_trained_length_is_bad_input():
    with pytest.raises(BadInputError) as info:
        choose_ctx(config(2048), 2049)
    assert "2049" in info.value.message and "2048" in info.value.message
    assert "rope scaling" in info.value.hint


def test_rope_scaling_allows_the_stretched_length():
    c = config(4096, rope_scaling_type="linear", rope_scaling_factor=2.0)
    assert max_trained_ctx(c)[0] == 8192 and "linear" in max_trained_ctx(c)[1]
    assert choose_ctx(c, 8192)[0] == 8192
    with pytest.raises(BadInputError):
        choose_ctx(c, 8193)


def test_already_stretched_metadata_is_not_stretched_twice():
    c = replace(config(131072), rope_scaling_type="linear", rope_scaling_factor=8.0, rope_original_context=8192)
    assert max_trained_ctx(c)[0] == 131072
