"""The `Tokenizer`: llama.cpp-identical encode and decode for a GGUF vocabulary.

Encoding follows llama.cpp's `tokenize`: first the text is cut at special-token texts (user-defined
tokens always, control tokens only with `parse_special`; longest text first), then each plain fragment
goes through the family's encoder (byte-level BPE or SentencePiece-style merges), with BOS/EOS around
it as the model asks. Decoding follows `llama_detokenize` with `remove_special=False`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from rocmforge_core.errors import BadInputError
from rocmforge_core.tokenizer.stream import StreamDecoder
from rocmforge_core.tokenizer.vocab import (ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL,
                                            ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab)

_C_SPACE = " \t\n\v\f\r"  # what C's isspace() strips around lstrip/rstrip special tokens
_HIDDEN = ATTR_CONTROL | ATTR_UNKNOWN  # rendered only when special tokens are shown
_VERBATIM = ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED


class Tokenizer:
    """Text <-> token ids for one GGUF model, identical to llama.cpp (llama-cpp-python 0.3.36)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.vocab_size: int = len(vocab.tokens)
        self.bos_id: int | None = vocab.bos_id
        self.eos_id: int | None = vocab.eos_id
        self.eot_id: int | None = vocab.eot_id
        self.eog_ids: frozenset[int] = vocab.eog_ids
        self.add_bos: bool = vocab.add_bos
        self.add_eos: bool = vocab.add_eos
        self._pieces: list[bytes | None] = [None] * self.vocab_size
        self._max_token_bytes: int | None = None
        # (first two characters, id, text, attr) in partition order, without / with control tokens
        self._specials = {flag: [(vocab.tokens[tid][:2], tid, vocab.tokens[tid], vocab.attrs[tid])
                                 for tid in vocab.special_order if flag or not vocab.attrs[tid] & _HIDDEN]
                          for flag in (False, True)}
        if vocab.model == "gpt2":
            from rocmforge_core.tokenizer.bpe import ByteLevelBPE

            self._encoder = ByteLevelBPE(vocab)
        else:
            from rocmforge_core.tokenizer.spm import SentencePieceBPE

            self._encoder = SentencePieceBPE(vocab)

    @property
    def max_token_bytes(self) -> int:
        """An upper bound on the text bytes one token stands for (its text's UTF-8 length, at most 4
        bytes a character): a text of more bytes than n * this cannot fit in n tokens."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max(1, 4 * max(map(len, self.vocab.tokens), default=1))
        return self._max_token_bytes

    @classmethod
    def from_gguf(cls, gguf_file) -> "Tokenizer":
        """From an open `rocmforge_core.gguf_file.GGUFFile`."""
        return cls.from_metadata(gguf_file.metadata)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        return cls(Vocab.from_metadata(metadata))

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocab.model}/{self.vocab.pre or '-'}, {self.vocab_size} tokens)"

    # -- encoding ------------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_bos: None adds BOS (and EOS) as the model's metadata asks, like llama.cpp's add_special;
        True forces a BOS, False adds neither. parse_special: control-token texts such as <|im_start|>
        become their ids instead of plain text.
        """
        with_bos = self.add_bos if add_bos is None else add_bos
        out: list[int] = []
        if with_bos and self.bos_id is not None:
            out.append(self.bos_id)
        fragments = self.partition(text, parse_special) if text else []
        if self.vocab.model == "llama":
            self._encode_spm(fragments, out)
        else:
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    out.extend(self._encoder.encode(frag))
        if add_bos is not False and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _encode_spm(self, fragments: list[str | int], out: list[int]) -> None:
        # SentencePiece prefixes a space at the start and after each special token (when the model asks)
        after_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                after_special = True
                continue
            if self.vocab.add_space_prefix and after_special:
                frag = " " + frag
            out.extend(self._encoder.encode(frag.replace(" ", "\u2581")))
            after_special = False

    def partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut `text` at special-token texts: plain str fragments and int token ids, in order."""
        fragments: list[str | int] = [text]
        # most special tokens are absent: a set lookup of their first two characters rules them out
        present = {text[i:i + 2] for i in range(len(text))} | set(text)
        for head, tid, token_text, attr in self._specials[parse_special]:
            if head not in present or token_text not in text:
                continue
            cut: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or token_text not in frag:
                    cut.append(frag)
                else:
                    _split_at(frag, token_text, tid, attr, cut)
            fragments = cut
        return fragments

    # -- decoding ------------------------------------------------------------------------------------

    def token_piece(self, id: int) -> bytes:
        """The raw bytes token `id` renders to (special tokens as their text)."""
        self._check_id(id)
        piece = self._pieces[id]
        if piece is None:
            piece = self._pieces[id] = self._piece(id)
        return piece

    def is_special(self, id: int) -> bool:
        """True for control (and unknown) tokens: the ones `decode(..., special=False)` drops."""
        self._check_id(id)
        return bool(self.vocab.attrs[id] & _HIDDEN)

    def render(self, id: int, special: bool, strip_space: bool = False) -> bytes:
        """One token's bytes inside a decode: hidden if special and not `special`; one leading space
        stripped when `strip_space` and the model adds a space prefix (llama.cpp's first-token rule)."""
        piece = self.token_piece(id)
        if not special and self.vocab.attrs[id] & _HIDDEN:
            return b""
        if strip_space and self.vocab.add_space_prefix and piece.startswith(b" "):
            return piece[1:]
        return piece

    def decode_bytes(self, ids: Sequence[int], special: bool = True) -> bytes:
        data = b"".join(self.render(t, special, strip_space=(i == 0)) for i, t in enumerate(ids))
        return _clean_spaces(data) if self.vocab.clean_spaces else data

    def decode(self, ids: Sequence[int], special: bool = True) -> str:
        """Text of `ids`; special=False drops control tokens (BOS, <|im_end|>, ...)."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def stream(self, special: bool = True) -> StreamDecoder:
        """An incremental decoder that never emits half a UTF-8 character."""
        return StreamDecoder(self, special)

    def _check_id(self, id: int) -> None:
        if not 0 <= id < self.vocab_size:
            raise BadInputError(f"token id {id} is out of range (vocabulary of {self.vocab_size})")

    def _piece(self, id: int) -> bytes:
        text = self.vocab.tokens[id]
        attr = self.vocab.attrs[id]
        if attr & _VERBATIM:
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            if self.vocab.model == "llama":
                return text.replace("\u2581", " ").encode("utf-8", "surrogateescape")
            from rocmforge_core.tokenizer.bpe import decode_byte_level

            return decode_byte_level(text)
        if attr & ATTR_BYTE:  # "<0xE3>"
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens render as nothing in llama.cpp


def _split_at(frag: str, token_text: str, tid: int, attr: int, out: list[str | int]) -> None:
    """Append `frag` cut at every occurrence of `token_text`, left to right, to `out`."""
    start = 0
    while True:
        found = frag.find(token_text, start)
        if found < 0:
            break
        left = frag[start:found]
        if attr & ATTR_LSTRIP:
            left = left.rstrip(_C_SPACE)
        if left:
            out.append(left)
        out.append(tid)
        start = found + len(token_text)
        if attr & ATTR_RSTRIP:
            while start < len(frag) and frag[start] in _C_SPACE:
                start += 1
    if start < len(frag):
        out.append(frag[start:])


_SPACE_BEFORE_PUNCT = re.compile(rb" ([?!.,])")
_QUOTE_BETWEEN_SPACES = re.compile(rb" ' ")
_SPACE_BEFORE_CONTRACTION = re.compile(rb" '(?=[sm]|re|ve)")


def _clean_spaces(data: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces: " ." -> ".", " ' " -> "'", " 's" -> "'s" (in that order)."""
    data = _SPACE_BEFORE_PUNCT.sub(rb"\1", data)
    data = _QUOTE_BETWEEN_SPACES.sub(b"'", data)
    return _SPACE_BEFORE_CONTRACTION.sub(b"'", data)
