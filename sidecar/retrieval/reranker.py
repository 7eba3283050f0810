"""Cross-encoder reranking (bge-reranker-v2-m3): one relevance logit per (query, text) pair.

Same reasoning as the embedder: FlagReranker's `compute_score` re-casts and re-moves the model per
call, switches fp16 off for good after one CPU call, runs a probe forward pass and, on
Transformers 5, decodes and re-tokenises every pair one by one. Here the pairs are tokenised in one
fast-tokenizer call with FlagReranker's truncation rule (query at most 3/4 of the window, then the
text truncated to fit) and each micro-batch is one forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from sidecar.retrieval.items import PairItem
from sidecar.retrieval.tokens import attention_mask, check_lengths, model_max_tokens, pad_rows


class Reranker:
    """A loaded sequence-classification cross-encoder."""

    def __init__(
        self, name: str, module: torch.nn.Module, tokenizer: Any, owner: Any = None
    ) -> None:
        self.name = name
        self.module = module
        self.tokenizer = tokenizer
        self._owner = owner  # FlagReranker's __del__ moves the model: keep the wrapper alive
        self.max_tokens = model_max_tokens(tokenizer, module.config)  # type: ignore[union-attr]
        self.max_query_tokens = self.max_tokens * 3 // 4  # FlagReranker's default split
        self.pad_id = int(tokenizer.pad_token_id)
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names

    def tokenize(self, query: str, texts: list[str], truncate: bool) -> list[PairItem]:
        """One encoding per (query, text); `InputTooLong` (index into texts) when over the limit."""
        query_ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        if truncate and len(query_ids) > self.max_query_tokens:
            query = self.tokenizer.decode(query_ids[: self.max_query_tokens])
        encoded = self.tokenizer(
            [query] * len(texts),
            texts,
            truncation="only_second" if truncate else False,
            max_length=self.max_tokens if truncate else None,
            return_attention_mask=False,
            return_token_type_ids=self.uses_token_types,
        )
        ids = encoded["input_ids"]
        if not truncate:
            check_lengths([len(row) for row in ids], self.max_tokens)
        types = encoded["token_type_ids"] if self.uses_token_types else [None] * len(ids)
        return [
            PairItem(list(row), list(kinds) if kinds is not None else None)
            for row, kinds in zip(ids, types, strict=True)
        ]

    @torch.inference_mode()
    def forward(self, batch: list[PairItem], device: torch.device) -> list[float]:
        """Raw relevance logits, in batch order."""
        rows = [item.token_ids for item in batch]
        inputs = {
            "input_ids": pad_rows(rows, self.pad_id, device),
            "attention_mask": attention_mask(rows, device),
        }
        if self.uses_token_types:
            types = [item.token_type_ids or [0] * len(item.token_ids) for item in batch]
            inputs["token_type_ids"] = pad_rows(types, 0, device)
        logits = self.module(**inputs, return_dict=True).logits
        # A reranker head has one output; for a wider (untrained) head the first is the score.
        return logits[:, 0].float().cpu().tolist()
