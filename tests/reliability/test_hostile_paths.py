"""Hostile `/ocr` paths against a real sidecar running as uid 1000, with every open audited.

Goal (issue 12): 100% 403/404/415, 0 × 500, 0 files opened outside the upload base, 0 Ollama
calls, no descriptor left behind. The bench (`bench/bench_reliability.py`) sends the full 5,000+.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import new_api_key
from tests.fake_ollama import FakeModel, FakeOllama
from tests.fixtures.jobs import BASE_JOB
from tests.reliability.generated import generated_examples
from tests.reliability.hostile import (
    REFUSED,
    AttackResult,
    HostileTree,
    audited_attack,
    build_tree,
    corpus_paths,
    hostile_path_strategy,
    outside_opens,
    privilege_drop_reason,
    send_paths,
    unprivileged_sidecar,
)
from tests.reliability.processes import RunningSidecar

GENERATED_IN_CI = 1500
SEED = 12


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    reason = privilege_drop_reason()
    if reason:
        pytest.skip(f"hostile path tests skipped: {reason}")


@pytest.fixture(scope="module")
def tree() -> Iterator[HostileTree]:
    built = build_tree()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(BASE_JOB["profile"]["model"])]) as server:
        yield server


@pytest.fixture(scope="module")
def sidecar(tree: HostileTree, fake: FakeOllama) -> Iterator[RunningSidecar]:
    with unprivileged_sidecar(tree, fake.url, new_api_key()) as running:
        yield running


def test_the_sidecar_really_runs_as_uid_1000(sidecar: RunningSidecar) -> None:
    status = Path(f"/proc/{sidecar.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["1000"] * 4
    assert "CapEff:\t0000000000000000" in status


def test_proc_root_of_another_process_is_403_not_500(
    sidecar: RunningSidecar, tree: HostileTree
) -> None:
    """The reported defect: realpath() raised PermissionError on /proc/1/root → 500."""
    result = AttackResult()
    with sidecar.client() as client:
        send_paths(client, ["/proc/1/root/etc/passwd", "/proc/1/cwd/x.pdf"], result)
    assert result.statuses == {403: 2}, result.unexpected


def test_every_hostile_path_is_refused_and_nothing_outside_is_opened(
    sidecar: RunningSidecar, tree: HostileTree, fake: FakeOllama, tmp_path: Path
) -> None:
    pids = [1, sidecar.pid, os.getpid(), 999_999]
    paths = corpus_paths(tree, pids)
    paths += generated_examples(hostile_path_strategy(tree, pids), GENERATED_IN_CI, SEED)
    fake.clear_requests()
    attack = audited_attack(sidecar, paths, tmp_path / "strace.log", timeout_s=30)
    result = attack.result

    assert result.sent == len(paths) >= 2000
    assert result.unexpected == []
    assert set(result.statuses) <= {*REFUSED, 422}
    assert result.marker_seen == 0
    assert fake.requests == []  # not one Ollama call for a refused path
    # No file left open by the attack. (Sockets are not compared: the server may still be
    # closing an earlier test's connection; the soak test checks that connections are freed.)
    assert attack.new_files() == []
    if attack.audited:
        assert attack.opened, "strace saw no open at all: the audit is not working"
        assert any(str(tree.base) in item.target for item in attack.opened)  # the guard's walk
        assert outside_opens(attack.opened, tree.base) == []
    else:
        pytest.skip("strace is not installed: statuses and fds checked, opens not audited")
