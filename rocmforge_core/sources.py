"""Every place a MODEL can come from, tried in one fixed order, and what `models`, `pull` and `rm` do there.

Resolution order, first match wins:
  1. an existing file (a path);
  2. a known name (`smollm2`, `gemma3-270m`), fetched into rocmforge's cache on first use;
  3. a Hugging Face reference (`hf://owner/repo/file.gguf`, `owner/repo:QUANT`), via huggingface_hub;
  4. a model in ollama's store (`llama3.2`, `qwen2.5:7b`), read in place;
  5. a .gguf found by name in the Hugging Face cache, LM Studio's folders or rocmforge's cache
     (the name `rocmforge models` shows, the file name, or the file name without `.gguf`).
ollama's and LM Studio's files are only ever read: `rm` refuses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rocmforge_core import hub, local_stores, store
from rocmforge_core.errors import BadInputError


@dataclass(frozen=True)
class Entry:
    """One row of `rocmforge models --json`."""

    name: str
    path: str
    size: int
    cached: bool
    source: str  # known | file | hf | ollama | lmstudio


def resolve(spec: str | None, progress: store.ProgressCallback | None = None) -> Path:
    """MODEL -> a local .gguf path, fetching a known model or a Hugging Face file if needed."""
    spec = spec or store.DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if spec.lower() in store.KNOWN_MODELS:
        return store.fetch_model(spec.lower(), progress)
    ref = hub.parse_ref(spec)
    if ref is not None:
        return hub.fetch(ref)
    found = local_stores.find_ollama(spec)
    if found is not None:
        return found[1]
    entry = find_in_caches(spec)
    if entry is not None:
        return Path(entry.path)
    raise not_found(spec)


def find_in_caches(spec: str) -> Entry | None:
    """Step 5: a .gguf on disk whose listed name, file name or stem is `spec` (case-insensitive)."""
    want = spec.lower()
    hits: dict[str, Entry] = {}
    for entry in _own_files() + _hf_entries() + _lmstudio_entries():
        path = Path(entry.path)
        keys = {entry.name.lower(), entry.name.lower().removeprefix("hf://"), path.name.lower(), path.stem.lower()}
        if want in keys:
            hits.setdefault(str(path.resolve()), entry)
    if len(hits) > 1:
        names = ", ".join(f"{e.name} ({e.source})" for e in hits.values())
        raise BadInputError(f"'{spec}' matches several models: {names}", hint="give the full name or a path")
    return next(iter(hits.values()), None)


def not_found(spec: str) -> BadInputError:
    """The one-line error when no step matched, naming every place that was looked in."""
    known = ", ".join(store.KNOWN_MODELS)
    looked = (f"looked in: known names ({known}), ollama {local_stores.ollama_dir()}, "
              f"HF cache {hub.cache_dir()}, LM Studio {' and '.join(map(str, local_stores.lmstudio_dirs()))}, "
              f"rocmforge {store.cache_dir()}")
    path = Path(spec).expanduser()
    if path.is_dir():
        return BadInputError(f"{spec} is a directory, not a .gguf file; {looked}", hint=f"known names: {known}")
    if store.looks_like_path(spec):
        return BadInputError(f"no such file: {spec}; {looked}",
                             hint=f"pass a path to a .gguf file or a known name: {known}")
    return BadInputError(f"unknown model '{spec}': not a file, known name, Hugging Face reference or ollama "
                         f"model, and no .gguf of that name in the caches; {looked}",
                         hint=f"known names: {known}; or hf://owner/repo/file.gguf, owner/repo:QUANT, a path")


def list_models() -> list[dict]:
    """What each place holds: known names (cached or not), then files on disk, source by source."""
    entries = [Entry(**e) for e in store.list_models()]
    entries += _own_files() + _hf_entries() + _ollama_entries() + _lmstudio_entries()
    return [asdict(e) for e in entries]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _own_files() -> list[Entry]:
    """.gguf files in rocmforge's cache that are not the known models (put there by hand)."""
    root = store.cache_dir()
    known = {m.filename for m in store.KNOWN_MODELS.values()}
    files = sorted(p for p in root.glob("*.gguf") if p.is_file() and p.name not in known) if root.is_dir() else []
    return [Entry(p.name, str(p), _size(p), True, "file") for p in files]


def _hf_entries() -> list[Entry]:
    return [Entry(f"hf://{c.repo}/{c.file}", str(c.path), c.size, True, "hf") for c in hub.cached_files()]


def _ollama_entries() -> list[Entry]:
    return [Entry(str(name), str(blob), _size(blob), True, "ollama") for name, blob in local_stores.list_ollama()]


def _lmstudio_entries() -> list[Entry]:
    return [Entry(name, str(p), _size(p), True, "lmstudio") for name, p in local_stores.list_lmstudio()]


def pull(spec: str, progress: store.ProgressCallback | None = None) -> str:
    """Download what `spec` names (known names, Hugging Face refs); returns the line to print."""
    path = Path(spec).expanduser()
    if path.is_file():
        return f"{spec} is a local file; nothing to pull"
    if spec.lower() in store.KNOWN_MODELS:
        return f"{spec.lower()}: {store.fetch_model(spec.lower(), progress)}"
    ref = hub.parse_ref(spec)
    if ref is not None:
        return f"{ref}: {hub.fetch(ref)}"
    found = local_stores.find_ollama(spec)
    if found is not None:
        return f"{found[0]} is read in place from ollama's store ({found[1]}); nothing to pull"
    entry = find_in_caches(spec)
    if entry is not None:
        return f"{entry.name} is already on disk ({entry.source}: {entry.path}); nothing to pull"
    raise BadInputError(f"cannot pull '{spec}': pull takes a known name ({', '.join(store.KNOWN_MODELS)}) or a "
                        "Hugging Face reference", hint="hf://owner/repo/file.gguf or owner/repo:QUANT; "
                        "ollama's models come from `ollama pull` and are read in place")


def remove(spec: str) -> str:
    """Delete what rocmforge's cache or the Hugging Face cache holds for `spec`; refuse anyone else's file."""
    if spec.lower() in store.KNOWN_MODELS and not Path(spec).is_file():
        return _remove_known(spec.lower())
    ref = hub.parse_ref(spec)
    if ref is not None:
        return _remove_hf(ref)
    path = Path(spec).expanduser()
    if not path.is_file():
        found = local_stores.find_ollama(spec)
        if found is not None:
            raise BadInputError(f"{found[0]} belongs to ollama ({found[1]}); rocmforge never deletes ollama's "
                                "files", hint=f"run `ollama rm {found[0]}`")
        entry = find_in_caches(spec)
        if entry is None:
            raise not_found(spec)
        path = Path(entry.path)
    return _remove_path(spec, path)


def _remove_known(name: str) -> str:
    target = store.model_path(name)
    if not target.is_file():
        raise BadInputError(f"{name} is not downloaded", hint=f"nothing at {target}")
    target.unlink()
    return f"removed {name} ({target})"


def _remove_hf(ref: hub.HfRef) -> str:
    removed = hub.delete(ref)
    size = sum(c.size for c in removed) / 1e6
    return f"removed hf://{removed[0].repo}/{removed[0].file} from the Hugging Face cache ({size:.1f} MB)"


def _remove_path(spec: str, path: Path) -> str:
    owner = local_stores.owner_of(path)
    if owner is not None:
        raise BadInputError(f"{spec} belongs to {owner} ({path}); rocmforge never deletes {owner}'s files",
                            hint=f"delete it with {owner}")
    real = path.resolve()
    for cached in hub.cached_files():
        if cached.path.resolve() == real or cached.path == path:
            return _remove_hf(hub.HfRef(cached.repo, file=cached.file))
    root = store.cache_dir()
    if root.is_dir() and real.parent == root.resolve():
        path.unlink()
        return f"removed {path}"
    raise BadInputError(f"{spec} is not in rocmforge's cache or the Hugging Face cache; rocmforge rm deletes "
                        "only what those hold", hint="delete your own files yourself")
