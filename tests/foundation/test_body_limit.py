"""Every request body has a ceiling, enforced while it streams, before a route reads it."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.limits import MAX_JSON_BODY_BYTES, MIB
from tests.server import serve

CHUNK = b"x" * MIB


def chunks(total: int) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked transfer encoding)."""
    for _ in range(total // MIB):
        yield CHUNK


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "payload_too_large"
    assert body["request_id"] == response.headers["x-request-id"]


def post_head_only(url: str, path: str, length: int, headers: dict[str, str]) -> httpx.Response:
    """POST a request that declares `length` body bytes and sends none of them; read the answer.

    If the sidecar waited for the body, the read would hit the socket timeout. Sending no body
    also keeps the answer deterministic: a client still writing a large body when the server
    closes the connection can lose the answer to the TCP reset that unread data causes.
    """
    parts = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw and (chunk := sock.recv(65536)):
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        reply = httpx.Headers([tuple(line.split(": ", 1)) for line in header_lines])
        while len(body) < int(reply["content-length"]) and (chunk := sock.recv(65536)):
            body += chunk
    return httpx.Response(int(status_line.split()[1]), headers=reply, content=body)


def test_declared_oversized_json_is_refused_unread(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    headers = {"Content-Type": "application/json"}
    with serve(create_app(make_settings())) as server:
        # Without a key the answer comes before a byte of the body is read.
        anonymous = post_head_only(server.url, "/embed", MAX_JSON_BODY_BYTES + 1, headers)
        assert anonymous.status_code == 401
        response = post_head_only(
            server.url, "/embed", MAX_JSON_BODY_BYTES + 1, headers | {"X-API-Key": api_key}
        )
    assert_too_large(response)


def test_streamed_oversized_body_is_cut_off(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    with serve(create_app(make_settings())) as server:
        response = httpx.post(
            f"{server.url}/rerank",
            content=chunks(MAX_JSON_BODY_BYTES + 2 * MIB),
            headers={"Content-Type": "application/json", "X-API-Key": api_key},
            timeout=60,
        )
        assert_too_large(response)
        # The sidecar is unharmed and a normal request still goes through.
        assert httpx.get(f"{server.url}/live").status_code == 200


def test_ocr_uploads_get_the_file_limit(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n\r\n'

    def upload() -> Iterator[bytes]:
        yield part + b"%PDF-1.7\n"
        yield from chunks(4 * MIB)

    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    with serve(create_app(make_settings(max_file_mb=1))) as server:
        # /ocr reads its body only after auth: without a key nothing is buffered at all.
        anonymous = httpx.post(f"{server.url}/ocr", content=upload(), headers=headers, timeout=60)
        assert anonymous.status_code == 401
        response = httpx.post(
            f"{server.url}/ocr",
            content=upload(),
            headers=headers | {"X-API-Key": api_key},
            timeout=60,
        )
    assert_too_large(response)


def test_bodies_under_the_limit_reach_the_route(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    with serve(create_app(make_settings())) as server:
        response = httpx.post(
            f"{server.url}/embed",
            content=b"{not json",
            headers={"Content-Type": "application/json", "X-API-Key": api_key},
        )
    assert response.status_code == 422  # the route's own validation answered


async def test_an_early_answer_reads_a_small_body_first_and_leaves_a_large_one_unread() -> None:
    """Closing with unread request bytes resets the connection and can lose the answer: a small
    declared body is read before an early answer, a large one is not (refusing must stay cheap)."""
    from starlette.responses import Response

    from sidecar.limits import DISCARD_BODY_MAX_BYTES, answer_unread

    async def run(length: int) -> tuple[int, list[str]]:
        chunks = [b"x" * (length // 2), b"x" * (length - length // 2)]
        events: list[str] = []

        async def receive() -> dict[str, object]:
            body = chunks.pop(0)
            events.append("read")
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}

        async def send(message: dict[str, object]) -> None:
            events.append(str(message["type"]))

        scope = {"type": "http", "headers": [(b"content-length", str(length).encode())]}
        await answer_unread(Response(status_code=401), scope, receive, send)
        return len(chunks), events

    left, events = await run(100)
    assert left == 0 and events[:2] == ["read", "read"]  # both parts read, then the answer
    assert events[2:] == ["http.response.start", "http.response.body"]
    left, events = await run(DISCARD_BODY_MAX_BYTES + 1)
    assert left == 2 and "read" not in events
