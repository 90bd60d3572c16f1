"""`rocmforge inspect MODEL`: what a GGUF file holds, as a table for people or one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def run(model: str, json_out: bool) -> None:
    """Show architecture, size, hyperparameters, tokenizer and tensor types of MODEL.

    With `json_out`, print one JSON object with these keys (stable; absent values are null):
      path (str), file_size (bytes), gguf_version (int), architecture (str), name (str|null),
      parameters (int: sum of all tensors' elements), context_length, layers, embedding_length,
      feed_forward_length, heads, kv_heads, head_dim (ints), rope_base (float),
      rope_layout ("normal"|"neox"), sliding_window (int|null), vocab_size (int),
      tokenizer_model (str|null, tokenizer.ggml.model), tokenizer_pre (str|null),
      chat_template (bool: the file carries tokenizer.chat_template), n_tensors (int),
      tensor_types ({type name: {"count", "parameters", "bytes"}}, largest bytes first),
      memory ({"ctx": the default context, min(trained length, 4096); "cpu" (packed) / "cpu_float32" / "gpu": {"weights", "kv",
      "total"} bytes the model takes on the float32 CPU backend / a GPU backend with its f16 cache,
      one slot at that context}).
    The model is opened and checked by the same `check_model` as a load, so a corrupt file or an
    unsupported architecture or tensor type fails here with exit code 2, as it would when running it.
    """
    from rocmforge_cli.common import resolve_model_path
    from rocmforge_core.gguf_file import GGUFFile
    from rocmforge_core.model_check import check_model

    gf = GGUFFile(resolve_model_path(model))
    summary = summarize(gf, check_model(gf))
    if json_out:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_tables(summary)


def summarize(gf, config) -> dict[str, Any]:
    """The JSON object of `run` for an open GGUFFile and its ModelConfig."""
    md = gf.metadata
    return {
        "path": str(Path(gf.path).resolve()),
        "file_size": gf.file_size,
        "gguf_version": gf.version,
        "architecture": gf.architecture,
        "name": md.get("general.name"),
        "parameters": sum(t.n_elements for t in gf.tensors.values()),
        "context_length": config.context_length,
        "layers": config.n_layers,
        "embedding_length": config.dim,
        "feed_forward_length": config.ffn_dim,
        "heads": config.n_heads,
        "kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "rope_base": config.rope_base,
        "rope_layout": "neox" if config.rope_neox else "normal",
        "sliding_window": config.sliding_window,
        "vocab_size": config.vocab_size,
        "tokenizer_model": md.get("tokenizer.ggml.model"),
        "tokenizer_pre": md.get("tokenizer.ggml.pre"),
        "chat_template": bool(md.get("tokenizer.chat_template")),
        "n_tensors": len(gf.tensors),
        "tensor_types": _tensor_types(gf),
        "memory": _memory(gf, config),
    }


def _memory(gf, config) -> dict[str, Any]:
    from rocmforge_core.context import DEFAULT_CAP
    from rocmforge_core.footprint import footprint

    ctx = min(config.context_length, DEFAULT_CAP)
    out: dict[str, Any] = {"ctx": ctx}
    for name, backend, numerics in (("cpu", "cpu", "packed"), ("cpu_float32", "cpu", "float32"),
                                    ("gpu", "cuda", "packed")):
        fp = footprint(gf, config, backend, ctx, numerics=numerics)
        out[name] = {"weights": fp.weights, "kv": fp.kv, "total": fp.total}
    return out


def _tensor_types(gf) -> dict[str, dict[str, int]]:
    types: dict[str, dict[str, int]] = {}
    for t in gf.tensors.values():
        row = types.setdefault(t.qtype.name, {"count": 0, "parameters": 0, "bytes": 0})
        row["count"] += 1
        row["parameters"] += t.n_elements
        row["bytes"] += t.n_bytes
    return dict(sorted(types.items(), key=lambda kv: -kv[1]["bytes"]))


def _human(n: float, unit: str = "") -> str:
    """1234567 -> '1.2 M' (decimal prefixes, as llama.cpp reports sizes)."""
    if abs(n) < 1000:
        return f"{n:.0f} {unit}".strip()
    for prefix in ("K", "M", "G", "T"):
        n /= 1000
        if abs(n) < 1000:
            break
    return f"{n:.1f} {prefix}{unit}"


def _number(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"


def _print_tables(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    info = Table(show_header=False, box=None, padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    rows = [
        ("file", s["path"]),
        ("size", f"{_human(s['file_size'], 'B')} ({s['file_size']:,} bytes), GGUF v{s['gguf_version']}"),
        ("architecture", s["architecture"]),
        ("name", s["name"] or "-"),
        ("parameters", f"{_human(s['parameters'])} ({s['parameters']:,})"),
        ("context length", f"{s['context_length']:,}"),
        ("layers", str(s["layers"])),
        ("embedding / ffn", f"{s['embedding_length']} / {s['feed_forward_length']}"),
        ("heads / kv heads", f"{s['heads']} / {s['kv_heads']} (head dim {s['head_dim']})"),
        ("rope", f"base {_number(s['rope_base'])}, {s['rope_layout']} layout"),
        ("sliding window", str(s["sliding_window"]) if s["sliding_window"] else "none"),
        ("vocab size", f"{s['vocab_size']:,}"),
        ("tokenizer", f"{s['tokenizer_model'] or '-'} (pre: {s['tokenizer_pre'] or '-'})"),
        ("chat template", "yes" if s["chat_template"] else "no"),
    ]
    mem = s["memory"]
    for name, label in (("cpu", "memory, cpu"), ("gpu", "memory, gpu")):
        m = mem[name]
        rows.append((label, f"{_human(m['total'], 'B')} (weights {_human(m['weights'], 'B')} + KV cache "
                            f"{_human(m['kv'], 'B')} at ctx {mem['ctx']:,})"))
    for key, value in rows:
        info.add_row(key, value)
    console.print(info)

    types = Table(title=f"{s['n_tensors']} tensors", title_justify="left")
    for name in ("type", "tensors", "parameters", "size"):
        types.add_column(name, justify="left" if name == "type" else "right")
    for name, row in s["tensor_types"].items():
        types.add_row(name, str(row["count"]), f"{row['parameters']:,}", _human(row["bytes"], "B"))
    console.print(types)
