"""Write tests/data/tokenizer_<model>.json: llama.cpp's token ids and texts for a varied corpus.

Run once, by hand, with a Python that has llama-cpp-python (it is a fixture generator, never a test
dependency):

    /opt/llcpp/bin/python scripts/gen_tokenizer_fixtures.py \
        --smollm2 path/to/SmolLM2-135M-Instruct.Q4_1.gguf --gemma3 path/to/gemma-3-270m-q4_k_m.gguf

For every corpus string and each of add_special (BOS/EOS as the model asks) x parse_special it records
the ids from `llama_tokenize`, and for each id list the text of `llama_detokenize` with special tokens
rendered and hidden. It also records the vocabulary facts the tests check: BOS/EOS/EOT ids, the add
flags, the end-of-generation and control token sets, and each used token's piece.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
from pathlib import Path

CORPUS = [
    "",
    " ",
    "a",
    "\n",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "two  spaces and   three and" + " " * 33 + "thirty-three",
    "tab\tseparated\tvalues\t\tdouble",
    "line one\nline two\n\nafter blank\n\n\n\nfour newlines",
    "windows\r\nline\r\nendings\r\n",
    "mixed \t \n \r\n whitespace \u00a0 nbsp \u3000 ideographic",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)  # comment\nprint(f\"{x.shape=}\")",
    '{"name": "rocmforge", "version": [0, 1, 0], "nested": {"ok": true, "n": null}}',
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "café naïve Åström résumé façade",
    "e\u0301 (combining acute) vs \u00e9 (precomposed)",
    "日本語のテキストを処理します。",
    "中文分词测试：你好，世界！",
    "한국어 문장입니다.",
    "مرحبا بالعالم",
    "שלום עולם",
    "Привет, мир! Ελληνικά κείμενα.",
    "emoji 😀😃 thumbs 👍🏽 👍🏿 family 👨\u200d👩\u200d👧\u200d👦 flags 🇫🇷🇯🇵🇺🇸 keycap 1️⃣",
    "🤷🏽\u200d♀️🧑\u200d💻❤️\u200d🔥",
    "numbers 1234567 and 3.14159 and 1,000,000 and 2024-01-31 and 007",
    "x² + y³ = z⁴, ½ ¾, ①②③, ٣٤٥",
    "don't I'LL we've they're she'd it's you'RE",
    "Visit https://example.com/path?query=1&b=two#frag or mail me@example.org",
    "# Title\n\n**bold** and _italic_ and `code`\n\n- item one\n- item two\n\n```python\nprint('hi')\n```\n",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>",
    "<bos>text after bos",
    "<eos> <pad> <unk> <mask>",
    "<|endoftext|>",
    "Hello<|im_end|>world <|im_end|> spaced",
    "<s>sentence</s> <b>bold</b> <code>x</code>",
    "<table><tr><td>cell</td></tr></table>",
    "<unused0><unused17>",
    "<reponame>repo<file_sep>file.py<filename>",
    "[multimodal] <start_of_image>",
    "literal byte token <0x41> and <0xE3>",
    "▁ already escaped ▁▁ and Ġ byte-level chars",
    "ANSI \x1b[31mred\x1b[0m bell\x07",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!! ........ ----------",
    "ＡＢＣ１２３ fullwidth, ∑∫√∞ math, → arrows",
    "𓀀 hieroglyph, \ue000 private use, \U0010fffd plane 16",
    "CamelCaseIdentifier snake_case_identifier kebab-case-id SCREAMING_CASE",
    ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
     "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris "
     "nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit "
     "esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt "
     "in culpa qui officia deserunt mollit anim id est laborum.\n") * 3,
]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tokenize(llama_cpp, vocab, text: str, add_special: bool, parse_special: bool) -> list[int]:
    raw = text.encode("utf-8")
    cap = len(raw) + 16
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, cap, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"llama_tokenize needs {-n} slots for {text!r}")
    return list(buf[:n])


def _detokenize(llama_cpp, vocab, ids: list[int], unparse_special: bool) -> str:
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 64 + 64 * len(ids)
    out = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, cap, False, unparse_special)
    if n < 0:
        raise RuntimeError("detokenize buffer too small")
    return out.raw[:n].decode("utf-8", errors="replace")


def _piece(llama_cpp, vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, True)
    if n < 0:
        raise RuntimeError(f"piece of token {token} longer than 256 bytes")
    return buf.raw[:n]


def _opt(token: int) -> int | None:
    return None if token < 0 else int(token)


def fixture_for(model_path: Path) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    entries, used = [], set()
    for text in CORPUS:
        cases = {}
        for add_special in (False, True):
            for parse_special in (False, True):
                ids = _tokenize(llama_cpp, vocab, text, add_special, parse_special)
                used.update(ids)
                cases[f"add_special={add_special},parse_special={parse_special}"] = {
                    "ids": ids,
                    "text": _detokenize(llama_cpp, vocab, ids, True),
                    "text_no_special": _detokenize(llama_cpp, vocab, ids, False),
                }
        entries.append({"text": text, "cases": cases})
    return {
        "generator": "scripts/gen_tokenizer_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model_file": model_path.name,
        "model_sha256": _sha256(model_path),
        "n_vocab": n_vocab,
        "bos_id": _opt(llama_cpp.llama_vocab_bos(vocab)),
        "eos_id": _opt(llama_cpp.llama_vocab_eos(vocab)),
        "eot_id": _opt(llama_cpp.llama_vocab_eot(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "control_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, t)],
        "pieces_hex": {str(t): _piece(llama_cpp, vocab, t).hex() for t in sorted(used)},
        "corpus": entries,
    }


def _dump(data: dict) -> str:
    """JSON with one line per top-level key and per corpus entry: readable diffs, modest size."""
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in data.items() if k != "corpus"]
    entries = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in data["corpus"])
    return "{\n" + "\n".join(lines) + '\n "corpus": [\n' + entries + "\n ]\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--gemma3", type=Path, required=True, help="gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in (("smollm2", args.smollm2), ("gemma3", args.gemma3)):
        data = fixture_for(path)
        out = args.out_dir / f"tokenizer_{name}.json"
        out.write_text(_dump(data), encoding="utf-8")
        print(f"wrote {out} ({len(data['corpus'])} texts, llama-cpp-python {data['llama_cpp_python']})")


if __name__ == "__main__":
    main()
