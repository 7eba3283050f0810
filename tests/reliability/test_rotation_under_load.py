"""Key rotation while 32 clients call: no failed request during the overlap, the old key refused
soon after its removal (the bench records how soon; the file is re-checked twice a second)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import new_api_key
from tests.deploy.sidecar_process import sidecar_env
from tests.reliability.processes import RunningSidecar, running_sidecar
from tests.reliability.rotation import replace_key_file, rotate_under_load
from tests.server import free_port

CLIENTS = 32


@pytest.fixture
def old_key() -> str:
    return new_api_key()


@pytest.fixture
def key_file(tmp_path: Path, old_key: str) -> Path:
    path = tmp_path / "secrets" / "api_keys"
    path.parent.mkdir()
    replace_key_file(path, [old_key])
    return path


@pytest.fixture
def sidecar(
    key_file: Path, old_key: str, upload_base: Path, tmp_path: Path
) -> Iterator[RunningSidecar]:
    env = sidecar_env(upload_base, api_key_file=str(key_file), port=str(free_port()))
    no_model = str(tmp_path / "no-model")  # retrieval is not under test: no torch load
    env |= {"OCR_SIDECAR_EMBED_MODEL": no_model, "OCR_SIDECAR_RERANK_MODEL": no_model}
    with running_sidecar(env, tmp_path, old_key) as running:
        yield running


def test_rotation_under_load_fails_no_request(
    sidecar: RunningSidecar, key_file: Path, old_key: str
) -> None:
    run = rotate_under_load(sidecar.url, key_file, old_key, new_api_key(), CLIENTS, 200)
    assert run.sent >= 600
    assert run.failed == 0, run.failures
    assert run.old_key_refused_after_s is not None, "the removed key was still accepted"
    assert sidecar.process.alive()
