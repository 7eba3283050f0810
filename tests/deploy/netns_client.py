"""HTTP client run *inside* a network namespace by the isolation tests (`ip netns exec … python`).

Reads a JSON plan on stdin: `wait_live` (URLs whose /live must answer 200 before the deadline
`wait_s`) and `requests` (each: name, method, url, headers, optional `source` address to bind and
timeouts). Prints one JSON list of results: status, content type and body, or the transport error.
Exit status 3: a /live never answered in time.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx

POLL_INTERVAL_S = 0.05


def wait_live(url: str, deadline: float) -> bool:
    """Poll `url` until it answers 200 or the deadline passes (a refused connect is instant)."""
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(POLL_INTERVAL_S)
    return False


def send(spec: dict[str, Any]) -> dict[str, Any]:
    transport = httpx.HTTPTransport(local_address=spec.get("source"))
    timeout = httpx.Timeout(spec.get("timeout_s", 10.0), connect=spec.get("connect_timeout_s", 5.0))
    result: dict[str, Any] = {"name": spec["name"]}
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            response = client.request(
                spec.get("method", "GET"), spec["url"], headers=spec.get("headers") or {}
            )
    except httpx.TransportError as exc:
        result["error"] = type(exc).__name__
        return result
    result["status"] = response.status_code
    result["content_type"] = response.headers.get("content-type", "")
    try:
        result["body"] = response.json()
    except ValueError:
        result["body"] = response.text
    return result


def main() -> int:
    plan = json.load(sys.stdin)
    deadline = time.monotonic() + float(plan.get("wait_s", 0))
    for url in plan.get("wait_live", []):
        if not wait_live(url, deadline):
            print(json.dumps({"not_live": url}))
            return 3
    json.dump([send(spec) for spec in plan.get("requests", [])], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
