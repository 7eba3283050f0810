"""`sidecar --help`, `--version` and the key file `--key-file` creates on a first start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from sidecar.config import read_key_file
from sidecar.key_file import create_key_file, generated_key_notice
from sidecar.version import VERSION


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_describes_the_flags_and_starts_nothing(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sidecar")
    assert "--key-file PATH" in result.stdout and "--version" in result.stdout
    assert "OCR_SIDECAR_" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / "var").exists()  # no upload base created: nothing ran


def test_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"sidecar {VERSION}")


def test_an_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("--port", "9", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --port 9" in result.stderr


def test_key_file_is_created_private_with_one_strong_key(tmp_path: Path) -> None:
    path = tmp_path / "var" / "secrets" / "api-key"
    key = create_key_file(path)
    assert key is not None
    assert read_key_file(path) == [key]  # passes the same checks as any configured key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    notice = generated_key_notice(path, key)
    assert "\n" not in notice and str(path) in notice and notice.endswith(key)


def test_an_existing_key_file_is_used_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text("# rotated 2026-11\n" + "k3y-" * 10 + "\n", encoding="utf-8")
    before = path.read_bytes()
    assert create_key_file(path) is None
    assert path.read_bytes() == before


def test_a_bad_key_file_is_a_configuration_error_and_no_key_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text("changeme\n", encoding="utf-8")
    result = run_cli("--key-file", str(path), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("sidecar: configuration error: OCR_SIDECAR_API_KEY_FILE")
    assert "changeme" not in result.stderr and result.stdout == ""
