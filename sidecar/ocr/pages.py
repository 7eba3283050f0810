"""Which pages of a document a job reads, and their rendering one page ahead of Ollama.

`select_pages` checks the request's `pages` against the document (413 over `MAX_PAGES`, 422 for a
page twice or beyond the end). `PagePrefetch` renders page n+1 in a worker thread while Ollama
reads page n, and holds at most that one image: a page's image is dropped once its page is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from sidecar.errors import ApiError
from sidecar.ocr.documents import Document, PageImage


def check_page_limit(requested: Sequence[int] | None, max_pages: int) -> None:
    if requested is not None and len(requested) > max_pages:
        raise ApiError(
            "too_many_pages", f"{len(requested)} pages requested; the limit is {max_pages}."
        )


def select_pages(requested: Sequence[int] | None, page_count: int, max_pages: int) -> list[int]:
    """1-based page numbers to process: all when none are named; 413 over MAX_PAGES."""
    if requested is None:
        if page_count > max_pages:
            raise ApiError(
                "too_many_pages",
                f"The document has {page_count} pages, more than the {max_pages}-page limit; "
                "name the pages to read in `pages`.",
            )
        return list(range(1, page_count + 1))
    check_page_limit(requested, max_pages)
    seen: set[int] = set()
    for number in requested:
        if number in seen:
            raise ApiError("validation_error", f"pages: page {number} is listed twice")
        if number > page_count:
            raise ApiError(
                "validation_error",
                f"pages: page {number} does not exist; the document has {page_count} "
                f"page{'s' if page_count != 1 else ''}",
            )
        seen.add(number)
    return list(requested)


def _timed_render(document: Document, number: int, with_anchor: bool) -> tuple[PageImage, float]:
    started = time.perf_counter()
    page = document.render(number, with_anchor=with_anchor)
    return page, time.perf_counter() - started


class PagePrefetch:
    """Renders `numbers` in order, one page ahead; `close()` before the document is closed."""

    def __init__(self, document: Document, numbers: Sequence[int], *, with_anchor: bool) -> None:
        self._document = document
        self._numbers = list(numbers)
        self._with_anchor = with_anchor
        self._next_index = 0
        self._pending: asyncio.Task[tuple[PageImage, float]] | None = None
        self._started: list[asyncio.Task[tuple[PageImage, float]]] = []  # renders maybe running
        self.render_seconds = 0.0
        self._start_next()  # page 1 renders while the job waits for its slot

    def _start_next(self) -> None:
        if self._next_index >= len(self._numbers):
            self._pending = None
            return
        number = self._numbers[self._next_index]
        self._next_index += 1
        self._pending = asyncio.create_task(
            asyncio.to_thread(_timed_render, self._document, number, self._with_anchor),
            name=f"render-page-{number}",
        )
        self._started = [task for task in self._started if not task.done()] + [self._pending]

    async def next_page(self) -> PageImage:
        """The next page's image (rendering the one after it meanwhile)."""
        if self._pending is None:
            raise IndexError("no page left to render")
        pending = self._pending
        self._start_next()
        # shielded: a cancelled job must not cancel the task while its thread still renders,
        # or close() would not wait for it and the document would close under the thread
        page, seconds = await asyncio.shield(pending)
        self.render_seconds += seconds
        return page

    def skip(self) -> None:
        """Stop rendering ahead: the remaining pages will not be read."""
        self._next_index = len(self._numbers)

    async def close(self) -> None:
        """Wait for the renders in flight (a thread cannot be cancelled) and drop their images."""
        self.skip()
        for task in self._started:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)
        self._started.clear()
        self._pending = None
