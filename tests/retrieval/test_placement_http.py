"""Placement seen through HTTP: headers, /health and /metrics follow the model between devices.

The model is the real MiniLM embedder, loaded fresh (it gets cast), on a stand-in GPU: CUDA
probe injected as present, GPU torch device = CPU, so the fp16 path really runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from sidecar.devices import DeviceManager
from sidecar.observability import Metrics
from sidecar.ocr.gpu_watch import KV_HEADROOM_MIB
from sidecar.retrieval.items import EmbedItem
from sidecar.retrieval.loading import load_embedder, load_reranker
from sidecar.vram_monitor import VramMonitor
from tests.fake_ollama import DEFAULT_LLM_MODEL, DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.fixtures.documents import make_image
from tests.fixtures.jobs import make_job
from tests.retrieval.conftest import RunningApp, SharedModels, VramFile
from tests.retrieval.test_devices import CacheSpy, FakeClock

SETTLE_S = 30.0


def test_embed_follows_the_model_between_gpu_and_cpu(
    start_app: Callable[..., RunningApp],
    shared_models: SharedModels,
    vram_file: VramFile,
    minilm_path: str,
) -> None:
    clock, spy = FakeClock(), CacheSpy()

    def devices(vram: VramMonitor, metrics: Metrics) -> DeviceManager:
        return DeviceManager(
            vram,
            metrics,
            pressure_pct=85.0,
            settle_s=SETTLE_S,
            cuda_available=lambda: True,
            gpu_device="cpu",
            empty_cache=spy,
            clock=clock,
        )

    torch.manual_seed(0)
    app = start_app(
        embed_loader=load_embedder,
        rerank_loader=load_reranker,
        vram=vram_file.monitor,
        devices=devices,
        service_kwargs={"watch_interval_s": 3600.0},  # the test drives reconcile itself
    )
    text = {"inputs": ["The invoice total is 1,250 baht."]}
    embedder = shared_models.embedder
    item = EmbedItem(embedder.tokenize(text["inputs"], True)[0], want_sparse=False)
    reference = embedder.forward([item], torch.device("cpu"))[0].dense
    reference = reference / np.linalg.norm(reference)

    on_gpu = app.client.post("/embed", json=text)
    assert on_gpu.status_code == 200
    assert on_gpu.headers["x-compute-device"] == "cuda"
    assert "x-compute-device-reason" not in on_gpu.headers
    assert on_gpu.json()["device"] == "cuda"
    vector = np.asarray(on_gpu.json()["dense"][0])
    assert float(vector @ reference) > 0.999  # fp16 vs fp32: same direction
    health = app.client.get("/health").json()["models"]["embed"]
    assert (health["device"], health["dtype"]) == ("cuda", "float16")

    vram_file.set_used(14_600)  # 91% of 16000
    app.service.devices.reconcile_all()
    on_cpu = app.client.post("/embed", json=text)
    assert on_cpu.headers["x-compute-device"] == "cpu"
    assert on_cpu.headers["x-compute-device-reason"] == "vram pressure 91% >= 85%"
    assert float(np.asarray(on_cpu.json()["dense"][0]) @ reference) > 0.999
    health = app.client.get("/health").json()["models"]["embed"]
    assert (health["device"], health["dtype"], health["reason"]) == (
        "cpu",
        "float32",
        "vram pressure 91% ≥ 85%",
    )
    assert spy.calls == 2  # both models left the GPU
    rerank = app.client.post("/rerank", json={"query": "total", "texts": ["a", "b"]})
    assert rerank.headers["x-compute-device"] == "cpu"

    vram_file.set_used(2000)
    app.service.devices.reconcile_all()
    settling = app.client.post("/embed", json=text)
    assert settling.headers["x-compute-device-reason"].startswith("settling")
    clock.now += SETTLE_S
    app.service.devices.reconcile_all()
    back = app.client.post("/embed", json=text)
    assert back.headers["x-compute-device"] == "cuda"

    metrics = app.client.get("/metrics").text
    assert 'sidecar_model_moves_total{model="embed",to="cpu"} 1.0' in metrics
    assert 'sidecar_model_moves_total{model="embed",to="cuda"} 2.0' in metrics
    assert 'sidecar_model_on_gpu{model="embed"} 1.0' in metrics


def test_the_app_wires_the_ocr_pipelines_view_of_ollama_into_placement(
    start_app: Callable[..., RunningApp],
    vram_file: VramFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app builds its own retrieval service (nothing injected) and the reserve follows what
    the OCR pipeline last saw: LLM_RESERVE_MIB while nothing is known, the LLM's room beside the
    OCR model once a job has seen that model's footprint, nothing once /health saw the LLM.
    CUDA is reported present; every decision here keeps the models on the CPU, so no tensor goes
    to a device this machine lacks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    llm = FakeModel(DEFAULT_LLM_MODEL, size=9 * 1024**3, capabilities=("completion",))
    ocr_model = FakeModel(DEFAULT_OCR_MODEL, size=3 * 1024**3)
    with FakeOllama([llm, ocr_model]) as fake:
        vram_file.set_used(13_000)  # 3000 MiB free of 16000: a model fits, not beside the reserve
        app = start_app(
            vram=vram_file.monitor,
            inject_service=False,
            ollama_url=fake.url,
            llm_reserve_mib=4000,
            vram_pressure_pct=85.0,
            ocr_yield_max_s=0.0,  # 3000 MiB free < the OCR model: no wait for room here
        )
        text = {"inputs": ["The invoice total is 1,250 baht."]}
        unknown = app.client.post("/embed", json=text)
        assert unknown.headers["x-compute-device"] == "cpu"
        reason = unknown.headers["x-compute-device-reason"]
        assert reason.startswith("llm reserve:") and reason.endswith("4000 MiB kept for the LLM")

        # One OCR job: the pipeline now knows the OCR model's footprint (/api/tags + KV headroom).
        files = {
            "file": ("page.png", make_image("PNG"), "application/octet-stream"),
            "job": (None, json.dumps(make_job())),
        }
        assert app.client.post("/ocr", files=files).status_code == 200
        footprint = 3 * 1024 + KV_HEADROOM_MIB
        app.service.devices.reconcile_all()
        known = app.client.post("/embed", json=text).headers["x-compute-device-reason"]
        assert known.endswith(f"{5000 + footprint} MiB kept for the LLM")  # 4000 / 0.8 + OCR

        assert fake.llm_request(DEFAULT_LLM_MODEL, 0.0).done.wait(10)
        health = app.client.get("/health").json()  # the pipeline reads /api/ps: the LLM is in
        assert [m["name"] for m in health["ollama"]["loaded_models"]] == [
            f"{DEFAULT_LLM_MODEL}:latest"
        ]
        app.service.devices.reconcile_all()
        loaded = app.client.post("/embed", json=text)
        # No reserve now: the move up is refused only because it would cross the pressure mark.
        assert loaded.headers["x-compute-device"] == "cpu"
        assert loaded.headers["x-compute-device-reason"].startswith("vram would reach")
