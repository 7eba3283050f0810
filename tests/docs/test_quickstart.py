"""The README's shell blocks run as written: the try-it path reaches /ready 200 and every call
answers 200; the run command creates a key, shows it once, and serves with it."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx

from tests.docs.markdown import REPO, Block, blocks
from tests.docs.processes import clean_env, free_port, wait_for

README = REPO / "README.md"
# Blocks no test runs, and why: each other README shell block must be run below.
NOT_RUN = {
    "pip install uv": "installs into the caller's Python; the test already runs under uv",
    "uv run pytest": "the suite this test belongs to",
}
CALL_LINE = re.compile(r"^== (.+?) -> (\d{3})$", re.MULTILINE)


def readme_shell_blocks(section: str) -> list[Block]:
    return [b for b in blocks(README) if b.is_shell and b.section == section]


def test_every_readme_shell_block_is_run_or_excused() -> None:
    shell = [b for b in blocks(README) if b.is_shell]
    run_here = readme_shell_blocks("The two commands") + readme_shell_blocks(
        "Try everything in one minute"
    )
    for block in shell:
        if block.text.strip() in NOT_RUN:
            continue
        assert block in run_here, f"{block.where()} is neither run by a test nor excused"
    assert len(readme_shell_blocks("Try everything in one minute")) == 1


def test_try_everything_in_one_minute_runs_as_written() -> None:
    (block,) = readme_shell_blocks("Try everything in one minute")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    calls = CALL_LINE.findall(done.stdout)
    assert [status for _, status in calls] == ["200"] * len(calls)
    routes = [what.split(" (")[0] for what, _ in calls]
    assert routes == ["GET /ready"] + ["POST /ocr"] * 3 + ["POST /embed", "POST /rerank"]
    assert '"complete": true' in done.stdout and '"dense"' in done.stdout
    assert '{"event": "page"' in done.stdout and '{"event": "done"' in done.stdout


def test_run_command_generates_a_key_shows_it_once_and_serves_with_it(tmp_path: Path) -> None:
    """The block as written, in an empty directory (uv finds the project through UV_PROJECT)."""
    (block,) = [b for b in readme_shell_blocks("The two commands") if "sidecar" in b.text]
    port = free_port()
    env = clean_env(UV_PROJECT=str(REPO), OCR_SIDECAR_PORT=str(port), HF_HUB_OFFLINE="1")
    workdir, logs = tmp_path / "checkout-user", tmp_path / "logs"
    workdir.mkdir()
    logs.mkdir()
    with (logs / "stdout").open("w") as out, (logs / "stderr").open("w") as err:
        command = ["bash", "-c", f"exec {block.text.strip()}"]
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:

        def live() -> bool:
            assert process.poll() is None, (logs / "stderr").read_text()
            try:
                return httpx.get(f"{url}/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(live, timeout=180)
        key_file = workdir / "var" / "api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        (key,) = key_file.read_text(encoding="utf-8").split()
        assert httpx.get(f"{url}/health", headers={"X-API-Key": key}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    output = (logs / "stdout").read_text() + (logs / "stderr").read_text()
    assert output.count(key) == 1, "the generated key is shown exactly once"
