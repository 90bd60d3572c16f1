"""The hyperparameters of a model, read from the `<arch>.*` keys of its GGUF metadata.

One typed `ModelConfig` for every supported architecture; the per-architecture differences that
llama.cpp decides by architecture rather than metadata (RoPE layout, gemma3's local RoPE base and
sliding-window pattern) are filled in here so the model code has one place to look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from rocmforge_core.errors import BadInputError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "gemma3", "qwen2", "qwen3", "phi3")

# llama.cpp rotates adjacent pairs (x[2i], x[2i+1]) for llama, and the two halves (x[i], x[i+d/2])
# ("NeoX" layout) for these; the GGUF does not say which, the architecture does.
_NEOX_ARCHITECTURES = {"gemma3", "qwen2", "qwen3", "phi3"}

# gemma3: 5 sliding-window layers then 1 global layer; the local layers use RoPE base 10000.
_GEMMA3_SWA_PATTERN = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layers: int                 # block_count
    dim: int                      # embedding_length
    ffn_dim: int                  # feed_forward_length
    n_heads: int                  # attention.head_count
    n_kv_heads: int               # attention.head_count_kv (GQA); = n_heads when absent
    head_dim: int                 # attention.key_length; dim // n_heads when absent
    value_dim: int                # attention.value_length; head_dim when absent
    vocab_size: int               # vocab_size, else the number of tokenizer tokens
    context_length: int           # the training context
    norm_eps: float               # attention.layer_norm_rms_epsilon
    rope_base: float              # rope.freq_base (10000 when absent)
    rope_dim: int                 # rope.dimension_count: leading dims of each head that rotate
    rope_neox: bool               # True: rotate halves (NeoX); False: rotate adjacent pairs
    rope_scaling_type: str | None = None        # "linear", "yarn", ... (None: no scaling)
    rope_scaling_factor: float = 1.0
    rope_original_context: int | None = None    # rope.scaling.original_context_length
    sliding_window: int | None = None           # attention.sliding_window (tokens), if any
    sliding_window_pattern: int | None = None   # every Nth layer is global, the others slide
    rope_base_local: float | None = None        # RoPE base of sliding-window layers (gemma3)
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None

    @property
    def n_rep(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def is_sliding_layer(self, layer: int) -> bool:
        """Whether `layer` (0-based) attends through the sliding window rather than globally."""
        if not self.sliding_window:
            return False
        if not self.sliding_window_pattern:
            return True
        return (layer + 1) % self.sliding_window_pattern != 0


def config_from_metadata(metadata: Mapping[str, Any]) -> ModelConfig:
    """Build the ModelConfig of a GGUF file from its metadata (see `GGUFFile.metadata`)."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"unsupported architecture {arch!r}",
                                    hint=f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    keys = _ArchKeys(metadata, arch)
    n_heads = keys.positive_int("attention.head_count")
    dim = keys.positive_int("embedding_length")
    head_dim = keys.positive_int("attention.key_length", dim // n_heads)
    config = ModelConfig(
        architecture=arch,
        n_layers=keys.positive_int("block_count"),
        dim=dim,
        ffn_dim=keys.positive_int("feed_forward_length"),
        n_heads=n_heads,
        n_kv_heads=keys.positive_int("attention.head_count_kv", n_heads),
        head_dim=head_dim,
        value_dim=keys.positive_int("attention.value_length", head_dim),
        vocab_size=_vocab_size(keys),
        context_length=keys.positive_int("context_length"),
        norm_eps=keys.number("attention.layer_norm_rms_epsilon",
                             keys.number("attention.layer_norm_epsilon", 1e-5)),
        rope_base=keys.number("rope.freq_base", 10000.0),
        rope_dim=keys.positive_int("rope.dimension_count", head_dim),
        rope_neox=arch in _NEOX_ARCHITECTURES,
        **_rope_scaling(keys),
        **_attention_extras(keys, arch),
    )
    _check_consistent(config)
    return config


class _ArchKeys:
    """Typed access to `<arch>.<name>` metadata keys, with one-line errors naming the key."""

    def __init__(self, metadata: Mapping[str, Any], arch: str):
        self.metadata, self.arch = metadata, arch

    def raw(self, name: str) -> Any:
        return self.metadata.get(f"{self.arch}.{name}")

    def positive_int(self, name: str, default: int | None = None) -> int:
        value = self.raw(name)
        if isinstance(value, list):  # a per-layer array: we only run models where all layers agree
            if not value or len(set(value)) != 1:
                raise UnsupportedModelError(f"{self.arch}.{name} differs between layers ({value[:8]}...)")
            value = value[0]
        if value is None:
            if default is None:
                raise BadInputError(f"GGUF metadata lacks {self.arch}.{name}")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadInputError(f"GGUF metadata {self.arch}.{name} = {_shown(value)} is not a positive integer")
        return value

    def number(self, name: str, default: float | None) -> float | None:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInputError(f"GGUF metadata {self.arch}.{name} = {_shown(value)} is not a number")
        if not math.isfinite(value):
            raise BadInputError(f"GGUF metadata {self.arch}.{name} = {value} is not a finite number")
        return float(value)

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        if value is not None and not isinstance(value, str):
            raise BadInputError(f"GGUF metadata {self.arch}.{name} = {_shown(value)} is not a string")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _vocab_size(keys: _ArchKeys) -> int:
    tokens = keys.metadata.get("tokenizer.ggml.tokens")
    default = len(tokens) if isinstance(tokens, list) and tokens else None
    if keys.raw("vocab_size") is None and default is None:
        raise BadInputError(f"GGUF metadata has neither {keys.arch}.vocab_size nor tokenizer.ggml.tokens")
    return keys.positive_int("vocab_size", default)


def _rope_scaling(keys: _ArchKeys) -> dict[str, Any]:
    kind = keys.text("rope.scaling.type")
    factor = keys.number("rope.scaling.factor", None)
    if factor is None and keys.raw("rope.scale_linear") is not None:  # the older spelling
        kind, factor = kind or "linear", keys.number("rope.scale_linear", 1.0)
    if kind == "none" or (kind is None and factor in (None, 1.0)):
        return {}
    original = None
    if keys.raw("rope.scaling.original_context_length") is not None:
        original = keys.positive_int("rope.scaling.original_context_length")
    return {"rope_scaling_type": kind or "linear", "rope_scaling_factor": factor or 1.0,
            "rope_original_context": original}


def _attention_extras(keys: _ArchKeys, arch: str) -> dict[str, Any]:
    # Only gemma3 attends through a window: llama.cpp ignores the key for the others (phi3 included).
    if arch != "gemma3":
        return {}
    return {"sliding_window": keys.positive_int("attention.sliding_window", 0) or None,
            "sliding_window_pattern": _GEMMA3_SWA_PATTERN, "rope_base_local": _GEMMA3_LOCAL_ROPE_BASE,
            "final_logit_softcapping": keys.number("final_logit_softcapping", None),
            "attn_logit_softcapping": keys.number("attn_logit_softcapping", None)}


def _check_consistent(c: ModelConfig) -> None:
    if c.head_dim < 1:
        raise BadInputError(f"{c.architecture}: {c.n_heads} attention heads leave no dimensions per head "
                            f"of the {c.dim}-wide embedding")
    if not c.norm_eps >= 0:
        raise BadInputError(f"{c.architecture}: the norm epsilon {c.norm_eps:g} is negative")
    if not c.rope_base > 0:
        raise BadInputError(f"{c.architecture}: rope.freq_base {c.rope_base:g} must be positive")
    if c.rope_scaling_factor <= 0:
        raise BadInputError(f"{c.architecture}: rope.scaling.factor {c.rope_scaling_factor:g} must be positive")
    if c.n_heads % c.n_kv_heads:
        raise BadInputError(f"{c.architecture}: {c.n_heads} attention heads do not split into "
                            f"{c.n_kv_heads} KV head groups")
    if c.rope_dim > c.head_dim or c.rope_dim % 2:
        raise BadInputError(f"{c.architecture}: rope.dimension_count {c.rope_dim} does not fit "
                            f"head dim {c.head_dim}")
