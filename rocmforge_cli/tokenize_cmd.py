"""`rocmforge tokenize`: print a text's token ids as llama.cpp's tokenizer gives them (like llama-tokenize)."""

from __future__ import annotations

import json
import sys


def run(model: str, text: str, no_bos: bool, special: bool, json_out: bool) -> None:
    from rocmforge_cli.common import resolve_model_path
    from rocmforge_core.gguf_file import GGUFFile
    from rocmforge_core.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(GGUFFile(resolve_model_path(model)))
    # --no-bos is llama.cpp's add_special=false: neither BOS nor EOS; otherwise the model's own choice
    ids = tokenizer.encode(text, add_bos=False if no_bos else None, parse_special=special)
    if json_out:
        print(json.dumps(ids))
        return
    lines = b"".join(b"%6d -> '%s'\n" % (i, tokenizer.token_piece(i)) for i in ids)
    _write_bytes(lines)


def _write_bytes(data: bytes) -> None:
    """Pieces are raw bytes (half a character at times), written as they are, as llama-tokenize does."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (an in-process test runner)
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        return
    sys.stdout.flush()
    buffer.write(data)
    buffer.flush()
