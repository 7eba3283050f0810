"""Auth modes over real HTTP on loopback: API key, network allowlist, both."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from sidecar.app import create_app
from sidecar.auth import PUBLIC_PATHS
from sidecar.config import Settings
from sidecar.routes import health, ocr, retrieval
from tests.conftest import new_api_key
from tests.server import serve


def problem(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_missing_and_wrong_key_get_the_same_401(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    with serve(create_app(make_settings())) as server, httpx.Client(base_url=server.url) as c:
        missing = c.get("/health")
        wrong = c.get("/health", headers={"X-API-Key": new_api_key()})
        right = c.get("/health", headers={"X-API-Key": api_key})
    assert missing.status_code == wrong.status_code == 401
    strip = lambda r: {k: v for k, v in problem(r).items() if k != "request_id"}  # noqa: E731
    assert strip(missing) == strip(wrong)
    assert strip(missing)["code"] == "unauthorized"
    assert right.status_code == 200
    assert api_key not in missing.text + wrong.text + right.text


def test_every_key_of_a_rotation_list_is_accepted(make_settings: Callable[..., Settings]) -> None:
    old, new = new_api_key(), new_api_key()
    with serve(create_app(make_settings(api_key=f"{old},{new}"))) as server:
        for key in (old, new):
            assert httpx.get(f"{server.url}/metrics", headers={"X-API-Key": key}).status_code == 200
        assert (
            httpx.get(f"{server.url}/metrics", headers={"X-API-Key": old[:-1]}).status_code == 401
        )


def test_live_and_ready_need_no_auth(make_settings: Callable[..., Settings]) -> None:
    with serve(create_app(make_settings())) as server:
        assert httpx.get(f"{server.url}/live").status_code == 200
        assert httpx.get(f"{server.url}/ready").status_code in (200, 503)


def test_network_mode_trusts_the_tcp_peer_only(make_settings: Callable[..., Settings]) -> None:
    trusted = make_settings(api_key=None, auth_mode="network", trusted_networks="127.0.0.0/8")
    with serve(create_app(trusted)) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200

    elsewhere = make_settings(api_key=None, auth_mode="network", trusted_networks="198.18.0.0/15")
    with serve(create_app(elsewhere)) as server:
        spoofed = httpx.get(
            f"{server.url}/health",
            headers={"X-Forwarded-For": "198.18.0.7", "X-Real-IP": "198.18.0.7"},
        )
        assert spoofed.status_code == 403
        assert problem(spoofed)["code"] == "forbidden_network"


def test_key_plus_network_needs_both(make_settings: Callable[..., Settings], api_key: str) -> None:
    both = make_settings(auth_mode="api_key+network", trusted_networks="127.0.0.1/32")
    with serve(create_app(both)) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/health").status_code == 401
        assert client.get("/health", headers={"X-API-Key": api_key}).status_code == 200
    outside = make_settings(auth_mode="api_key+network", trusted_networks="198.18.0.0/15")
    with serve(create_app(outside)) as server:
        refused = httpx.get(f"{server.url}/health", headers={"X-API-Key": api_key})
        assert refused.status_code == 403 and problem(refused)["code"] == "forbidden_network"


def test_auth_failures_are_counted(make_settings: Callable[..., Settings], api_key: str) -> None:
    with serve(create_app(make_settings())) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(3):
            c.get("/health", headers={"X-API-Key": "nope"})
        text = c.get("/metrics", headers={"X-API-Key": api_key}).text
    assert 'sidecar_auth_failures_total{reason="api_key"} 3.0' in text


def test_every_route_but_live_and_ready_requires_auth(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    routers = (health.public_router, health.protected_router, ocr.router, retrieval.router)
    routes = [(method, route.path) for router in routers for route in router.routes
              for method in sorted(route.methods)]  # fmt: skip
    assert {path for _, path in routes} >= {"/ocr", "/embed", "/rerank", "/health", "/metrics"}
    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        for method, path in routes:
            response = client.request(method, path)
            if path in PUBLIC_PATHS:
                assert response.status_code != 401, path
            else:
                assert problem(response)["code"] == "unauthorized", (method, path)
