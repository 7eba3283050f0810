"""The reply bytes built in the worker thread are exactly pydantic's dump of the response models."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sidecar.retrieval import replies
from sidecar.retrieval.items import normalize_rows, rank, sigmoid
from sidecar.schemas import EmbedResponse, EmbedUsage, RerankResponse, RerankResult

# Vectors with awkward values too: signed zeros, subnormals, the float32 extremes, inf and NaN
# (pydantic writes the last two as null; so must we).
SPECIALS = [0.0, -0.0, 1e-45, -3.4028235e38, 3.4028235e38, float("inf"), float("nan")]
names = st.text(max_size=20)
sparse_weights = st.dictionaries(st.from_regex(r"[0-9]{1,6}", fullmatch=True), st.floats(0, 10))


@st.composite
def matrices(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 40))
    dim = draw(st.sampled_from([1, 3, 384, 1024]))
    seed = draw(st.integers(0, 2**32 - 1))
    matrix = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    for _ in range(draw(st.integers(0, 3))):
        row, col = draw(st.integers(0, rows - 1)), draw(st.integers(0, dim - 1))
        matrix[row, col] = draw(st.sampled_from(SPECIALS))
    return matrix


@given(
    matrices(),
    names,
    st.sampled_from(["cuda", "cpu"]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 10**6),
    st.data(),
)
def test_embed_body_is_the_response_models_json(
    matrix: np.ndarray,
    model: str,
    device: str,
    normalize: bool,
    with_sparse: bool,
    tokens: int,
    data: st.DataObject,
) -> None:
    sparse = (
        data.draw(st.lists(sparse_weights, min_size=len(matrix), max_size=len(matrix)))
        if with_sparse
        else None
    )
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows normalise to NaN
        body = replies.embed_body(model, device, list(matrix), sparse, tokens, normalize=normalize)
        dense = normalize_rows(matrix) if normalize else matrix
    expected = EmbedResponse(
        model=model,
        device=device,  # type: ignore[arg-type]
        dense=dense.tolist(),
        sparse=sparse,
        usage=EmbedUsage(tokens=tokens),
    )
    assert body == expected.model_dump_json().encode()


@given(
    st.lists(st.floats(-50, 50), min_size=1, max_size=60),
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 80)),
    names,
)
def test_rerank_body_is_the_response_models_json(
    logits: list[float], normalize: bool, return_text: bool, top_n: int | None, model: str
) -> None:
    texts = [f'text {i} \u0e01"' for i in range(len(logits))]
    body = replies.rerank_body(
        model,
        "cpu",
        logits,
        texts,
        normalize=normalize,
        top_n=top_n,
        return_text=return_text,
    )
    scores = [sigmoid(x) for x in logits] if normalize else logits
    expected = RerankResponse(
        model=model,
        device="cpu",
        results=[
            RerankResult(index=i, score=scores[i], text=texts[i] if return_text else None)
            for i in rank(scores, top_n)
        ],
    )
    assert body == expected.model_dump_json(exclude_none=True).encode()
