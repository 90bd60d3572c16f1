"""Models other tools keep on disk, read in place and never written: ollama's store and LM Studio's folder.

ollama: `$OLLAMA_MODELS` (else ~/.ollama/models) holds `manifests/HOST/NAMESPACE/NAME/TAG`, JSON whose
layer of media type `application/vnd.ollama.image.model` names the GGUF as a digest, stored as
`blobs/sha256-<hex>`. `llama3.2` means `registry.ollama.ai/library/llama3.2:latest`.
LM Studio: `$LMSTUDIO_MODELS` (our own variable; LM Studio has none), else ~/.lmstudio/models and
~/.cache/lm-studio/models, laid out as `publisher/repo/file.gguf`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rocmforge_core.errors import BadInputError

OLLAMA_HOST = "registry.ollama.ai"
OLLAMA_NAMESPACE = "library"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        """The short form ollama prints: `llama3.2:latest`, `user/model:tag`, `host/ns/model:tag`."""
        if self.host != OLLAMA_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != OLLAMA_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def ollama_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or os.path.join("~", ".ollama", "models")).expanduser()


def parse_ollama_name(spec: str) -> OllamaName | None:
    """`name[:tag]`, `namespace/name[:tag]` or `host/namespace/name[:tag]`; None if it cannot be one."""
    base, tag = spec.rsplit(":", 1) if ":" in spec.rsplit("/", 1)[-1] else (spec, "latest")
    parts = base.split("/")
    if not 1 <= len(parts) <= 3 or not all(_COMPONENT.match(p) for p in [*parts, tag]):
        return None
    if parts[-1].lower().endswith(".gguf"):
        return None
    parts = [OLLAMA_HOST, OLLAMA_NAMESPACE, *parts][-3:] if len(parts) == 1 else parts
    if len(parts) == 2:  # namespace/name on the default host
        parts = [OLLAMA_HOST, *parts]
    return OllamaName(*parts, tag)


def find_ollama(spec: str) -> tuple[OllamaName, Path] | None:
    """The blob of an ollama model if ollama's store has its manifest; None if it is not there."""
    name = parse_ollama_name(spec)
    if name is None:
        return None
    root = ollama_dir() / "manifests"
    for candidate in (name, OllamaName(*(p.lower() for p in (name.host, name.namespace, name.model, name.tag)))):
        manifest = root / candidate.host / candidate.namespace / candidate.model / candidate.tag
        if manifest.is_file():
            return candidate, _model_blob(manifest, candidate)
    return None


def _model_blob(manifest: Path, name: OllamaName) -> Path:
    """The GGUF blob a manifest names; a broken manifest or a missing blob is bad input."""
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers") or []
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == MODEL_MEDIA_TYPE)
    except (OSError, ValueError, AttributeError, KeyError, TypeError, StopIteration):
        raise BadInputError(f"ollama's manifest for {name} has no model layer: {manifest}",
                            hint=f"run `ollama pull {name}` again") from None
    m = _DIGEST.match(str(digest))
    if not m:
        raise BadInputError(f"ollama's manifest for {name} names an odd digest '{digest}'")
    blob = ollama_dir() / "blobs" / f"sha256-{m.group(1)}"
    if not blob.is_file():
        raise BadInputError(f"ollama's blob for {name} is missing: {blob}",
                            hint=f"run `ollama pull {name}` again")
    return blob


def list_ollama() -> list[tuple[OllamaName, Path]]:
    """Every model in ollama's store whose manifest names a blob that is present."""
    root = ollama_dir() / "manifests"
    out = []
    for manifest in sorted(root.glob("*/*/*/*")) if root.is_dir() else []:
        if not manifest.is_file():
            continue
        name = OllamaName(*manifest.relative_to(root).parts)
        try:
            out.append((name, _model_blob(manifest, name)))
        except BadInputError:
            continue  # a half-pulled model: ollama itself would not run it either
    return out


def lmstudio_dirs() -> list[Path]:
    explicit = os.environ.get("LMSTUDIO_MODELS")
    if explicit:
        return [Path(explicit).expanduser()]
    return [Path(p).expanduser() for p in (os.path.join("~", ".lmstudio", "models"),
                                           os.path.join("~", ".cache", "lm-studio", "models"))]


def list_lmstudio() -> list[tuple[str, Path]]:
    """(name relative to its models folder, path) of each .gguf in LM Studio's folders."""
    out = []
    for root in lmstudio_dirs():
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() == ".gguf" and path.is_file() and not path.name.lower().startswith("mmproj"):
                out.append((path.relative_to(root).as_posix(), path))
    return out


def owner_of(path: Path) -> str | None:
    """'ollama' or 'LM Studio' when a file lies in their folders (rocmforge must not delete it)."""
    real = path.resolve()
    for owner, roots in (("ollama", [ollama_dir()]), ("LM Studio", lmstudio_dirs())):
        if any(real.is_relative_to(r.resolve()) for r in roots if r.is_dir()):
            return owner
    return None
