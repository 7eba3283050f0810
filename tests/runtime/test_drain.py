"""The drain on its own: what the app answers while draining, and when the server lets go.

The whole sequence with a real signal and a real held job is in test_process.py; these pin the
parts one at a time, in process and without waiting on anything.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable

import httpx
import uvicorn

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.errors import Overloaded
from sidecar.lifecycle import Drain
from sidecar.server import DrainingServer
from tests.runtime.test_probes import StagedRetrieval
from tests.server import serve


def test_while_draining_ready_is_503_and_jobs_are_refused(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    app = create_app(make_settings(ollama_url="http://127.0.0.1:9"), retrieval=StagedRetrieval())
    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        client.headers["X-API-Key"] = api_key
        app.state.ctx.drain.begin()
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["reasons"] == ["shutting down"]
        assert "retry-after" not in ready.headers
        for path in ("/ocr", "/embed", "/rerank"):
            refused = client.post(path, json={})
            assert refused.status_code == 503, path
            assert refused.json()["code"] == "not_ready"
            assert refused.headers["connection"] == "close"
        assert client.get("/live").status_code == 200
        assert client.get("/health").json()["problems"] == ["shutting down"]
        # Auth still comes first: no state is told to a caller without a key.
        assert client.post("/embed", json={}, headers={"X-API-Key": ""}).status_code == 401


class GatedRetrieval(StagedRetrieval):
    """An /embed that waits at a gate the test opens, then answers 429."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def embed(self, _request: object) -> None:
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, 30)
        raise Overloaded("the embed queue is full", 1)


def test_a_job_counts_as_running_until_its_answer_is_sent(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    retrieval = GatedRetrieval()
    app = create_app(make_settings(), retrieval=retrieval)
    drain: Drain = app.state.ctx.drain
    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        client.headers["X-API-Key"] = api_key
        replies: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: replies.append(client.post("/embed", json={"inputs": ["x"]}))
        )
        worker.start()
        assert retrieval.entered.wait(30)
        assert drain.active == 1
        client.get("/health")  # not a job: not counted
        assert drain.active == 1
        retrieval.gate.set()
        worker.join(30)
        assert replies[0].status_code == 429


def make_server(grace_s: float) -> tuple[DrainingServer, Drain]:
    drain = Drain()
    config = uvicorn.Config(app=lambda scope, receive, send: None, log_config=None)
    return DrainingServer(config, drain, grace_s), drain


def test_the_first_signal_drains_and_exit_waits_for_running_jobs() -> None:
    server, drain = make_server(grace_s=3600)
    drain.job_started()
    server.handle_exit(signal.SIGTERM, None)
    assert drain.draining and not server.should_exit
    assert asyncio.run(server.on_tick(1)) is False  # a job still runs
    drain.job_finished()
    assert asyncio.run(server.on_tick(2)) is True  # drained


def test_the_grace_period_bounds_the_wait() -> None:
    server, drain = make_server(grace_s=0)
    drain.job_started()
    server.handle_exit(signal.SIGTERM, None)
    assert asyncio.run(server.on_tick(1)) is True  # grace over: go, the job gets cancelled


def test_a_second_signal_exits_at_once() -> None:
    server, drain = make_server(grace_s=3600)
    drain.job_started()
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit
    assert asyncio.run(server.on_tick(1)) is True


def test_without_a_signal_the_server_keeps_serving() -> None:
    server, _ = make_server(grace_s=0)
    assert asyncio.run(server.on_tick(1)) is False
