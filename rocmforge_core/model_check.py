"""Validate an open GGUF model before anything is built from it: the one check that loading and
`rocmforge inspect` share, so a file inspect accepts loads, and one it refuses fails the same way.

What the reader (gguf_file.py) cannot see alone is checked here: metadata types and values (config.py,
tokenizer/vocab.py), counts against the tensors present (before any per-layer list is built), every
layer's tensor shapes and types, special-token ids against the embedding, and NaN/Inf in norm weights
and block scales. Every failure is one BadInputError line.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType as QT

from rocmforge_core import quants
from rocmforge_core.config import ModelConfig, config_from_metadata
from rocmforge_core.errors import BadInputError

_LAYER = re.compile(r"blk\.(\d+)\.")
_GENERAL_STRINGS = ("general.name", "general.architecture", "tokenizer.chat_template")


def check_model(gguf_file) -> ModelConfig:
    """Every check above, cheap enough for each load (block scales are read as one strided column);
    returns the model's config."""
    md = gguf_file.metadata
    for key in _GENERAL_STRINGS:
        if key in md and not isinstance(md[key], str):
            raise BadInputError(f"GGUF metadata {key} is not a string (got {type(md[key]).__name__})")
    _check_tokenizer_metadata(md)
    config = config_from_metadata(md)
    _check_layer_count(gguf_file, config)
    _check_layout(gguf_file, config)
    _check_special_ids(gguf_file)
    _check_finite(gguf_file)
    _check_float_matrices(gguf_file)
    return config


def _check_layer_count(gguf_file, config: ModelConfig) -> None:
    """block_count sizes per-layer lists and the KV cache: bound it by the layers the file holds."""
    layers = {int(m.group(1)) for name in gguf_file.tensors if (m := _LAYER.match(name))}
    if config.n_layers > len(layers):
        raise BadInputError(f"{config.architecture}.block_count is {config.n_layers}, but the file holds "
                            f"tensors for {len(layers)} layers", hint="the file's metadata is corrupt")


def _check_tokenizer_metadata(md) -> None:
    from rocmforge_core.tokenizer.vocab import check_metadata_types

    check_metadata_types(md)
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None:
        from rocmforge_core.tokenizer.vocab import _check_token_text

        _check_token_text(str(md.get("tokenizer.ggml.model")), list(tokens))


def _check_layout(gguf_file, config: ModelConfig) -> None:
    """Shapes and types of every tensor the architecture reads, all layers (models/base.py)."""
    import importlib

    from rocmforge_core.models import ALIASES, ARCHITECTURES
    from rocmforge_core.models.base import check_shapes

    arch = ALIASES.get(config.architecture, config.architecture)
    if arch not in ARCHITECTURES:
        return  # no decoder of ours reads it: loading refuses it, inspect may still describe it
    module = importlib.import_module(f"rocmforge_core.models.{arch}")
    check_shapes(gguf_file, module.Model.make_args(gguf_file, config))


def _check_special_ids(gguf_file) -> None:
    """An id the tokenizer puts into prompts indexes the embedding: past its rows every prompt fails.
    (Other ids may lie past the rows: some files pad the tokenizer's list beyond the embedding.)"""
    md = gguf_file.metadata
    if not gguf_file.has_tensor("token_embd.weight"):
        return
    rows = gguf_file.tensor("token_embd.weight").shape[0]
    used = {"BOS": md.get("tokenizer.ggml.add_bos_token") is not False,
            "EOS": md.get("tokenizer.ggml.add_eos_token") is True,
            "unknown": md.get("tokenizer.ggml.model") == "llama"}  # SentencePiece emits it for unknown text
    for name, key in (("BOS", "bos"), ("EOS", "eos"), ("unknown", "unknown")):
        token_id = md.get(f"tokenizer.ggml.{key}_token_id")
        if used[name] and token_id is not None and not 0 <= token_id < rows:
            raise BadInputError(f"the tokenizer's {name} id {token_id} is past the model's {rows} "
                                "embedding rows", hint="the file's tokenizer and weights disagree")


FLOAT_SAMPLE = 4096        # values read from each 16-bit float matrix at load
MIN_SAMPLED = 1024         # smaller matrices: too few values to judge
SMALL_SHARE_MIN = 0.002    # share of sampled |v| < 0.1 RMS below which no real weight matrix falls


def _check_float_matrices(gguf_file) -> None:
    """A 16-bit float matrix whose bytes are of the other 16-bit type (F16 and BF16 are the same size,
    so a swapped type id passes every size check) decodes to values no trained weight has: BF16 bits
    read as F16 land in [0.5, 2) in magnitude with nothing near zero, F16 bits read as BF16 have an RMS
    around 1e-10 (a trained matrix: 1e-3 to 1).
    Real matrices (roughly Gaussian or uniform) put 5-8 % of their values within 0.1 RMS of zero."""
    for info in gguf_file.tensors.values():
        if info.qtype not in (QT.F16, QT.BF16) or len(info.shape) < 2 or info.n_elements < MIN_SAMPLED:
            continue
        raw = info.data.view("<u2")
        step = max(1, raw.size // FLOAT_SAMPLE)
        sample = quants.dequantize(np.ascontiguousarray(raw[::step][:FLOAT_SAMPLE]).view(np.uint8), info.qtype,
                                   (min(FLOAT_SAMPLE, -(-raw.size // step)),)).astype(np.float64)
        if not np.all(np.isfinite(sample)):
            continue  # NaN/Inf in a matrix is the non-finite check's to report where it reads them
        rms = float(np.sqrt(np.mean(sample * sample)))
        if rms == 0.0:
            continue
        small = float(np.mean(np.abs(sample) < 0.1 * rms))
        why = None
        if rms < 1e-6 or rms > 1e4:
            why = f"their RMS is {rms:.3g}"
        elif small < SMALL_SHARE_MIN:
            why = f"none of {sample.size} sampled values is near zero (RMS {rms:.3g})"
        if why:
            other = "BF16" if info.qtype == QT.F16 else "F16"
            raise BadInputError(f"tensor '{info.name}' does not hold {info.qtype.name} weights: {why}",
                                hint=f"the file's tensor type is likely wrong (its bytes may be {other}); "
                                     "re-convert the model")


def _check_finite(gguf_file) -> None:
    """NaN/Inf in a norm, a bias or a block scale poisons every token that passes through it. The
    tensors are read on several threads (numpy lets go of the GIL): reading one byte of every block
    touches nearly every page of the file, ~0.5 s for an 8B model on one thread; the first bad tensor
    in the file's order is the one reported."""
    def first_bad(info):
        if info.qtype in quants.FLOAT_TYPES:
            if len(info.shape) != 1:
                return None  # float matrices: reading every weight at each load costs too much
            bad = quants.first_nonfinite_value(info.data, info.qtype)
            return None if bad is None else f"element {bad}"
        bad = quants.first_nonfinite_scale(info.data, info.qtype)
        return None if bad is None else f"the scale of block {bad}"

    tensors = list(gguf_file.tensors.values())
    workers = min(8, os.cpu_count() or 1, len(tensors))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(first_bad, tensors))
    else:
        found = [first_bad(info) for info in tensors]
    for info, what in zip(tensors, found):
        if what is not None:
            raise BadInputError(f"tensor '{info.name}' holds NaN or Inf ({what})",
                                hint="the file's weights are corrupt")
