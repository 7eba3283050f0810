"""The fake Ollama keeps VRAM books over real HTTP: the same scheduler as the simulator, a VRAM
file the real sidecar can read, LLM traffic a test can play, holds, loads and leaving clients."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from sidecar.vram_monitor import FileVramMonitor
from tests.fake_ollama import FakeModel, FakeOllama

MIB = 1024 * 1024
OCR = "scb10x/typhoon-ocr1.5-3b"
LLM = "typhoon2.5-qwen3-4b"
IMAGE = base64.b64encode(b"\x89PNG page").decode()


def page(keep_alive: str = "60s") -> dict:
    return {"model": OCR, "stream": False, "keep_alive": keep_alive,
            "messages": [{"role": "user", "content": "read", "images": [IMAGE]}]}  # fmt: skip


def models(llm_mib: int = 9000) -> list[FakeModel]:
    return [
        FakeModel(OCR, size=3300 * MIB),
        FakeModel(LLM, size=llm_mib * MIB, family="qwen3", capabilities=("completion",)),
    ]


def test_books_follow_loads_and_unloads_and_the_vram_file_says_so(tmp_path: Path):
    path = tmp_path / "vram.json"
    with FakeOllama(models(), vram_total_mib=16311, vram_file=path, base_mib=300) as fake:
        monitor = FileVramMonitor(path)
        assert monitor.snapshot().used_mib == 300  # written at once
        httpx.post(f"{fake.url}/api/chat", json=page(), timeout=10).raise_for_status()
        assert fake.vram() == {"total_mib": 16311, "used_mib": 3600, "free_mib": 12711}
        snapshot = monitor.snapshot()
        assert (snapshot.total_mib, snapshot.used_mib, snapshot.free_mib) == (16311, 3600, 12711)
        fake.set_external("torch", 2200)
        assert monitor.snapshot().used_mib == 5800
        unload = {"model": OCR, "messages": [], "keep_alive": 0}
        httpx.post(f"{fake.url}/api/chat", json=unload, timeout=10).raise_for_status()
        assert monitor.snapshot().used_mib == 2500
        assert [name for name, _ in fake.load_events] == [OCR + ":latest"]


def test_llm_traffic_holds_the_gpu_and_an_ocr_load_waits_for_it():
    """A 12 GB LLM busy: the OCR model does not fit beside it (0.8 × free), so its load waits
    for the LLM's request to end, then evicts it (§8.3: busy victims are waited for)."""
    with FakeOllama(models(12000), vram_total_mib=16311, base_mib=300) as fake:
        answers: list[httpx.Response] = []
        with fake.llm_busy(LLM) as call:
            assert call.cold and fake.loaded().keys() == {LLM + ":latest"}
            thread = threading.Thread(
                target=lambda: answers.append(httpx.post(f"{fake.url}/api/chat", json=page(),
                                                         timeout=10)))  # fmt: skip
            thread.start()
            assert fake.wait_for(lambda f: any(e[0] == "evict" for e in f.events()), 5)
            assert not answers  # still waiting for the busy LLM
        thread.join(10)
        assert answers[0].status_code == 200
        kinds = [(kind, model) for kind, model, _, _ in fake.events("load_start", "evict")]
        assert kinds == [("load_start", LLM + ":latest"), ("evict", LLM + ":latest"),
                         ("load_start", OCR + ":latest")]  # fmt: skip
        llm_done = call.finished_at
        assert llm_done is not None and fake.load_events[1][1] >= llm_done


def test_llm_requests_without_http_queue_like_any_other():
    with FakeOllama(models(), vram_total_mib=16311, load_delay_s=0.05) as fake:
        first = fake.llm_request(LLM, 0.05)
        second = fake.llm_request(LLM, 0.05)
        assert first.wait() and second.wait()
        assert first.cold and first.queued_s >= 0.049
        assert len(fake.load_events) == 1  # the second used the loaded runner
        stop = fake.llm_schedule(LLM, every_s=0.01, duration_s=0.0, count=3)
        assert fake.wait_for(
            lambda f: len(f.llm_calls) == 5 and all(c.done.is_set() for c in f.llm_calls)
        )
        stop.set()


def test_hold_after_and_release_count():
    with FakeOllama(models(), vram_total_mib=16311) as fake:
        fake.hold(after=1)
        replies: list[int] = []

        def send() -> None:
            replies.append(httpx.post(f"{fake.url}/api/chat", json=page(), timeout=10).status_code)

        send()  # the first passes
        threads = [threading.Thread(target=send) for _ in range(3)]
        for thread in threads:
            thread.start()
        assert fake.wait_for(lambda f: f.held == 3)
        fake.release(1)
        assert fake.wait_for(lambda f: f.held == 2) and fake.wait_for(lambda f: len(replies) == 2)
        fake.release()
        for thread in threads:
            thread.join(10)
        assert replies == [200] * 4 and fake.held == 0


@pytest.mark.parametrize("where", ["held", "generating", "queued"])
def test_a_client_that_leaves_is_noticed(where: str):
    latency = 5.0 if where == "generating" else 0.0
    with FakeOllama(models(12000), vram_total_mib=16311, base_mib=300, latency_s=latency) as fake:
        if where == "held":
            fake.hold()
        busy = fake.llm_busy(LLM) if where == "queued" else None
        if busy is not None:
            busy.__enter__()
        with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.url}/api/chat", json=page())
        if where == "queued":
            assert fake.wait_for(lambda f: any(e[0] == "cancel" for e in f.events()))
            assert fake.client_gone == 0  # it never reached inference
        else:
            assert fake.wait_for(lambda f: f.client_gone == 1)
            assert fake.in_flight == 0 and fake.held == 0
        if busy is not None:
            busy.__exit__(None, None, None)
        fake.release()


def test_command_line_flags(tmp_path: Path):
    path = tmp_path / "vram.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_ollama", "--port", "0", "--vram-total-mib", "16311",
         "--vram-file", str(path), "--model", f"{OCR}=3300", "--model", f"{LLM}=9000",
         "--load-delay", "0", "--latency", "0", "--external-mib", "1000"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "16311 MiB VRAM" in line
        url = line.split(" on ")[1].split(" with ")[0]
        httpx.post(f"{url}/api/chat", json=page(), timeout=10).raise_for_status()
        data = json.loads(path.read_text())
        assert (data["total_mib"], data["used_mib"]) == (16311, 4300)
        sizes = {m["name"]: m["size"] // MIB for m in httpx.get(f"{url}/api/tags").json()["models"]}
        assert sizes == {OCR + ":latest": 3300, LLM + ":latest": 9000}
    finally:
        process.terminate()
        process.wait(10)
