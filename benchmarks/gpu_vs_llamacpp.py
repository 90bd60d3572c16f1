"""rocmforge's GPU backend against llama.cpp's llama-bench on the same synthetic GGUF files, in one run.

    python benchmarks/gpu_vs_llamacpp.py --llama-bench PATH/llama-bench [--dir /tmp/synth]
        [--models l8b-q4_k_m,l8b-q4_0,l8b-q8_0,smol-q4_1] [-p 512] [-n 128] [-r 3] [--backend cuda]
        [--append BENCHMARKS.md] [--json FILE]

Writes the models with benchmarks/synth_models.py (skipped when present), measures the card's
device-to-device copy bandwidth once, then per model runs `llama-bench -ngl 99 -fa 1` and `rocmforge
bench` back to back. A row has both numbers, their ratio, and the decode's fraction of the roofline:
copy bandwidth / bytes read per token (every weight except the embedding table, which decode reads one
row of; the KV cache of a 128-token decode is negligible beside 100+ MB of weights).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def copy_bandwidth(backend: str, nbytes: int = 2 << 30) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    from rocmforge_core.gpu import open_runtime

    rt = open_runtime(backend)
    a, b = rt.alloc(nbytes), rt.alloc(nbytes)
    stream = rt.stream_create()
    start, stop = rt.event_create(), rt.event_create()
    rt.memset8(a, 1, nbytes, stream)
    for _ in range(2):
        rt.copy_dtod(b, a, nbytes, stream)
    times = []
    for _ in range(5):
        rt.event_record(start, stream)
        rt.copy_dtod(b, a, nbytes, stream)
        rt.event_record(stop, stream)
        rt.event_synchronize(stop)
        times.append(rt.event_elapsed_ms(start, stop) / 1e3)
    rt.free(a)
    rt.free(b)
    return 2 * nbytes / sorted(times)[len(times) // 2]


def decode_bytes(path: Path) -> int:
    """Weight bytes a decode step reads: all tensors but the embedding (unless it is also the output)."""
    from rocmforge_core.gguf_file import GGUFFile

    f = GGUFFile(path)
    tied = not f.has_tensor("output.weight")
    total = 0
    for name, info in f.tensors.items():
        if name == "token_embd.weight" and not tied:
            continue
        total += info.n_bytes
    return total


def llama_bench(binary: str, path: Path, p: int, n: int, r: int, depth: int = 0) -> dict:
    out = subprocess.run([binary, "-m", str(path), "-ngl", "99", "-fa", "1", "-p", str(p), "-n", str(n),
                          "-d", str(depth), "-r", str(r), "-o", "json"], capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"llama-bench failed: {out.stderr[-2000:]}")
    rows = json.loads(out.stdout)
    res = {"pp": None, "tg": None}
    for row in rows:
        key = "pp" if row.get("n_prompt") and not row.get("n_gen") else "tg"
        res[key] = row["avg_ts"]
    return res


def rocmforge_bench(path: Path, p: int, n: int, r: int, backend: str, depth: int = 0) -> dict:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "rocmforge_cli", "bench", str(path), "--backend", backend,
                          "-p", str(p), "-n", str(n), "-d", str(depth), "-r", str(r), "--json"],
                         capture_output=True, text=True, timeout=900, cwd=HERE.parent)
    if out.returncode:
        raise RuntimeError(f"rocmforge bench failed: {out.stderr[-2000:]}")
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    return {"pp": rep["pp"]["tokens_per_s"], "tg": rep["tg"]["tokens_per_s"], "device": rep["device"],
            "load_ms": rep.get("load_ms"), "wall_s": time.time() - t0}


def row(date, device, name, backend, ours, theirs, roofline_tg) -> str:
    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    def num(v, digits):
        return f"{v:,.{digits}f}" if v else "-"  # a depth row runs no prompt test
    return (f"| {date} | {device} | {name} | {backend} | {num(theirs['pp'], 0)} | {num(ours['pp'], 0)} | "
            f"{ratio(ours['pp'], theirs['pp'])} | {num(theirs['tg'], 1)} | {num(ours['tg'], 1)} | "
            f"{ratio(ours['tg'], theirs['tg'])} | {roofline_tg:,.0f} | {100 * (ours['tg'] or 0) / roofline_tg:.0f} % |")


HEADER = ("| date | card | model | rocmforge backend | llama.cpp pp | rocmforge pp | pp ratio | llama.cpp tg | "
          "rocmforge tg | tg ratio | tg roofline | rocmforge tg / roofline |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--dir", default="/tmp/rf_synth")
    ap.add_argument("--models", default="l8b-q4_k_m,l8b-q4_0,l8b-q8_0,smol-q4_1")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--depths", default="", help="also tg after this many tokens of context (e.g. 4096,16384): "
                    "llama-bench -d and rocmforge bench -d, no pp")
    ap.add_argument("--depth-reps", type=int, default=1, help="-r for the depth runs (their prefill is long)")
    ap.add_argument("--skip-main", action="store_true", help="only the depth runs")
    ap.add_argument("--append", help="markdown file to append the rows to")
    ap.add_argument("--json", help="write all numbers here")
    args = ap.parse_args()
    import synth_models

    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth(args.backend)
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    date = datetime.date.today().isoformat()
    rows, results = [], []
    for name in args.models.split(","):
        path = out_dir / f"{name}.gguf"
        if not path.exists():
            synth_models.write(out_dir, name)
        roof = bw / decode_bytes(path)
        runs = [] if args.skip_main else [(0, args.p, args.r)]
        runs += [(int(d), 0, args.depth_reps) for d in args.depths.split(",") if d]
        for depth, p, r in runs:
            theirs = llama_bench(args.llama_bench, path, p, args.n, r, depth)
            ours = rocmforge_bench(path, p, args.n, r, args.backend, depth)
            label = name if not depth else f"{name}, tg{args.n} at depth {depth}"
            rows.append(row(date, ours["device"], label, args.backend, ours, theirs, roof))
            results.append({"model": name, "depth": depth, "llama.cpp": theirs, "rocmforge": ours,
                            "roofline_tg": roof, "copy_bandwidth": bw})
            print(rows[-1], flush=True)
    print(HEADER)
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
