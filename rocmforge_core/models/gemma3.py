"""Gemma 3 decoder: what differs from llama, as llama.cpp builds it (src/models/gemma3.cpp).

- the embedding is multiplied by sqrt(d_model);
- RMSNorm weights are used as stored: the GGUF converter already added Gemma's "+1";
- RMSNorm over each q and k head; extra norms after attention and after the FFN (before each residual);
- GELU(tanh)-gated FFN;
- sliding-window attention on five layers of every six (layer i is global when (i + 1) % 6 == 0; the
  pattern is in config.is_sliding_layer): a query at position p sees keys j with p - j < window;
- local layers rope with base 10000 (config.rope_base_local) and no scaling, global layers with the
  metadata base and scaling; NeoX rope layout;
- attention scale 1/sqrt(key_length) (1/sqrt(d_model / n_heads) on the 62-layer 27B, as llama.cpp);
- final logit soft-capping only when the metadata has `final_logit_softcapping`.
"""

from __future__ import annotations

import math

from rocmforge_core.rope import RopeSpec
from rocmforge_core.models.base import Decoder, DecoderArgs, rope_scaling

GEMMA3_27B_LAYERS = 62  # llama.cpp scales the 27B's queries by d_model / n_heads instead of head_dim


class Model(Decoder):
    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:
        c = config
        global_rope = RopeSpec(c.rope_dim, c.rope_base, c.rope_neox, **rope_scaling(gguf_file, c, c.rope_dim))
        local_rope = RopeSpec(c.rope_dim, c.rope_base_local or 10000.0, c.rope_neox)
        sliding = [c.is_sliding_layer(i) for i in range(c.n_layers)]
        scale_dim = c.dim // c.n_heads if c.n_layers == GEMMA3_27B_LAYERS else c.head_dim
        return DecoderArgs(
            n_layers=c.n_layers, d_model=c.dim, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
            head_dim=c.head_dim, ffn_dim=c.ffn_dim,
            vocab_size=gguf_file.tensor("token_embd.weight").shape[0],
            context_length=c.context_length, norm_eps=c.norm_eps,
            ropes=[local_rope if s else global_rope for s in sliding],
            windows=[c.sliding_window if s else None for s in sliding],
            attn_scale=1.0 / math.sqrt(scale_dim), scale_queries=True, embed_scale=math.sqrt(c.dim),
            activation="gelu", qk_norm=True, post_norms=True,
            final_softcap=c.final_logit_softcapping or None)
