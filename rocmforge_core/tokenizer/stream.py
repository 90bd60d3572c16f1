"""Streaming detokenization: token ids in, only whole UTF-8 characters out.

A CJK character or an emoji is often split over two or more byte tokens; printing each token's bytes as
it comes would show U+FFFD halves. The decoder keeps the incomplete tail until the next token completes
it (Python's incremental UTF-8 decoder does exactly this), so the concatenation of everything `add`
and `flush` return equals `Tokenizer.decode` of the same ids. (One exception, as in llama.cpp's own
streaming: vocabularies whose detokenizer cleans up spaces, such as Llama 3's, stream the raw pieces.)
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rocmforge_core.tokenizer.tokenizer import Tokenizer


class StreamDecoder:
    """Feed ids one at a time with `add`; call `flush` at the end for any held-back bytes."""

    def __init__(self, tokenizer: "Tokenizer", special: bool = True):
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def add(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still partial)."""
        piece = self._tokenizer.render(token_id, self._special, strip_space=self._first)
        self._first = False
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Whatever is left; an unfinished character becomes U+FFFD (the bytes really are incomplete)."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
