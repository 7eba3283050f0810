"""Who may call the sidecar, and which files `/ocr` may read.

- `KeyStore`: SHA-256 digests of every configured key, compared in constant time. With
  `OCR_SIDECAR_API_KEY_FILE` the file is re-read when its mtime, size or inode changes, so a key
  rotates with no restart, whether ops rewrite the file in place or replace it by rename. A bad new
  file keeps the old keys (and logs an error) rather than locking every client out.
- `AuthMiddleware`: enforces `OCR_SIDECAR_AUTH_MODE` on every path but /live and /ready, before
  anything reads the request body.
- `read_upload`: the path guard of DESIGN.md §4.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.config import IpNetwork, Settings, read_key_file
from sidecar.context import AppContext
from sidecar.errors import ApiError, problem_response
from sidecar.observability import Metrics

logger = logging.getLogger("sidecar.security")

API_KEY_HEADER = "x-api-key"
UNAUTHORIZED_DETAIL = "A valid X-API-Key header is required."
FORBIDDEN_NETWORK_DETAIL = "Requests from this network are not accepted."


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


class KeyStore:
    """The accepted API keys, held only as SHA-256 digests."""

    def __init__(
        self, keys: Sequence[str] = (), key_file: Path | None = None, metrics: Metrics | None = None
    ) -> None:
        self._key_file = key_file
        self._metrics = metrics
        self._lock = threading.Lock()
        self._stamp: _FileStamp | None = None
        self._digests: tuple[bytes, ...] = tuple(_digest(key) for key in keys)
        if key_file is not None:
            self._stamp = _FileStamp.of(key_file)
            self._digests = tuple(_digest(key) for key in read_key_file(key_file))

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> KeyStore:
        return cls(settings.configured_keys(), settings.api_key_file, metrics)

    @property
    def key_count(self) -> int:
        return len(self._digests)

    def _reload_if_changed(self) -> None:
        if self._key_file is None:
            return
        stamp = _FileStamp.of(self._key_file)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                keys = read_key_file(self._key_file)
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

    def verify(self, presented: str | None) -> bool:
        self._reload_if_changed()
        candidate = _digest(presented or "")
        # Compare against every digest, no early exit: timing reveals nothing about which matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched and bool(presented)


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


def check_access(ctx: AppContext, peer: str | None, presented_key: str | None) -> None:
    """Enforce the auth mode: ApiError 403 `forbidden_network`, then 401 `unauthorized`."""
    settings = ctx.settings
    if settings.requires_network and not client_in_networks(peer, settings.trusted_networks):
        ctx.metrics.auth_failures.labels("network").inc()
        raise ApiError("forbidden_network", FORBIDDEN_NETWORK_DETAIL)
    if settings.requires_key and not ctx.keys.verify(presented_key):
        ctx.metrics.auth_failures.labels("api_key").inc()
        raise ApiError("unauthorized", UNAUTHORIZED_DETAIL)


class AuthMiddleware:
    """Every path but /live and /ready is checked here, before routing: FastAPI would read and
    parse a JSON body before a route's dependencies run, so a dependency is too late."""

    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        peer = request.client.host if request.client else None
        try:
            check_access(self.ctx, peer, request.headers.get(API_KEY_HEADER))
        except ApiError as error:
            response = problem_response(request, error.code, error.detail)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- path guard -------------------------------------------------------------------------------

PATH_FORBIDDEN_DETAIL = "The path is outside the upload directory."
NOT_FOUND_DETAIL = "No document exists at that path in the upload directory."
_MAX_DECODE_ROUNDS = 3


def _canonical(base: str, user_path: str) -> str:
    candidate = user_path if os.path.isabs(user_path) else os.path.join(base, user_path)
    return os.path.realpath(os.path.abspath(candidate))


def _inside(base: str, resolved: str) -> bool:
    try:
        return os.path.commonpath([base, resolved]) == base
    except ValueError:  # different drives or mixed absolute/relative: never inside
        return False


def resolve_upload_path(base: Path, user_path: str) -> str:
    """Canonical path of `user_path` inside `base`, or ApiError(path_forbidden).

    The raw path and every percent-decoded form of it must stay inside the base, so a proxy or
    client that decodes `%2e%2e%2f` later cannot be steered outside.
    """
    base_real = os.path.realpath(os.path.abspath(base))
    forms = [user_path]
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    for form in forms:
        if not form or "\x00" in form:
            raise ApiError("path_forbidden", PATH_FORBIDDEN_DETAIL)
        if not _inside(base_real, _canonical(base_real, form)):
            raise ApiError("path_forbidden", PATH_FORBIDDEN_DETAIL)
    resolved = _canonical(base_real, user_path)
    if resolved == base_real:
        raise ApiError("document_not_found", NOT_FOUND_DETAIL)
    return resolved


def _open_beneath(base_real: str, resolved: str) -> int:
    """Open `resolved` walking down from the base with O_NOFOLLOW at every step.

    realpath() already proved containment; walking with dir_fd closes the window in which a
    directory on the way could be swapped for a symlink before the open.
    """
    parts = Path(os.path.relpath(resolved, base_real)).parts
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base_real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        # O_NONBLOCK: opening a FIFO planted in the base must not hang the worker.
        file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        return os.open(parts[-1], file_flags, dir_fd=fd)
    finally:
        os.close(fd)


def read_upload(base: Path, user_path: str, max_bytes: int) -> bytes:
    """Read a document under the upload base through one descriptor (blocking: use a thread)."""
    resolved = resolve_upload_path(base, user_path)
    base_real = os.path.realpath(os.path.abspath(base))
    try:
        fd = _open_beneath(base_real, resolved)
    except FileNotFoundError:
        raise ApiError("document_not_found", NOT_FOUND_DETAIL) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
            raise ApiError("path_forbidden", PATH_FORBIDDEN_DETAIL) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise ApiError("path_forbidden", "The path is too long.") from None
        # EACCES, EPERM, ENXIO (a socket), …: whatever sits there is not a readable document.
        raise ApiError("document_not_found", "The document cannot be read.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ApiError("document_not_found", "The path is not a regular file.")
        if info.st_size > max_bytes:
            raise ApiError("payload_too_large", _too_large(max_bytes))
        data = _read_at_most(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # the file grew after fstat
        raise ApiError("payload_too_large", _too_large(max_bytes))
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> str:
    return f"The document is larger than the {max_bytes // (1024 * 1024)} MB limit."
