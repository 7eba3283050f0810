"""OllamaClient against the fake over loopback: names, /api/ps, and the status mapping."""

from __future__ import annotations

import httpx
import pytest

from sidecar.errors import ApiError
from sidecar.loaded_models import model_key
from sidecar.ollama import OllamaClient, error_for_status
from tests.fake_ollama import FakeModel, FakeOllama


@pytest.mark.parametrize(
    ("name", "key"),
    [("scb10x/typhoon-ocr1.5-3b", "scb10x/typhoon-ocr1.5-3b:latest"),
     ("registry.ollama.ai/library/llama3", "llama3:latest"), ("library/Qwen3:4B", "qwen3:4b"),
     ("host:5000/ns/model", "host:5000/ns/model:latest")],
)  # fmt: skip
def test_model_key_matches_ps_names(name: str, key: str):
    assert model_key(name) == key


async def test_a_chat_loads_the_model_and_unknown_models_are_424():
    with FakeOllama([FakeModel("scb10x/typhoon-ocr1.5-3b")]) as fake:
        async with httpx.AsyncClient() as http:
            client = OllamaClient(http, fake.url, read_timeout_s=5, connect_timeout_s=1)
            with pytest.raises(ApiError) as error:
                await client.chat("not-installed", [], options={}, keep_alive="5s")
            assert error.value.code == "model_not_available"
            assert await client.loaded_models() == []
            page = [{"role": "user", "content": "x"}]
            reply = await client.chat("scb10x/typhoon-ocr1.5-3b", page, options={}, keep_alive="5s")
            assert reply.complete and reply.load_seconds > 0  # this call loaded the model
            assert [m.name for m in await client.loaded_models()] == [
                "scb10x/typhoon-ocr1.5-3b:latest"]  # fmt: skip


async def test_client_reads_ps_and_maps_capability_errors():
    models = [FakeModel("scb10x/typhoon-ocr1.5-3b", size=2**31, size_vram=2**30),
              FakeModel("bge-m3", capabilities=("embedding",))]  # fmt: skip
    with FakeOllama(models) as fake:
        async with httpx.AsyncClient() as http:
            client = OllamaClient(http, fake.url, read_timeout_s=5, connect_timeout_s=1)
            assert await client.version() == "0.33.0"
            messages = [{"role": "system", "content": "Be exact."},
                        {"role": "user", "content": "x"}]  # fmt: skip
            await client.chat("scb10x/typhoon-ocr1.5-3b", messages, options={"num_ctx": 8192},
                              keep_alive="60s")  # fmt: skip
            (sent,) = fake.bodies("/api/chat")
            assert sent == {
                "model": "scb10x/typhoon-ocr1.5-3b", "messages": messages,
                "stream": False, "options": {"num_ctx": 8192}, "keep_alive": "60s",
            }  # fmt: skip
            (loaded,) = await client.loaded_models()
            assert (loaded.name, loaded.size_mib, loaded.size_vram_mib) == (
                "scb10x/typhoon-ocr1.5-3b:latest", 2048, 1024)  # fmt: skip
            with pytest.raises(ApiError) as error:
                await client.chat("bge-m3", [{"role": "user", "content": "x"}], options={},
                                  keep_alive="0s")  # fmt: skip
            assert error.value.code == "model_not_available"
            assert "does not support chat" in error.value.detail


def test_ollama_error_text_never_brings_file_paths_into_detail():
    blob = "/root/.ollama/models/blobs/sha256-9f1c"
    response = httpx.Response(500, json={"error": f"error loading model {blob}: out of memory"})
    error = error_for_status(response, "scb10x/typhoon-ocr1.5-3b")
    assert error.code == "ollama_bad_response"
    assert blob not in error.detail and "/root" not in error.detail
    assert "error loading model <path> out of memory" in error.detail


async def test_a_connection_closed_before_any_answer_is_unavailable_not_a_bad_answer():
    """What a pooled connection to a restarted Ollama looks like: the request is read, the socket
    closes with no byte of answer. Nothing was answered, so it is retried like a refused connect."""
    import socket
    import threading

    from sidecar.ollama import OllamaUnavailable

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def close_after_reading() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)

    thread = threading.Thread(target=close_after_reading, daemon=True)
    thread.start()
    async with httpx.AsyncClient() as http:
        client = OllamaClient(
            http, f"http://127.0.0.1:{port}", read_timeout_s=5, connect_timeout_s=5
        )
        with pytest.raises(OllamaUnavailable):
            await client.version()
    thread.join(5)
    listener.close()
