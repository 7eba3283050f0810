"""`sidecar --key-file PATH`: use the keys in PATH, or create PATH with a fresh key first.

A fresh machine then needs no separate step to make a key: the first start writes one (mode 0600,
parent directories 0700) and shows it once on stderr, so the operator can hand it to the backend.
The file is then used exactly like `OCR_SIDECAR_API_KEY_FILE`, rotation included.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_BYTES = 32


def create_key_file(path: Path) -> str | None:
    """Write a new key to `path` when nothing is there; return it, or None when `path` exists."""
    if path.exists() or path.is_symlink():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(KEY_BYTES)
    # O_EXCL: never overwrite a file that appeared meanwhile; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key


def generated_key_notice(path: Path, key: str) -> str:
    """The one stderr line that shows a generated key (the only time it is ever shown)."""
    return f"sidecar: generated a new API key in {path} (mode 0600); send it as X-API-Key: {key}"
