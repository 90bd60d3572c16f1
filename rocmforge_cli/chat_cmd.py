"""`rocmforge chat`: load a model, then chat in a REPL; with piped stdin, answer the text once and exit.

This module checks the flags, loads the engine (spinner on a terminal) and hands over to repl.py, which
runs the engine loop and the conversation in one asyncio loop.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from rocmforge_core.errors import BadInputError


def default_history_path() -> Path:
    """The input history file, shared by every chat session: under ROCMFORGE_HOME when set, else in
    the user data dir."""
    from rocmforge_cli.history import default_path

    return default_path()


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # closed stdin
        return False


def run(*, model, system, max_tokens, sampling, ctx, context_shift, chat_template_file, history_file,
        backend, verbose, system_file=None, n_gpu_layers=None, server=None, plain=False) -> None:
    from rocmforge_cli.common import check_generation_flags, system_prompt

    params = check_generation_flags(sampling, max_tokens, ctx)  # bad flags fail before the model loads
    if server:
        _check_remote_flags(ctx=ctx, context_shift=context_shift, chat_template_file=chat_template_file)
    system = system_prompt(system, system_file)
    interactive = _stdin_is_tty()
    piped = None if interactive else _read_piped()
    history_path = Path(history_file).expanduser() if history_file else default_history_path()
    if server:
        from rocmforge_cli import remote_chat

        return remote_chat.run(url=server, model=model, params=params, max_tokens=max_tokens, system=system,
                               verbose=verbose, interactive=interactive, piped=piped,
                               history_path=history_path)

    from rocmforge_cli import repl, slash
    from rocmforge_cli.common import describe_run, resolve_model_path
    from rocmforge_cli.render import Renderer
    from rocmforge_core.engine import create_engine

    path = resolve_model_path(model)
    ui = Renderer(interactive=interactive)
    with ui.loading(f"loading {path.name}"):
        engine = create_engine(path, backend=backend, n_ctx=ctx, n_slots=1,
                               chat_template_file=chat_template_file)
    info = repl.model_info(engine, path)
    if interactive:  # the banner shows only on a terminal
        ui.banner(name=path.name, backend=engine.backend, backend_reason=engine.backend_reason,
                  n_ctx=engine.n_ctx, load_ms=engine.load_ms, ctx_reason=engine.ctx_reason,
                  memory=engine.footprint.describe())
    if verbose and not (interactive and ui.tty):  # no banner: say it on stderr
        print(f"model {info.name}; {describe_run(engine, n_gpu_layers)}", file=sys.stderr)
    state = slash.ChatState(model=info, sampling=slash.sampling_dict(params), max_tokens=max_tokens,
                            system=system or None, show_stats=verbose)
    state.display = ui.display  # one object: /set markdown|wordwrap change what the Renderer does
    state.display.markdown = not plain
    if not interactive:
        reason = asyncio.run(repl.answer_once(engine, state, ui, piped, context_shift=context_shift))
        if reason == "cancelled":
            raise KeyboardInterrupt  # stopped by a signal: exit 130 like generate
        return
    try:
        asyncio.run(repl.run_interactive(engine, state, ui, history_path=history_path,
                                         context_shift=context_shift))
    except KeyboardInterrupt:  # a SIGINT between prompts: leave as quietly as Ctrl-D does
        pass


def _check_remote_flags(**given) -> None:
    """Flags about the local model mean nothing to a server, which has its own: refuse them."""
    names = {"ctx": "--ctx", "context_shift": "--context-shift", "chat_template_file": "--chat-template-file"}
    used = [names[k] for k, v in given.items() if v]
    if used:
        raise BadInputError(f"{' and '.join(used)}: only for a local model, not with --server",
                            hint="the server's own flags (rocmforge serve -c ..., --context-shift) decide")


def _read_piped() -> str:
    text = sys.stdin.read() if sys.stdin is not None else ""
    if not text.strip():
        raise BadInputError("nothing to answer: stdin is empty",
                            hint="run rocmforge chat in a terminal, or pipe some text into it")
    return text.rstrip("\n")
