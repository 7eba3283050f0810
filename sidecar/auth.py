"""Who may call the sidecar: API keys, the network allowlist, and the middleware enforcing both.

- `KeyStore`: SHA-256 digests of every configured key, compared in constant time. With
  `OCR_SIDECAR_API_KEY_FILE` the file is re-checked at most twice a second, in a worker thread (the
  event loop never runs a `stat`), and re-read when its mtime, size or inode changed, so a key
  rotates with no restart whether ops rewrite the file in place or replace it by rename. A bad new
  file keeps the old keys (and logs an error) rather than locking every client out.
- `AuthMiddleware`: enforces `OCR_SIDECAR_AUTH_MODE` on every path but /live and /ready, before
  anything reads the request body.

This module knows nothing of the app context, so `context.py` can name `KeyStore` without a cycle.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.config import IpNetwork, Settings, read_key_file
from sidecar.errors import ApiError, problem_response
from sidecar.limits import answer_unread
from sidecar.observability import Metrics

logger = logging.getLogger("sidecar.auth")

API_KEY_HEADER = "x-api-key"
UNAUTHORIZED_DETAIL = "A valid X-API-Key header is required."
FORBIDDEN_NETWORK_DETAIL = "Requests from this network are not accepted."
# A removed key stops working at most this long (plus one `stat`) after the file changed. Half a
# second keeps that under the 1 s rotation goal (issue 12) on a loaded host, measured at ~1.2 s
# with a 1 s interval; one `stat` in a worker thread twice a second costs nothing measurable.
KEY_FILE_RECHECK_S = 0.5


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _FileStamp | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return cls(info.st_mtime_ns, info.st_size, info.st_ino)


def recheck_due(now: float, last_check: float | None, interval: float) -> bool:
    """Is the key file due for a `stat`? Never checked yet, or `interval` has passed."""
    return last_check is None or now - last_check >= interval


class KeyStore:
    """The accepted API keys, held only as SHA-256 digests."""

    def __init__(
        self,
        keys: Sequence[str] = (),
        key_file: Path | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key_file = key_file
        self._metrics = metrics
        self._clock = clock
        self._stamp: _FileStamp | None = None
        self._last_check: float | None = None
        # The one re-check in flight; every request arriving meanwhile waits on it too, so no
        # request after the bound is answered with keys older than the file.
        self._recheck: asyncio.Future[None] | None = None
        self._digests: tuple[bytes, ...] = tuple(_digest(key) for key in keys)
        if key_file is not None:
            self._stamp = _FileStamp.of(key_file)
            self._digests = tuple(_digest(key) for key in read_key_file(key_file))
            self._last_check = clock()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> KeyStore:
        return cls(settings.configured_keys(), settings.api_key_file, metrics)

    def _reload_if_changed(self, key_file: Path) -> None:
        """Blocking (`stat`, maybe a read): runs in a worker thread, one at a time. Never raises:
        `stat` errors read as "no file" and `read_key_file` turns every problem into ValueError."""
        stamp = _FileStamp.of(key_file)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = read_key_file(key_file)
        except ValueError as exc:
            # Keep serving with the old keys: a typo during rotation must not lock out everyone.
            logger.error("API key file rejected, keeping the previous keys: %s", exc)
            self._count_reload("rejected")
            return
        self._digests = tuple(_digest(key) for key in keys)
        logger.info("API key file reloaded", extra={"keys": len(keys)})
        self._count_reload("ok")

    def _count_reload(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.key_reloads.labels(outcome).inc()

    async def _refresh(self) -> None:
        if self._key_file is None:
            return
        if self._recheck is None:
            if not recheck_due(self._clock(), self._last_check, KEY_FILE_RECHECK_S):
                return
            self._last_check = self._clock()
            recheck = asyncio.ensure_future(
                asyncio.to_thread(self._reload_if_changed, self._key_file)
            )
            self._recheck = recheck
            recheck.add_done_callback(self._recheck_done)
        # shield: a client that disconnects must not cancel the re-check others wait on.
        await asyncio.shield(self._recheck)

    def _recheck_done(self, _recheck: asyncio.Future[None]) -> None:
        self._recheck = None

    def matches(self, presented: str | None) -> bool:
        """Is `presented` one of the keys held now? (No file check: see `verify`.)"""
        candidate = _digest(presented or "")
        # Compare against every digest, no early exit: timing reveals nothing about which matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched and bool(presented)

    async def verify(self, presented: str | None) -> bool:
        """Is `presented` a current key? Re-checks the key file first when a check is due."""
        await self._refresh()
        return self.matches(presented)


def client_in_networks(host: str | None, networks: Sequence[IpNetwork]) -> bool:
    """Is the TCP peer inside one of the networks? Proxy headers are never consulted."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


PUBLIC_PATHS = frozenset({"/live", "/ready"})


class AuthMiddleware:
    """Every path but /live and /ready is checked here, before routing: FastAPI would read and
    parse a JSON body before a route's dependencies run, so a dependency is too late.

    Order: 403 `forbidden_network` (the peer is outside the allowlist), then 401 `unauthorized`.
    """

    def __init__(self, app: ASGIApp, settings: Settings, keys: KeyStore, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.keys = keys
        self.metrics = metrics

    async def _refusal(self, request: Request) -> ApiError | None:
        settings = self.settings
        peer = request.client.host if request.client else None
        if settings.requires_network and not client_in_networks(peer, settings.trusted_networks):
            self.metrics.auth_failures.labels("network").inc()
            return ApiError("forbidden_network", FORBIDDEN_NETWORK_DETAIL)
        if settings.requires_key and not await self.keys.verify(
            request.headers.get(API_KEY_HEADER)
        ):
            self.metrics.auth_failures.labels("api_key").inc()
            return ApiError("unauthorized", UNAUTHORIZED_DETAIL)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        error = await self._refusal(request)
        if error is not None:
            response = problem_response(request, error.code, error.detail)
            await answer_unread(response, scope, receive, send)
            return
        await self.app(scope, receive, send)
