"""Shared pytest fixtures: the two real default models, fetched once through the model store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _resolve(name: str) -> Path:
    from rocmforge_core.errors import OfflineError
    from rocmforge_core.store import resolve_model

    try:
        return resolve_model(name)
    except OfflineError as exc:  # no network and no cache: say so; a bad hash still fails
        pytest.skip(f"model {name} unavailable: {exc.one_line()}")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama architecture, gpt2 BPE, ChatML template)."""
    return _resolve("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma-3-270M Q4_K_M (gemma3 architecture, SentencePiece tokenizer, base model)."""
    return _resolve("gemma3-270m")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_report_header(config):
    home = os.environ.get("ROCMFORGE_HOME")
    return f"rocmforge model cache: {home or 'platform user cache dir'}"
