"""Installing only `ocr-sidecar[backend]` gives a working `backend_client` and `ocr-backend`,
with no torch and no web server stack: a fresh virtual environment, built by `uv` from here.

`uv` resolves against its cache first (the same wheels the development environment uses), so the
install takes seconds. Skipped only where `uv` itself is missing, i.e. where no environment can be
built; CI has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("torch", "fastapi", "starlette", "uvicorn", "FlagEmbedding")
UV = shutil.which("uv")

pytestmark = pytest.mark.skipif(UV is None, reason="uv is not installed: no venv can be built")


def _run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing of the development venv (VIRTUAL_ENV, PYTHONPATH) leaks in.
    env = {
        key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    return subprocess.run(
        [str(part) for part in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def backend_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the project with the `[backend]` extra only (not editable)."""
    root = tmp_path_factory.mktemp("backend-only")
    venv = root / "venv"
    created = _run(UV or "uv", "venv", "--quiet", venv, cwd=root)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    installed = _run(
        UV or "uv", "pip", "install", "--quiet", "--python", python, f"{REPO}[backend]", cwd=root
    )
    assert installed.returncode == 0, installed.stderr
    return venv


def test_ocr_backend_help_runs(backend_venv: Path) -> None:
    result = _run(backend_venv / "bin" / "ocr-backend", "--help", cwd=backend_venv.parent)
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout
    assert "ocr" in result.stdout


def test_backend_client_imports_without_the_server_stack(backend_venv: Path) -> None:
    # -I: isolated mode, so the checkout on the current directory cannot shadow the install.
    probe = (
        "import importlib.util, sys\n"
        "import backend_client, backend_client.cli\n"
        f"missing = [name for name in {SERVER_ONLY!r} if importlib.util.find_spec(name) is None]\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in "
        f"{SERVER_ONLY!r})\n"
        "print(backend_client.__file__)\n"
        "print(','.join(missing))\n"
        "print(','.join(loaded))\n"
    )
    result = _run(backend_venv / "bin" / "python", "-I", "-c", probe, cwd=backend_venv.parent)
    assert result.returncode == 0, result.stderr
    location, missing, loaded = result.stdout.splitlines()
    assert Path(location).is_relative_to(backend_venv), location
    assert missing.split(",") == list(SERVER_ONLY)  # none of them is even installed
    assert loaded == ""
