"""POST /embed over loopback HTTP with the packaged MiniLM model."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.retrieval.conftest import RunningApp, SharedModels, holding, wait_for_queue

TEXTS = [
    "The invoice total is 1,250 baht.",
    "Tax ID 0105561234567 appears on page two of the scanned receipt.",
    "ok",
]


def dense_of(response_json: dict) -> np.ndarray:
    return np.asarray(response_json["dense"], dtype=np.float64)


def test_shapes_order_and_usage(
    shared_app: Callable[..., RunningApp], shared_models: SharedModels
) -> None:
    app = shared_app()
    reply = app.client.post("/embed", json={"inputs": TEXTS})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    dense = dense_of(body)
    assert dense.shape == (3, 384)
    assert body["sparse"] is None
    assert body["device"] == "cpu"
    tokenizer = shared_models.embedder.tokenizer
    assert body["usage"]["tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    # Input order: each row is that text's own embedding.
    for i, text in enumerate(TEXTS):
        alone = dense_of(app.client.post("/embed", json={"inputs": [text]}).json())[0]
        np.testing.assert_allclose(dense[i], alone, atol=1e-5)
    assert not np.allclose(dense[0], dense[1], atol=1e-3)


def test_matches_flagembedding_encode(
    shared_app: Callable[..., RunningApp], shared_models: SharedModels
) -> None:
    """Same numbers as BGEM3FlagModel.encode (dense CLS, sparse lexical weights), fewer passes."""
    app = shared_app()
    body = app.client.post(
        "/embed", json={"inputs": TEXTS, "normalize": False, "return_sparse": True}
    ).json()
    flag_model = shared_models.embedder._owner
    reference = flag_model.encode(TEXTS, return_dense=True, return_sparse=True)
    np.testing.assert_allclose(dense_of(body), reference["dense_vecs"], atol=1e-5)
    for ours, theirs in zip(body["sparse"], reference["lexical_weights"], strict=True):
        assert ours.keys() == theirs.keys()
        for token_id, weight in ours.items():
            assert weight == pytest.approx(float(theirs[token_id]), abs=1e-5)


def test_normalization_on_request(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app()
    normalized = dense_of(app.client.post("/embed", json={"inputs": TEXTS}).json())
    raw = dense_of(app.client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), normalized, atol=1e-5
    )


def test_sparse_weights(shared_app: Callable[..., RunningApp], shared_models: SharedModels) -> None:
    app = shared_app()
    text = "receipt receipt receipt total"
    body = app.client.post("/embed", json={"inputs": [text, "ok"], "return_sparse": True}).json()
    tokenizer = shared_models.embedder.tokenizer
    ids = tokenizer(text)["input_ids"]
    weights = body["sparse"][0]
    assert weights, "a text of real words has lexical weights"
    specials = {tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    for key, value in weights.items():
        assert int(key) in ids and int(key) not in specials
        assert type(value) is float and value > 0
    # A repeated token appears once (its maximum weight).
    assert len(weights) <= len(set(ids) - specials)


def test_one_text_alone_equals_inside_a_concurrent_burst(
    shared_app: Callable[..., RunningApp], shared_models: SharedModels
) -> None:
    app = shared_app()
    probe = "A short probe sentence about invoices."
    alone = app.client.post("/embed", json={"inputs": [probe], "return_sparse": True}).json()
    batcher = app.service.embed_slot.batcher
    placed = app.service.embed_slot.placed
    assert batcher is not None and placed is not None
    batches_before = batcher.batches_run
    # Others of very different lengths, so the probe is padded inside the burst.
    others = [("word " * n).strip() for n in (3, 40, 120, 7, 250, 60, 15)] * 4

    def post(text: str) -> object:
        return app.client.post("/embed", json={"inputs": [text], "return_sparse": True})

    with ThreadPoolExecutor(len(others) + 1) as pool, holding(placed.lock):
        futures = [pool.submit(post, text) for text in others]
        # The worker is stuck on the model lock with one request at most: the rest queue up.
        assert wait_for_queue(batcher, lambda b: b.depth + b.running == len(others))
        probe_future = pool.submit(post, probe)
        assert wait_for_queue(batcher, lambda b: b.depth + b.running == len(others) + 1)
    in_burst = probe_future.result().json()
    replies = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in replies)
    np.testing.assert_allclose(dense_of(in_burst), dense_of(alone), atol=1e-5)
    assert in_burst["sparse"][0].keys() == alone["sparse"][0].keys()
    for key, weight in alone["sparse"][0].items():
        assert in_burst["sparse"][0][key] == pytest.approx(weight, abs=1e-5)
    # The burst really was merged: far fewer forward passes than requests.
    assert batcher.batches_run - batches_before <= 3
    for text, reply in zip(others, replies, strict=True):
        expected = shared_models.embedder.tokenize([text], True)[0]
        assert reply.json()["usage"]["tokens"] == len(expected)


def test_validation_and_limits(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app(max_inputs=4)
    cases = [
        ({"inputs": []}, 422, "validation_error"),
        ({"inputs": ["fine", "  "]}, 422, "validation_error"),
        ({"inputs": ["x"], "unknown": 1}, 422, "validation_error"),
        ({"inputs": "not a list"}, 422, "validation_error"),
        ({"inputs": ["x"] * 5}, 413, "too_many_inputs"),
        ({"inputs": ["ok", "word " * 600], "truncate": False}, 413, "input_too_long"),
    ]
    for payload, status, code in cases:
        reply = app.client.post("/embed", json=payload)
        assert reply.status_code == status, (payload, reply.text)
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert reply.json()["code"] == code
    too_long = app.client.post("/embed", json={"inputs": ["word " * 600], "truncate": False})
    assert "inputs[0]" in too_long.json()["detail"] and "512" in too_long.json()["detail"]
    truncated = app.client.post("/embed", json={"inputs": ["word " * 600]})
    assert truncated.status_code == 200
    assert truncated.json()["usage"]["tokens"] == 512
    assert len(app.client.post("/embed", json={"inputs": ["x"] * 4}).json()["dense"]) == 4


def test_full_queue_is_429_with_retry_after(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app(service_kwargs={"max_queued_items": 3})
    batcher = app.service.embed_slot.batcher
    placed = app.service.embed_slot.placed
    assert batcher is not None and placed is not None
    with ThreadPoolExecutor(2) as pool, holding(placed.lock):
        running = pool.submit(app.client.post, "/embed", json={"inputs": ["first"]})
        assert wait_for_queue(batcher, lambda b: b.running == 1 and b.depth == 0)
        queued = pool.submit(app.client.post, "/embed", json={"inputs": ["a", "b", "c"]})
        assert wait_for_queue(batcher, lambda b: b.depth == 3)
        refused = app.client.post("/embed", json={"inputs": ["one too many"]})
        assert refused.status_code == 429
        assert refused.json()["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
    assert running.result().status_code == 200
    assert len(queued.result().json()["dense"]) == 3
    metrics = app.client.get("/metrics").text
    assert 'sidecar_retrieval_rejected_total{kind="embed"} 1.0' in metrics


def test_requests_waiting_for_the_tokenizer_count_against_the_queue(
    shared_app: Callable[..., RunningApp],
) -> None:
    app = shared_app(service_kwargs={"max_queued_items": 3})
    batcher = app.service.embed_slot.batcher
    assert batcher is not None
    long_texts = ["word " * 1000] * 3  # over the inline limit: tokenised in the tokenizer thread
    with ThreadPoolExecutor(1) as pool, holding(app.service._tokenizer_lock):
        waiting = pool.submit(app.client.post, "/embed", json={"inputs": long_texts})
        # Admitted, stuck behind the tokenizer: its three places are held, nothing is queued.
        assert wait_for_queue(batcher, lambda b: b.preparing == 3 and b.depth == 0)
        refused = app.client.post("/embed", json={"inputs": ["one too many"]})
        assert refused.status_code == 429 and refused.json()["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
    assert len(waiting.result().json()["dense"]) == 3
    assert batcher.preparing == 0


def test_device_headers_health_and_metrics(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app()
    reply = app.client.post("/embed", json={"inputs": ["x"]})
    assert reply.headers["x-compute-device"] == "cpu"
    assert reply.headers["x-compute-device-reason"] == "cuda unavailable"
    models = app.client.get("/health").json()["models"]
    assert models["embed"]["loaded"] is True
    assert models["embed"]["device"] == "cpu"
    assert models["embed"]["dtype"] == "float32"
    assert models["rerank"]["reason"] == "cuda unavailable"
    metrics = app.client.get("/metrics").text
    assert 'sidecar_model_on_gpu{model="embed"} 0.0' in metrics
    assert 'sidecar_retrieval_batch_items_count{kind="embed"}' in metrics


def test_requires_api_key(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app()
    reply = app.client.post("/embed", json={"inputs": ["x"]}, headers={"X-API-Key": "wrong" * 8})
    assert reply.status_code == 401
    assert reply.json()["code"] == "unauthorized"
