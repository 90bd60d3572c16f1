"""A tiny random-weight llama GGUF with a byte-level vocabulary, for driving the CLI on real text.

Every byte is one token (256 byte tokens, no merges), plus <s> (BOS, added by default) and </s>, so any
text tokenizes and the token count is predictable: len(text.encode()) (+1 for BOS). Loads in
milliseconds, which lets the command-line tests run in process.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from gguf_factory import write_gguf, llama_layer_tensors

VOCAB = 258
BOS, EOS = 256, 257


def byte_tokens() -> list[str]:
    from rocmforge_core.tokenizer.bpe import byte_to_unicode

    table = byte_to_unicode()
    return [table[b] for b in range(256)] + ["<s>", "</s>"]


def write_byte_model(path, *, context_length: int = 64, rope_scale: float | None = None,
                     n_layers: int = 2, d: int = 32, n_heads: int = 2, n_kv: int = 1, hd: int = 16,
                     ffn: int = 48, seed: int = 0, meta: dict | None = None, tensors: dict | None = None):
    """`meta` and `tensors` replace entries of the good file (a value None drops the entry): corrupt
    files for the load-time checks."""
    rng = np.random.default_rng(seed)

    def weight(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32), QT.F32

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32), QT.F32

    overrides, tensor_overrides = meta or {}, tensors or {}
    meta = {
        "general.name": "tiny-bytes",
        "llama.block_count": n_layers, "llama.embedding_length": d, "llama.feed_forward_length": ffn,
        "llama.attention.head_count": n_heads, "llama.attention.head_count_kv": n_kv,
        "llama.context_length": context_length, "llama.rope.dimension_count": hd,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": byte_tokens(), "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.token_type": [1] * 256 + [3, 3],
        "tokenizer.ggml.bos_token_id": BOS, "tokenizer.ggml.eos_token_id": EOS,
        "tokenizer.ggml.add_bos_token": True,
    }
    if rope_scale:
        meta["llama.rope.scaling.type"] = "linear"
        meta["llama.rope.scaling.factor"] = float(rope_scale)
    tensors = {"token_embd.weight": weight(VOCAB, d, std=1.0), "output_norm.weight": norm(d)}
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors.update(llama_layer_tensors(p, weight, norm, d, n_heads, n_kv, hd, ffn))
    for table, changes in ((meta, overrides), (tensors, tensor_overrides)):
        for key, value in changes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return write_gguf(path, "llama", meta, tensors)
