"""Load benchmark of `rocmforge serve`: many concurrent streaming clients against one server, on loopback.

    python benchmarks/server_load.py [MODEL] [--clients 64] [--requests 3] [--max-tokens 32] [--write]
        [--llama-server PATH]

Starts `rocmforge serve MODEL` as a subprocess on 127.0.0.1 (MODEL defaults to the tiny random chat model
of the tests, written to a temporary folder), then runs two phases against it:
1. one client, M streaming chat requests one after another (the baseline);
2. N clients at once, M streaming requests each, every 10th stream (--disconnect) closed mid-stream.
Checks, each run: no 5xx (responses and /metrics), every finished stream ends with `data: [DONE]`, and
the KV-cache slots in use back to their starting value afterwards (/metrics). Reports aggregate tokens/s
and p50/p99 time to first token per phase; --write adds a row to BENCHMARKS.md. Every request has a
timeout and the whole run a deadline (--deadline), so a hung server ends the run with an error.
With --llama-server PATH (llama.cpp's server binary), the same two phases then run against it on the
same model file, slots and context, in the same run, for a baseline row; its checks are the same
(5xx seen by the clients, [DONE], its /metrics' requests_processing back to its start).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only
PROMPTS = ["Tell me a story about a lighthouse.", "What is the capital of France?",
           "Write a haiku about the sea.", "List three primary colours.", "Explain what a CPU does."]
SECTION = "## Server under load (CPU)"
TABLE_HEAD = (
    "`python benchmarks/server_load.py [MODEL] --clients N --requests M --write` — `rocmforge serve` as a\n"
    "subprocess on loopback; N concurrent streaming chat clients x M requests each (greedy, max_tokens\n"
    "fixed, every 10th stream closed after its first tokens) against 1 client x M requests on the same\n"
    "server. tok/s is all completion tokens over the phase's wall time; TTFT is request sent to first\n"
    "content chunk. Checks: zero 5xx, every finished stream ends with `[DONE]`, slots free afterwards.\n\n"
    "| date | machine | model | backend | load | 1 client tok/s | 1 client TTFT p50 / p99 | N clients tok/s "
    "| N clients TTFT p50 / p99 | throughput ratio | checks | note |\n"
    "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|\n")


@dataclass
class Phase:
    wall_s: float = 0.0
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    finished: int = 0
    disconnected: int = 0
    server_errors: list[str] = field(default_factory=list)  # 5xx, error events, streams without [DONE]

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def ttft(self, q: float) -> float:
        xs = sorted(self.ttft_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "rocmforge_cli", "serve", model, "--host", HOST, "--port", str(port),
           "--backend", args.backend, "--parallel", str(args.parallel), "--max-queue", str(args.clients),
           "--ctx", str(args.ctx), "--shutdown-grace", "2"]
    return _popen(cmd, env=env)


def _popen(cmd: list[str], **kw) -> subprocess.Popen:
    """A server process whose stderr goes to a file, not a pipe: nobody reads a pipe during the run,
    and a server that logs every request (llama-server does) blocks once the pipe's 64 KiB fill up."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, **kw)
    proc.log = log
    return proc


def _log_tail(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()[-2000:]


def start_llama_server(binary: str, model: str, port: int, args) -> subprocess.Popen:
    """llama.cpp's server with the same slots and per-slot context as `rocmforge serve` gets, and an
    HTTP thread per client (its default, slots + 4, holds a thread per kept-alive connection: with 64
    clients the others' requests then wait past the timeout)."""
    cmd = [binary, "-m", model, "--host", HOST, "--port", str(port), "-np", str(args.parallel),
           "-c", str(args.ctx * args.parallel), "-t", str(os.cpu_count()), "--threads-http", str(args.clients + 4),
           "--metrics", "--no-webui"]
    return _popen(cmd)


# What each server kind's /metrics calls its busy slots, and its 5xx counter (None: count what clients saw).
SLOTS_METRIC = {"rocmforge": "rocmforge_active_slots", "llama-server": "llamacpp:requests_processing"}


async def wait_ready(client, url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {_log_tail(proc)}")
        try:
            if (await client.get(url + "/health", timeout=5)).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become healthy")


async def metric(client, url: str, name: str) -> float:
    text = (await client.get(url + "/metrics", timeout=10)).text
    found = re.search("^" + re.escape(name) + r" (\S+)$", text, re.MULTILINE)
    if found is None:  # a renamed metric would make the slots check pass vacuously
        raise RuntimeError(f"the server's /metrics has no {name}")
    return float(found.group(1))


async def server_5xx(client, url: str) -> float:
    text = (await client.get(url + "/metrics", timeout=10)).text
    return sum(float(v) for v in re.findall(r'^rocmforge_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)$',
                                            text, re.MULTILINE))


async def one_stream(client, url: str, prompt: str, args, phase: Phase, leave_after: int | None) -> None:
    import httpx

    try:
        await _one_stream(client, url, prompt, args, phase, leave_after)
    except httpx.TimeoutException as exc:  # a hang: counted against the server, the run goes on
        phase.server_errors.append(f"no response within {args.timeout:.0f} s ({type(exc).__name__})")


async def _one_stream(client, url: str, prompt: str, args, phase: Phase, leave_after: int | None) -> None:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    sent, chunks, last, usage = time.perf_counter(), 0, "", None
    async with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=args.timeout) as r:
        if r.status_code >= 500:
            phase.server_errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            return
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            last = line[6:]
            if last == "[DONE]":
                break
            event = json.loads(last)
            if "error" in event:
                phase.server_errors.append(f"error event: {event['error']}")
                return
            if event.get("usage"):
                usage = event["usage"]
            if any(c["delta"].get("content") for c in event["choices"]):
                chunks += 1
                if chunks == 1:
                    phase.ttft_s.append(time.perf_counter() - sent)
                if leave_after is not None and chunks >= leave_after:
                    phase.disconnected += 1
                    phase.tokens += chunks
                    return  # leaving the block closes the connection mid-stream
    if last != "[DONE]":
        phase.server_errors.append("a stream ended without data: [DONE]")
        return
    phase.finished += 1
    phase.tokens += usage["completion_tokens"] if usage else chunks


async def run_phase(client, url: str, args, n_clients: int, disconnect_every: int) -> Phase:
    phase = Phase()

    async def worker(c: int) -> None:
        for m in range(args.requests):
            k = c * args.requests + m
            leave = 2 if disconnect_every and k % disconnect_every == disconnect_every - 1 else None
            await one_stream(client, url, PROMPTS[k % len(PROMPTS)], args, phase, leave)

    t0 = time.perf_counter()
    await asyncio.gather(*[worker(c) for c in range(n_clients)])
    phase.wall_s = time.perf_counter() - t0
    return phase


async def slots_back(client, url: str, name: str, start: float, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await metric(client, url, name) == start:
            return True
        await asyncio.sleep(0.1)
    return False


async def bench(url: str, proc: subprocess.Popen, args, kind: str = "rocmforge") -> tuple[Phase, Phase, dict]:
    import httpx

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        await wait_ready(client, url, proc, timeout=300)
        start = await metric(client, url, SLOTS_METRIC[kind])
        await run_phase(client, url, args, 1, 0)  # warm-up: the first request pays one-off costs
        single = await run_phase(client, url, args, 1, 0)
        loaded = await run_phase(client, url, args, args.clients, args.disconnect_every)
        checks = {"slots_back": await slots_back(client, url, SLOTS_METRIC[kind], start),
                  # llama-server counts no 5xx in its metrics: the clients' own count (server_errors) is it
                  "server_5xx": await server_5xx(client, url) if kind == "rocmforge" else 0}
    return single, loaded, checks


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def default_model(tmp: str) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_chat_model import make_chat_model

    return str(make_chat_model(Path(tmp) / "tiny-chat.gguf"))


def model_path(model: str) -> Path:
    if Path(model).exists():
        return Path(model)
    from rocmforge_cli.common import resolve_model_path

    return resolve_model_path(model)  # a name from the store: the file it stands for (cached)


def row(args, model: str, single: Phase, loaded: Phase, ok: bool, server: str, note: str) -> str:
    load = (f"{args.clients} clients x {args.requests} requests, {args.max_tokens} tokens, --parallel "
            f"{args.parallel}, {loaded.disconnected} of {args.clients * args.requests} streams left mid-stream")
    checks = "pass: 0 5xx, all [DONE], slots back" if ok else "FAIL"
    return (f"| {datetime.date.today().isoformat()} | {cpu_name()}, {os.cpu_count()} cores | {model_path(model).name} "
            f"| {server} | {load} | {single.tps:.1f} | {single.ttft(0.5):.0f} / {single.ttft(0.99):.0f} ms "
            f"| {loaded.tps:.1f} | {loaded.ttft(0.5):.0f} / {loaded.ttft(0.99):.0f} ms "
            f"| **{loaded.tps / single.tps:.2f}x** | {checks} | {note} |")


def write_row(line: str) -> None:
    """Append to this benchmark's table in BENCHMARKS.md, creating the section at the end the first time."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if SECTION not in text:
        path.write_text(text.rstrip("\n") + f"\n\n{SECTION}\n\n{TABLE_HEAD}{line}\n")
        return
    head, tail = text.split(SECTION, 1)
    lines = tail.split("\n")
    last = max(i for i, s in enumerate(lines) if s.startswith("| 20"))  # the table's last row
    lines.insert(last + 1, line)
    path.write_text(head + SECTION + "\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a model name or path (default: the tests' tiny chat model)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=8, help="the server's KV-cache slots")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--disconnect-every", type=int, default=10, help="every Kth stream leaves mid-stream")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per request")
    ap.add_argument("--deadline", type=float, default=1800, help="seconds for the whole run")
    ap.add_argument("--write", action="store_true", help="add the row to BENCHMARKS.md")
    ap.add_argument("--llama-server", metavar="PATH", help="also run the phases against llama.cpp's server")
    ap.add_argument("--llama-server-note", default="", help="what the baseline binary is (for its row)")
    args = ap.parse_args()
    lines, all_ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(tmp)
        runs = [("rocmforge", args.backend)]
        if args.llama_server:
            runs.append(("llama-server", "llama-server"))
        for kind, server in runs:
            port = free_port()
            if kind == "rocmforge":
                proc = start_server(model, port, args)
            else:
                proc = start_llama_server(args.llama_server, str(model_path(model)), port, args)
            try:
                single, loaded, checks = asyncio.run(asyncio.wait_for(
                    bench(f"http://{HOST}:{port}", proc, args, kind), args.deadline))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            errors = single.server_errors + loaded.server_errors
            ok = not errors and checks["slots_back"] and checks["server_5xx"] == 0
            expected = args.clients * args.requests
            ok = ok and loaded.finished + loaded.disconnected == expected
            all_ok = all_ok and ok
            if kind == "rocmforge":
                note = "llama-server in the next row, same run" if args.llama_server else "no llama-server baseline"
            else:
                note = args.llama_server_note or "llama.cpp's llama-server"
            lines.append(row(args, model, single, loaded, ok, server, note))
            print(lines[-1])
            print(f"{kind}: 1 client: {single.tps:.1f} tok/s; {args.clients} clients: {loaded.tps:.1f} tok/s, "
                  f"{loaded.finished} finished + {loaded.disconnected} left of {expected}; checks {checks}; "
                  f"errors {errors[:5]}", file=sys.stderr)
    if args.write:
        for line in lines:
            write_row(line)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
