"""Llama-family decoder (SmolLM2, Llama 2/3, Mistral, TinyLlama): RMSNorm, SwiGLU, GQA, normal RoPE.

The GGUF converter permutes Q and K rows so that llama.cpp's "normal" rope (adjacent pairs) applies;
llama.cpp uses that layout for this architecture. The output projection is tied to the embedding when
the file has no `output.weight`.
"""

from __future__ import annotations

import math

from rocmforge_core.backends.cpu import RopeSpec
from rocmforge_core.models.base import Decoder, DecoderArgs, head_dim_of, rope_scaling

ARCH = "llama"
ROPE_NEOX = False


def common_args(gguf_file, config, arch: str, neox: bool, **extra) -> DecoderArgs:
    """DecoderArgs for a plain pre-norm decoder with one rope for every layer (llama, qwen2, qwen3)."""
    hd = head_dim_of(config)
    rope_dim = int(getattr(config, "rope_dim", 0) or hd)
    base = float(config.rope_base)
    rope = RopeSpec(rope_dim, base, neox, **rope_scaling(gguf_file, arch, rope_dim))
    n_layers = int(config.n_layers)
    return DecoderArgs(
        n_layers=n_layers, d_model=int(config.d_model), n_heads=int(config.n_heads),
        n_kv_heads=int(config.n_kv_heads), head_dim=hd, ffn_dim=int(config.ffn_dim),
        vocab_size=int(gguf_file.tensor("token_embd.weight").shape[0]),
        context_length=int(config.context_length), norm_eps=float(config.norm_eps),
        ropes=[rope] * n_layers, windows=[None] * n_layers, attn_scale=1.0 / math.sqrt(hd), **extra)


class Model(Decoder):
    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:
        return common_args(gguf_file, config, gguf_file.architecture, ROPE_NEOX)
