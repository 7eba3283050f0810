"""Document bombs uploaded to a real sidecar process: each refused or processed, never a 5xx,
never a hang, peak RSS under 1 GiB (the process has no retrieval model loaded, so the figure is
the documents' own)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.sidecar_process import sidecar_env
from tests.fake_ollama import FakeModel, FakeOllama
from tests.fixtures.jobs import BASE_JOB, make_job
from tests.reliability.bombs import ACCEPTABLE, BOMBS
from tests.reliability.memory import peak_rss_bytes, reset_peak_rss
from tests.reliability.processes import RunningSidecar, running_sidecar
from tests.server import free_port

GIB = 1024**3
HANG_BOUND_S = 120.0  # a request still unanswered after this is a hang


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(BASE_JOB["profile"]["model"])]) as server:
        yield server


@pytest.fixture(scope="module")
def sidecar(fake: FakeOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    root = tmp_path_factory.mktemp("bombs")
    (root / "uploads").mkdir()
    key = "bombs-" + "k3y" * 12
    env = sidecar_env(root / "uploads", api_key=key, port=str(free_port()), ollama_url=fake.url)
    no_model = str(root / "no-model")
    env |= {"OCR_SIDECAR_EMBED_MODEL": no_model, "OCR_SIDECAR_RERANK_MODEL": no_model}
    with running_sidecar(env, root, key) as running:
        yield running


def upload(sidecar: RunningSidecar, data: bytes) -> httpx.Response:
    files = {
        "file": ("document", data, "application/octet-stream"),
        "job": (None, json.dumps(make_job())),
    }
    with sidecar.client(timeout=HANG_BOUND_S) as client:
        return client.post("/ocr", files=files)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused_or_processed_within_bounds(sidecar: RunningSidecar, name: str) -> None:
    data = BOMBS[name]()
    reset_peak_rss(sidecar.pid)
    response = upload(sidecar, data)
    assert response.status_code in ACCEPTABLE, response.text[:500]
    if response.status_code != 200:
        assert response.headers["content-type"].startswith("application/problem+json")
    assert peak_rss_bytes(sidecar.pid) < GIB
    assert httpx.get(f"{sidecar.url}/live", timeout=10).status_code == 200
