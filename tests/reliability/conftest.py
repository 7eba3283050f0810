"""Shared sidecars and fake Ollamas. The one with the small retrieval models serves the fuzz and
soak tests: loading torch and two models is the slowest part of either, so it is paid once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import new_api_key
from tests.deploy.sidecar_process import sidecar_env
from tests.fake_ollama import FakeModel, FakeOllama
from tests.fixtures.jobs import BASE_JOB
from tests.reliability.processes import RunningSidecar, running_sidecar
from tests.server import free_port


@pytest.fixture(scope="module")
def module_fake_ollama() -> Iterator[FakeOllama]:
    """A fake Ollama for one test module (whose tests may break and repair it)."""
    with FakeOllama([FakeModel(BASE_JOB["profile"]["model"])]) as server:
        yield server


@pytest.fixture(scope="session")
def shared_fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(BASE_JOB["profile"]["model"])], parallel=2) as server:
        yield server


@pytest.fixture(scope="session")
def model_sidecar(
    shared_fake_ollama: FakeOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    """The sidecar with MiniLM as embed and rerank model, the docs routes on, ready to serve."""
    root = tmp_path_factory.mktemp("model-sidecar")
    (root / "uploads").mkdir()
    key = new_api_key()
    env = sidecar_env(
        root / "uploads",
        api_key=key,
        port=str(free_port()),
        ollama_url=shared_fake_ollama.url,
        docs="true",
    )
    with running_sidecar(env, root, key, wait_for="/ready") as running:
        yield running
