"""Qwen2 decoder: the llama layout plus biases on Q, K and V; NeoX rope layout (from the config)."""

from __future__ import annotations

from rocmforge_core.models.base import Decoder, DecoderArgs
from rocmforge_core.models.llama import common_args


class Model(Decoder):
    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:
        return common_args(gguf_file, config, qkv_bias=True)
