"""The retrieval capability: model loading, placement, batching, and the /embed and /rerank logic.

`start()` returns at once: the models load in worker threads (`asyncio.to_thread`), then each is
placed by `sidecar.devices` and gets its own micro-batcher. Until a model is in, its route answers
503 `not_ready` and `/ready` names it; a model that failed to load stays failed (with the reason
and the variable to change) while the process keeps serving everything else.

Importing this module imports no torch: the model code and `sidecar.devices` are imported by the
loading thread, so the server answers /live before torch has even been read from disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from sidecar.config import ENV_PREFIX, Settings
from sidecar.errors import ApiError
from sidecar.lifecycle import in_daemon_thread
from sidecar.observability import Metrics
from sidecar.readiness import Problem
from sidecar.retrieval import replies
from sidecar.retrieval.batcher import BatcherClosed, BatchOutput, Completed, MicroBatcher
from sidecar.retrieval.items import EmbedItem, EmbedOutput, InputTooLong, PairItem
from sidecar.retrieval.loading import (
    describe_load_error,
    display_name,
    load_embedder,
    load_reranker,
)
from sidecar.schemas import EmbedRequest, RerankRequest
from sidecar.vram_monitor import VramMonitor

if TYPE_CHECKING:
    from sidecar.devices import DeviceManager, OllamaView, PlacedModel, PlacementWatcher
    from sidecar.retrieval.embedder import Embedder
    from sidecar.retrieval.reranker import Reranker

logger = logging.getLogger("sidecar.retrieval")

Kind = Literal["embed", "rerank"]
ModelT = TypeVar("ModelT", "Embedder", "Reranker")
# The setting that names each model: what a failed load tells the operator to change.
MODEL_VARIABLE = {"embed": f"{ENV_PREFIX}EMBED_MODEL", "rerank": f"{ENV_PREFIX}RERANK_MODEL"}
NOT_READY_RETRY_S = "5"
# Texts (or pairs) that may wait for the model, in units of MAX_INPUTS.
QUEUE_REQUESTS_WORTH = 4
# Requests up to this many texts and characters are tokenised on the event loop (about a
# millisecond on a busy 2-core host; 256 short texts or 4096 characters took 9-16 ms there).
INLINE_TOKENIZE_CHARS = 512
INLINE_TOKENIZE_TEXTS = 8


@dataclass(slots=True)
class Reply:
    """A route's JSON body, serialised in the batch worker thread, plus where the work ran (for
    the X-Compute-Device headers)."""

    body: bytes
    device: str
    reason: str


@dataclass(eq=False)
class _Slot(Generic[ModelT]):
    kind: Kind
    name: str
    loader: Callable[[str], ModelT]
    model: ModelT | None = None
    placed: PlacedModel | None = None
    batcher: MicroBatcher[Any, Any] | None = None
    error: str | None = None
    loading: bool = True

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": display_name(self.name),
            "loaded": self.placed is not None,
            "error": self.error,
        }
        if self.placed is not None:
            info.update(self.placed.describe())
        else:
            info["device"] = None
        return info


def device_manager_from_settings(
    settings: Settings,
    vram: VramMonitor,
    metrics: Metrics,
    ollama_view: OllamaView | None = None,
) -> DeviceManager:
    """The placement manager the settings describe; `ollama_view` (the OCR pipeline) tells it
    whether the LLM is loaded and the OCR model's footprint (None: unknown, the reserve holds)."""
    from sidecar.devices import DeviceManager  # imports torch: called from the loading thread

    return DeviceManager(
        vram,
        metrics,
        mode=settings.model_device,
        pressure_pct=settings.vram_pressure_pct,
        llm_reserve_mib=settings.llm_reserve_mib,
        ollama_view=ollama_view,
    )


class RetrievalService:
    def __init__(
        self,
        settings: Settings,
        vram: VramMonitor,
        metrics: Metrics,
        *,
        embed_loader: Callable[[str], Embedder] = load_embedder,
        rerank_loader: Callable[[str], Reranker] = load_reranker,
        devices: DeviceManager | None = None,
        ollama_view: OllamaView | None = None,
        watch_interval_s: float | None = None,
        max_queued_items: int | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._given_devices = devices
        self._build_devices = lambda: device_manager_from_settings(
            settings, vram, metrics, ollama_view
        )
        self._watch_interval_s = watch_interval_s
        self._watcher: PlacementWatcher | None = None
        self.max_queued_items = max_queued_items or QUEUE_REQUESTS_WORTH * settings.max_inputs
        self.embed_slot: _Slot[Embedder] = _Slot("embed", settings.embed_model, embed_loader)
        self.rerank_slot: _Slot[Reranker] = _Slot("rerank", settings.rerank_model, rerank_loader)
        # Fast tokenizers must not be called from two threads at once ("Already borrowed"):
        # one lock for both tokenizers, one thread for the big requests.
        self._tokenizer_lock = threading.Lock()
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self._load_task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    @cached_property
    def devices(self) -> DeviceManager:
        """The placement manager, built on first use (in the loading thread: it imports torch)."""
        if self._given_devices is not None:
            return self._given_devices
        return self._build_devices()

    # lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load_all(), name="retrieval-load")

    async def wait_loaded(self) -> None:
        """Return once every model has loaded or failed (tests and benchmarks wait on this)."""
        await self.loaded.wait()

    async def _load_all(self) -> None:
        try:
            await self._load(self.embed_slot, self._embed_batch)
            await self._load(self.rerank_slot, self._rerank_batch)
            if self.embed_slot.placed or self.rerank_slot.placed:
                self._watcher = await asyncio.to_thread(self._start_watcher)
        finally:
            self.loaded.set()

    def _start_watcher(self) -> PlacementWatcher:
        from sidecar.devices import PlacementWatcher

        interval = self._watch_interval_s
        watcher = (
            PlacementWatcher(self.devices)
            if interval is None
            else PlacementWatcher(self.devices, interval)
        )
        watcher.start()
        return watcher

    def _place(self, kind: Kind, module: Any) -> PlacedModel:
        return self.devices.add(kind, module)

    async def _load(
        self, slot: _Slot[Any], runner: Callable[[list[Any]], BatchOutput[Any]]
    ) -> None:
        try:
            # Daemon threads: a SIGTERM during a load must not wait for it (sidecar.lifecycle).
            model = await in_daemon_thread(slot.loader, slot.name, name=f"load-{slot.kind}")
            placed = await in_daemon_thread(self._place, slot.kind, model.module)
        except Exception as exc:
            slot.error = describe_load_error(exc)
            logger.error(
                "%s model failed to load",
                slot.kind,
                extra={"model": slot.name, "error": slot.error},
            )
            return
        finally:
            slot.loading = False
        batcher: MicroBatcher[Any, Any] = MicroBatcher(
            slot.kind,
            runner,
            max_batch_tokens=self.settings.embed_max_batch_tokens,
            max_queued_items=self.max_queued_items,
            metrics=self.metrics,
        )
        batcher.start()
        slot.model, slot.placed, slot.batcher = model, placed, batcher
        logger.info(
            "%s model ready", slot.kind, extra={"model": slot.name, "device": placed.device}
        )

    async def close(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # a load already in its thread finishes there, unused
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)  # joins the thread: not on the loop
        for slot in (self.embed_slot, self.rerank_slot):
            if slot.batcher is not None:
                await asyncio.to_thread(slot.batcher.close)
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    # status ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`models` section of /health: per model name, device, loaded, error."""
        return {slot.kind: slot.describe() for slot in (self.embed_slot, self.rerank_slot)}

    def ready_problems(self) -> list[Problem]:
        problems = []
        for slot in (self.embed_slot, self.rerank_slot):
            shown = display_name(slot.name)
            if slot.loading:
                problems.append(Problem(f"{slot.kind} model {shown} is loading", clears=True))
            elif slot.error is not None:
                reason = (
                    f"{slot.kind} model {shown} failed to load: {slot.error.rstrip('.')}; set "
                    f"{MODEL_VARIABLE[slot.kind]} to a model id the hub serves or a local "
                    "model directory, then restart"
                )
                problems.append(Problem(reason, clears=False))
        return problems

    def queue_stats(self) -> dict[str, int]:
        return {
            slot.kind: slot.batcher.depth if slot.batcher else 0
            for slot in (self.embed_slot, self.rerank_slot)
        }

    # batch runners (worker threads) ------------------------------------------------------------

    def _embed_batch(self, batch: list[EmbedItem]) -> BatchOutput[EmbedOutput]:
        model, placed = self.embed_slot.model, self.embed_slot.placed
        assert model is not None and placed is not None
        outputs, device, reason = self.devices.run(placed, lambda dev: model.forward(batch, dev))
        return BatchOutput(outputs, device, reason)

    def _rerank_batch(self, batch: list[PairItem]) -> BatchOutput[float]:
        model, placed = self.rerank_slot.model, self.rerank_slot.placed
        assert model is not None and placed is not None
        outputs, device, reason = self.devices.run(placed, lambda dev: model.forward(batch, dev))
        return BatchOutput(outputs, device, reason)

    # requests --------------------------------------------------------------------------------

    def _check_count(self, count: int, what: str) -> None:
        if count > self.settings.max_inputs:
            raise ApiError(
                "too_many_inputs",
                f"{count} {what} in one request; the limit is {self.settings.max_inputs} "
                "(OCR_SIDECAR_MAX_INPUTS): split the request",
            )

    @staticmethod
    def _ready(slot: _Slot[ModelT]) -> tuple[ModelT, MicroBatcher[Any, Any]]:
        if slot.model is None or slot.batcher is None:
            if slot.loading:
                raise ApiError(
                    "not_ready",
                    f"the {slot.kind} model is still loading",
                    headers={"Retry-After": NOT_READY_RETRY_S},
                )
            # No Retry-After: a failed load does not clear until the operator fixes it.
            raise ApiError("not_ready", f"the {slot.kind} model failed to load (see /ready)")
        return slot.model, slot.batcher

    def _tokenize_locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._tokenizer_lock:
            return fn(*args)

    async def _tokenize(
        self, fn: Callable[..., Any], *args: Any, texts: int, chars: int, what: str
    ) -> Any:
        """Tokenise small requests right here (no thread hop) when the tokenizer is free; big
        ones, or when it is busy, in the tokenizer thread so the event loop never stalls."""
        try:
            small = texts <= INLINE_TOKENIZE_TEXTS and chars <= INLINE_TOKENIZE_CHARS
            if small and self._tokenizer_lock.acquire(blocking=False):
                try:
                    return fn(*args)
                finally:
                    self._tokenizer_lock.release()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._tokenize_pool, self._tokenize_locked, fn, *args)
        except InputTooLong as exc:
            raise ApiError(
                "input_too_long",
                f"{what}[{exc.index}] is {exc.tokens} tokens; the model takes at most {exc.limit}. "
                "Shorten it or send truncate=true",
            ) from None

    @contextmanager
    def _admitted(self, batcher: MicroBatcher[Any, Any], count: int) -> Iterator[None]:
        """The batcher's admission (429 `Overloaded` before tokenising when the queue is full)."""
        try:
            with batcher.admission(count):
                yield
        except BatcherClosed:
            raise self._shutting_down() from None

    @staticmethod
    def _shutting_down() -> ApiError:
        return ApiError("not_ready", "the sidecar is shutting down", headers={"Retry-After": "5"})

    async def _submit(
        self,
        batcher: MicroBatcher[Any, Any],
        payloads: Sequence[Any],
        lengths: Sequence[int],
        finish: Callable[[Completed[Any]], Reply],
    ) -> Reply:
        """Queue the items; `finish` builds the reply in the batch worker thread, so the event
        loop never serialises a response body."""
        try:
            return await batcher.submit(payloads, lengths, finish)
        except BatcherClosed:
            raise self._shutting_down() from None

    async def embed(self, request: EmbedRequest) -> Reply:
        self._check_count(len(request.inputs), "inputs")
        model, batcher = self._ready(self.embed_slot)
        with self._admitted(batcher, len(request.inputs)):
            token_ids: list[list[int]] = await self._tokenize(
                model.tokenize,
                request.inputs,
                request.truncate,
                texts=len(request.inputs),
                chars=sum(len(text) for text in request.inputs),
                what="inputs",
            )
        name, tokens = display_name(model.name), sum(len(ids) for ids in token_ids)

        def finish(done: Completed[EmbedOutput]) -> Reply:  # runs in the batch worker thread
            sparse = [o.sparse or {} for o in done.outputs] if request.return_sparse else None
            dense = [output.dense for output in done.outputs]
            body = replies.embed_body(
                name, done.device, dense, sparse, tokens, normalize=request.normalize
            )
            return Reply(body, done.device, done.reason)

        items = [EmbedItem(ids, request.return_sparse) for ids in token_ids]
        return await self._submit(batcher, items, [len(ids) for ids in token_ids], finish)

    async def rerank(self, request: RerankRequest) -> Reply:
        self._check_count(len(request.texts), "texts")
        model, batcher = self._ready(self.rerank_slot)
        with self._admitted(batcher, len(request.texts)):
            pairs: list[PairItem] = await self._tokenize(
                model.tokenize,
                request.query,
                request.texts,
                request.truncate,
                texts=len(request.texts),
                chars=len(request.query) * len(request.texts) + sum(len(t) for t in request.texts),
                what="texts",
            )
        name = display_name(model.name)

        def finish(done: Completed[float]) -> Reply:  # runs in the batch worker thread
            body = replies.rerank_body(
                name,
                done.device,
                done.outputs,
                request.texts,
                normalize=request.normalize,
                top_n=request.top_n,
                return_text=request.return_text,
            )
            return Reply(body, done.device, done.reason)

        return await self._submit(batcher, pairs, [len(pair.token_ids) for pair in pairs], finish)
