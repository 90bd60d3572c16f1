"""Gemma 3 decoder: what differs from llama, as llama.cpp builds it (src/models/gemma3.cpp).

- the embedding is multiplied by sqrt(d_model);
- RMSNorm weights are used as stored: the GGUF converter already added Gemma's "+1";
- RMSNorm over each q and k head; extra norms after attention and after the FFN (before each residual);
- GELU(tanh)-gated FFN;
- sliding-window attention on five layers of every six (layer i is global when i % 6 == 5), window
  from metadata: a query at position p sees keys j with p - j < window;
- local layers rope with base 10000 and no scaling, global layers with the metadata base and scaling;
  NeoX rope layout;
- attention scale 1/sqrt(key_length) (1/sqrt(d_model / n_heads) on the 62-layer 27B, as llama.cpp);
- final logit soft-capping only when the metadata has `final_logit_softcapping`.
"""

from __future__ import annotations

import math

from rocmforge_core.backends.cpu import RopeSpec
from rocmforge_core.models.base import Decoder, DecoderArgs, head_dim_of, rope_scaling

SWA_PATTERN = 6            # every 6th layer is global
LOCAL_ROPE_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa for gemma3
ROPE_NEOX = True


def is_global(layer: int) -> bool:
    return layer % SWA_PATTERN == SWA_PATTERN - 1


class Model(Decoder):
    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:
        meta = gguf_file.metadata
        hd = head_dim_of(config)
        n_layers, d, n_heads = int(config.n_layers), int(config.d_model), int(config.n_heads)
        rope_dim = int(getattr(config, "rope_dim", 0) or hd)
        global_rope = RopeSpec(rope_dim, float(config.rope_base), ROPE_NEOX,
                               **rope_scaling(gguf_file, "gemma3", rope_dim))
        local_rope = RopeSpec(rope_dim, LOCAL_ROPE_BASE, ROPE_NEOX)
        window = int(meta.get("gemma3.attention.sliding_window", 0) or 0) or None
        softcap = float(meta.get("gemma3.final_logit_softcapping", 0.0) or 0.0) or None
        scale_dim = d // n_heads if n_layers == 62 else hd
        return DecoderArgs(
            n_layers=n_layers, d_model=d, n_heads=n_heads, n_kv_heads=int(config.n_kv_heads),
            head_dim=hd, ffn_dim=int(config.ffn_dim),
            vocab_size=int(gguf_file.tensor("token_embd.weight").shape[0]),
            context_length=int(config.context_length), norm_eps=float(config.norm_eps),
            ropes=[global_rope if is_global(i) else local_rope for i in range(n_layers)],
            windows=[None if is_global(i) else window for i in range(n_layers)],
            attn_scale=1.0 / math.sqrt(scale_dim), embed_scale=math.sqrt(d),
            activation="gelu", qk_norm=True, post_norms=True, final_softcap=softcap)
