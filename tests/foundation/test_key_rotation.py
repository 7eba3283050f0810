"""Key rotation by file on the real `sidecar` process: no restart, same PID."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.auth import KEY_FILE_RECHECK_S, KeyStore, recheck_due
from tests.conftest import new_api_key
from tests.reliability.eventually import eventually
from tests.server import free_port


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "sidecar_api_key"
    path.parent.mkdir()
    return path


@pytest.fixture
def sidecar_process(key_file: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    key_file.write_text(new_api_key() + "\n")
    (tmp_path / "uploads").mkdir(mode=0o700)  # a non-default upload base must exist
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_SIDECAR_")}
    env.update(
        {
            "OCR_SIDECAR_API_KEY_FILE": str(key_file),
            "OCR_SIDECAR_PORT": str(port),
            "OCR_SIDECAR_VRAM_SOURCE": "none",
            "OCR_SIDECAR_UPLOAD_BASE": str(tmp_path / "uploads"),
            "OCR_SIDECAR_EMBED_MODEL": str(tmp_path / "no-model"),
            "OCR_SIDECAR_RERANK_MODEL": str(tmp_path / "no-model"),
            "HF_HUB_OFFLINE": "1",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for the port to answer
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{url}/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "sidecar did not start"
            time.sleep(0.1)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def status_with(url: str, key: str) -> int:
    return httpx.get(f"{url}/metrics", headers={"X-API-Key": key}, timeout=10).status_code


def statuses(url: str, *keys: str) -> tuple[int, ...]:
    return tuple(status_with(url, key) for key in keys)


def test_rotation_by_rewrite_and_by_rename_without_restart(
    sidecar_process: tuple[subprocess.Popen, str], key_file: Path
) -> None:
    process, url = sidecar_process
    pid = process.pid
    first = key_file.read_text().strip()
    assert status_with(url, first) == 200

    # The file is re-checked at most twice a second: each change shows within a bounded wait.
    # 1. overlap: both keys valid while clients move over
    second = new_api_key()
    key_file.write_text(f"{first}\n{second}\n")
    assert eventually(lambda: statuses(url, first, second), (200, 200)) == (200, 200)

    # 2. in-place rewrite drops the old key
    key_file.write_text(f"{second}\n")
    assert eventually(lambda: statuses(url, first, second), (401, 200)) == (401, 200)

    # 3. atomic replace by rename (how Docker/Kubernetes secrets and editors update files)
    third = new_api_key()
    staged = key_file.with_name(".staged")
    staged.write_text(f"{third}\n")
    os.replace(staged, key_file)
    assert eventually(lambda: statuses(url, second, third), (401, 200)) == (401, 200)

    # 4. a broken file keeps the previous keys instead of locking everyone out
    key_file.write_text("too-short\n")
    rejected = 'sidecar_api_key_reloads_total{outcome="rejected"} 1.0'
    metrics_text = lambda: httpx.get(f"{url}/metrics", headers={"X-API-Key": third}).text  # noqa: E731
    assert eventually(lambda: rejected in metrics_text(), True)
    assert statuses(url, third, "too-short") == (200, 401)

    assert process.poll() is None and process.pid == pid
    metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": third}).text
    assert 'sidecar_api_key_reloads_total{outcome="rejected"} 1.0' in metrics
    assert 'sidecar_api_key_reloads_total{outcome="ok"} 3.0' in metrics


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RotatedStore:
    """A KeyStore that read `old` at start; the file has since been rewritten to `new`."""

    store: KeyStore
    clock: ManualClock
    old: str
    new: str


@pytest.fixture
def rotated(tmp_path: Path) -> RotatedStore:
    old, new = new_api_key(), new_api_key()
    path = tmp_path / "keys"
    path.write_text(f"{old}\n")
    clock = ManualClock()
    store = KeyStore(key_file=path, clock=clock)
    path.write_text(f"{new}\n")
    return RotatedStore(store, clock, old, new)


async def test_key_file_is_rechecked_at_most_once_per_interval(rotated: RotatedStore) -> None:
    store, clock, old, new = rotated.store, rotated.clock, rotated.old, rotated.new
    # Inside the interval the file is not looked at: the keys read at start still decide.
    assert await store.verify(old) and not await store.verify(new)
    clock.now += KEY_FILE_RECHECK_S
    assert not await store.verify(old) and await store.verify(new)


async def test_concurrent_requests_share_one_recheck(rotated: RotatedStore) -> None:
    store, old, new = rotated.store, rotated.old, rotated.new
    rotated.clock.now += KEY_FILE_RECHECK_S
    # All start before the one re-check finishes; every one of them must see its result.
    results = await asyncio.gather(*(store.verify(old) for _ in range(16)))
    assert results == [False] * 16 and await store.verify(new)


@given(gaps=st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), min_size=1, max_size=60))
def test_recheck_policy_bounds_both_rate_and_staleness(gaps: list[float]) -> None:
    """Over any request times: checks are at least an interval apart, and after each request the
    last check is less than an interval old (a removed key is refused within the bound)."""
    now, last, checks = 0.0, None, []
    for gap in gaps:
        now += gap
        if recheck_due(now, last, KEY_FILE_RECHECK_S):
            checks.append(now)
            last = now
        assert last is not None and now - last < KEY_FILE_RECHECK_S
    assert all(b - a >= KEY_FILE_RECHECK_S for a, b in itertools.pairwise(checks))
