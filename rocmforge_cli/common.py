"""Helpers shared by the command modules: turning a MODEL argument into a local .gguf path."""

from __future__ import annotations

from pathlib import Path


def resolve_model_path(model: str | None) -> Path:
    """Resolve MODEL (a path, a known name or None for the default), fetching it if needed."""
    from rocmforge_core import store

    return store.resolve_model(model)
