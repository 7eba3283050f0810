"""Token-level helpers shared by the embedder and the reranker: length limits and padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sidecar.retrieval.items import InputTooLong

# Tokenizers without a real limit report a huge sentinel (1e30) as model_max_length.
_SENTINEL_LIMIT = 1_000_000
# Position-embedding tables of RoBERTa-family models (XLM-R: BGE-M3, bge-reranker) start after
# the padding index, so they hold `padding_idx + 1` fewer positions than their size.
_OFFSET_POSITION_MODELS = frozenset({"roberta", "xlm-roberta", "camembert"})


def model_max_tokens(tokenizer: Any, config: Any) -> int:
    """The longest sequence the model accepts, special tokens included."""
    limits: list[int] = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _SENTINEL_LIMIT:
        limits.append(tokenizer_limit)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(config, "model_type", "") in _OFFSET_POSITION_MODELS:
            positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
        limits.append(positions)
    if not limits:
        raise ValueError("cannot tell the model's maximum sequence length")
    return min(limits)


def check_lengths(lengths: Sequence[int], limit: int) -> None:
    for index, length in enumerate(lengths):
        if length > limit:
            raise InputTooLong(index, length, limit)


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int, device: torch.device) -> torch.Tensor:
    """Right-pad `rows` to the longest into one int64 tensor on `device`."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out.to(device)


def attention_mask(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """1 over each row's real tokens, 0 over its padding."""
    width = max(len(row) for row in rows)
    lengths = torch.as_tensor([len(row) for row in rows])
    return (torch.arange(width)[None, :] < lengths[:, None]).long().to(device)
