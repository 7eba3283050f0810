"""Document bombs uploaded to a real sidecar process: each refused or processed, never a 5xx,
never a hang, peak RSS under 1 GiB (the process has no retrieval model loaded, so the figure is
the documents' own)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.fake_ollama import FakeOllama
from tests.fixtures.jobs import make_job
from tests.reliability.bombs import ACCEPTABLE, BOMBS
from tests.reliability.memory import peak_rss_bytes, reset_peak_rss
from tests.reliability.processes import RunningSidecar, ocr_only_sidecar

GIB = 1024**3
HANG_BOUND_S = 120.0  # a request still unanswered after this is a hang


@pytest.fixture(scope="module")
def sidecar(
    module_fake_ollama: FakeOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    with ocr_only_sidecar(tmp_path_factory.mktemp("bombs"), module_fake_ollama.url) as running:
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
