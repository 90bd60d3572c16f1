"""Two (or N) `rocmforge serve` replicas behind nginx, all on loopback: start them, send chat requests
through nginx until every replica has answered one, check that against each replica's /metrics, stop.

    python examples/scale-out/run_local.py [MODEL] [--replicas 2] [--nginx nginx] [--max-requests 20]

Needs nginx on PATH (Debian: apt-get install nginx) and the server extra. Exit status 0 when every
replica answered; the output names the replica (nginx's X-Upstream header) of each request.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_replica(model: str, port: int, backend: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rocmforge_cli", "serve", model, "--host", HOST, "--port", str(port),
           "--backend", backend, "--parallel", "2", "--shutdown-grace", "2"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_nginx(nginx: str, prefix: Path, listen: int, ports: list[int]) -> subprocess.Popen:
    servers = "\n".join(f"        server {HOST}:{p} max_fails=1 fail_timeout=5s;" for p in ports)
    text = string.Template((HERE / "nginx.conf.template").read_text()).substitute(
        prefix=prefix, listen=f"{HOST}:{listen}", servers=servers)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    # -p: nginx's prefix, so that nothing outside it (the system's /var/log/nginx, ...) is touched
    return subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_healthy(client, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: exited ({proc.returncode}): {proc.stderr.read()[-1500:]}")
        try:
            if client.get(url + "/health", timeout=5).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not become healthy in {timeout:.0f} s")


def chat_count(client, url: str) -> int:
    """Chat requests this replica answered with 200, from its own /metrics."""
    text = client.get(url + "/metrics", timeout=10).text
    found = re.search(r'^rocmforge_requests_total\{path="/v1/chat/completions",status="200"\} (\S+)$',
                      text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def send_until_all_answered(client, router: str, replicas: list[str], max_requests: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}
    for i in range(max_requests):
        r = client.post(router + "/v1/chat/completions", json=body, timeout=120)
        r.raise_for_status()
        upstream = r.headers.get("x-upstream", "?")
        seen[upstream] = seen.get(upstream, 0) + 1
        print(f"request {i + 1}: answered by {upstream}: {r.json()['choices'][0]['message']['content']!r}")
        if all(u.removeprefix("http://") in seen for u in replicas):
            break
    return seen


def run(args, prefix: Path) -> int:
    import httpx

    ports = [free_port() for _ in range(args.replicas)]
    replicas = [f"http://{HOST}:{p}" for p in ports]
    router = f"http://{HOST}:{free_port()}"
    procs = [start_replica(args.model, p, args.backend) for p in ports]
    try:
        with httpx.Client() as client:
            for url, proc in zip(replicas, procs):
                wait_healthy(client, url, proc)
            nginx = start_nginx(args.nginx, prefix, int(router.rsplit(":", 1)[1]), ports)
            procs.append(nginx)
            wait_healthy(client, router, nginx, timeout=20)
            seen = send_until_all_answered(client, router, replicas, args.max_requests)
            counts = {url: chat_count(client, url) for url in replicas}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"by X-Upstream: {seen}; by each replica's /metrics: {counts}")
    sent = sum(seen.values())
    if all(counts.values()) and sum(counts.values()) == sent:
        print(f"ok: all {len(replicas)} replicas answered ({sent} requests)")
        return 0
    print(f"error: not every replica answered, or the counts disagree ({sent} sent)", file=sys.stderr)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--nginx", default="nginx", help="the nginx binary")
    ap.add_argument("--max-requests", type=int, default=20)
    args = ap.parse_args()
    if shutil.which(args.nginx) is None:
        print(f"error: {args.nginx} not found (Debian: apt-get install nginx)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rocmforge-nginx-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers (user nobody, when started as root) read below it
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
