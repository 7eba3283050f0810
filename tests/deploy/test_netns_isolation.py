"""The phase 2 trust boundary, on a real network: the `sidecar` process in its own namespace.

Two sidecars run side by side in the sidecar namespace (the real entry point, bound to 0.0.0.0 as
in the container): one in `network` mode, one in `api_key+network`, both trusting only the
198.18.1.0/24 segment. A client in the trusted namespace and one in the untrusted namespace call
them over veth links; see tests/deploy/netns.py for the topology.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_api_key
from tests.deploy.netns import (
    BENCHMARK_RANGE,
    CLIENT_SCRIPT,
    SIDECAR_TRUSTED_SIDE,
    SIDECAR_UNTRUSTED_SIDE,
    SPOOFED_SOURCE,
    TRUSTED_CLIENT,
    TRUSTED_NET,
    NetnsLab,
    NetnsUnavailable,
    unavailable_reason,
)
from tests.deploy.sidecar_process import SidecarProcess, sidecar_env

pytestmark = pytest.mark.netns

NETWORK_PORT = 8001
BOTH_PORT = 8002
STARTUP_DEADLINE_S = 90
PROBLEM_JSON = "application/problem+json"


@dataclass
class Deployment:
    lab: NetnsLab
    key: str
    sidecars: list[SidecarProcess]

    def call(
        self,
        namespace: str,
        requests: list[dict[str, Any]],
        wait_s: float = 0,
        wait_live: list[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run the requests from inside `namespace`; results by request name."""
        plan = {"wait_s": wait_s, "wait_live": wait_live or [], "requests": requests}
        result = subprocess.run(
            self.lab.exec_argv(namespace, sys.executable, str(CLIENT_SCRIPT)),
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            timeout=wait_s + 60,
            check=False,
        )
        if result.returncode != 0:
            logs = "\n".join(sidecar.output()[-3000:] for sidecar in self.sidecars)
            pytest.fail(
                f"client in {namespace} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\nsidecar output:\n{logs}"
            )
        return {item["name"]: item for item in json.loads(result.stdout)}


def url(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, path: str) -> str:
    return f"http://{address}:{port}{path}"


def get(name: str, address: Any, port: int, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "method": "GET", "url": url(address, port, path), **extra}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"network isolation test skipped: {reason}")
    lab = NetnsLab()
    try:
        lab.build()
    except NetnsUnavailable as exc:
        pytest.skip(f"network isolation test skipped: {exc}")
    sidecars: list[SidecarProcess] = []
    try:
        lab.claim_spoofed_address()
        key = new_api_key()
        workdir = tmp_path_factory.mktemp("netns-sidecar")
        uploads = workdir / "uploads"
        uploads.mkdir(mode=0o700)
        common = {"host": "0.0.0.0", "trusted_networks": str(TRUSTED_NET)}  # noqa: S104
        modes = [
            {"auth_mode": "network", "port": str(NETWORK_PORT)},
            {"auth_mode": "api_key+network", "port": str(BOTH_PORT), "api_key": key},
        ]
        for mode in modes:
            env = sidecar_env(uploads, **common, **mode)
            wrapper = lab.exec_argv(lab.sidecar_ns)
            sidecars.append(SidecarProcess(env, Path(workdir), wrapper).start())
        deployment = Deployment(lab, key, sidecars)
        # Readiness: the trusted client polls /live of both, with a bounded deadline.
        deployment.call(
            lab.trusted_ns,
            [],
            wait_s=STARTUP_DEADLINE_S,
            wait_live=[
                url(SIDECAR_TRUSTED_SIDE, port, "/live") for port in (NETWORK_PORT, BOTH_PORT)
            ],
        )
        assert all(sidecar.alive() for sidecar in sidecars)
        yield deployment
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        lab.close()


def assert_problem(result: dict[str, Any], status: int, code: str) -> None:
    assert result.get("status") == status, result
    assert result["content_type"].startswith(PROBLEM_JSON), result
    body = result["body"]
    assert body["code"] == code and body["status"] == status, body
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}


def test_lab_uses_only_the_benchmark_range() -> None:
    lab = NetnsLab(tag="0")
    for address in lab.addresses():
        assert address in BENCHMARK_RANGE
        assert not any(
            address in ipaddress.ip_network(n)
            for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
        )


# --- phase 2: AUTH_MODE=network -----------------------------------------------------------------


def test_network_mode_trusted_client_needs_no_key(deployment: Deployment) -> None:
    results = deployment.call(
        deployment.lab.trusted_ns,
        [
            get("live", SIDECAR_TRUSTED_SIDE, NETWORK_PORT, "/live"),
            get("health", SIDECAR_TRUSTED_SIDE, NETWORK_PORT, "/health"),
            get("metrics", SIDECAR_TRUSTED_SIDE, NETWORK_PORT, "/metrics"),
        ],
    )
    assert results["live"]["status"] == 200
    assert results["health"]["status"] == 200, results["health"]
    assert results["health"]["body"]["auth_mode"] == "network"
    assert results["metrics"]["status"] == 200


def test_network_mode_untrusted_client_is_forbidden(deployment: Deployment) -> None:
    results = deployment.call(
        deployment.lab.untrusted_ns,
        [
            # /live answers anyone: so the 403s below come from the sidecar, not the network.
            get("live", SIDECAR_UNTRUSTED_SIDE, NETWORK_PORT, "/live"),
            get("health", SIDECAR_UNTRUSTED_SIDE, NETWORK_PORT, "/health"),
            get("metrics", SIDECAR_UNTRUSTED_SIDE, NETWORK_PORT, "/metrics"),
            get(
                "with_key",
                SIDECAR_UNTRUSTED_SIDE,
                NETWORK_PORT,
                "/health",
                headers={"X-API-Key": deployment.key},
            ),
        ],
    )
    assert results["live"]["status"] == 200
    for name in ("health", "metrics", "with_key"):
        assert_problem(results[name], 403, "forbidden_network")
    assert deployment.key not in json.dumps(results)


FORWARDING_HEADERS = [
    {"X-Forwarded-For": str(TRUSTED_CLIENT)},
    {"X-Forwarded-For": f"{TRUSTED_CLIENT}, {SIDECAR_TRUSTED_SIDE}"},
    {"X-Real-IP": str(TRUSTED_CLIENT)},
    {"Forwarded": f"for={TRUSTED_CLIENT};proto=http"},
    {"X-Forwarded-For": str(TRUSTED_CLIENT), "X-Forwarded-Host": str(SIDECAR_TRUSTED_SIDE)},
]


def test_forwarding_headers_do_not_make_a_client_trusted(deployment: Deployment) -> None:
    results = deployment.call(
        deployment.lab.untrusted_ns,
        [
            get(f"h{i}", SIDECAR_UNTRUSTED_SIDE, port, "/health", headers=headers)
            for port in (NETWORK_PORT, BOTH_PORT)
            for i, headers in enumerate(FORWARDING_HEADERS, start=port * 10)
        ],
    )
    assert len(results) == 2 * len(FORWARDING_HEADERS)
    for result in results.values():
        assert_problem(result, 403, "forbidden_network")


def test_spoofed_trusted_source_address_cannot_connect(deployment: Deployment) -> None:
    """A trusted-subnet source from the untrusted segment gets no TCP handshake back.

    The sidecar's reply to 198.18.1.77 is routed out of the trusted link, where nobody owns that
    address, so the connection never opens: address spoofing cannot reach the auth check at all.
    """
    results = deployment.call(
        deployment.lab.untrusted_ns,
        [
            get(
                "spoofed",
                SIDECAR_UNTRUSTED_SIDE,
                NETWORK_PORT,
                "/health",
                source=str(SPOOFED_SOURCE),
                connect_timeout_s=2.0,
            ),
            get("honest", SIDECAR_UNTRUSTED_SIDE, NETWORK_PORT, "/live"),
        ],
    )
    assert "status" not in results["spoofed"], results["spoofed"]
    assert results["spoofed"]["error"] in ("ConnectTimeout", "ConnectError")
    assert results["honest"]["status"] == 200  # the link itself works


# --- AUTH_MODE=api_key+network: both must pass -------------------------------------------------


def test_both_mode_trusted_client_still_needs_the_key(deployment: Deployment) -> None:
    results = deployment.call(
        deployment.lab.trusted_ns,
        [
            get("no_key", SIDECAR_TRUSTED_SIDE, BOTH_PORT, "/health"),
            get(
                "wrong_key",
                SIDECAR_TRUSTED_SIDE,
                BOTH_PORT,
                "/health",
                headers={"X-API-Key": new_api_key()},
            ),
            get(
                "key",
                SIDECAR_TRUSTED_SIDE,
                BOTH_PORT,
                "/health",
                headers={"X-API-Key": deployment.key},
            ),
            get("live", SIDECAR_TRUSTED_SIDE, BOTH_PORT, "/live"),
        ],
    )
    assert_problem(results["no_key"], 401, "unauthorized")
    assert_problem(results["wrong_key"], 401, "unauthorized")
    # Missing and wrong key are indistinguishable (request ids aside).
    strip = lambda body: {k: v for k, v in body.items() if k != "request_id"}  # noqa: E731
    assert strip(results["no_key"]["body"]) == strip(results["wrong_key"]["body"])
    assert results["key"]["status"] == 200
    assert results["key"]["body"]["auth_mode"] == "api_key+network"
    assert results["live"]["status"] == 200


def test_both_mode_untrusted_client_is_forbidden_even_with_the_key(
    deployment: Deployment,
) -> None:
    results = deployment.call(
        deployment.lab.untrusted_ns,
        [
            get(
                "key",
                SIDECAR_UNTRUSTED_SIDE,
                BOTH_PORT,
                "/health",
                headers={"X-API-Key": deployment.key},
            ),
            get("no_key", SIDECAR_UNTRUSTED_SIDE, BOTH_PORT, "/health"),
        ],
    )
    assert_problem(results["key"], 403, "forbidden_network")
    assert_problem(results["no_key"], 403, "forbidden_network")


def test_rejections_are_counted_by_reason(deployment: Deployment) -> None:
    deployment.call(
        deployment.lab.untrusted_ns,
        [
            get("refused", SIDECAR_UNTRUSTED_SIDE, BOTH_PORT, "/health"),
        ],
    )
    results = deployment.call(
        deployment.lab.trusted_ns,
        [
            get(
                "metrics",
                SIDECAR_TRUSTED_SIDE,
                BOTH_PORT,
                "/metrics",
                headers={"X-API-Key": deployment.key},
            ),
        ],
    )
    text = results["metrics"]["body"]
    counts = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sidecar_auth_failures_total{")
    }
    assert counts.get('reason="network"', 0) >= 1
