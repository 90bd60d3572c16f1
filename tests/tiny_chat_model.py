"""A tiny random-weight llama GGUF that behaves like a chat model: byte-level BPE over all 256 bytes
(so any text tokenizes), ChatML special tokens and template, and a context long enough for long streams.

The special tokens' rows of the (untied) output matrix are zero, so their logits are exactly 0 while
the best of ~300 random logits is far above: greedy decoding (and top-k sampling) never ends a reply by
end-of-generation, which lets tests hold a stream open as long as they need and know it ends by
"length" or a stop string.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

from gguf_factory import write_gguf

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "o n", "Ġ a"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
          " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def _vocab() -> list[str]:
    from rocmforge_core.tokenizer.bpe import byte_to_unicode

    table = byte_to_unicode()
    return [table[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + SPECIALS


def make_chat_model(path: str | Path, *, n_ctx: int = 4096, d: int = 32, n_layers: int = 1,
                    seed: int = 0) -> Path:
    tokens = _vocab()
    n_vocab, hd, ffn = len(tokens), 16, 48
    rng = np.random.default_rng(seed)

    def weight(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32), QT.F32

    embd = rng.standard_normal((n_vocab, d)).astype(np.float32)
    out = rng.standard_normal((n_vocab, d)).astype(np.float32)
    # logit 0 for every special token (see the module docstring), and for bytes outside printable
    # ASCII, so that replies are readable text rather than broken UTF-8
    out[-len(SPECIALS):] = 0.0
    out[[b for b in range(256) if not 32 <= b < 127]] = 0.0
    meta = {
        "general.name": "tiny-chat", "llama.block_count": n_layers, "llama.embedding_length": d,
        "llama.feed_forward_length": ffn, "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 1, "llama.context_length": n_ctx,
        "llama.rope.dimension_count": hd, "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": n_vocab,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (n_vocab - len(SPECIALS)) + [3] * len(SPECIALS),
        "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": n_vocab - 3,
        "tokenizer.ggml.eos_token_id": n_vocab - 1, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML,
    }
    tensors = {"token_embd.weight": (embd, QT.F32), "output.weight": (out, QT.F32),
               "output_norm.weight": (np.ones(d, dtype=np.float32), QT.F32)}
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors.update({
            p + "attn_norm.weight": (np.ones(d, dtype=np.float32), QT.F32),
            p + "ffn_norm.weight": (np.ones(d, dtype=np.float32), QT.F32),
            p + "attn_q.weight": weight(2 * hd, d), p + "attn_k.weight": weight(hd, d),
            p + "attn_v.weight": weight(hd, d), p + "attn_output.weight": weight(d, 2 * hd),
            p + "ffn_gate.weight": weight(ffn, d), p + "ffn_up.weight": weight(ffn, d),
            p + "ffn_down.weight": weight(d, ffn),
        })
    return write_gguf(path, "llama", meta, tensors)
