"""BGE-M3 embeddings: dense (CLS) vectors and sparse lexical weights, one forward pass per batch.

FlagEmbedding's `BGEM3FlagModel.encode` is built for offline corpora, and per call it casts the
model (`.float()` on CPU, for good: fp16 never comes back), moves it `.to(device)`, tokenises,
sorts, runs one extra *probe* forward pass to pick a batch size, and draws progress bars. A server
pays that on every request. So the sidecar keeps FlagEmbedding's model and BGE-M3 semantics but
drives them itself: tokens come from the admission path, the batcher sorts and budgets, placement
and dtype belong to `sidecar.devices`, and a batch is exactly one call of the M3 inference
module's forward (dense = CLS state, sparse = relu(sparse_linear) per token).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sidecar.retrieval.items import EmbedItem, EmbedOutput
from sidecar.retrieval.tokens import attention_mask, check_lengths, model_max_tokens, pad_rows

# BGE-M3 drops these from the lexical weights (FlagEmbedding's `_process_token_weights`).
_UNUSED_SPECIAL_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")


def lexical_weights(
    token_ids: np.ndarray, weights: np.ndarray, unused: np.ndarray
) -> dict[str, float]:
    """BGE-M3 sparse vector: positive weight per token id, max over repeats, specials removed."""
    keep = (weights > 0) & ~np.isin(token_ids, unused)
    ids, values = token_ids[keep], weights[keep]
    if ids.size == 0:
        return {}
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    unique_ids, starts = np.unique(ids, return_index=True)
    maxima = np.maximum.reduceat(values, starts)
    return {str(int(i)): float(w) for i, w in zip(unique_ids, maxima, strict=True)}


class Embedder:
    """A loaded BGE-M3 style model: tokenise on admission, `forward` one micro-batch."""

    def __init__(
        self, name: str, module: torch.nn.Module, tokenizer: Any, owner: Any = None
    ) -> None:
        self.name = name
        self.module = module  # FlagEmbedding's EncoderOnlyEmbedderM3ModelForInference
        # The module normalises itself when asked at construction; the request decides instead.
        self.module.normalize_embeddings = False  # type: ignore[assignment]
        self.tokenizer = tokenizer
        # FlagEmbedding's wrapper moves its model to the CPU in __del__: keep it alive with us.
        self._owner = owner
        self.max_tokens = model_max_tokens(tokenizer, module.model.config)  # type: ignore[union-attr]
        self.pad_id = int(tokenizer.pad_token_id)
        unused = {
            tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[token])
            for token in _UNUSED_SPECIAL_TOKENS
            if token in tokenizer.special_tokens_map
        }
        self.unused_ids = np.array(sorted(unused), dtype=np.int64)

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """Token ids per text (special tokens included); `InputTooLong` when over the limit."""
        encoded = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=truncate,
            max_length=self.max_tokens if truncate else None,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        if not truncate:
            check_lengths([len(ids) for ids in encoded], self.max_tokens)
        return [list(ids) for ids in encoded]

    @torch.inference_mode()
    def forward(self, batch: list[EmbedItem], device: torch.device) -> list[EmbedOutput]:
        rows = [item.token_ids for item in batch]
        want_sparse = any(item.want_sparse for item in batch)
        inputs = {
            "input_ids": pad_rows(rows, self.pad_id, device),
            "attention_mask": attention_mask(rows, device),
        }
        out = self.module(
            inputs, return_dense=True, return_sparse=want_sparse, return_sparse_embedding=False
        )
        dense = out["dense_vecs"].float().cpu().numpy()
        token_weights = (
            out["sparse_vecs"].squeeze(-1).float().cpu().numpy() if want_sparse else None
        )
        outputs = []
        for i, item in enumerate(batch):
            sparse = None
            if item.want_sparse and token_weights is not None:
                ids = np.asarray(item.token_ids, dtype=np.int64)
                sparse = lexical_weights(ids, token_weights[i, : ids.size], self.unused_ids)
            outputs.append(EmbedOutput(dense[i], sparse))
        return outputs
