"""Load the embedder and reranker with FlagEmbedding from a hub id or a local directory.

Loading runs in a worker thread (the lifespan calls these through `asyncio.to_thread`); the heavy
FlagEmbedding import happens here too, so the app starts serving /live at once. Models load in
fp32 on the CPU; `sidecar.devices` then places them (and casts to fp16 on the GPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.errors import redact_paths

if TYPE_CHECKING:
    from sidecar.retrieval.embedder import Embedder
    from sidecar.retrieval.reranker import Reranker

_MAX_REASON = 200


class ModelSourceMissing(FileNotFoundError):
    """The configured model is a local path that does not exist."""


def check_model_source(name: str) -> None:
    """Fail early with a clear reason when `name` is a local path that is not there."""
    if looks_local(name) and not Path(name).expanduser().is_dir():
        raise ModelSourceMissing("no model directory at the configured path")


def load_embedder(name: str) -> Embedder:
    check_model_source(name)
    from FlagEmbedding import BGEM3FlagModel

    from sidecar.retrieval.embedder import Embedder

    flag = BGEM3FlagModel(name, use_fp16=False, devices="cpu", normalize_embeddings=False)
    return Embedder(name, flag.model, flag.tokenizer, owner=flag)


def load_reranker(name: str) -> Reranker:
    check_model_source(name)
    from FlagEmbedding import FlagReranker

    from sidecar.retrieval.reranker import Reranker

    flag = FlagReranker(name, use_fp16=False, devices="cpu")
    return Reranker(name, flag.model, flag.tokenizer, owner=flag)


def looks_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~"))


def display_name(name: str) -> str:
    """How /ready and /health name a model: the hub id, or a local directory's last part only."""
    return f".../{Path(name).name}" if looks_local(name) else name


def describe_load_error(exc: BaseException) -> str:
    """A short reason for /ready (unauthenticated): the exception type and its first line with
    filesystem paths blanked out (hub caches and install paths are nobody's business)."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    message = redact_paths(first_line)
    if len(message) > _MAX_REASON:
        message = message[: _MAX_REASON - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
