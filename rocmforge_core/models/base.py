"""The shared decoder-only transformer that every architecture file configures.

An architecture says what differs through `DecoderArgs` (norm placement, activation, biases, q/k norms,
per-layer rope and sliding window, embedding scale, logit soft-cap); this module owns the loop over
layers, prefill, batched decode and the weight loading by llama.cpp tensor names. All math goes through
a backend ops object (rocmforge_core/backends/cpu.py is the reference), so a GPU backend runs the same
model code over device buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from rocmforge_core.rope import RopeSpec
from rocmforge_core.errors import BadInputError, UnsupportedModelError


@dataclass
class DecoderArgs:
    """Everything the shared decoder needs; the architecture files fill it from GGUF metadata."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    norm_eps: float
    ropes: list[RopeSpec]                 # one per layer
    windows: list[int | None]             # sliding window per layer, None = global attention
    attn_scale: float
    embed_scale: float = 1.0              # gemma: sqrt(d_model)
    scale_queries: bool = False           # gemma3: q *= attn_scale before attention (softmax scale 1),
                                          # the order llama.cpp's graph uses (same math, same bits)
    activation: str = "silu"              # "silu" (SwiGLU) or "gelu" (GELU-tanh gated)
    qkv_bias: bool = False                # qwen2
    qk_norm: bool = False                 # qwen3, gemma3: RMSNorm over each q/k head
    post_norms: bool = False              # gemma3: RMSNorm after attention and after the FFN
    final_softcap: float | None = None    # tanh soft-capping of the logits


@dataclass
class LayerWeights:
    attn_norm: Any
    qkv: Any                  # Q|K|V fused along the output dimension
    wo: Any
    ffn_norm: Any
    gate_up: Any              # gate|up fused along the output dimension
    down: Any
    q_norm: Any = None
    k_norm: Any = None
    post_attn_norm: Any = None
    post_ffn_norm: Any = None


@dataclass
class Weights:
    embed: Any
    output_norm: Any
    output: Any               # the embedding table itself when the model ties them
    layers: list[LayerWeights] = field(default_factory=list)


def load_weights(gguf_file, args: DecoderArgs, ops) -> Weights:
    """Load by llama.cpp tensor names, fusing Q|K|V and gate|up into single matrices."""
    embed = ops.linear(gguf_file, ["token_embd.weight"])
    tied = not gguf_file.has_tensor("output.weight")
    output = embed if tied else ops.linear(gguf_file, ["output.weight"])
    weights = Weights(embed, ops.vector(gguf_file, "output_norm.weight"), output)
    for i in range(args.n_layers):
        weights.layers.append(_load_layer(gguf_file, args, ops, f"blk.{i}."))
    ops.weights_loaded()
    return weights


def _load_layer(gguf_file, args: DecoderArgs, ops, p: str) -> LayerWeights:
    qkv_names = [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
    bias_names = [n.replace(".weight", ".bias") for n in qkv_names] if args.qkv_bias else None
    layer = LayerWeights(
        attn_norm=ops.vector(gguf_file, p + "attn_norm.weight"),
        qkv=ops.linear(gguf_file, qkv_names, bias_names),
        wo=ops.linear(gguf_file, [p + "attn_output.weight"]),
        ffn_norm=ops.vector(gguf_file, p + "ffn_norm.weight"),
        gate_up=ops.linear(gguf_file, [p + "ffn_gate.weight", p + "ffn_up.weight"]),
        down=ops.linear(gguf_file, [p + "ffn_down.weight"]),
    )
    if args.qk_norm:
        layer.q_norm = ops.vector(gguf_file, p + "attn_q_norm.weight")
        layer.k_norm = ops.vector(gguf_file, p + "attn_k_norm.weight")
    if args.post_norms:
        layer.post_attn_norm = ops.vector(gguf_file, p + "post_attention_norm.weight")
        layer.post_ffn_norm = ops.vector(gguf_file, p + "post_ffw_norm.weight")
    return layer


@dataclass
class PrefillJob:
    """A prompt chunk part way through the model: the hidden states after the first `layer` layers."""

    tokens: np.ndarray  # (T,) int64, already checked
    cache: Any
    slot: int
    start: int
    all_logits: bool = False
    x: Any = None  # (T, d) after `layer` layers; None before the embedding
    layer: int = 0


class Decoder:
    """A loaded model: `prefill` a prompt into a cache slot, then `decode` batches of slots."""

    def __init__(self, args: DecoderArgs, weights: Weights, ops, config: Any = None):
        self.args, self.weights, self.ops = args, weights, ops
        self.config = config

    @classmethod
    def make_args(cls, gguf_file, config) -> DecoderArgs:  # each architecture file defines this
        raise NotImplementedError

    @classmethod
    def from_gguf(cls, gguf_file, ops) -> "Decoder":
        from rocmforge_core.config import config_from_metadata

        config = config_from_metadata(gguf_file.metadata)
        args = cls.make_args(gguf_file, config)
        check_shapes(gguf_file, args)
        return cls(args, load_weights(gguf_file, args, ops), ops, config)

    def make_cache(self, n_slots: int, n_ctx: int):
        a = self.args
        return self.ops.make_cache(a.n_layers, n_slots, n_ctx, a.n_kv_heads, a.head_dim)

    def prefill(self, tokens: Sequence[int], cache, slot: int, start: int,
                all_logits: bool = False) -> np.ndarray:
        """Run a prompt chunk through the model as one matrix, filling positions start.. of `slot`.

        Returns the logits of the last position (vocab,), or of every position (T, vocab).
        """
        job = self.begin_prefill(tokens, cache, slot, start, all_logits)
        return self.prefill_layers(job, self.args.n_layers)

    def begin_prefill(self, tokens: Sequence[int], cache, slot: int, start: int,
                      all_logits: bool = False) -> "PrefillJob":
        """A prompt chunk checked and ready to run layer by layer (`prefill_layers`); nothing computed."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if n == 0:
            raise BadInputError("cannot prefill an empty prompt")
        cache.check(slot, start, n)
        self._check_tokens(tokens)
        return PrefillJob(tokens, cache, slot, start, all_logits)

    def prefill_layers(self, job: "PrefillJob", n_layers: int) -> np.ndarray | None:
        """Run the next n_layers layers of the job (the embedding before the first); after the last
        layer, the logits as `prefill` returns them, else None. The engine runs a CPU prompt this
        way: each weight serves the whole chunk at once, and stop() waits for a few layers only."""
        a, n = self.args, len(job.tokens)
        if job.layer == 0 and n_layers >= a.n_layers and not job.all_logits:
            # The hook of a backend that runs a whole chunk its own way (the GPU's captured prompt
            # chunks); it calls _forward over the same network, or returns None for the op-by-op path.
            hook = getattr(self.ops, "prefill_step", None)
            out = hook(self, job.tokens, job.cache, job.slot, job.start) if hook is not None else None
            if out is not None:
                job.layer = a.n_layers
                return out
        positions = np.arange(job.start, job.start + n)
        keep = None if job.all_logits else np.array([n - 1])
        if job.x is None:
            job.x = self._embed(job.tokens)
        stop = min(a.n_layers, job.layer + n_layers)
        for i in range(job.layer, stop):
            last_keep = keep if self._early(keep) and i == a.n_layers - 1 else None
            job.x = self._layer(i, self.weights.layers[i], job.x, positions, job.cache, [job.slot],
                                [job.start], [n], last_keep)
        job.layer = stop
        if stop < a.n_layers:
            return None
        logits = self._head(job.x, keep)
        job.x = None
        return logits if job.all_logits else logits[0]

    def decode(self, tokens: np.ndarray, cache, slots: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One new token for each of B sequences (own slot, own position), batched as one (B, d) matrix.

        Returns (B, vocab) logits.
        """
        return self._decode(tokens, cache, slots, positions, greedy=False)

    def decode_greedy(self, tokens: np.ndarray, cache, slots: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """decode, then each row's argmax (lowest id on ties): (B,) int64 token ids. A backend that
        picks them on its device saves moving the logits."""
        return self._decode(tokens, cache, slots, positions, greedy=True)

    def decode_sampled(self, tokens: np.ndarray, cache, slots: np.ndarray, positions: np.ndarray,
                       table: np.ndarray, penalties=None, next_table: np.ndarray | None = None,
                       next_penalties=None) -> np.ndarray:
        """decode, then each row's token drawn on the backend's device (ops.samples_on_device) from
        table (B, 5): temperature, top_k, top_p, min_p and the row's uniform draw, the CPU sampler's
        chain (sampler.candidate_probs + its inverse CDF), after its penalties when `penalties` =
        (window (B, W) int32 recent ids, -1 padded; (B, 3) float64 repeat, frequency, presence) is
        given. `next_table`, the same rows' table for the step after this one (with penalties also
        `next_penalties`, its windows' newest ids sampler.WINDOW_PENDING: this step's draws), lets a
        backend queue that step before this one's ids are read (the GPU's captured steps). (B,) int64
        token ids."""
        return self._decode(tokens, cache, slots, positions, greedy=False, sample=table, penalties=penalties,
                            next_sample=next_table, next_penalties=next_penalties)

    def _decode(self, tokens, cache, slots, positions, greedy: bool, sample=None, penalties=None,
                next_sample=None, next_penalties=None) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if not len(tokens) == len(slots) == len(positions):
            raise BadInputError("decode needs one slot and one position per token")
        if len(set(slots.tolist())) != len(slots):
            raise BadInputError("decode got the same cache slot twice in one batch")
        for s, p in zip(slots.tolist(), positions.tolist()):
            cache.check(s, p, 1)
        self._check_tokens(tokens)
        # The hook of a backend that runs the whole step its own way (the GPU's captured graphs); it
        # calls forward_decode, so the step is the same network either way.
        step = getattr(self.ops, "decode_step", None)
        if step is not None:
            return step(self, tokens, cache, slots, positions, greedy=greedy, sample=sample, penalties=penalties,
                        next_sample=next_sample, next_penalties=next_penalties)
        if sample is not None:
            raise BadInputError(f"the {self.ops.name} backend does not sample on a device")
        logits = self.forward_decode(tokens, cache, slots, positions)
        return np.argmax(logits, axis=-1).astype(np.int64) if greedy else logits

    def forward_decode(self, tokens, cache, slots, positions) -> np.ndarray:
        """The decode step through the ops, one op at a time (inputs already checked by `decode`).

        tokens, slots, positions: int arrays of one entry per sequence; numpy, or the backend's own
        arrays (a backend that keeps a step's inputs on its device passes those straight to its ops).
        """
        ones = [1] * len(tokens)
        return self._forward(tokens, positions, cache, _as_list(slots), _as_list(positions), ones, None)

    # ---- the network ----

    def _forward(self, tokens, positions, cache, slots, starts, counts, keep) -> np.ndarray:
        """tokens (N,) at positions (N,) -> logits of the rows `keep` (all rows when None)."""
        x = self._embed(tokens)  # (N, d)
        early = self._early(keep)
        for i, layer in enumerate(self.weights.layers):
            last_keep = keep if early and i == self.args.n_layers - 1 else None
            x = self._layer(i, layer, x, positions, cache, slots, starts, counts, last_keep)
        return self._head(x, keep)

    def _embed(self, tokens):
        x = self.ops.embedding(self.weights.embed, tokens)  # (N, d)
        if self.args.embed_scale != 1.0:
            x = self.ops.scale(x, self.args.embed_scale)
        return x

    def _early(self, keep) -> bool:
        """Only the kept rows matter after the last attention (its K/V are already cached), so the
        last layer drops the others early, unless the backend reproduces a run that computes
        every row (llama.cpp numerics: its kernels round differently for one row than for many)."""
        return keep is not None and not getattr(self.ops, "keeps_all_rows", False)

    def _head(self, x, keep):
        """The final norm and output projection of the rows `keep` (x holds only those if dropped early)."""
        a, ops, w = self.args, self.ops, self.weights
        if keep is not None and not self._early(keep):
            x = x[keep]
        logits = ops.norm_matmul(x, w.output_norm, a.norm_eps, w.output)  # (rows, vocab)
        if a.final_softcap:
            logits = ops.softcap(logits, a.final_softcap)
        return logits

    def _layer(self, i, lw: LayerWeights, x, positions, cache, slots, starts, counts, keep):
        a, ops = self.args, self.ops
        h = self._attention(i, lw, x, positions, cache, slots, starts, counts)
        if keep is not None:
            h, x = h[keep], x[keep]
        x = self._residual(x, h, lw.wo, lw.post_attn_norm)
        f = ops.norm_matmul(x, lw.ffn_norm, a.norm_eps, lw.gate_up)
        return self._residual(x, f, lw.down, lw.post_ffn_norm, glu=a.activation)

    def _residual(self, x, h, lin, post_norm, glu: str | None = None):
        """x + h @ lin (with gemma3's norm on the product first): the add in the projection's epilogue
        when nothing comes between. With `glu` (the activation's name), h is gate|up and the product
        is of its gated activation."""
        ops = self.ops

        def product(residual=None):
            if glu is None:
                return ops.matmul(h, lin, residual=residual)
            return ops.glu_matmul(h, glu, lin, residual=residual)
        if not self.args.post_norms:
            return product(residual=x)
        return ops.add(x, ops.rms_norm(product(), post_norm, self.args.norm_eps))

    def _attention(self, i, lw: LayerWeights, x, positions, cache, slots, starts, counts):
        """Attention output before the output projection, from the layer's input x (normed here):
        (N, n_heads * head_dim)."""
        a, ops = self.args, self.ops
        n, hd = x.shape[0], a.head_dim
        qkv = ops.norm_matmul(x, lw.attn_norm, a.norm_eps, lw.qkv)  # (N, (n_heads + 2 n_kv) hd)
        q_end, k_end = a.n_heads * hd, (a.n_heads + a.n_kv_heads) * hd
        q = qkv[:, :q_end].reshape(n, a.n_heads, hd)
        k = qkv[:, q_end:k_end].reshape(n, a.n_kv_heads, hd)
        v = qkv[:, k_end:].reshape(n, a.n_kv_heads, hd)
        if a.qk_norm:
            q = ops.rms_norm(q, lw.q_norm, a.norm_eps)
            k = ops.rms_norm(k, lw.k_norm, a.norm_eps)
        if a.scale_queries:
            q, k = ops.rope_qk(q, k, positions, a.ropes[i])
            return ops.attention(ops.scale(q, a.attn_scale), k, v, cache, i, slots, starts, counts, 1.0,
                                 a.windows[i])
        return ops.rope_attention(q, k, v, positions, a.ropes[i], cache, i, slots, starts, counts, a.attn_scale,
                                  a.windows[i])

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.args.vocab_size):
            raise BadInputError(f"token id out of range for a vocabulary of {self.args.vocab_size}")


def _as_list(a):
    """numpy indices as a list (what the numpy ops index with), any other array as it is."""
    return a.tolist() if isinstance(a, np.ndarray) else a


# ---- helpers the architecture files share ----

def rope_scaling(gguf_file, config, rope_dim: int) -> dict[str, Any]:
    """RopeSpec keywords for the scaling the file asks for, applied the way llama.cpp applies it.

    A linear factor multiplies positions by 1 / factor. Llama-3.1-style scaling arrives as per-pair
    frequency divisors in the `rope_freqs.weight` tensor that the converter writes. YaRN and
    LongRoPE are refused rather than run wrong.
    """
    kind = (config.rope_scaling_type or "none").lower()
    if kind not in ("none", "linear"):
        raise UnsupportedModelError(f"{config.architecture}: {kind} rope scaling is not supported")
    spec: dict[str, Any] = {}
    if kind == "linear" and config.rope_scaling_factor not in (0.0, 1.0):
        spec["pos_scale"] = 1.0 / config.rope_scaling_factor
    if gguf_file.has_tensor("rope_freqs.weight"):
        factors = np.asarray(gguf_file.dequant("rope_freqs.weight"), dtype=np.float64).reshape(-1)
        if len(factors) != rope_dim // 2:
            raise BadInputError(f"rope_freqs.weight has {len(factors)} factors, expected {rope_dim // 2}")
        spec["freq_factors"] = tuple(factors.tolist())
    return spec


def expected_tensors(args: DecoderArgs) -> dict[str, tuple[int, ...]]:
    """Name -> numpy shape of every tensor the decoder reads, for all layers (`load_weights`'s names)."""
    d, hd, rows = args.d_model, args.head_dim, args.vocab_size
    q, kv = args.n_heads * hd, args.n_kv_heads * hd
    expect: dict[str, tuple[int, ...]] = {"token_embd.weight": (rows, d), "output_norm.weight": (d,)}
    per_layer = {"attn_norm.weight": (d,), "ffn_norm.weight": (d,), "attn_q.weight": (q, d),
                 "attn_k.weight": (kv, d), "attn_v.weight": (kv, d), "attn_output.weight": (d, q),
                 "ffn_gate.weight": (args.ffn_dim, d), "ffn_up.weight": (args.ffn_dim, d),
                 "ffn_down.weight": (d, args.ffn_dim)}
    if args.qkv_bias:
        per_layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
    if args.qk_norm:
        per_layer.update({"attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)})
    if args.post_norms:
        per_layer.update({"post_attention_norm.weight": (d,), "post_ffw_norm.weight": (d,)})
    for i in range(args.n_layers):
        expect.update({f"blk.{i}.{name}": shape for name, shape in per_layer.items()})
    return expect


def check_shapes(gguf_file, args: DecoderArgs) -> None:
    """Fail with one line when any tensor the decoder reads is missing, has another shape than the
    metadata implies or, for a vector, is not a float type; before loading anything."""
    from rocmforge_core.quants import FLOAT_TYPES

    if args.n_heads % args.n_kv_heads:
        raise BadInputError(f"{args.n_heads} attention heads are not a multiple of {args.n_kv_heads} kv heads")
    expect = expected_tensors(args)
    if gguf_file.has_tensor("output.weight"):
        expect["output.weight"] = (args.vocab_size, args.d_model)
    for name, shape in expect.items():
        info = gguf_file.tensor(name)
        if tuple(info.shape) != shape:
            raise BadInputError(f"{name} has shape {tuple(info.shape)}, but the metadata implies {shape}",
                                hint="the file's metadata and tensors disagree")
        if len(shape) == 1 and info.qtype not in FLOAT_TYPES:
            raise UnsupportedModelError(f"{name} is stored as {info.qtype.name}; a norm or bias must be "
                                        "F32, F16 or BF16")
