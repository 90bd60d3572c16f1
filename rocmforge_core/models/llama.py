"""Llama-family decoder (SmolLM2, Llama 2/3, Mistral, TinyLlama): RMSNorm, SwiGLU, GQA, normal RoPE.

The GGUF converter permutes Q and K rows so that llama.cpp's "normal" rope (adjacent pairs) applies,
and config.rope_neox says so (False here). The output projection is tied to the embedding when the
file has no `output.weight`; linear rope scaling and Llama-3 frequency factors come from the file.
"""

from __future__ import annotations

import math

from rocmforge_core.rope import RopeSpec
from rocmforge_core.models.base import Decoder, DecoderArgs, rope_scaling


def common_args(gguf_file, config, **extra) -> DecoderArgs:
    """DecoderArgs of a plain pre-norm decoder with one rope for every layer (llama, qwen2, qwen3)."""
    rope = RopeSpec(config.rope_dim, config.rope_base, config.rope_neox,
                    **rope_scaling(gguf_file, config, config.rope_dim))
    n = config.n_layers
    return DecoderArgs(
        n_layers=n, d_model=config.dim, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads,
        head_dim=config.head_dim, ffn_dim=config.ffn_dim,
        # The embedding's rows, not the metadata, bound the ids (some files pad the tokenizer list).
        vocab_size=gguf_file.tensor("token_embd.weight").shape[0],
        context_length=config.context_length, norm_eps=config.norm_eps,
        ropes=[rope] * n, windows=[None] * n, attn_scale=1.0 / math.sqrt(config.head_dim), **extra)


class Model(Decoder):
    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:
        return common_args(gguf_file, config)
