"""Run the real rocmforge server (uvicorn + FastAPI) in a thread on a free loopback port, for tests."""

from __future__ import annotations

import threading
import time

from rocmforge_core.engine import create_engine
from rocmforge_server.app import ServerOptions
from rocmforge_server.serve import bound_port, make_server

API_KEY = "test-key"


class ServerThread:
    def __init__(self, model_path, *, n_slots: int = 2, n_ctx: int = 4096, grace: float = 2.0, **options):
        engine = create_engine(model_path, backend="cpu", n_ctx=n_ctx, n_slots=n_slots, max_queue=64)
        self.engine = engine
        opts = ServerOptions(model_id="tiny-chat", aliases=("tiny",), **options)
        self.server = make_server(engine, opts, host="127.0.0.1", port=0, grace=grace, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # uvicorn offers no startup event to wait on
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = bound_port(self.server)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the test server did not stop"
