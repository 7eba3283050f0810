"""A three-namespace network for the trust-boundary tests, built with iproute2 (no Docker).

    trusted ns ── veth ── sidecar ns ── veth ── untrusted ns
    198.18.1.2/24        198.18.1.1 | 198.19.1.1        198.19.1.2/24

Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking), never a private range,
so nothing here can collide with a real network. The namespaces have no default route and no
link to the host's namespace: every packet stays between them. Names carry the test process's PID,
so parallel runs do not collide, and `close()` removes everything it created.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
TRUSTED_NET = ipaddress.ip_network("198.18.1.0/24")
UNTRUSTED_NET = ipaddress.ip_network("198.19.1.0/24")
SIDECAR_TRUSTED_SIDE = ipaddress.ip_address("198.18.1.1")
TRUSTED_CLIENT = ipaddress.ip_address("198.18.1.2")
SIDECAR_UNTRUSTED_SIDE = ipaddress.ip_address("198.19.1.1")
UNTRUSTED_CLIENT = ipaddress.ip_address("198.19.1.2")
# A trusted-subnet address the untrusted namespace claims as its own, to try source spoofing.
SPOOFED_SOURCE = ipaddress.ip_address("198.18.1.77")

CLIENT_SCRIPT = Path(__file__).with_name("netns_client.py")


class NetnsUnavailable(Exception):
    """Namespaces cannot be built here (not root, no iproute2, no CAP_NET_ADMIN)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, ["ip", *args], result.stdout, result.stderr
        )


def unavailable_reason() -> str | None:
    """Why this machine cannot build the lab, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


@dataclass
class NetnsLab:
    tag: str = field(default_factory=lambda: str(os.getpid()))
    created: list[str] = field(default_factory=list)

    @property
    def sidecar_ns(self) -> str:
        return f"ocrt-sidecar-{self.tag}"

    @property
    def trusted_ns(self) -> str:
        return f"ocrt-trusted-{self.tag}"

    @property
    def untrusted_ns(self) -> str:
        return f"ocrt-untrusted-{self.tag}"

    def build(self) -> NetnsLab:
        try:
            for name in (self.sidecar_ns, self.trusted_ns, self.untrusted_ns):
                _ip("netns", "add", name)
                self.created.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetnsUnavailable(f"`ip netns add` failed: {exc.stderr.strip()}") from None
        # Interface names are at most 15 characters: a letter pair plus the PID.
        self._link(
            f"st{self.tag}",
            SIDECAR_TRUSTED_SIDE,
            f"tc{self.tag}",
            self.trusted_ns,
            TRUSTED_CLIENT,
            TRUSTED_NET.prefixlen,
        )
        self._link(
            f"su{self.tag}",
            SIDECAR_UNTRUSTED_SIDE,
            f"uc{self.tag}",
            self.untrusted_ns,
            UNTRUSTED_CLIENT,
            UNTRUSTED_NET.prefixlen,
        )
        return self

    def _link(
        self,
        sidecar_if: str,
        sidecar_addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
        client_if: str,
        client_ns: str,
        client_addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
        prefix: int,
    ) -> None:
        _ip(
            "link",
            "add",
            sidecar_if,
            "netns",
            self.sidecar_ns,
            "type",
            "veth",
            "peer",
            "name",
            client_if,
            "netns",
            client_ns,
        )
        _ip("-n", self.sidecar_ns, "addr", "add", f"{sidecar_addr}/{prefix}", "dev", sidecar_if)
        _ip("-n", client_ns, "addr", "add", f"{client_addr}/{prefix}", "dev", client_if)
        _ip("-n", self.sidecar_ns, "link", "set", sidecar_if, "up")
        _ip("-n", client_ns, "link", "set", client_if, "up")

    def claim_spoofed_address(self) -> None:
        """Give the untrusted namespace a trusted-subnet address (as a /32: no route change)."""
        _ip("-n", self.untrusted_ns, "addr", "add", f"{SPOOFED_SOURCE}/32", "dev", f"uc{self.tag}")

    def exec_argv(self, namespace: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [
            SIDECAR_TRUSTED_SIDE,
            TRUSTED_CLIENT,
            SIDECAR_UNTRUSTED_SIDE,
            UNTRUSTED_CLIENT,
            SPOOFED_SOURCE,
        ]

    def close(self) -> None:
        """Delete every namespace created (their veth pairs go with them)."""
        while self.created:
            name = self.created.pop()
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=30, check=False
            )
