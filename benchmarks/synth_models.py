"""Synthetic llama-shaped GGUF files for speed measurements: real packed blocks of random quants with
small finite fp16 scales, and a byte-level BPE vocabulary that rocmforge and llama.cpp both load.

    python benchmarks/synth_models.py OUT_DIR l8b-q4_k_m l8b-q4_0 l8b-q8_0 smol-q4_1

Names are SHAPE-KIND: shapes `l8b` (Llama-3-8B: 32 layers, d 4096, ffn 14336, 32/8 heads of 128,
vocab 128256) and `smol` (SmolLM2-135M: 30 layers, d 576, ffn 1536, 9/3 heads of 64, vocab 49152,
tied embedding); kinds q4_k_m (llama.cpp's Q4_K_M mix: Q6_K for the output, for V and down in the
first and last eighth of the layers and every third layer between), q4_0, q4_1, q8_0, f16.
Speed does not depend on the weights' values, only on their types and shapes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

SHAPES = {
    "l8b": dict(n_layers=32, d=4096, ffn=14336, heads=32, kv=8, hd=128, vocab=128256, tied=False, base=500000.0),
    "smol": dict(n_layers=30, d=576, ffn=1536, heads=9, kv=3, hd=64, vocab=49152, tied=True, base=100000.0),
}
SCALE_AT = {QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q8_0: (0,), QT.Q4_K: (0, 2), QT.Q6_K: (208,)}


def gpt2_byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2's byte-level BPE uses for raw bytes, in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def packed(rng: np.random.Generator, qtype: QT, rows: int, cols: int) -> np.ndarray:
    if qtype == QT.F16:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    data = np.frombuffer(rng.bytes(n * size), np.uint8).reshape(n, size).copy()
    for at in SCALE_AT[qtype]:
        scales = (rng.uniform(0.5, 1.5, n) * 2e-3).astype(np.float16)
        data[:, at:at + 2] = scales.view(np.uint8).reshape(n, 2)
    return data.reshape(rows, cols // block * size)


def layer_types(kind: str, n_layers: int):
    """(embedding, output, main, v(i), down(i)) types of a kind."""
    if kind == "q4_k_m":
        def more(i):
            return i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2
        pick = lambda i: QT.Q6_K if more(i) else QT.Q4_K  # noqa: E731
        return QT.Q4_K, QT.Q6_K, QT.Q4_K, pick, pick
    main = {"q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "q8_0": QT.Q8_0, "f16": QT.F16}[kind]
    out = QT.Q6_K if kind in ("q4_0", "q4_1") else main
    embd = QT.Q8_0 if kind == "q4_1" else main
    return embd, out, main, (lambda i: main), (lambda i: main)


def write(out_dir: Path, name: str) -> Path:
    shape, kind = name.split("-", 1)
    s = SHAPES[shape]
    embd_t, out_t, main_t, v_t, down_t = layer_types(kind, s["n_layers"])
    rng = np.random.default_rng(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.gguf"
    w = gguf.GGUFWriter(path, "llama")
    for key, value in (("block_count", s["n_layers"]), ("embedding_length", s["d"]),
                       ("feed_forward_length", s["ffn"]), ("attention.head_count", s["heads"]),
                       ("attention.head_count_kv", s["kv"]), ("context_length", 32768),
                       ("rope.dimension_count", s["hd"]), ("vocab_size", s["vocab"])):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.rope.freq_base", s["base"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    tokens = gpt2_byte_symbols() + ["Ġt", "<|begin_of_text|>", "<|end_of_text|>"]
    tokens += [f"x{i}" for i in range(len(tokens), s["vocab"])]
    types = [1] * s["vocab"]
    types[257] = types[258] = 3  # control tokens
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(257)
    w.add_eos_token_id(258)
    d, kvd = s["d"], s["kv"] * s["hd"]
    w.add_tensor("token_embd.weight", packed(rng, embd_t, s["vocab"], d), raw_dtype=embd_t)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    if not s["tied"]:
        w.add_tensor("output.weight", packed(rng, out_t, s["vocab"], d), raw_dtype=out_t)
    for i in range(s["n_layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, np.float32))
        for nm, rows, cols, qt in (("attn_q", d, d, main_t), ("attn_k", kvd, d, main_t), ("attn_v", kvd, d, v_t(i)),
                                   ("attn_output", d, d, main_t), ("ffn_gate", s["ffn"], d, main_t),
                                   ("ffn_up", s["ffn"], d, main_t), ("ffn_down", d, s["ffn"], down_t(i))):
            w.add_tensor(p + nm + ".weight", packed(rng, qt, rows, cols), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in argv[1:]:
        t0 = time.time()
        p = write(out, name)
        print(f"{p.name}: {p.stat().st_size} bytes in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
