"""Byte-level BPE (`tokenizer.ggml.model == "gpt2"`) on Hugging Face `tokenizers`, set up like llama.cpp.

llama.cpp splits text with the regex list of the vocabulary's pre-tokenizer (each expression splits the
pieces the previous one left, and text between matches stays a piece of its own), maps each piece's bytes
to GPT-2's printable characters, then merges by rank. HF `Split(..., "isolated")` steps followed by a
`ByteLevel` step without its own regex and a `BPE` model with the GGUF merges do exactly that.
"""

from __future__ import annotations

from functools import lru_cache

from rocmforge_core.tokenizer.vocab import Vocab


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _merge_pairs(vocab: Vocab) -> list[tuple[str, str]]:
    """GGUF merges as (left, right) pairs, split at the first space after the first character.

    llama.cpp keeps the first rank of a repeated pair; HF needs every part and result in the vocabulary
    (a merge whose result is not a token can never yield a token in llama.cpp either).
    """
    known = vocab.token_to_id
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for merge in vocab.merges:
        cut = merge.find(" ", 1)
        if cut < 0:
            continue
        pair = (merge[:cut], merge[cut + 1:])
        if pair in seen or pair[0] not in known or pair[1] not in known or pair[0] + pair[1] not in known:
            continue
        seen.add(pair)
        pairs.append(pair)
    return pairs


class ByteLevelBPE:
    """Encodes raw text fragments (special tokens already cut out) to ids."""

    def __init__(self, vocab: Vocab):
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        assert vocab.pre_tokenizer is not None
        model = models.BPE(vocab=dict(vocab.token_to_id), merges=_merge_pairs(vocab),
                           ignore_merges=vocab.pre_tokenizer.ignore_merges)
        self._hf = Tokenizer(model)
        steps = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in vocab.pre_tokenizer.regexes]
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        self._hf.pre_tokenizer = pre_tokenizers.Sequence(steps)

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids


def decode_byte_level(text: str) -> bytes:
    """A byte-level token's text back to its bytes; characters outside the table render as llama.cpp does."""
    table = unicode_to_byte()
    out = bytearray()
    for ch in text:
        b = table.get(ch)
        if b is not None:
            out.append(b)
        else:  # llama.cpp's own marker for a character no byte maps to
            raw = ch.encode("utf-8", "surrogateescape")
            out += b"[UNK_BYTE_0x" + raw.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)
