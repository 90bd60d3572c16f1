"""The vocabulary as llama.cpp sees it: tokens, attributes, special ids and flags, from GGUF metadata alone.

Everything here follows llama.cpp's vocabulary loader (llama-vocab.cpp) so that the encoders and the
decoder built on top of it agree with llama.cpp token for token: the default special ids of each
tokenizer family, the per-pre-tokenizer flags, the tokens it re-types by their text (EOG markers become
control tokens) and the end-of-generation set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rocmforge_core.errors import BadInputError, UnsupportedModelError

log = logging.getLogger(__name__)

# llama.cpp's token attribute bits (llama_token_attr).
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF tokenizer.ggml.token_type values -> attribute bits (0 = undefined, anything unknown too).
_TYPE_TO_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED,
                 5: ATTR_UNUSED, 6: ATTR_BYTE}

# Texts llama.cpp recognises when the metadata does not name the token.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_FIM_OTHER_TEXTS = (
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
     "<|prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
     "<|suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
     "<|middle|>"),
)
# Every token with one of these texts ends generation in llama.cpp (and is forced to be a control token).
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")
# gpt-oss renders these even when special tokens are hidden.
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

_KEY = "tokenizer.ggml."


@dataclass(frozen=True)
class PreTokenizer:
    """What a `tokenizer.ggml.pre` value selects in llama.cpp for byte-level BPE vocabularies."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False   # a word that is already a token is not split into merges
    add_bos: bool = False         # default for tokenizer.ggml.add_bos_token
    clean_spaces: bool = True     # detokenizer removes " ." style spaces


# The split expressions llama.cpp applies, in order, for each pre-tokenizer family.
_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_RE_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_RE_LLAMA3 = (_RE_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_QWEN2 = (_RE_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer((_RE_GPT2,))
_LLAMA3 = PreTokenizer((_RE_LLAMA3,), ignore_merges=True, add_bos=True)
_DIGITS_THEN_GPT2 = (r"\p{N}", _RE_GPT2)

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **{name: _GPT2 for name in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                                "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais")},
    **{name: _LLAMA3 for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                  "midm-2.0", "lfm2")},
    "qwen2": PreTokenizer((_RE_QWEN2,), clean_spaces=False),
    "deepseek-r1-qwen": PreTokenizer((_RE_QWEN2,), clean_spaces=False),
    "stablelm2": PreTokenizer((_RE_QWEN2,)),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _RE_GPT2, r"[0-9][0-9][0-9]")),
    **{name: PreTokenizer(_DIGITS_THEN_GPT2) for name in ("starcoder", "refact", "codeshell", "exaone",
                                                          "minerva-7b", "mellum2")},
    **{name: PreTokenizer(_DIGITS_THEN_GPT2, clean_spaces=False) for name in ("smollm", "command-r")},
}


# Ids the tokenizer adds, emits or stops on: one outside the vocabulary is refused. llama.cpp only warns
# and drops it, but then a model silently runs without its BOS or its end of turn.
_CORE_IDS = ("bos", "eos", "eot", "eom", "unknown")
_ID_KEYS = tuple(f"{k}_token_id" for k in _CORE_IDS + ("padding", "prefix", "suffix", "middle")) + tuple(
    f"fim_{k}_token_id" for k in ("pre", "suf", "mid", "pad", "rep", "sep"))
_FLAG_KEYS = ("add_bos_token", "add_eos_token", "add_space_prefix")


def _shown(value: Any) -> str:
    text = repr(value.tolist() if hasattr(value, "tolist") else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_numeric_array(value: Any, kind: str) -> bool:
    """A numpy array of dtype kind 'f' (floats) / 'iu' (integers), or a list of such numbers."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and (value.dtype.kind in kind or (kind == "f" and value.dtype.kind in "iu"))
    ok = (int, float) if kind == "f" else (int,)
    return isinstance(value, list) and all(isinstance(v, ok) and not isinstance(v, bool) for v in value)


def check_metadata_types(metadata: Mapping[str, Any]) -> None:
    """Each tokenizer.ggml.* value has the type the GGUF spec gives it: one line naming the key if not."""
    def fail(key: str, value: Any, what: str) -> None:
        raise BadInputError(f"GGUF metadata {_KEY}{key} = {_shown(value)} is not {what}",
                            hint="the file's tokenizer metadata is corrupt")

    for key in ("model", "pre"):
        value = metadata.get(_KEY + key)
        if value is not None and not isinstance(value, str):
            fail(key, value, "a string")
    tokens = metadata.get(_KEY + "tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or not all(isinstance(t, (str, bytes)) for t in tokens):
            fail("tokens", tokens, "an array of strings")
        if not tokens:
            raise BadInputError(f"GGUF metadata {_KEY}tokens is empty", hint="the file carries no vocabulary")
    merges = metadata.get(_KEY + "merges")
    if merges is not None and (not isinstance(merges, list) or not all(isinstance(m, str) for m in merges)):
        fail("merges", merges, "an array of strings")
    for key, kind, what in (("scores", "f", "an array of numbers"), ("token_type", "iu", "an array of integers")):
        value = metadata.get(_KEY + key)
        if value is not None and not _is_numeric_array(value, kind):
            fail(key, value, what)
    for key in _ID_KEYS:
        value = metadata.get(_KEY + key)
        if value is not None and not _is_int(value):
            fail(key, value, "an integer token id")
        if value is not None and tokens and key.split("_")[0] in _CORE_IDS and not 0 <= value < len(tokens):
            raise BadInputError(f"tokenizer.ggml.{key} {value} is outside the vocabulary of {len(tokens)} "
                                "tokens", hint="the file's tokenizer metadata is corrupt")
    for key in _FLAG_KEYS:
        value = metadata.get(_KEY + key)
        if value is not None and not isinstance(value, (bool, np.bool_)):
            fail(key, value, "a boolean")


def _check_token_text(model: str, tokens: list[str]) -> None:
    """Byte-level BPE vocabularies are text; a token that is not UTF-8 would fail deep in `tokenizers`."""
    if model != "gpt2":
        return  # SentencePiece pieces are handled as bytes (surrogateescape) by our own encoder
    try:
        "".join(tokens).encode("utf-8")
    except UnicodeEncodeError:
        bad = next(i for i, t in enumerate(tokens) if not _is_utf8(t))
        raise BadInputError(f"token {bad} of tokenizer.ggml.tokens is not valid UTF-8 "
                            f"({tokens[bad].encode('utf-8', 'surrogateescape')[:16]!r})",
                            hint="the file's vocabulary is corrupt") from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _flag(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(_KEY + key)
    return default if value is None else bool(value)


def _token_texts(metadata: Mapping[str, Any]) -> list[str]:
    tokens = metadata.get(_KEY + "tokens")
    if tokens is None:
        raise BadInputError("GGUF metadata has no tokenizer.ggml.tokens", "the file carries no vocabulary")
    texts = []
    for i, tok in enumerate(tokens):
        if isinstance(tok, (bytes, bytearray)):
            tok = bytes(tok).decode("utf-8", errors="surrogateescape")
        # llama.cpp renames empty tokens so that every text maps to one id
        texts.append(tok if tok else f"[EMPTY_{i}]")
    return texts


def _attributes(metadata: Mapping[str, Any], n_tokens: int) -> list[int]:
    types = metadata.get(_KEY + "token_type")
    if types is None:
        return [ATTR_NORMAL] * n_tokens
    types = types.tolist() if hasattr(types, "tolist") else [int(t) for t in types]
    if len(types) < n_tokens:
        raise BadInputError(f"tokenizer.ggml.token_type has {len(types)} entries for {n_tokens} tokens")
    return [_TYPE_TO_ATTR.get(t, 0) for t in types[:n_tokens]]


def _scores(metadata: Mapping[str, Any], n_tokens: int) -> list[float]:
    scores = metadata.get(_KEY + "scores")
    if scores is None:
        return [0.0] * n_tokens
    values = scores.tolist() if hasattr(scores, "tolist") else [float(s) for s in scores]
    if len(values) < n_tokens:
        raise BadInputError(f"tokenizer.ggml.scores has {len(values)} entries for {n_tokens} tokens")
    return values[:n_tokens]


@dataclass
class Vocab:
    """Tokens with llama.cpp's attributes, special ids and flags; built by `Vocab.from_metadata`."""

    model: str                       # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str                         # tokenizer.ggml.pre as llama.cpp resolved it
    tokens: list[str]
    attrs: list[int]
    scores: list[float]
    token_to_id: dict[str, int]
    merges: list[str] = field(default_factory=list)
    pre_tokenizer: PreTokenizer | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False
    eog_ids: frozenset[int] = frozenset()
    special_order: list[int] = field(default_factory=list)  # partition order: longest text first

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Vocab":
        check_metadata_types(metadata)
        model = metadata.get(_KEY + "model")
        if model is None:
            raise BadInputError("GGUF metadata has no tokenizer.ggml.model", "the file carries no tokenizer")
        tokens = _token_texts(metadata)
        _check_token_text(str(model), tokens)
        n = len(tokens)
        vocab = cls(model=str(model), pre=str(metadata.get(_KEY + "pre") or ""), tokens=tokens,
                    attrs=_attributes(metadata, n), scores=_scores(metadata, n),
                    token_to_id={t: i for i, t in enumerate(tokens)})
        defaults = vocab._configure_family(metadata)
        fim = vocab._read_special_ids(metadata, defaults)
        vocab._detect_special_by_text(fim)
        vocab._apply_name_rules(metadata)
        vocab.special_order = sorted(
            (i for i, a in enumerate(vocab.attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)),
            key=lambda i: (-len(tokens[i].encode("utf-8", "surrogateescape")), i))
        return vocab

    def _configure_family(self, metadata: Mapping[str, Any]) -> dict[str, int | None]:
        """Flags of the tokenizer family and pre-tokenizer, then the metadata's own; returns default ids."""
        if self.model == "llama":
            defaults: dict[str, int | None] = dict(bos=1, eos=2, unk=0)
            self.add_space_prefix, self.add_bos, self.clean_spaces = True, True, False
        elif self.model == "gpt2":
            defaults = dict(bos=11, eos=11, unk=None)
            merges = metadata.get(_KEY + "merges")
            if merges is None:
                raise BadInputError("GGUF metadata has no tokenizer.ggml.merges", "a gpt2 vocabulary needs them")
            self.merges = list(merges)
            if not self.pre:
                log.warning("missing tokenizer.ggml.pre, using 'default' as llama.cpp does "
                            "(generation quality may suffer)")
                self.pre = "default"
            self.pre_tokenizer = PRE_TOKENIZERS.get(self.pre)
            if self.pre_tokenizer is None:
                raise UnsupportedModelError(
                    f"unknown pre-tokenizer type: '{self.pre}'",
                    "llama.cpp refuses an unknown BPE pre-tokenizer too; supported: "
                    + ", ".join(sorted(PRE_TOKENIZERS)))
            self.add_bos = self.pre_tokenizer.add_bos
            self.clean_spaces = self.pre_tokenizer.clean_spaces
        else:
            raise UnsupportedModelError(
                f"unsupported tokenizer model '{self.model}'",
                "rocmforge reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece) vocabularies")
        self.add_space_prefix = _flag(metadata, "add_space_prefix", self.add_space_prefix)
        self.add_bos = _flag(metadata, "add_bos_token", self.add_bos)
        self.add_eos = _flag(metadata, "add_eos_token", self.add_eos)
        return defaults

    def _read_special_ids(self, metadata: Mapping[str, Any],
                          defaults: dict[str, int | None]) -> dict[str, int | None]:
        """BOS/EOS/... from metadata (ids outside the vocabulary ignored); returns the FIM ids."""
        n = len(self.tokens)

        def pick(key: str, default: int | None) -> int | None:
            if default is not None and default >= n:
                default = None  # llama.cpp disables a default id outside the vocabulary
            value = metadata.get(_KEY + key)
            if value is None:
                return default
            if not 0 <= int(value) < n:
                log.warning("bad special token %s = %s, using the default %s", key, value, default)
                return default
            return int(value)

        self.bos_id = pick("bos_token_id", defaults["bos"])
        self.eos_id = pick("eos_token_id", defaults["eos"])
        self.unk_id = pick("unknown_token_id", defaults["unk"])
        self.eot_id = pick("eot_token_id", None)
        self.eom_id = pick("eom_token_id", None)
        self.pad_id = pick("padding_token_id", None)
        fim = {k: pick(f"fim_{k}_token_id", None) for k in ("pre", "suf", "mid", "pad", "rep", "sep")}
        for k, old in (("pre", "prefix"), ("suf", "suffix"), ("mid", "middle")):
            legacy = pick(f"{old}_token_id", None)
            if legacy is not None:
                fim[k] = legacy
        return fim

    def _find_first(self, texts: Sequence[str]) -> int | None:
        for text in texts:
            tid = self.token_to_id.get(text)
            if tid is not None:
                return tid
        return None

    def _make_control(self, tid: int) -> None:
        if not self.attrs[tid] & ATTR_CONTROL:
            log.debug("token %d %r looks like a control token; treating it as one (as llama.cpp does)",
                      tid, self.tokens[tid])
            self.attrs[tid] |= ATTR_CONTROL

    def _detect_special_by_text(self, fim: dict[str, int | None]) -> None:
        """EOT/EOM/FIM ids and the end-of-generation set from token texts, as llama.cpp guesses them."""
        if self.eot_id is None:
            # llama.cpp takes the first candidate in its hash map's order, which we cannot reproduce;
            # the lowest id gives its answer for both default models (SmolLM2: <|endoftext|>, not
            # <|im_end|>). The end-of-generation set below holds every candidate either way.
            found = [self.token_to_id[t] for t in _EOT_TEXTS if t in self.token_to_id]
            self.eot_id = min(found) if found else None
            if self.eot_id is not None:
                self._make_control(self.eot_id)
        if self.eom_id is None:
            self.eom_id = self._find_first(_EOM_TEXTS)
            if self.eom_id is not None:
                self._make_control(self.eom_id)
        for key, texts in (("pre", _FIM_OTHER_TEXTS[0]), ("suf", _FIM_OTHER_TEXTS[1]),
                           ("mid", _FIM_OTHER_TEXTS[2]), ("pad", _FIM_PAD_TEXTS), ("rep", _FIM_REP_TEXTS),
                           ("sep", _FIM_SEP_TEXTS)):
            if fim[key] is None:
                fim[key] = self._find_first(texts)
                if fim[key] is not None:
                    self._make_control(fim[key])
        eog = {fim[k] for k in ("pad", "rep", "sep") if fim[k] is not None}
        for text in _EOG_TEXTS:
            tid = self.token_to_id.get(text)
            if tid is not None:
                eog.add(tid)
                self._make_control(tid)
        for text in _ALWAYS_RENDERED:
            tid = self.token_to_id.get(text)
            if tid is not None:
                self.attrs[tid] = ATTR_USER_DEFINED
        eog.update(t for t in (self.eos_id, self.eot_id, self.eom_id) if t is not None)
        self._drop_false_eog(eog)
        self.eog_ids = frozenset(eog)

    def _drop_false_eog(self, eog: set[int]) -> None:
        """llama.cpp's two exceptions: harmony's <|end|> and a plain </s> are not end-of-generation."""
        texts = {self.tokens[t]: t for t in eog}
        harmony = "<|return|>" in texts and "<|call|>" in texts
        solar = ("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts
        if "<|end|>" in texts and (harmony or solar):
            eog.discard(texts["<|end|>"])
            self.attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            self.attrs[texts["</s>"]] = ATTR_NORMAL

    def _apply_name_rules(self, metadata: Mapping[str, Any]) -> None:
        """Strip attributes llama.cpp sets by model name (Phi-3's special tokens eat following spaces)."""
        name = str(metadata.get("general.name") or "").lower()
        arch = str(metadata.get("general.architecture") or "")
        if any(p in self.pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
            self._set_attr("<mask>", ATTR_LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:
            for i, a in enumerate(self.attrs):
                if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                    self.attrs[i] |= ATTR_RSTRIP
            self._set_attr("</s>", ATTR_RSTRIP, True)
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                self._set_attr(text, ATTR_RSTRIP, False)
        elif "modern-bert" in name:
            self._set_attr("[MASK]", ATTR_LSTRIP, True)

    def _set_attr(self, text: str, bit: int, on: bool) -> None:
        tid = self.token_to_id.get(text)
        if tid is not None:
            self.attrs[tid] = self.attrs[tid] | bit if on else self.attrs[tid] & ~bit
