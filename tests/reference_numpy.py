"""An independent, deliberately plain re-implementation of the supported decoders, for tests only.

It shares no code with rocmforge_core: it reads the file with gguf.GGUFReader and gguf.quants, reads
the hyperparameters from the metadata keys itself, and runs one position at a time in float64 with
explicit loops over heads, rope pairs and cached positions. Slow, and meant to be obviously right
rather than fast: use it on tiny random-weight models.
"""

from __future__ import annotations

import math

import gguf
import numpy as np


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / math.sqrt(float(np.mean(x * x)) + eps) * w


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class ReferenceModel:
    """Logits of every position of a token sequence, computed from scratch."""

    def __init__(self, path):
        reader = gguf.GGUFReader(str(path))
        self.meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
        self.w = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)
                  for t in reader.tensors}
        self.arch = self.meta["general.architecture"]
        self._read_hparams()

    def _get(self, key, default=None):
        return self.meta.get(f"{self.arch}.{key}", default)

    def _read_hparams(self) -> None:
        self.n_layers = self._get("block_count")
        self.d = self._get("embedding_length")
        self.n_heads = self._get("attention.head_count")
        self.n_kv = self._get("attention.head_count_kv", self.n_heads)
        self.hd = self._get("attention.key_length", self.d // self.n_heads)
        self.rope_dim = self._get("rope.dimension_count", self.hd)
        self.base = self._get("rope.freq_base", 10000.0)
        self.eps = self._get("attention.layer_norm_rms_epsilon")
        factor = self._get("rope.scaling.factor", 0.0)
        self.pos_scale = 1.0 / factor if factor else 1.0
        self.freq_factors = self.w.get("rope_freqs.weight")
        self.neox = self.arch in ("gemma3", "qwen2", "qwen3")
        self.gemma = self.arch == "gemma3"
        self.window = self._get("attention.sliding_window") if self.gemma else None
        self.softcap = self._get("final_logit_softcapping") if self.gemma else None

    def _layer_is_local(self, layer: int) -> bool:
        return self.gemma and layer % 6 != 5

    def _rope(self, x: np.ndarray, pos: int, layer: int) -> np.ndarray:
        """x: (heads, hd). Rotate each pair by pos * base^(-2i/dim) (gemma local layers: base 1e4)."""
        local = self._layer_is_local(layer)
        base = 10000.0 if local else self.base
        scale = 1.0 if local else self.pos_scale
        out = x.copy()
        half = self.rope_dim // 2
        for i in range(half):
            theta = pos * scale * base ** (-2.0 * i / self.rope_dim)
            if self.freq_factors is not None and not local:
                theta /= self.freq_factors[i]
            a, b = (i, i + half) if self.neox else (2 * i, 2 * i + 1)
            c, s = math.cos(theta), math.sin(theta)
            out[:, a] = x[:, a] * c - x[:, b] * s
            out[:, b] = x[:, b] * c + x[:, a] * s
        return out

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        y = self.w[name + ".weight"] @ x
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def logits(self, tokens) -> np.ndarray:
        """(T, vocab) float64 logits; position t sees tokens 0..t."""
        keys = [[] for _ in range(self.n_layers)]    # keys[layer][pos]: (n_kv, hd)
        values = [[] for _ in range(self.n_layers)]
        out = []
        for pos, tok in enumerate(tokens):
            x = self.w["token_embd.weight"][tok].copy()
            if self.gemma:
                x = x * math.sqrt(self.d)
            for layer in range(self.n_layers):
                x = self._block(layer, x, pos, keys[layer], values[layer])
            x = _rms_norm(x, self.w["output_norm.weight"], self.eps)
            head = self.w.get("output.weight", self.w["token_embd.weight"])
            logits = head @ x
            if self.softcap:
                logits = self.softcap * np.tanh(logits / self.softcap)
            out.append(logits)
        return np.array(out)

    def _block(self, layer: int, x: np.ndarray, pos: int, keys: list, values: list) -> np.ndarray:
        p = f"blk.{layer}."
        a = _rms_norm(x, self.w[p + "attn_norm.weight"], self.eps)
        q = self._linear(p + "attn_q", a).reshape(self.n_heads, self.hd)
        k = self._linear(p + "attn_k", a).reshape(self.n_kv, self.hd)
        v = self._linear(p + "attn_v", a).reshape(self.n_kv, self.hd)
        if p + "attn_q_norm.weight" in self.w:
            q = np.array([_rms_norm(h, self.w[p + "attn_q_norm.weight"], self.eps) for h in q])
            k = np.array([_rms_norm(h, self.w[p + "attn_k_norm.weight"], self.eps) for h in k])
        q, k = self._rope(q, pos, layer), self._rope(k, pos, layer)
        keys.append(k)
        values.append(v)
        attn = self._attend(layer, q, pos, keys, values)
        o = self.w[p + "attn_output.weight"] @ attn
        if self.gemma:
            o = _rms_norm(o, self.w[p + "post_attention_norm.weight"], self.eps)
        x = x + o
        f = _rms_norm(x, self.w[p + "ffn_norm.weight"], self.eps)
        gate = self.w[p + "ffn_gate.weight"] @ f
        up = self.w[p + "ffn_up.weight"] @ f
        act = _gelu_tanh(gate) if self.gemma else _silu(gate)
        f = self.w[p + "ffn_down.weight"] @ (act * up)
        if self.gemma:
            f = _rms_norm(f, self.w[p + "post_ffw_norm.weight"], self.eps)
        return x + f

    def _attend(self, layer: int, q: np.ndarray, pos: int, keys: list, values: list) -> np.ndarray:
        if self.gemma and self.n_layers == 62:
            scale = 1.0 / math.sqrt(self.d / self.n_heads)
        else:
            scale = 1.0 / math.sqrt(self.hd)
        visible = [j for j in range(pos + 1)
                   if not (self._layer_is_local(layer) and pos - j >= self.window)]
        group = self.n_heads // self.n_kv
        heads = []
        for h in range(self.n_heads):
            kv = h // group
            scores = np.array([float(q[h] @ keys[j][kv]) * scale for j in visible])
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
            heads.append(sum(wt * values[j][kv] for wt, j in zip(weights, visible)))
        return np.concatenate(heads)
