"""Tokenizers built from GGUF metadata alone, identical to llama.cpp's: byte-level BPE and SentencePiece.

`Tokenizer.from_gguf(GGUFFile(path))` is the entry point; `Tokenizer.stream()` gives an incremental
decoder that only ever emits whole UTF-8 characters.
"""

from __future__ import annotations

from rocmforge_core.tokenizer.stream import StreamDecoder
from rocmforge_core.tokenizer.tokenizer import Tokenizer
from rocmforge_core.tokenizer.vocab import PRE_TOKENIZERS, Vocab

__all__ = ["PRE_TOKENIZERS", "StreamDecoder", "Tokenizer", "Vocab"]
