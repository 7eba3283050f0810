"""The real `sidecar` process refuses a bad configuration before it binds its port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import ENV_EXAMPLE_PLACEHOLDER

EXIT_CONFIG_ERROR = 2


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A port we hold open: a sidecar that tried to bind it would fail with 'address in use'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_sidecar(env: dict[str, str], port: int, tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OCR_SIDECAR_")}
    clean.update({"OCR_SIDECAR_PORT": str(port), "OCR_SIDECAR_VRAM_SOURCE": "none"})
    (tmp_path / "uploads").mkdir(exist_ok=True)
    clean.setdefault("OCR_SIDECAR_UPLOAD_BASE", str(tmp_path / "uploads"))
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )


SHORT_SECRET = "Sh0rt-But-Unique-Secret"  # 23 chars


@pytest.mark.parametrize(
    ("env", "variable", "hint"),
    [
        ({}, "OCR_SIDECAR_API_KEY", "secrets.token_urlsafe"),
        ({"OCR_SIDECAR_API_KEY": ""}, "OCR_SIDECAR_API_KEY", "holds no key"),
        ({"OCR_SIDECAR_API_KEY": SHORT_SECRET}, "OCR_SIDECAR_API_KEY", "shorter than 32"),
        ({"OCR_SIDECAR_API_KEY": "changeme"}, "OCR_SIDECAR_API_KEY", "placeholder"),
        ({"OCR_SIDECAR_API_KEY": ENV_EXAMPLE_PLACEHOLDER}, "OCR_SIDECAR_API_KEY", "placeholder"),
        (
            {"OCR_SIDECAR_API_KEY": "k" * 10 + SHORT_SECRET, "OCR_SIDECAR_API_KEY_FILE": "/k"},
            "OCR_SIDECAR_API_KEY_FILE",
            "only one of",
        ),
        (
            {"OCR_SIDECAR_API_KEY_FILE": "/nonexistent/keys"},
            "OCR_SIDECAR_API_KEY_FILE",
            "cannot be read",
        ),
        ({"OCR_SIDECAR_AUTH_MODE": "network"}, "OCR_SIDECAR_TRUSTED_NETWORKS", "required"),
        (
            {"OCR_SIDECAR_AUTH_MODE": "network", "OCR_SIDECAR_TRUSTED_NETWORKS": "0.0.0.0/0"},
            "OCR_SIDECAR_TRUSTED_NETWORKS",
            "catch-all",
        ),
    ],
)
def test_bad_configuration_exits_before_binding(
    env: dict[str, str], variable: str, hint: str, occupied_port: int, tmp_path: Path
) -> None:
    result = run_sidecar(env, occupied_port, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG_ERROR, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("sidecar: configuration error: ") for line in lines)
    assert variable in result.stderr and hint in result.stderr
    # It never got as far as binding: no uvicorn banner, no 'address already in use'.
    assert "Uvicorn running" not in output and "address already in use" not in output.lower()
    assert "Traceback" not in output
    key = env.get("OCR_SIDECAR_API_KEY", "")
    if key:  # a key, even a refused one, is never echoed back
        assert key not in output


def test_upload_base_that_is_a_file_exits(occupied_port: int, tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    env = {
        "OCR_SIDECAR_API_KEY": "Vx9" + "abcdefghijklmnop" * 2,
        "OCR_SIDECAR_UPLOAD_BASE": str(a_file),
    }
    result = run_sidecar(env, occupied_port, tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "OCR_SIDECAR_UPLOAD_BASE exists but is not a directory" in result.stderr


def test_upload_base_typo_exits_and_creates_nothing(occupied_port: int, tmp_path: Path) -> None:
    typo = tmp_path / "uplaods"
    env = {
        "OCR_SIDECAR_API_KEY": "Vx9" + "abcdefghijklmnop" * 2,
        "OCR_SIDECAR_UPLOAD_BASE": str(typo),
    }
    result = run_sidecar(env, occupied_port, tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("sidecar: configuration error: OCR_SIDECAR_UPLOAD_BASE does not exist")
    assert not typo.exists()
