"""How many positions the KV cache gets: the model's trained length, capped by memory and a default cap.

`choose_ctx` returns the size and a one-line reason that front ends show (banner, --verbose), so the
number never changes silently. A requested size beyond what the model was trained for is refused,
unless the model declares RoPE scaling that stretches its positions that far.
"""

from __future__ import annotations

import os

from rocmforge_core.errors import BadInputError

DEFAULT_CAP = 4096       # a default a small machine can hold; --ctx asks for more
KV_MEMORY_SHARE = 0.5    # the default context takes at most this share of the free memory
KV_BYTES_PER_VALUE = 4   # the CPU cache's float32 (a GPU's f16 cache passes 2)


def kv_bytes_per_token(config, n_slots: int = 1, bytes_per_value: int = KV_BYTES_PER_VALUE) -> int:
    """Bytes the KV cache needs per position: keys and values of every layer, in every slot."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * bytes_per_value * n_slots


def max_trained_ctx(config) -> tuple[int, str]:
    """The longest context the model supports, and why: its trained length, or that stretched by RoPE."""
    trained = config.context_length
    factor = config.rope_scaling_factor or 1.0
    if config.rope_scaling_type and factor > 1.0:
        stretched = int((config.rope_original_context or trained) * factor)
        if stretched > trained:
            return stretched, (f"its trained length stretched by {config.rope_scaling_type} "
                               f"rope scaling x{factor:g}")
    return trained, "its trained length"


def choose_ctx(config, requested: int | None, *, n_slots: int = 1, free_bytes: int | None = None,
               kv_bytes_per_value: int = KV_BYTES_PER_VALUE) -> tuple[int, str]:
    """(n_ctx, reason). `free_bytes`: memory the cache may come from (None: not known, no memory cap)."""
    limit, why = max_trained_ctx(config)
    if requested is not None:
        if requested > limit:
            raise BadInputError(
                f"a context of {requested} tokens is beyond the {limit} this model supports ({why})",
                hint=f"ask for at most {limit} with -c/--ctx; it declares no rope scaling that allows more"
                if limit == config.context_length else f"ask for at most {limit} with -c/--ctx")
        return requested, "as requested with --ctx"
    candidates = [(limit, why.replace("its", "the model's", 1)),
                  (DEFAULT_CAP, f"the default cap of {DEFAULT_CAP}; -c/--ctx asks for more")]
    if free_bytes is not None:
        per_token = kv_bytes_per_token(config, n_slots, kv_bytes_per_value)
        fit = int(free_bytes * KV_MEMORY_SHARE) // per_token
        candidates.append((max(fit, 8), (
            f"what fits in half the free memory ({free_bytes / 2**30:.1f} GiB free, "
            f"{per_token / 1024:.0f} KiB per token)")))
    n_ctx, reason = min(candidates, key=lambda c: c[0])
    if n_ctx < limit:
        reason = f"{reason} (model trained on {limit})"
    return n_ctx, reason


def host_free_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, else free physical pages; None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_free_bytes(model, weight_bytes: int) -> int | None:
    """Device memory left for a GPU model's cache: the runtime reports only the total, so the total
    less the weights (which stay in their GGUF blocks, about the file's size)."""
    device = getattr(getattr(model, "ops", None), "device", None)
    total = getattr(device, "total_memory", None)
    if not isinstance(total, int) or total <= 0:
        return None
    return max(total - int(weight_bytes), 0)
