"""413 arrives while the upload is still streaming: the sidecar never buffers past the limit.

These talk raw HTTP/1.1 over a socket so the body can be left unfinished: if the sidecar waited
for the whole body, the read below would hit the socket timeout and the test would fail.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from tests.ocr.conftest import Sidecar

BOUNDARY = "ocrboundary"


def connect(sidecar: Sidecar) -> socket.socket:
    parts = urlsplit(sidecar.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def request_head(sidecar: Sidecar, api_key: str, extra: str) -> bytes:
    return (
        "POST /ocr HTTP/1.1\r\n"
        f"Host: {urlsplit(sidecar.url).netloc}\r\n"
        f"X-API-Key: {api_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"{extra}\r\n"
    ).encode()


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_declared_oversize_is_refused_before_any_body(start_sidecar, api_key: str):
    sidecar = start_sidecar(max_file_mb=1)
    with connect(sidecar) as sock:
        sock.sendall(request_head(sidecar, api_key, "Content-Length: 1000000000\r\n"))
        assert read_status(sock) == 413


def test_chunked_upload_is_cut_off_once_past_the_limit(start_sidecar, api_key: str):
    sidecar = start_sidecar(max_file_mb=1)
    part_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n%PDF-1.4\n"
    ).encode()
    block = b"0" * 65536
    with connect(sidecar) as sock:
        sock.sendall(request_head(sidecar, api_key, "Transfer-Encoding: chunked\r\n"))
        sock.sendall(f"{len(part_head):x}\r\n".encode() + part_head + b"\r\n")
        for _ in range(17):  # just past 1 MiB of file part; the body never ends
            sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        assert read_status(sock) == 413
