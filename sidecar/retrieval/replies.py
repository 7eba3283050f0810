"""The /embed and /rerank response bodies as JSON bytes, built in the batch worker thread.

A maximum-size embed reply is 256 x 1024 floats. Turning that into JSON in one call holds the GIL
for tens of milliseconds, and a worker thread holding the GIL stalls the event loop as surely as
running on it. So the dense matrix (and the sparse weights) are written a few rows per call:
between calls the interpreter can hand the GIL to the loop (at most one switch interval, 5 ms,
later). The bytes are exactly what pydantic's `model_dump_json` of the response model gives
(property-tested), so the response schema does not change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from pydantic_core import to_json

from sidecar.retrieval.items import normalize_rows, rank, sigmoid
from sidecar.schemas import RerankResponse, RerankResult

# Floats serialised per GIL hold: 16 rows of 1024 take about a millisecond.
FLOATS_PER_CHUNK = 16 * 1024


def _chunked_array(items: Sequence[object], per_chunk: int) -> Iterator[bytes]:
    """A JSON array written a few items per `to_json` call (each call holds the GIL)."""
    yield b"["
    for start in range(0, len(items), per_chunk):
        if start:
            yield b","
        yield to_json(items[start : start + per_chunk], inf_nan_mode="null")[1:-1]
    yield b"]"


def _matrix_rows(matrix: np.ndarray) -> Iterator[bytes]:
    """`matrix` (2-D) as a JSON array of arrays of floats, a few rows per GIL hold."""
    rows_per_chunk = max(1, FLOATS_PER_CHUNK // max(1, matrix.shape[1]))
    yield b"["
    for start in range(0, matrix.shape[0], rows_per_chunk):
        if start:
            yield b","
        yield to_json(matrix[start : start + rows_per_chunk].tolist(), inf_nan_mode="null")[1:-1]
    yield b"]"


def embed_body(
    model: str,
    device: str,
    dense: Sequence[np.ndarray],
    sparse: Sequence[dict[str, float]] | None,
    tokens: int,
    *,
    normalize: bool,
) -> bytes:
    """`EmbedResponse` as JSON: the vectors stacked (float32), L2-normalised if asked."""
    matrix = np.stack(dense).astype(np.float32, copy=False)
    if normalize:
        matrix = normalize_rows(matrix)
    parts = [b'{"model":', to_json(model), b',"device":', to_json(device), b',"dense":']
    parts.extend(_matrix_rows(matrix))
    parts.append(b',"sparse":')
    parts.extend(_chunked_array(sparse, 8) if sparse is not None else [b"null"])
    parts.extend((b',"usage":{"tokens":', to_json(tokens), b"}}"))
    return b"".join(parts)


def rerank_body(
    model: str,
    device: str,
    logits: Sequence[float],
    texts: Sequence[str],
    *,
    normalize: bool,
    top_n: int | None,
    return_text: bool,
) -> bytes:
    """`RerankResponse` as JSON, best first; `text` only when asked for (None fields left out)."""
    scores = [sigmoid(s) for s in logits] if normalize else list(logits)
    results = [
        RerankResult(index=i, score=scores[i], text=texts[i] if return_text else None)
        for i in rank(scores, top_n)
    ]
    body = RerankResponse(model=model, device=device, results=results)  # type: ignore[arg-type]
    return body.model_dump_json(exclude_none=True).encode()
