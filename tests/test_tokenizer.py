"""Tokenizers against llama.cpp: the committed fixtures (scripts/gen_tokenizer_fixtures.py) for both
default models, round trips, streaming decode, and the pre-tokenizer choice on tiny hand-made vocabularies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rocmforge_core.errors import BadInputError, UnsupportedModelError
from rocmforge_core.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
CASES = [(False, False), (False, True), (True, False), (True, True)]  # (add_special, parse_special)


def _fixture(name: str) -> dict:
    return json.loads((DATA / f"tokenizer_{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request):
    """(tokenizer, fixture) for each default model, built from the real GGUF's metadata."""
    from rocmforge_core.gguf_file import GGUFFile

    path = request.getfixturevalue(f"{request.param}_path")
    return Tokenizer.from_gguf(GGUFFile(path)), _fixture(request.param)


def _case(entry: dict, add_special: bool, parse_special: bool) -> dict:
    return entry["cases"][f"add_special={add_special},parse_special={parse_special}"]


def _encode_like_llama_cpp(tok: Tokenizer, text: str, add_special: bool, parse_special: bool) -> list[int]:
    # llama.cpp's add_special adds what the model asks for: our add_bos=None; no add_special: False
    return tok.encode(text, add_bos=None if add_special else False, parse_special=parse_special)


def test_fixture_is_broad_enough():
    for name in ("smollm2", "gemma3"):
        fx = _fixture(name)
        assert len(fx["corpus"]) >= 40
        assert fx["llama_cpp_python"] == "0.3.36"
        assert len(fx["model_sha256"]) == 64


def test_vocabulary_facts_match_llama_cpp(model):
    tok, fx = model
    assert tok.vocab_size == fx["n_vocab"]
    assert (tok.bos_id, tok.eos_id, tok.eot_id) == (fx["bos_id"], fx["eos_id"], fx["eot_id"])
    assert (tok.add_bos, tok.add_eos) == (fx["add_bos"], fx["add_eos"])
    assert tok.eog_ids == frozenset(fx["eog_ids"])
    assert [i for i in range(tok.vocab_size) if tok.is_special(i)] == fx["control_ids"]


def test_end_of_generation_tokens_of_the_default_models(model):
    tok, _ = model
    texts = {tok.vocab.tokens[i] for i in tok.eog_ids}
    if tok.vocab.model == "gpt2":
        assert "<|im_end|>" in texts
    else:
        assert "<end_of_turn>" in texts


@pytest.mark.parametrize("add_special,parse_special", CASES)
def test_encode_matches_llama_cpp_on_whole_corpus(model, add_special, parse_special):
    tok, fx = model
    wrong = []
    for entry in fx["corpus"]:
        want = _case(entry, add_special, parse_special)["ids"]
        got = _encode_like_llama_cpp(tok, entry["text"], add_special, parse_special)
        if got != want:
            wrong.append((entry["text"][:40], got[:12], want[:12]))
    assert not wrong, f"{len(wrong)}/{len(fx['corpus'])} texts differ, e.g. {wrong[:3]}"


@pytest.mark.parametrize("add_special,parse_special", CASES)
def test_decode_matches_llama_detokenize(model, add_special, parse_special):
    tok, fx = model
    for entry in fx["corpus"]:
        case = _case(entry, add_special, parse_special)
        assert tok.decode(case["ids"]) == case["text"], entry["text"][:40]
        assert tok.decode(case["ids"], special=False) == case["text_no_special"], entry["text"][:40]


def test_token_pieces_match_llama_cpp(model):
    tok, fx = model
    for tid, hexbytes in fx["pieces_hex"].items():
        assert tok.token_piece(int(tid)) == bytes.fromhex(hexbytes), tid


@pytest.mark.parametrize("parse_special", [False, True])
def test_round_trip_on_corpus(model, parse_special):
    tok, fx = model
    for entry in fx["corpus"]:
        text = entry["text"]
        if tok.vocab.model == "llama" and "\u2581" in text:
            # SentencePiece writes spaces as ▁, so a literal ▁ comes back as a space: llama.cpp loses it too
            assert _case(entry, False, parse_special)["text"] != text
            continue
        assert tok.decode(tok.encode(text, add_bos=False, parse_special=parse_special)) == text


def test_stream_emits_whole_characters_only(model):
    tok, fx = model
    held_back = 0
    for entry in fx["corpus"]:
        for add_special, parse_special in CASES:
            ids = _case(entry, add_special, parse_special)["ids"]
            for special in (True, False):
                stream = tok.stream(special=special)
                chunks = [stream.add(t) for t in ids] + [stream.flush()]
                whole = tok.decode(ids, special=special)
                assert "".join(chunks) == whole, entry["text"][:40]
                if "\ufffd" not in whole:
                    assert not any("\ufffd" in c for c in chunks), entry["text"][:40]
                held_back += sum(1 for t, c in zip(ids, chunks) if c == "" and tok.token_piece(t))
    assert held_back > 0  # multi-token characters (emoji, CJK) really were split across tokens


def test_stream_holds_a_split_character_until_complete(model):
    tok, _ = model
    text = "\U00013000"  # an Egyptian hieroglyph: several byte-level or <0xXX> tokens in both vocabularies
    ids = tok.encode(text, add_bos=False)
    assert len(ids) > 1
    stream = tok.stream()
    assert [stream.add(t) for t in ids] == [""] * (len(ids) - 1) + [text]
    assert stream.flush() == ""
    truncated = tok.stream()
    assert truncated.add(ids[0]) == ""
    assert truncated.flush() == "\ufffd"  # the bytes really are incomplete


def test_add_bos_forced_and_refused(model):
    tok, _ = model
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id
    assert tok.bos_id not in tok.encode("hi", add_bos=False)


def test_out_of_range_id_is_bad_input(model):
    tok, _ = model
    with pytest.raises(BadInputError):
        tok.decode([tok.vocab_size])


# -- pre-tokenizer selection on tiny byte-level vocabularies -----------------------------------------

def _byte_level_metadata(pre: str, extra_tokens: list[str], merges: list[str]) -> dict:
    from rocmforge_core.tokenizer.bpe import byte_to_unicode

    tokens = [byte_to_unicode()[b] for b in range(256)] + extra_tokens + ["<|endoftext|>"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 1) + [3],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 1,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }


def _pieces(tok: Tokenizer, text: str) -> list[str]:
    return [tok.token_piece(i).decode() for i in tok.encode(text, add_bos=False)]


DIGITS = (["12", "123", "1234", "12345", "45"], ["1 2", "12 3", "123 4", "1234 5", "4 5"])


@pytest.mark.parametrize("pre,expected", [
    ("gpt2", None),  # not a llama.cpp name: refused below
    ("gpt-2", ["12345"]),                   # digits stay one word
    ("llama-bpe", ["123", "45"]),           # \p{N}{1,3}
    ("qwen2", ["1", "2", "3", "4", "5"]),   # one digit per word
    ("smollm", ["1", "2", "3", "4", "5"]),
    ("default", ["123", "45"]),             # [0-9][0-9][0-9] after \p{N}+
])
def test_digit_splitting_follows_the_pre_tokenizer(pre, expected):
    metadata = _byte_level_metadata(pre, *DIGITS)
    if expected is None:
        with pytest.raises(UnsupportedModelError, match="unknown pre-tokenizer type: 'gpt2'"):
            Tokenizer.from_metadata(metadata)
        return
    assert _pieces(Tokenizer.from_metadata(metadata), "12345") == expected


def test_contractions_are_case_sensitive_only_for_gpt2():
    merges = (["'S", "IT"], ["' S", "I T"])
    assert _pieces(Tokenizer.from_metadata(_byte_level_metadata("gpt-2", *merges)), "IT'S") == ["IT", "'", "S"]
    assert _pieces(Tokenizer.from_metadata(_byte_level_metadata("llama-bpe", *merges)), "IT'S") == ["IT", "'S"]


def test_llama3_defaults_add_bos_and_clean_spaces():
    tok = Tokenizer.from_metadata(_byte_level_metadata("llama-bpe", [], []))
    assert tok.add_bos and tok.encode("a")[0] == tok.bos_id
    assert tok.decode(tok.encode("a , b . c 's", add_bos=False)) == "a, b. c's"  # llama.cpp's clean-up


def test_missing_merges_and_unknown_models_are_refused():
    metadata = _byte_level_metadata("gpt-2", [], [])
    del metadata["tokenizer.ggml.merges"]
    with pytest.raises(BadInputError, match="merges"):
        Tokenizer.from_metadata(metadata)
    with pytest.raises(UnsupportedModelError, match="unsupported tokenizer model 'bert'"):
        Tokenizer.from_metadata({**_byte_level_metadata("gpt-2", [], []), "tokenizer.ggml.model": "bert"})


# -- SentencePiece-style rules on a tiny hand-made vocabulary ----------------------------------------

def _spm_metadata(pieces: dict[str, tuple[float, int]], **flags) -> dict:
    """<unk>, <s>, </s>, the 256 byte tokens, then `pieces` (text -> (score, token type))."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(pieces)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + [s for s, _ in pieces.values()],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [t for _, t in pieces.values()],
        **{f"tokenizer.ggml.{k}": v for k, v in flags.items()},
    }


SPM_PIECES = {"\u2581": (-9.0, 1), "a": (-5.0, 1), "b": (-5.0, 1), "c": (-5.0, 1), "d": (-5.0, 1),
              "ab": (-1.0, 1), "bc": (-1.0, 1), "\u2581a": (-2.0, 1), "<x>": (0.0, 4), "x>yy": (0.0, 4)}


def _spm_pieces(tok: Tokenizer, text: str, **kw) -> list[str]:
    return [tok.vocab.tokens[i] for i in tok.encode(text, add_bos=False, **kw)]


def test_spm_merges_highest_score_first_and_leftmost_on_ties():
    tok = Tokenizer.from_metadata(_spm_metadata(SPM_PIECES, add_space_prefix=False))
    assert _spm_pieces(tok, "abc") == ["ab", "c"]  # "ab" and "bc" tie: the left pair wins
    assert _spm_pieces(tok, "cabc") == ["c", "ab", "c"]
    assert _spm_pieces(tok, "a bc") == ["a", "\u2581", "bc"]


def test_spm_space_prefix_bos_and_byte_fallback():
    tok = Tokenizer.from_metadata(_spm_metadata(SPM_PIECES))  # llama defaults: space prefix, BOS
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.encode("a")[0] == 1
    assert _spm_pieces(tok, "a") == ["\u2581a"]
    assert _spm_pieces(tok, "\u00e9") == ["\u2581", "<0xC3>", "<0xA9>"]  # é is no token: its UTF-8 bytes
    assert tok.decode(tok.encode("\u00e9", add_bos=False)) == "\u00e9"


def test_special_partition_takes_longer_texts_first():
    # user-defined tokens are cut out even without parse_special, the longest text first (llama.cpp
    # does not take the leftmost match: "x>yy" wins over the "<x>" that starts before it)
    tok = Tokenizer.from_metadata(_spm_metadata(SPM_PIECES, add_space_prefix=False))
    x_tag, x_yy = tok.vocab.token_to_id["<x>"], tok.vocab.token_to_id["x>yy"]
    assert tok.partition("<x>yy", parse_special=False) == ["<", x_yy]
    assert tok.partition("a<x>b<x>", parse_special=False) == ["a", x_tag, "b", x_tag]
    assert tok.partition("<s>a", parse_special=False) == ["<s>a"]  # control: only with parse_special
    assert tok.partition("<s>a", parse_special=True) == [1, "a"]
