"""A real `python -m sidecar` child process for the reliability tests, started and waited for.

Out of process on purpose: RSS, descriptors and connections are the sidecar's own, and the test
client shares no interpreter (and no GIL) with the server it measures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import new_api_key
from tests.deploy.sidecar_process import SidecarProcess, sidecar_env
from tests.reliability.eventually import eventually
from tests.server import free_port

STARTUP_DEADLINE_S = 90
# Loading the two small models takes ~5 s on an idle CPU, far longer on a busy shared one.
MODELS_DEADLINE_S = 300


def open_fds(pid: int) -> dict[int, str]:
    """Descriptor number → what it points at, for every open descriptor of `pid`."""
    table = {}
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            table[int(entry.name)] = os.readlink(entry.path)
        except OSError:  # closed between scandir and readlink
            continue
    return table


@dataclass
class RunningSidecar:
    url: str
    api_key: str
    process: SidecarProcess

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.api_key}, **kwargs)  # type: ignore[arg-type]

    def wait_until_models_settled(self) -> None:
        """Bounded wait until every retrieval model has loaded or failed: until then the loading
        thread is still importing (and opening) transformers' files, which a descriptor audit
        would otherwise count."""
        with self.client(timeout=10) as client:

            def settled() -> bool:
                models = client.get("/health").json()["models"].values()
                return all(model["loaded"] or model["error"] for model in models)

            assert eventually(settled, True, within_s=MODELS_DEADLINE_S), "models still loading"


def wait_until_answering(url: str, process: SidecarProcess, path: str = "/live") -> None:
    """Bounded wait for `path` to answer 200 (`/ready` waits for the models too)."""
    bound = MODELS_DEADLINE_S if path == "/ready" else STARTUP_DEADLINE_S
    deadline = time.monotonic() + bound
    last = ""
    while True:
        assert process.alive(), process.output()
        try:
            response = httpx.get(f"{url}{path}", timeout=2)
            if response.status_code == 200:
                return
            last = response.text[:500]
        except httpx.TransportError as error:
            last = repr(error)
        assert time.monotonic() < deadline, f"no 200 from {path} ({last}):\n{process.output()}"
        time.sleep(0.05)  # polling interval of a bounded wait


@contextmanager
def running_sidecar(
    env: dict[str, str],
    cwd: Path,
    api_key: str,
    *,
    wrapper: list[str] | None = None,
    wait_for: str = "/live",
) -> Iterator[RunningSidecar]:
    """Start the sidecar with `env` (from `sidecar_process.sidecar_env`); stop it after."""
    process = SidecarProcess(env, cwd, wrapper).start()
    url = f"http://127.0.0.1:{env['OCR_SIDECAR_PORT']}"
    try:
        wait_until_answering(url, process, wait_for)
        yield RunningSidecar(url, api_key, process)
    finally:
        process.stop()


@contextmanager
def ocr_only_sidecar(root: Path, ollama_url: str, **settings: str) -> Iterator[RunningSidecar]:
    """A sidecar under `root` (upload base `root/uploads`) pointed at `ollama_url`, with no
    retrieval model (no torch: the OCR side is under test), with `settings` added."""
    (root / "uploads").mkdir(exist_ok=True)
    key = new_api_key()
    env = sidecar_env(
        root / "uploads", api_key=key, port=str(free_port()), ollama_url=ollama_url, **settings
    )
    no_model = str(root / "no-model")
    env |= {"OCR_SIDECAR_EMBED_MODEL": no_model, "OCR_SIDECAR_RERANK_MODEL": no_model}
    with running_sidecar(env, root, key) as running:
        yield running
