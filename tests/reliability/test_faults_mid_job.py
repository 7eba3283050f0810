"""Faults in the middle of OCR jobs, against a real sidecar process and the fake Ollama: Ollama
killed after page k, Ollama hanging, Ollama answering garbage; and the database down for the
`ocr-backend` CLI. The sidecar stays healthy, answers with the documented codes (or partial
results, docs/api.md), and keeps no descriptor per fault.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_ollama import FakeOllama
from tests.fake_ollama.server import Fault
from tests.reliability.eventually import eventually
from tests.reliability.faults import ocr, ollama_killed_at_page
from tests.reliability.processes import RunningSidecar, ocr_only_sidecar, open_fds
from tests.server import free_port

KILLED_AFTER = 2  # Ollama goes down when the third page is sent
OLLAMA_TIMEOUT_S = 2
REPEATS = 6  # a fault repeated: a per-fault leak would grow the descriptor count by this much
# Answers for a job whose first page already failed (docs/api.md, "Ollama failures").
FAILURE_CODES = {
    503: "ollama_unavailable",
    504: "ollama_timeout",
    502: "ollama_bad_response",
}


@pytest.fixture(scope="module")
def fake(module_fake_ollama: FakeOllama) -> FakeOllama:
    return module_fake_ollama


@pytest.fixture(scope="module")
def sidecar(fake: FakeOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    timeouts = {"ollama_timeout_s": str(OLLAMA_TIMEOUT_S), "ollama_connect_timeout_s": "1"}
    with ocr_only_sidecar(tmp_path_factory.mktemp("faults"), fake.url, **timeouts) as running:
        yield running


@pytest.fixture(autouse=True)
def _healthy_ollama(fake: FakeOllama) -> Iterator[None]:
    yield
    fake.clear_faults()
    fake.release()


def assert_healthy(sidecar: RunningSidecar) -> None:
    assert sidecar.process.alive()
    assert httpx.get(f"{sidecar.url}/live", timeout=10).status_code == 200
    with sidecar.client(timeout=10) as client:
        assert client.get("/health").status_code == 200


def assert_failure(response: httpx.Response, statuses: set[int]) -> None:
    assert response.status_code in statuses, response.text[:500]
    body = response.json()
    assert body["code"] == FAILURE_CODES[response.status_code]


def fd_count_settles(sidecar: RunningSidecar, at_most: int) -> int:
    """The descriptor count once idle connections have been dropped (bounded wait)."""
    count = lambda: len(open_fds(sidecar.pid))  # noqa: E731
    eventually(lambda: count() <= at_most, True, within_s=10)
    return count()


def test_a_good_job_first(sidecar: RunningSidecar) -> None:
    response = ocr(sidecar)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["complete"] is True


def test_ollama_killed_after_page_k(sidecar: RunningSidecar, fake: FakeOllama) -> None:
    with ollama_killed_at_page(fake, KILLED_AFTER + 1) as killed:
        response = ocr(sidecar)
    assert killed.is_set()
    if response.status_code == 200:  # partial results: the pages done are kept
        body = response.json()
        assert body["complete"] is False
        done = [page for page in body["pages"] if page.get("text")]
        failed = [page for page in body["pages"] if page.get("error")]
        assert len(done) >= KILLED_AFTER and failed
        # A page cut mid-answer is a bad response; one sent on a pooled connection that Ollama
        # closed as it died reads the same to httpx (RemoteProtocolError); a fresh connect is
        # refused: unavailable. All three are documented codes.
        codes = {page["error"]["code"] for page in failed}
        assert codes <= {"ollama_bad_response", "ollama_unavailable"}, body["pages"]
    else:
        assert_failure(response, {503})
    assert_healthy(sidecar)
    assert ocr(sidecar).status_code == 200  # recovered once Ollama is back


def test_ollama_hanging_times_out(sidecar: RunningSidecar, fake: FakeOllama) -> None:
    fake.hold()
    response = ocr(sidecar, pages=1)
    fake.release()
    assert_failure(response, {504})
    assert_healthy(sidecar)


@pytest.mark.parametrize("fault", [Fault.GARBAGE, Fault.INVALID_JSON, Fault.BAD_SHAPE, Fault.CUT])
def test_garbage_from_ollama_is_502_and_leaks_nothing(
    sidecar: RunningSidecar, fake: FakeOllama, fault: Fault
) -> None:
    fake.fail(fault, times=1)
    assert_failure(ocr(sidecar, pages=1), {502})
    before = len(open_fds(sidecar.pid))
    for _ in range(REPEATS):
        fake.fail(fault, times=1)
        assert_failure(ocr(sidecar, pages=1), {502})
    assert ocr(sidecar, pages=1).status_code == 200
    # Each fault dropped its connection: the count does not grow with the number of faults.
    assert fd_count_settles(sidecar, before + 1) <= before + 1
    assert_healthy(sidecar)


def test_database_down_the_cli_says_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    for command in (["migrate"], ["profile", "show"], ["prompt", "list"]):
        result = subprocess.run(
            [sys.executable, "-m", "backend_client.cli", *command, "--database-url",
             f"postgresql+psycopg://postgres@127.0.0.1:{port}/ocr"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert result.returncode != 0, command
        assert "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0], (command, result.stderr)
