"""Write llama.cpp's greedy continuations, logits and first-layer tensors as JSON test fixtures.

Run once, by hand, with the llama-cpp-python environment (never in CI; tests read the committed JSON):

    /opt/llcpp/bin/python scripts/gen_generation_fixtures.py \
        smollm2=PATH/SmolLM2-135M-Instruct.Q4_1.gguf gemma3=PATH/gemma-3-270m-q4_k_m.gguf

For each model it runs llama.cpp twice over the same raw prompts (no chat template; BOS as the model's
metadata asks), n_ctx 512, 2 threads, flash attention off, greedy:
- "quantized": the GGUF file as it is. llama.cpp quantizes activations to 8 bits inside its dot
  products, so these logits carry its quantization noise;
- "dequantized": the same weights written to a temporary F32 GGUF (dequantized with gguf.quants), where
  llama.cpp's matmuls are plain float32: the run to compare float32 model code with.
Each run records, per prompt, the prompt ids, 32 greedy ids with every step's top-5 logits and top-2 gap,
and the logits of the first generated position: the whole vector (float32, base64) for the quantized
run of a vocabulary of at most FULL_LOGITS_MAX_VOCAB, else the top TOP_K ids and logits plus statistics
of the whole vector (gemma3's 262,144 logits would be 1.4 MB per prompt).
"layer0" holds llama.cpp's own first-layer tensors for one short prompt (from its eval callback), so
that tests can check single ops against llama.cpp. Output: tests/data/generate_<name>.json.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village at the edge of a dark forest, there lived a young girl "
    "named Mira. Every morning she walked to the river to fetch water. One day, she noticed "
    "something strange glowing beneath the surface.",
    "Shopping list:\n1. Milk\n2. Eggs\n3.",
    "La révolution française a commencé en",
    "Q: What is 12 multiplied by 7?\nA:",
]
N_GENERATE = 32
N_CTX = 512
N_THREADS = 2
FULL_LOGITS_MAX_VOCAB = 65536
TOP_K = 1000
STEP_TOP = 5
LAYER0_PROMPT = "The capital of France is"
# First-layer tensors to keep (llama.cpp graph names; "#k" marks the k-th later tensor of that name).
LAYER0_NAMES = ("attn_norm-0", "Qcur-0", "Kcur-0", "Vcur-0", "Qcur-0#2", "Kcur-0#2", "kqv_out-0",
                "attn_out-0", "ffn_norm-0", "ffn_gate-0", "ffn_up-0", "ffn_swiglu-0", "ffn_geglu-0",
                "ffn_out-0")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


def top(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, largest first (ties: lower id first, as argmax)."""
    ids = np.argpartition(-logits, k - 1)[:k] if k < len(logits) else np.arange(len(logits))
    return ids[np.lexsort((ids, -logits[ids]))]


def encode_logits(logits: np.ndarray, full: bool) -> dict:
    logits = np.asarray(logits, dtype=np.float32)
    stats = {"n": int(len(logits)), "mean": float(logits.mean()), "std": float(logits.std()),
             "min": float(logits.min()), "max": float(logits.max())}
    if full:
        return {"kind": "full", "stats": stats, "float32_b64": b64(logits)}
    ids = top(logits, TOP_K)
    return {"kind": "top", "stats": stats, "ids": ids.tolist(), "float32_b64": b64(logits[ids])}


def generate(llm, prompt: str, full_logits: bool) -> dict:
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(tokens)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    ids, steps = [], []
    for _ in range(N_GENERATE):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        best = top(logits, STEP_TOP)
        ids.append(int(best[0]))
        steps.append({"top_ids": best.tolist(), "top_logits": [float(logits[i]) for i in best],
                      "gap": float(logits[best[0]] - logits[best[1]])})
        llm.eval([int(best[0])])
    text = llm.detokenize(ids).decode("utf-8", errors="replace")
    return {"prompt": prompt, "prompt_ids": list(map(int, tokens)), "ids": ids, "text": text,
            "steps": steps, "first_logits": encode_logits(first, full_logits)}


def open_llama(path: Path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=N_THREADS, logits_all=True,
                           seed=0, flash_attn=False, verbose=False)


def run(name: str, path: Path, label: str, full_logits: bool) -> dict:
    llm = open_llama(path)
    cases = []
    for prompt in PROMPTS:
        cases.append(generate(llm, prompt, full_logits and llm.n_vocab() <= FULL_LOGITS_MAX_VOCAB))
        print(f"{name} {label}: {prompt[:30]!r} -> {cases[-1]['text'][:50]!r}", file=sys.stderr)
    return {"cases": cases}


def write_dequantized(src: Path, dst: Path) -> None:
    """An F32 copy of a GGUF: same metadata, every tensor dequantized with gguf.quants."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        value = 0 if key == "general.file_type" else field.contents()  # 0 = ALL_F32
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def dump_layer0(path: Path) -> dict:
    """llama.cpp's first-layer tensors for LAYER0_PROMPT, through the eval callback of a fresh context."""
    import llama_cpp as L

    llm = open_llama(path)
    tokens = llm.tokenize(LAYER0_PROMPT.encode("utf-8"), add_bos=True, special=False)
    base = ctypes.CDLL(str(Path(L.__file__).parent / "lib" / "libggml-base.so"))
    for fn, restype in (("ggml_get_name", ctypes.c_char_p), ("ggml_get_data", ctypes.c_void_p),
                        ("ggml_nbytes", ctypes.c_size_t), ("ggml_is_contiguous", ctypes.c_bool)):
        getattr(base, fn).restype = restype
        getattr(base, fn).argtypes = [ctypes.c_void_p]
    seen: dict[str, int] = {}
    kept: dict[str, dict] = {}

    @L.ggml_backend_sched_eval_callback
    def callback(tensor, ask, _user_data):
        if ask:
            return True
        name = base.ggml_get_name(tensor).decode()
        count = seen.get(name, 0)
        seen[name] = count + 1
        key = name if count == 0 else f"{name}#{count}"
        f32 = ctypes.c_int.from_address(tensor).value == 0  # ggml_tensor starts with its type
        if key in LAYER0_NAMES and f32 and base.ggml_is_contiguous(tensor):
            # struct ggml_tensor: type (4 bytes + padding), buffer pointer, then int64 ne[4] at offset 16
            ne = [ctypes.c_int64.from_address(tensor + 16 + 8 * i).value for i in range(4)]
            n = base.ggml_nbytes(tensor) // 4
            data = np.ctypeslib.as_array((ctypes.c_float * n).from_address(base.ggml_get_data(tensor)))
            shape = [len(tokens), n // len(tokens)]
            kept[key] = {"shape": shape, "ggml_ne": ne, "float32_b64": b64(data.reshape(shape))}
        return True

    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch = N_CTX, N_CTX
    params.n_threads = params.n_threads_batch = N_THREADS
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.cb_eval = callback
    ctx = L.llama_init_from_model(llm.model, params)
    array = (L.llama_token * len(tokens))(*tokens)
    if L.llama_decode(ctx, L.llama_batch_get_one(array, len(tokens))) != 0:
        raise RuntimeError("llama_decode failed")
    L.llama_free(ctx)
    return {"prompt": LAYER0_PROMPT, "prompt_ids": list(map(int, tokens)), "tensors": kept}


def fixture(name: str, path: Path) -> dict:
    import llama_cpp

    out = {
        "model": name, "file": path.name, "sha256": sha256(path),
        "generator": f"llama-cpp-python {llama_cpp.__version__}",
        "settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "flash_attn": False, "greedy": True,
                     "raw_prompt": True, "add_bos": "per model metadata", "n_generate": N_GENERATE},
        "first_logits_note": (f"full float32 vector for the quantized run when n_vocab <= "
                              f"{FULL_LOGITS_MAX_VOCAB}, else the top {TOP_K} ids/logits (largest first) "
                              f"and stats of the whole vector"),
        "runs": {"quantized": run(name, path, "quantized", full_logits=True)},
        "layer0": dump_layer0(path),
    }
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.gguf"
        write_dequantized(path, f32)
        out["runs"]["dequantized"] = run(name, f32, "dequantized", full_logits=False)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=PATH, e.g. smollm2=/path/model.gguf")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "data"))
    args = parser.parse_args(argv)
    for spec in args.models:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"expected NAME=PATH, got {spec!r}")
        out = Path(args.out) / f"generate_{name}.json"
        out.write_text(json.dumps(fixture(name, Path(path)), indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out} ({out.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
