"""Run an ASGI app on a real loopback socket in a background thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """uvicorn on its own event loop in a daemon thread; `url` is ready once `start()` returns."""

    def __init__(
        self,
        app: object,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_level: str = "warning",
    ) -> None:
        # Bind the socket ourselves so the port is known and held before uvicorn starts.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port or 0))
        self.host, self.port = self.sock.getsockname()[:2]
        # proxy_headers off, as in production: network auth must see the real TCP peer.
        config = uvicorn.Config(
            app,
            log_level=log_level,
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"uvicorn-{self.port}")
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 30.0) -> ThreadedServer:
        self.thread.start()
        # uvicorn sets `started` once the lifespan startup completed and the socket listens.
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def serve(app: object, **kwargs: object) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
