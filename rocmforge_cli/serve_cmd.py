"""`rocmforge serve`: an OpenAI-compatible HTTP server (rocmforge_server) over one engine."""

from __future__ import annotations

import sys
from pathlib import Path

from rocmforge_core.errors import BadInputError, RocmforgeError


def check_flags(*, port: int, parallel: int, max_queue: int, max_body_bytes: int, grace: float) -> None:
    if not 0 <= port <= 65535:
        raise BadInputError(f"--port must be in 0..65535 (got {port})")
    if parallel < 1:
        raise BadInputError(f"--parallel must be at least 1 (got {parallel})")
    if max_queue < 0:
        raise BadInputError(f"--max-queue must be >= 0 (got {max_queue})")
    if max_body_bytes < 1024:
        raise BadInputError(f"--max-body-bytes must be at least 1024 (got {max_body_bytes})")
    if not grace >= 0:
        raise BadInputError(f"--shutdown-grace must be >= 0 seconds (got {grace})")


def _server_modules():
    try:
        from rocmforge_server import serve
    except ImportError as exc:
        raise RocmforgeError(f"rocmforge serve needs the server extra ({exc.name} is missing)",
                             hint="pip install \"rocmforge[server]\"") from None
    return serve


def model_names(model: str | None, path: Path) -> tuple[str, tuple[str, ...]]:
    """The id /v1/models shows (the name typed, else the file's stem) and the other names accepted."""
    from rocmforge_core import store

    typed = model or store.DEFAULT_MODEL
    model_id = typed.lower() if typed.lower() in store.KNOWN_MODELS else path.stem
    return model_id, tuple({typed, str(path), path.name, path.stem} - {model_id})


def run(*, model, host, port, ctx, parallel, backend, api_key, max_queue, max_body_bytes, grace,
        sampling, chat_template_file, verbose, context_shift=False) -> None:
    from rocmforge_cli.common import check_generation_flags

    params = check_generation_flags(sampling, 1, ctx)  # bad flags fail before the model loads
    check_flags(port=port, parallel=parallel, max_queue=max_queue, max_body_bytes=max_body_bytes,
                grace=grace)
    serve = _server_modules()

    from rocmforge_cli.common import resolve_model_path
    from rocmforge_core.engine import create_engine
    from rocmforge_server.app import ServerOptions

    path = resolve_model_path(model)
    # the engine's own intake never refuses first: the server's admission applies --max-queue
    engine = create_engine(path, backend=backend, n_ctx=ctx, n_slots=parallel,
                           max_queue=parallel + max_queue + 1, chat_template_file=chat_template_file)
    model_id, aliases = model_names(model, path)
    print(f"rocmforge serve: {model_id} on {engine.backend} ({engine.backend_reason}), ctx {engine.n_ctx}, "
          f"{parallel} slot(s), loaded in {engine.load_ms:.0f} ms", file=sys.stderr, flush=True)
    options = ServerOptions(model_id=model_id, aliases=aliases, api_key=api_key or None,
                            max_queue=max_queue, max_body_bytes=max_body_bytes, defaults=params,
                            context_shift=context_shift)
    server = serve.make_server(engine, options, host=host, port=port, grace=grace, access_log=verbose)
    server.run()
    if not server.started:
        raise RocmforgeError(f"the server did not start on {host}:{port}",
                             hint="is the port in use? see the message above")
