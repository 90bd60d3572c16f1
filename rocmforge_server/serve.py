"""Run the app under uvicorn until SIGINT/SIGTERM: stop accepting, give in-flight requests a grace
period to finish (then cancel them), stop the engine, and return normally so the process exits 0."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from rocmforge_server.app import ServerOptions, build_app


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runner, grace: float):
        super().__init__(config)
        self.runner, self.grace = runner, grace

    async def shutdown(self, sockets=None) -> None:
        # After the grace period cancel the sequences still running: each response then ends by itself
        # (an error event on a stream, 503 otherwise). uvicorn's own last resort, cancelling the
        # request tasks, would cut them off mid-write and log tracebacks.
        cancel = asyncio.get_running_loop().call_later(self.grace, self.runner.cancel_all)
        try:
            await super().shutdown(sockets)
        finally:
            cancel.cancel()

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal that stopped it once it has shut down, which would end the
            # process by that signal; a stop we carried out cleanly is a success, so forget it
            getattr(self, "_captured_signals", []).clear()


def make_server(engine, options: ServerOptions, *, host: str, port: int, grace: float,
                log_level: str = "info", access_log: bool = False) -> uvicorn.Server:
    app = build_app(engine, options)
    # uvicorn's own deadline is a backstop a little after ours (see _Server.shutdown)
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level,
                            timeout_graceful_shutdown=grace + 5, access_log=access_log)
    return _Server(config, app.state.runner, grace)


def bound_port(server: uvicorn.Server) -> int:
    """The port the server listens on (useful with port 0)."""
    return server.servers[0].sockets[0].getsockname()[1]
