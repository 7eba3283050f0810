"""The installed distribution's version (standard library only: `sidecar --version` stays fast)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("ocr-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"
