"""The fake Ollama itself: other tests trust it, so it is held to Ollama's wire behaviour."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.fake_ollama import FakeModel, FakeOllama, Fault
from tests.fake_ollama.durations import GoDurationError, decode_keep_alive

MODEL = "scb10x/typhoon-ocr1.5-3b"
IMAGE = base64.b64encode(b"\x89PNG fake image bytes").decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock):
    with FakeOllama([FakeModel(MODEL, text="one two three four")], clock=clock) as server:
        yield server


def chat(fake: FakeOllama, **body) -> httpx.Response:
    return httpx.post(f"{fake.url}/api/chat", json={"model": MODEL, **body}, timeout=10)


def page(**extra) -> dict:
    return {"messages": [{"role": "user", "content": "read", "images": [IMAGE]}], **extra}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(300, 300.0), (42.5, 42.5), (0, 0.0), ("0", 0.0), ("-0", 0.0), ("1h30m", 5400.0),
     ("1.5h", 5400.0), ("90s", 90.0), ("500ms", 0.5), (-1, float("inf")),
     ("-1m", float("inf"))],
)  # fmt: skip
def test_keep_alive_decoding_follows_go(value, seconds):
    assert decode_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [("300", 'time: missing unit in duration "300"'),
     ("1d", 'time: unknown unit "d" in duration "1d"'),
     ("forever", 'time: invalid duration "forever"'), ("", 'time: invalid duration ""'),
     (True, "Unsupported type: 'bool'")],
)  # fmt: skip
def test_bad_keep_alive_gives_gos_message(value, message, fake: FakeOllama):
    with pytest.raises(GoDurationError, match=message):
        decode_keep_alive(value)
    response = chat(fake, messages=[], keep_alive=value)
    assert response.status_code == 400 and response.json() == {"error": message}


def test_non_streamed_reply_shape(fake: FakeOllama):
    reply = chat(fake, stream=False, **page())
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    body = reply.json()
    assert body["model"] == MODEL and body["message"] == {
        "role": "assistant",
        "content": "one two three four",
    }
    assert body["done"] is True and body["done_reason"] == "stop"
    assert isinstance(body["total_duration"], int) and body["eval_count"] == 4


def test_stream_defaults_to_true_and_sends_deltas(fake: FakeOllama):
    with httpx.stream("POST", f"{fake.url}/api/chat", json={"model": MODEL, **page()}) as reply:
        assert reply.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert "".join(line["message"]["content"] for line in lines) == "one two three four"
    assert [line["done"] for line in lines] == [False] * 4 + [True]
    assert lines[-1]["done_reason"] == "stop" and "eval_count" in lines[-1]


def test_num_predict_truncates_with_length(fake: FakeOllama):
    body = chat(fake, stream=False, options={"num_predict": 2}, **page()).json()
    assert body["message"]["content"] == "one two" and body["done_reason"] == "length"


def test_errors_in_ollamas_order(fake: FakeOllama):
    url = f"{fake.url}/api/chat"
    assert httpx.post(url, content=b"").json() == {"error": "missing request body"}
    assert httpx.post(url, content=b"{").status_code == 400
    wrong = httpx.post(url, json={"model": MODEL, "stream": "no"}).json()["error"]
    assert wrong == ("json: cannot unmarshal string into Go struct field ChatRequest.stream "
                     "of type bool")  # fmt: skip
    assert httpx.post(url, json={"messages": []}).json() == {"error": "model is required"}
    missing = httpx.post(url, json={"model": "nope", "messages": []})
    assert missing.status_code == 404 and missing.json() == {"error": "model 'nope' not found"}
    generate = httpx.post(f"{fake.url}/api/generate", json={"prompt": "x"})
    assert generate.status_code == 404 and generate.json() == {"error": "model '' not found"}
    data_url = chat(fake, messages=[{"role": "user", "content": "x",
                                     "images": ["data:image/png;base64,AAAA"]}])  # fmt: skip
    assert data_url.json() == {"error": "illegal base64 data at input byte 4"}
    typed = chat(fake, stream=False, options={"temperature": "0.1"}, **page())
    assert typed.status_code == 500
    assert typed.json() == {"error": 'option "temperature" must be of type float32'}
    assert httpx.get(f"{fake.url}/api/nothing").text == "404 page not found"


def test_load_unload_ps_and_expiry_with_the_injected_clock(fake: FakeOllama, clock: Clock):
    load = chat(fake, messages=[], keep_alive="10m").json()
    assert load["done_reason"] == "load" and load["message"]["content"] == ""
    ps = httpx.get(f"{fake.url}/api/ps").json()["models"]
    assert [m["name"] for m in ps] == [MODEL + ":latest"]
    assert ps[0]["size_vram"] == ps[0]["size"]
    clock.now += 599
    assert len(httpx.get(f"{fake.url}/api/ps").json()["models"]) == 1
    clock.now += 2
    assert httpx.get(f"{fake.url}/api/ps").json()["models"] == []
    # no keep_alive on a fresh load: 5 minutes; on a loaded model: the previous session
    chat(fake, messages=[], keep_alive="1h")
    chat(fake, stream=False, **page())
    clock.now += 3000
    assert len(fake.loaded()) == 1
    unload = chat(fake, messages=[], keep_alive=0).json()
    assert unload["done_reason"] == "unload" and fake.loaded() == {}


def test_zero_keep_alive_unloads_after_the_call_and_runner_options_reload(fake: FakeOllama):
    chat(fake, stream=False, keep_alive="0s", **page())
    assert fake.loaded() == {}
    chat(fake, messages=[], options={"num_ctx": 4096})
    chat(fake, messages=[], options={"num_ctx": 4096})
    assert fake.registry.reload_count == 0
    chat(fake, messages=[], options={"num_ctx": 8192})
    assert fake.registry.reload_count == 1


def test_ps_names_are_normalised_and_lookups_case_insensitive(fake: FakeOllama):
    fake.install(FakeModel("Typhoon2.5"))
    reply = httpx.post(f"{fake.url}/api/chat", json={"model": "typhoon2.5:latest",
                                                     "messages": []})  # fmt: skip
    assert reply.json()["model"] == "typhoon2.5:latest"  # echoes the name as sent
    names = {m["name"] for m in httpx.get(f"{fake.url}/api/ps").json()["models"]}
    assert names == {"Typhoon2.5:latest"}


def test_faults_and_recording(fake: FakeOllama):
    fake.fail(Fault.BUSY_503, times=1, skip=1)
    assert chat(fake, messages=[]).status_code == 200
    busy = chat(fake, messages=[])
    assert busy.status_code == 503 and "server busy" in busy.json()["error"]
    assert chat(fake, messages=[]).status_code == 200
    fake.fail(Fault.GARBAGE, times=1)
    assert chat(fake, messages=[]).headers["content-type"] == "text/html"
    fake.fail(Fault.CUT, times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(fake, stream=False, **page())
    fake.fail(Fault.ERROR_MID_STREAM, times=1)
    with httpx.stream("POST", f"{fake.url}/api/chat", json={"model": MODEL, **page()}) as reply:
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert "error" in lines[-1] and not any(line.get("done") for line in lines)
    assert [r.path for r in fake.requests].count("/api/chat") == 6
    assert fake.bodies("/api/chat")[0] == {"model": MODEL, "messages": []}


def test_down_refuses_connections_until_up(fake: FakeOllama):
    port = fake.port
    fake.go_down()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/version")
    fake.come_up()
    assert fake.port == port
    assert httpx.get(f"{fake.url}/api/version").json() == {"version": "0.33.0"}


def test_scripted_text_per_image(fake: FakeOllama):
    fake.script(base64.b64decode(IMAGE), "ใบแจ้งหนี้ 17")
    assert chat(fake, stream=False, **page()).json()["message"]["content"] == "ใบแจ้งหนี้ 17"
