"""POST /rerank over loopback HTTP.

MiniLM with a seeded, untrained head: these tests check the ordering logic, not relevance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sidecar.retrieval.items import rank, sigmoid
from tests.retrieval.conftest import RunningApp, SharedModels

QUERY = "what is the invoice total"
TEXTS = [
    "The total due on this invoice is 1,250 baht.",
    "Weather in Bangkok is hot.",
    "Invoice number 17, issued in March.",
    "Payment terms: thirty days.",
    "A completely unrelated sentence about football and music festivals in Europe.",
]


def reference_logits(shared: SharedModels, query: str, texts: list[str]) -> list[float]:
    """The cross-encoder called directly: one padded batch of (query, text) pairs."""
    reranker = shared.reranker
    inputs = reranker.tokenizer(
        [query] * len(texts), texts, padding=True, truncation="only_second", return_tensors="pt"
    )
    with torch.inference_mode():
        return reranker.module(**inputs).logits[:, 0].float().tolist()


def test_scores_sorted_with_original_index(
    shared_app: Callable[..., RunningApp], shared_models: SharedModels
) -> None:
    app = shared_app()
    reply = app.client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "normalize": False})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["device"] == "cpu"
    assert reply.headers["x-compute-device"] == "cpu"
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(TEXTS)))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all("text" not in r for r in results)
    expected = reference_logits(shared_models, QUERY, TEXTS)
    for result in results:
        assert result["score"] == pytest.approx(expected[result["index"]], abs=1e-4)


def test_normalized_scores_are_sigmoid_of_raw(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app()
    raw = app.client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "normalize": False})
    normalized = app.client.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    raw_by_index = {r["index"]: r["score"] for r in raw.json()["results"]}
    for result in normalized.json()["results"]:
        assert 0.0 < result["score"] < 1.0
        assert result["score"] == pytest.approx(sigmoid(raw_by_index[result["index"]]), abs=1e-6)
    assert [r["index"] for r in raw.json()["results"]] == [
        r["index"] for r in normalized.json()["results"]
    ]


def test_top_n_and_return_text(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app()
    full = app.client.post("/rerank", json={"query": QUERY, "texts": TEXTS}).json()["results"]
    top = app.client.post(
        "/rerank", json={"query": QUERY, "texts": TEXTS, "top_n": 2, "return_text": True}
    ).json()["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert [r["text"] for r in top] == [TEXTS[r["index"]] for r in top]
    more = app.client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "top_n": 50})
    assert len(more.json()["results"]) == len(TEXTS)


def test_validation_and_limits(shared_app: Callable[..., RunningApp]) -> None:
    app = shared_app(max_inputs=3)
    long_text = "word " * 600
    cases = [
        ({"query": QUERY, "texts": []}, 422, "validation_error"),
        ({"query": "  ", "texts": ["a"]}, 422, "validation_error"),
        ({"query": QUERY, "texts": ["a", ""]}, 422, "validation_error"),
        ({"query": QUERY, "texts": ["a"], "top_n": 0}, 422, "validation_error"),
        ({"query": QUERY, "texts": ["a"] * 4}, 413, "too_many_inputs"),
        ({"query": QUERY, "texts": ["a", long_text], "truncate": False}, 413, "input_too_long"),
    ]
    for payload, status, code in cases:
        reply = app.client.post("/rerank", json=payload)
        assert reply.status_code == status, (payload, reply.text)
        assert reply.json()["code"] == code
    truncated = app.client.post("/rerank", json={"query": QUERY, "texts": ["a", long_text]})
    assert truncated.status_code == 200
    long_query = app.client.post("/rerank", json={"query": long_text, "texts": ["a", long_text]})
    assert long_query.status_code == 200


@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=40), st.integers(1, 50))
def test_rank_orders_highest_first_and_cuts(scores: list[float], top_n: int) -> None:
    order = rank(scores, top_n)
    assert len(order) == min(top_n, len(scores))
    assert len(set(order)) == len(order)
    picked = [scores[i] for i in order]
    assert picked == sorted(picked, reverse=True)
    rest = set(range(len(scores))) - set(order)
    assert all(scores[i] <= min(picked) for i in rest)
    assert rank(scores, None)[: len(order)] == order


@given(st.floats(-1000, 1000, allow_nan=False))
def test_sigmoid_is_stable_and_monotone(x: float) -> None:
    value = sigmoid(x)
    assert 0.0 <= value <= 1.0
    assert sigmoid(x + 1.0) >= value
    if abs(x) < 30:
        assert value == pytest.approx(1 / (1 + math.exp(-x)))
