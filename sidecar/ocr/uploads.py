"""The path guard of docs/api.md: which files `POST /ocr {"source": {"path": …}}` may read.

Relative paths resolve under the upload base; absolute ones only if they resolve inside it. The
raw path and every percent-decoded form must stay inside; the file is then opened once, walking
down from the base with O_NOFOLLOW, checked to be a regular file and read from that descriptor.
Every refusal is an `ApiError` (403 `path_forbidden`, 404 `document_not_found`, 413), never an
OSError: a path the process may not even inspect is refused, not a 500.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from urllib.parse import unquote

from sidecar.errors import ApiError

PATH_FORBIDDEN_DETAIL = "The path is outside the upload directory."
NOT_FOUND_DETAIL = "No document exists at that path in the upload directory."
_MAX_DECODE_ROUNDS = 3


def _canonical(base: str, user_path: str) -> str:
    candidate = user_path if os.path.isabs(user_path) else os.path.join(base, user_path)
    try:
        return os.path.realpath(os.path.abspath(candidate))
    except (OSError, ValueError):
        # realpath() reads every link on the way and raises where it may not: PermissionError on
        # another process's /proc/<pid>/root or /cwd, UnicodeEncodeError on a lone surrogate.
        # A path that cannot be resolved cannot be proved inside the base.
        raise ApiError("path_forbidden", PATH_FORBIDDEN_DETAIL) from None


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


NOT_REGULAR_DETAIL = "The path is not a regular file."
HARD_LINKED_DETAIL = "The file has more than one name (a hard link); it is not read."


def _open_beneath(base_real: str, resolved: str) -> tuple[int, os.stat_result]:
    """Open `resolved` walking down from the base with O_NOFOLLOW at every step.

    realpath() already proved containment; walking with dir_fd closes the window in which a
    directory on the way could be swapped for a symlink before the open. The last entry is
    lstat'ed first: a FIFO, socket or device node is refused without ever being opened (opening a
    device can have effects of its own). Returns the descriptor and its fstat.
    """
    parts = Path(os.path.relpath(resolved, base_real)).parts
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base_real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        entry = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(entry.st_mode):  # a link swapped in after realpath()
            raise ApiError("path_forbidden", PATH_FORBIDDEN_DETAIL)
        if not stat.S_ISREG(entry.st_mode):
            raise ApiError("document_not_found", NOT_REGULAR_DETAIL)
        # O_NONBLOCK: should a FIFO be swapped in after the lstat, the open must not hang.
        file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        file_fd = os.open(parts[-1], file_flags, dir_fd=fd)
    finally:
        os.close(fd)
    opened = os.fstat(file_fd)
    if (opened.st_dev, opened.st_ino) != (entry.st_dev, entry.st_ino):
        os.close(file_fd)
        raise ApiError("path_forbidden", PATH_FORBIDDEN_DETAIL)
    return file_fd, opened


def read_upload(base: Path, user_path: str, max_bytes: int) -> bytes:
    """Read a document under the upload base through one descriptor (blocking: use a thread)."""
    resolved = resolve_upload_path(base, user_path)
    base_real = os.path.realpath(os.path.abspath(base))
    try:
        fd, info = _open_beneath(base_real, resolved)
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
        # A hard link inside the base can name any file its maker could link to (/etc/shadow
        # on a shared filesystem); containment by path proves nothing about it.
        if info.st_nlink > 1:
            raise ApiError("path_forbidden", HARD_LINKED_DETAIL)
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
