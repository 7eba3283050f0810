"""Fixtures shared by every test package: settings, keys, and a served sidecar app."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Tests never assert wall-clock time, and Hypothesis' per-example deadline and its "generation is
# slow" health check are exactly that: a busy or slow CI host failed a property test on them.
settings.register_profile(
    "no-clock", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("no-clock")

# No test may reach a model hub; the retrieval tests load the packaged MiniLM model from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Settings read OCR_SIDECAR_* from the environment: a developer's shell must not leak into tests.
for _name in [name for name in os.environ if name.startswith("OCR_SIDECAR_")]:
    del os.environ[_name]

from sidecar.config import Settings  # noqa: E402


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def api_key() -> str:
    return new_api_key()


@pytest.fixture
def upload_base(tmp_path: Path) -> Path:
    base = tmp_path / "uploads"
    base.mkdir(mode=0o700)
    return base


@pytest.fixture
def make_settings(api_key: str, upload_base: Path) -> Callable[..., Settings]:
    """Settings for a test app: a fresh key, a tmp upload base, no GPU; override anything."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_key": api_key,
            "upload_base": upload_base,
            "vram_source": "none",
            "log_format": "text",
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
