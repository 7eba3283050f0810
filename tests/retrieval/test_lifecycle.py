"""Loading in the lifespan: /live at once, /ready names what is missing, failures stay visible."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sidecar.retrieval.embedder import Embedder
from tests.retrieval.conftest import RunningApp, SharedModels


def retrieval_reasons(app: RunningApp) -> list[str]:
    reply = app.client.get("/ready")
    reasons = reply.json().get("reasons", []) if reply.status_code == 503 else []
    return [r for r in reasons if r.startswith(("embed model", "rerank model"))]


def test_real_lifespan_loads_both_models_from_the_path_setting(
    start_app: Callable[..., RunningApp],
) -> None:
    app = start_app(inject_service=False)  # the app builds RetrievalService itself
    assert retrieval_reasons(app) == []
    health = app.client.get("/health").json()["models"]
    assert health["embed"]["loaded"] and health["rerank"]["loaded"]
    assert health["embed"]["name"] == ".../model"  # a local directory is not spelled out
    embed = app.client.post("/embed", json={"inputs": ["hello"], "return_sparse": True})
    assert embed.status_code == 200 and len(embed.json()["dense"][0]) == 384
    rerank = app.client.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
    assert rerank.status_code == 200


def test_failed_loads_are_named_on_ready_and_the_process_stays_up(
    start_app: Callable[..., RunningApp],
) -> None:
    app = start_app(
        inject_service=False,
        embed_model="/nonexistent/models/bge-m3",
        rerank_model="not a/valid//hub id",
    )
    assert app.client.get("/live").status_code == 200
    ready = app.client.get("/ready")
    assert ready.status_code == 503
    reasons = retrieval_reasons(app)
    assert reasons[0] == (
        "embed model .../bge-m3 failed to load: "
        "ModelSourceMissing: no model directory at the configured path; "
        "set OCR_SIDECAR_EMBED_MODEL to a model id the hub serves or a local model directory, "
        "then restart"
    )
    assert reasons[1].startswith("rerank model not a/valid//hub id failed to load: ")
    assert "set OCR_SIDECAR_RERANK_MODEL to" in reasons[1]
    assert "/nonexistent" not in ready.text and "site-packages" not in ready.text
    # A failed load never clears by itself: no Retry-After invites a pointless retry.
    assert "retry-after" not in ready.headers
    for route, body in (
        ("/embed", {"inputs": ["x"]}),
        ("/rerank", {"query": "q", "texts": ["x"]}),
    ):
        reply = app.client.post(route, json=body)
        assert reply.status_code == 503
        assert reply.json()["code"] == "not_ready"
        assert "failed to load" in reply.json()["detail"]
        assert "retry-after" not in reply.headers
    health = app.client.get("/health").json()["models"]
    assert health["embed"]["loaded"] is False and health["embed"]["error"].startswith("Model")


def test_not_ready_while_loading_then_serving(
    start_app: Callable[..., RunningApp], shared_models: SharedModels
) -> None:
    release = threading.Event()

    def slow_loader(_name: str) -> Embedder:
        release.wait(60)
        return shared_models.embedder

    app = start_app(
        embed_loader=slow_loader, rerank_loader=lambda _n: shared_models.reranker, wait=False
    )
    try:
        assert app.client.get("/live").status_code == 200
        assert retrieval_reasons(app) == [
            "embed model .../model is loading",
            "rerank model .../model is loading",
        ]
        assert app.client.get("/ready").headers["retry-after"] == "5"  # loading clears
        loading = app.client.post("/embed", json={"inputs": ["x"]})
        assert loading.status_code == 503
        assert loading.json()["code"] == "not_ready"
        assert loading.headers["retry-after"] == "5"
    finally:
        release.set()
    app.wait_loaded()
    assert retrieval_reasons(app) == []
    assert app.client.post("/embed", json={"inputs": ["x"]}).status_code == 200
