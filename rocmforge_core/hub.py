"""Hugging Face references: `hf://owner/repo/file.gguf` and `owner/repo:QUANT`, fetched with huggingface_hub.

Files land in the hub's own cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), so
other tools share them, and downloads resume and draw the hub's own progress bar. The endpoint
(HF_ENDPOINT) and the cache are read from the environment at each call rather than when
huggingface_hub is imported, so a changed environment is always honoured.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from rocmforge_core.errors import BadInputError, OfflineError, RocmforgeError

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_QUANT_REF = re.compile(rf"^(?P<repo>{_PART}/{_PART}):(?P<quant>[A-Za-z0-9._-]+)$")
_HF_URI = re.compile(rf"^hf://(?P<repo>{_PART}/{_PART})(?:(?P<file>(?:/[^/]+)+)|:(?P<quant>[A-Za-z0-9._-]+))?$")


@dataclass(frozen=True)
class HfRef:
    """A Hugging Face model reference: a repo plus an exact file, or a quant tag to pick one by."""

    repo: str
    file: str | None = None
    quant: str | None = None

    def __str__(self) -> str:
        if self.file:
            return f"hf://{self.repo}/{self.file}"
        return f"{self.repo}:{self.quant}" if self.quant else f"hf://{self.repo}"


def parse_ref(spec: str) -> HfRef | None:
    """`hf://owner/repo/path/file.gguf`, `hf://owner/repo[:QUANT]` or `owner/repo:QUANT`; else None."""
    m = _HF_URI.match(spec)
    if m:
        file = m.group("file")
        if file and any(p in ("", ".", "..") for p in file[1:].split("/")):
            raise BadInputError(f"bad Hugging Face reference '{spec}'", hint="use hf://owner/repo/file.gguf")
        return HfRef(m.group("repo"), file=file[1:] if file else None, quant=m.group("quant"))
    if spec.startswith("hf://"):
        raise BadInputError(f"bad Hugging Face reference '{spec}'",
                            hint="use hf://owner/repo/file.gguf or owner/repo:QUANT")
    m = _QUANT_REF.match(spec)
    return HfRef(m.group("repo"), quant=m.group("quant")) if m else None


def cache_dir() -> Path:
    """The hub cache, resolved as huggingface_hub resolves it."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None  # None: the library's default


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def fetch(ref: HfRef) -> Path:
    """Download (or find in the hub cache) the file a reference names; returns its snapshot path."""
    from huggingface_hub import hf_hub_download

    files, online = _repo_files(ref)
    try:
        filename = ref.file or pick_file(files, ref)
    except BadInputError as exc:
        if online:
            raise
        raise OfflineError(f"cannot reach {_endpoint() or 'the Hugging Face hub'}, and the cache holds no match "
                           f"for {ref}: {exc.message}", hint="check your network or HF_ENDPOINT") from None
    if online and ref.file and files and ref.file not in files:
        ggufs = ", ".join(sorted(f for f in files if f.lower().endswith(".gguf"))) or "none"
        raise BadInputError(f"{ref.repo} has no file {ref.file} (its .gguf files: {ggufs})",
                            hint=f"or name one by quant: {ref.repo}:QUANT")
    with _hub_errors(ref, filename):
        # Offline, go straight to the cache: the client would otherwise retry with backoff for ~20 s.
        path = hf_hub_download(ref.repo, filename, cache_dir=str(cache_dir()), endpoint=_endpoint(),
                               local_files_only=not online)
    return Path(path)


def _repo_files(ref: HfRef) -> tuple[list[str], bool]:
    """The repo's file names and whether the hub answered; unreachable, the repo's files in the cache.

    One model-info call (GET /api/models/{repo}/revision/main, whose `siblings` list every file): unlike
    list_repo_files it is not retried with backoff, so an offline run learns so at once."""
    from huggingface_hub import HfApi

    if not _offline():
        try:
            with _hub_errors(ref, None):
                info = HfApi(endpoint=_endpoint()).model_info(ref.repo)
                return [s.rfilename for s in info.siblings or []], True
        except OfflineError:
            pass
    return [f.file for f in cached_files(ref.repo)], False


def pick_file(files: list[str], ref: HfRef) -> str:
    """The one .gguf whose name holds the quant tag (case-insensitive); an exact tag breaks a tie."""
    ggufs = sorted({f for f in files if f.lower().endswith(".gguf")
                    and not PurePosixPath(f).name.lower().startswith("mmproj")})
    if not ggufs:
        raise BadInputError(f"{ref.repo} holds no .gguf file")
    if not ref.quant:
        if len(ggufs) == 1:
            return ggufs[0]
        raise BadInputError(f"{ref.repo} holds several .gguf files: {', '.join(ggufs)}",
                            hint=f"name one: {ref.repo}:QUANT or hf://{ref.repo}/FILE")
    tag = ref.quant.lower()
    hits = [f for f in ggufs if tag in PurePosixPath(f).name.lower()]
    if len(hits) > 1:  # Q4_0 also occurs in Q4_0_4_4: prefer the files where the tag stands alone
        alone = re.compile(rf"(?<![a-z0-9]){re.escape(tag)}(?![a-z0-9_])")
        exact = [f for f in hits if alone.search(PurePosixPath(f).name.lower())]
        hits = exact if len(exact) == 1 else hits
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise BadInputError(f"no .gguf file in {ref.repo} matches '{ref.quant}' (files: {', '.join(ggufs)})",
                            hint=f"pick one with hf://{ref.repo}/FILE")
    raise BadInputError(f"'{ref.quant}' matches several files in {ref.repo}: {', '.join(hits)}",
                        hint=f"pick one with hf://{ref.repo}/FILE")


@contextmanager
def _hub_errors(ref: HfRef, filename: str | None) -> Iterator[None]:
    """huggingface_hub's exceptions as one-line rocmforge errors."""
    from huggingface_hub import errors as hf

    where = _endpoint() or "the Hugging Face hub"
    try:
        yield
    except hf.GatedRepoError as exc:
        raise BadInputError(f"{ref.repo} is gated on {where}: {_first_line(exc)}",
                            hint="accept its terms on the hub and set HF_TOKEN") from None
    except hf.RepositoryNotFoundError:
        raise BadInputError(f"no model repo {ref.repo} on {where}",
                            hint="check the name; private repos need HF_TOKEN") from None
    except hf.RevisionNotFoundError:
        raise BadInputError(f"{ref.repo} has no such revision on {where}") from None
    except hf.LocalEntryNotFoundError:  # offline, and not in the cache
        raise OfflineError(f"cannot reach {where} for {ref.repo}/{filename}, and it is not in the cache "
                           f"{cache_dir()}", hint="check your network or HF_ENDPOINT") from None
    except hf.EntryNotFoundError:
        raise BadInputError(f"{ref.repo} has no file {filename}",
                            hint=f"see the repo's files, or use {ref.repo}:QUANT") from None
    except hf.HfHubHTTPError as exc:
        raise RocmforgeError(f"the hub refused {ref.repo}: {_first_line(exc)}") from None
    except Exception as exc:
        if _is_network_error(exc):
            raise OfflineError(f"cannot reach {where}: {_first_line(exc)}",
                               hint="check your network or HF_ENDPOINT") from None
        raise


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):  # OfflineModeIsEnabled is a ConnectionError
        return True
    module = type(exc).__module__.split(".")[0]
    return module in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class CachedFile:
    """One .gguf in the hub cache: repo, path inside the repo, snapshot path, size of its blob."""

    repo: str
    file: str
    path: Path
    size: int


def cached_files(repo: str | None = None) -> list[CachedFile]:
    """Every .gguf in the hub cache (of one repo if given), newest revision first, one per repo file."""
    info = _scan()
    if info is None:
        return []
    out, seen = [], set()
    for cached_repo in sorted(info.repos, key=lambda r: r.repo_id):
        if cached_repo.repo_type != "model" or (repo is not None and cached_repo.repo_id != repo):
            continue
        for rev in sorted(cached_repo.revisions, key=lambda r: r.last_modified, reverse=True):
            for f in sorted(rev.files, key=lambda f: str(f.file_path)):
                rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                key = (cached_repo.repo_id, rel)
                if rel.lower().endswith(".gguf") and key not in seen:
                    seen.add(key)
                    out.append(CachedFile(cached_repo.repo_id, rel, f.file_path, f.size_on_disk))
    return out


def _scan():
    root = cache_dir()
    if not root.is_dir():
        return None
    from huggingface_hub import scan_cache_dir

    return scan_cache_dir(root)


def delete(ref: HfRef) -> list[CachedFile]:
    """Delete what the hub cache holds for a reference (every cached revision of that file)."""
    if ref.file:
        targets = [c for c in cached_files(ref.repo) if c.file == ref.file]
    else:
        cached = cached_files(ref.repo)
        name = pick_file([c.file for c in cached], ref) if cached else None
        targets = [c for c in cached if c.file == name]
    if not targets:
        raise BadInputError(f"the Hugging Face cache holds nothing for {ref}", hint=f"looked in {cache_dir()}")
    info = _scan()
    chosen = [f for r in info.repos if r.repo_id == ref.repo and r.repo_type == "model" for rev in r.revisions
              for f in rev.files if f.file_path.relative_to(rev.snapshot_path).as_posix() == targets[0].file]
    if hasattr(info, "delete_files"):
        info.delete_files(*chosen).execute()
    else:  # older huggingface_hub: whole revisions only, so only where this is the revision's one file
        revs = [rev for r in info.repos if r.repo_id == ref.repo for rev in r.revisions
                if any(f in chosen for f in rev.files)]
        if any(len(rev.files) > 1 for rev in revs):
            raise RocmforgeError(f"this huggingface_hub cannot delete single files; {ref} shares its revision",
                                 hint="upgrade huggingface_hub, or run `hf cache delete`")
        info.delete_revisions(*(rev.commit_hash for rev in revs)).execute()
    return targets
