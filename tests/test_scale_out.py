"""examples/scale-out/run_local.py: two `rocmforge serve` replicas behind nginx on loopback, and requests
through nginx until both have answered (nginx's X-Upstream header and each replica's /metrics agree)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tiny_chat_model import make_chat_model  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "scale-out" / "run_local.py"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not on PATH (Debian: apt-get install nginx)")
def test_two_replicas_behind_nginx_both_answer(tmp_path):
    model = make_chat_model(tmp_path / "tiny-chat.gguf")
    root = str(SCRIPT.parent.parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(SCRIPT), str(model), "--max-requests", "10"], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    answered = set(re.findall(r"answered by (127\.0\.0\.1:\d+)", result.stdout))
    assert len(answered) == 2, result.stdout  # two distinct replicas, named by nginx
    counts = re.search(r"by each replica's /metrics: (\{.*\})", result.stdout).group(1)
    assert re.findall(r": (\d+)", counts) and all(int(n) >= 1 for n in re.findall(r": (\d+)", counts))
    assert "Traceback" not in result.stderr
