"""Run the app under uvicorn until SIGINT/SIGTERM: stop accepting, give in-flight requests a grace
period to finish (then cancel them), stop the engine, and return normally so the process exits 0."""

from __future__ import annotations

import contextlib

import uvicorn

from rocmforge_server.app import ServerOptions, build_app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal that stopped it once it has shut down, which would end the
            # process by that signal; a stop we carried out cleanly is a success, so forget it
            getattr(self, "_captured_signals", []).clear()


def make_server(engine, options: ServerOptions, *, host: str, port: int, grace: float,
                log_level: str = "info", access_log: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(build_app(engine, options), host=host, port=port, lifespan="on",
                            log_level=log_level, timeout_graceful_shutdown=grace, access_log=access_log)
    return _Server(config)


def bound_port(server: uvicorn.Server) -> int:
    """The port the server listens on (useful with port 0)."""
    return server.servers[0].sockets[0].getsockname()[1]
