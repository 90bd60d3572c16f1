"""Qwen3 decoder: the llama layout plus an RMSNorm over each q and k head before rope; NeoX rope.

head_dim comes from `qwen3.attention.key_length` (128 on Qwen3, which need not equal d / n_heads).
"""

from __future__ import annotations

from rocmforge_core.models.base import Decoder, DecoderArgs
from rocmforge_core.models.llama import common_args


class Model(Decoder):
    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:
        return common_args(gguf_file, config, qk_norm=True)
