"""The event loop does no heavy work for a maximum-size /embed: checked by thread identity.

A 256-input request is tokenised in the tokenizer thread, and its 256-vector reply is turned into
JSON bytes in the batch worker thread; the route sends those bytes as they are. How long the loop
stalls is measured by bench/bench_loop_lag.py, not asserted here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.retrieval import replies
from tests.retrieval.conftest import RunningApp, SharedModels


class ThreadRecorder:
    """Wraps a function and records, per call, the thread it ran on and what it returned."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.fn(*args, **kwargs)
        self.calls.append((threading.current_thread().name, result))
        return result


def test_a_maximum_size_embed_reply_is_built_off_the_event_loop(
    shared_app: Callable[..., RunningApp],
    shared_models: SharedModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = shared_app(max_inputs=256)
    body_builder = ThreadRecorder(replies.embed_body)
    monkeypatch.setattr(replies, "embed_body", body_builder)
    tokenizer = ThreadRecorder(shared_models.embedder.tokenize)
    monkeypatch.setattr(shared_models.embedder, "tokenize", tokenizer)
    texts = [f"receipt {i} total due" for i in range(256)]

    reply = app.client.post("/embed", json={"inputs": texts, "return_sparse": True})

    assert reply.status_code == 200, reply.text
    assert len(reply.json()["dense"]) == 256
    loop_thread = app.server.thread.name  # uvicorn's event loop runs in this thread
    [(tokenized_on, _)] = tokenizer.calls
    assert tokenized_on.startswith("tokenize") and tokenized_on != loop_thread
    [(built_on, body)] = body_builder.calls
    assert built_on == "batcher-embed"
    assert reply.content == body  # sent as built: nothing serialised again on the loop


def test_a_rerank_reply_is_built_in_the_batch_worker(
    shared_app: Callable[..., RunningApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = shared_app()
    body_builder = ThreadRecorder(replies.rerank_body)
    monkeypatch.setattr(replies, "rerank_body", body_builder)

    reply = app.client.post("/rerank", json={"query": "total", "texts": ["a total", "b"]})

    assert reply.status_code == 200, reply.text
    [(built_on, body)] = body_builder.calls
    assert built_on == "batcher-rerank"
    assert reply.content == body


def test_a_failing_reply_is_a_problem_500_and_the_worker_lives_on(
    shared_app: Callable[..., RunningApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = shared_app()

    def broken(*_args: Any, **_kwargs: Any) -> bytes:
        raise RuntimeError("serialiser broke")

    with monkeypatch.context() as patch:
        patch.setattr(replies, "embed_body", broken)
        # The server drops the connection after a 500 (the error propagates, as in Starlette):
        # ask for that up front so the next request opens a fresh one.
        failed = app.client.post("/embed", json={"inputs": ["x"]}, headers={"Connection": "close"})
    assert failed.status_code == 500
    assert failed.json()["code"] == "internal_error"
    assert "serialiser broke" not in failed.text
    assert app.client.post("/embed", json={"inputs": ["x"]}).status_code == 200
