"""What flows through the retrieval queues, and the small math around it: no torch here.

The service and the routes use these on the event loop; torch and the model code (`embedder`,
`reranker`, `tokens`) are imported only in the model-loading thread, so the app starts serving
before torch is even imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class InputTooLong(Exception):
    """A text (or query + text pair) exceeds the model's maximum length and truncation is off."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input {index} has {tokens} tokens, the model takes at most {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True, slots=True)
class EmbedItem:
    token_ids: list[int]
    want_sparse: bool


@dataclass(frozen=True, slots=True)
class EmbedOutput:
    dense: np.ndarray  # float32, not normalised
    sparse: dict[str, float] | None


@dataclass(frozen=True, slots=True)
class PairItem:
    token_ids: list[int]
    token_type_ids: list[int] | None


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise each row (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def sigmoid(x: float) -> float:
    """Logistic function that does not overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def rank(scores: list[float], top_n: int | None) -> list[int]:
    """Indices of `scores`, highest first (ties keep input order), cut to `top_n`."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order if top_n is None else order[:top_n]
