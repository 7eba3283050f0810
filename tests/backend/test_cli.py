"""`ocr-backend` in-process: every command, `--json` output, and one-line errors with exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pypdfium2
import pytest

from backend_client.cli import EXIT_PARTIAL, EXIT_RUNTIME, EXIT_USAGE, main
from tests.backend.fake_sidecar import RecordingSidecar, Scripted, problem
from tests.server import free_port


@pytest.fixture
def cli_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The database selected through OCR_BACKEND_DATABASE_URL, migrated from scratch."""
    monkeypatch.setenv("OCR_BACKEND_DATABASE_URL", database_url)
    assert main(["migrate", "--downgrade", "base"]) == 0
    assert main(["migrate"]) == 0
    return database_url


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress bar, no warnings when stderr is not a terminal
    return json.loads(captured.out)


def fail(capsys: pytest.CaptureFixture[str], expected_code: int, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == expected_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # exactly one line
    assert err.startswith("ocr-backend")
    assert "Traceback" not in err
    return err


def test_migrate_works_from_any_directory_with_the_default_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "some" / "dir"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert main(["migrate"]) == 0
    assert "at revision 0002" in capsys.readouterr().out
    assert (elsewhere / "var" / "ocr-backend.sqlite3").is_file()
    shown = run_json(capsys, "profile", "show", "ocr-extract")
    assert isinstance(shown, list)
    assert shown[0]["model"] == "scb10x/typhoon-ocr1.5-3b"


def test_profile_show_and_set(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    updated = run_json(
        capsys, "profile", "set", "ocr-extract", "temperature=0.25", "top_p=", "keep_alive=10m",
        "options.num_ctx=8192", "description=tuned for scans",
    )  # fmt: skip
    assert isinstance(updated, dict)
    assert (updated["temperature"], updated["top_p"], updated["keep_alive"]) == (0.25, None, "10m")
    assert updated["options"] == {"num_ctx": 8192}
    capsys.readouterr()
    assert main(["profile", "show"]) == 0
    assert "tuned for scans" in capsys.readouterr().out
    error = fail(capsys, EXIT_RUNTIME, "profile", "set", "ocr-extract", "top_p=1.5")
    assert "top_p" in error
    error = fail(capsys, EXIT_RUNTIME, "profile", "set", "ocr-extract", "options.keep_alive=1h")
    assert "options.keep_alive" in error
    assert "'nope' does not exist" in fail(capsys, EXIT_RUNTIME, "profile", "show", "nope")
    fail(capsys, EXIT_USAGE, "profile", "set", "ocr-extract", "temperature")


def test_prompt_add_list_activate(
    cli_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt_file = tmp_path / "v3.txt"
    prompt_file.write_text("Read carefully. Fields: {{dms_tags}}", encoding="utf-8")
    added = run_json(
        capsys, "prompt", "add", "--key", "ocr-extract", "--file", str(prompt_file),
        "--tags", "invoice_no, total", "--note", "focus on invoices", "--activate",
    )  # fmt: skip
    assert isinstance(added, dict)
    assert (added["version"], added["is_active"], added["dms_tags"]) == (
        3,
        True,
        ["invoice_no", "total"],
    )
    listed = run_json(capsys, "prompt", "list", "--key", "ocr-extract")
    assert isinstance(listed, list)
    assert [(p["version"], p["is_active"]) for p in listed] == [(1, False), (2, False), (3, True)]
    assert main(["prompt", "activate", "ocr-extract", "1"]) == 0
    listed = run_json(capsys, "prompt", "list")
    assert isinstance(listed, list)
    assert [(p["version"], p["is_active"]) for p in listed] == [(1, True), (2, False), (3, False)]
    assert "no version 9" in fail(capsys, EXIT_RUNTIME, "prompt", "activate", "ocr-extract", "9")
    missing = str(tmp_path / "missing.txt")
    fail(capsys, EXIT_USAGE, "prompt", "add", "--key", "k", "--file", missing)
    fail(capsys, EXIT_USAGE, "prompt", "activate", "ocr-extract", "two")


def run_lines(capsys: pytest.CaptureFixture[str], expected_code: int, *argv: str) -> list[Any]:
    """Run with --json; every stdout line is one JSON object (NDJSON)."""
    capsys.readouterr()
    assert main([*argv, "--json"]) == expected_code
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def make_pdf(path: Path, pages: int) -> Path:
    document = pypdfium2.PdfDocument.new()
    for _ in range(pages):
        document.new_page(200, 300)
    document.save(path)
    document.close()
    return path


@pytest.fixture
def sidecar_env(
    fake_sidecar: RecordingSidecar, monkeypatch: pytest.MonkeyPatch
) -> RecordingSidecar:
    monkeypatch.setenv("OCR_SIDECAR_URL", fake_sidecar.url)
    return fake_sidecar


def test_ocr_is_one_job_per_document_with_a_json_line_per_page(
    cli_db: str, sidecar_env: RecordingSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = run_lines(capsys, 0, "ocr", "a/one.pdf", "b/two.pdf", "--pages", "1-2")
    assert [(line["event"], line["document"], line.get("page")) for line in lines] == [
        ("page", "a/one.pdf", 1),
        ("page", "a/one.pdf", 2),
        ("done", "a/one.pdf", None),
        ("page", "b/two.pdf", 1),
        ("page", "b/two.pdf", 2),
        ("done", "b/two.pdf", None),
    ]
    assert lines[0]["text"] == "text of page 1"
    assert (lines[2]["complete"], lines[2]["failed_pages"]) == (True, [])
    assert lines[2]["prompt"]["version"] == 2
    # one request per document, streamed, with every page in it
    requests = sidecar_env.requests
    assert [(r.path, r.job["pages"]) for r in requests] == [
        ("a/one.pdf", [1, 2]),
        ("b/two.pdf", [1, 2]),
    ]
    assert {r.headers["accept"] for r in requests} == {"application/x-ndjson"}


def test_a_page_range_beyond_the_document_is_refused_before_anything_is_sent(
    cli_db: str,
    tmp_path: Path,
    sidecar_env: RecordingSidecar,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    short = make_pdf(tmp_path / "short.pdf", 2)
    long = make_pdf(tmp_path / "long.pdf", 5)
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    # the first document is fine, the second is too short: nothing is sent for either
    error = fail(capsys, EXIT_USAGE, "ocr", "--upload", str(long), str(short), "--pages", "1-3")
    assert "short.pdf has 2 pages: page 3 is beyond it" in error
    assert "scan.png has 1 page: page 2 is beyond it" in fail(
        capsys, EXIT_USAGE, "ocr", "--upload", str(scan), "--pages", "1-2"
    )
    # path mode: a PATH that also exists here is counted too
    monkeypatch.chdir(tmp_path)
    error = fail(capsys, EXIT_USAGE, "ocr", "short.pdf", "--pages", "2-4")
    assert "pages 3, 4 are beyond it" in error
    assert sidecar_env.count == 0
    # within the range it goes out, as one job
    assert run_lines(capsys, 0, "ocr", "--upload", str(short), "--pages", "1-2")[-1]["complete"]
    assert [r.job["pages"] for r in sidecar_env.requests] == [[1, 2]]


def test_failed_pages_exit_3_naming_them(
    cli_db: str, sidecar_env: RecordingSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar_env.fail_pages(2, 3)
    capsys.readouterr()
    assert main(["ocr", "a.pdf", "--pages", "1-3", "--json"]) == EXIT_PARTIAL
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["error"] for line in lines[:3]] == [
        None,
        {"code": "ollama_timeout", "detail": "page 2: Ollama timed out"},
        {"code": "ollama_timeout", "detail": "page 3: Ollama timed out"},
    ]
    assert (lines[3]["event"], lines[3]["complete"], lines[3]["failed_pages"]) == (
        "done",
        False,
        [2, 3],
    )
    assert captured.err.count("\n") == 1
    assert "a.pdf page(s) 2, 3 failed (ollama_timeout)" in captured.err
    assert len(sidecar_env.requests) == 1  # not retried unless asked


def test_retry_failed_resends_only_the_failed_pages(
    cli_db: str, sidecar_env: RecordingSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar_env.fail_pages(2, times=1)
    lines = run_lines(capsys, 0, "ocr", "a.pdf", "--pages", "1-3", "--retry-failed")
    assert [r.job["pages"] for r in sidecar_env.requests] == [[1, 2, 3], [2]]
    pages = [(line["page"], line["text"]) for line in lines if line["event"] == "page"]
    assert pages == [
        (1, "text of page 1"),
        (2, None),
        (3, "text of page 3"),
        (2, "text of page 2"),  # the retried page, printed as it arrives
    ]
    done = lines[-1]
    assert (done["event"], done["complete"], done["failed_pages"]) == ("done", True, [])
    # a page that fails again stays failed: exit 3
    sidecar_env.fail_pages(1, times=2)
    capsys.readouterr()
    assert main(["ocr", "a.pdf", "--pages", "1", "--retry-failed"]) == EXIT_PARTIAL
    assert "page(s) 1 failed" in capsys.readouterr().err
    assert [r.job["pages"] for r in sidecar_env.requests][-2:] == [[1], [1]]


def test_upload_text_output_and_sandbox(
    cli_db: str,
    tmp_path: Path,
    sidecar_env: RecordingSidecar,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    capsys.readouterr()
    assert main(["ocr", "--upload", str(scan)]) == 0
    captured = capsys.readouterr()
    assert "== scan.png · page 1 · complete (stop)" in captured.out
    assert "text of page 1" in captured.out
    assert "# scan.png: complete; model scb10x/typhoon-ocr1.5-3b, prompt v2" in captured.out
    assert captured.err == ""  # no progress bar when stdout is not a terminal
    assert sidecar_env.requests[-1].upload == scan.read_bytes()

    draft = tmp_path / "draft.txt"
    draft.write_text("Draft {{dms_tags}}", encoding="utf-8")
    outcome = run_json(
        capsys, "sandbox", str(scan), "--prompt-file", str(draft), "--set", "temperature=0.5",
    )  # fmt: skip
    assert isinstance(outcome, dict)
    assert {d["field"] for d in outcome["differences"]} == {
        "profile.temperature", "prompt.system_prompt",
    }  # fmt: skip
    assert outcome["snapshot"]["profile"]["temperature"] == 0.5
    assert sidecar_env.requests[-1].job["prompt"]["system_prompt"] == "Draft {{dms_tags}}"
    assert "scan.png has 1 page" in fail(capsys, EXIT_USAGE, "sandbox", str(scan), "--pages", "2")


def test_a_database_that_is_down_is_one_line_and_nothing_is_sent(
    sidecar_env: RecordingSidecar,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/ocr"
    monkeypatch.setenv("OCR_BACKEND_DATABASE_URL", closed)
    for argv in (["prompt", "list"], ["profile", "show"], ["migrate"], ["ocr", "a.pdf"]):
        error = fail(capsys, EXIT_RUNTIME, *argv)
        assert "is unreachable" in error, error
    assert sidecar_env.count == 0


def test_ocr_errors_are_one_line(
    cli_db: str,
    fake_sidecar: RecordingSidecar,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OCR_SIDECAR_URL", fake_sidecar.url)
    fake_sidecar.fail_next(Scripted(404, problem(404, "document_not_found", "no such document")))
    error = fail(capsys, EXIT_RUNTIME, "ocr", "missing.pdf")
    assert "document_not_found" in error
    assert "request_id" in error
    fail(capsys, EXIT_USAGE, "ocr", "x.pdf", "--pages", "3-1")
    fail(capsys, EXIT_USAGE, "sandbox", str(Path("/nonexistent/file.pdf")))
    count = fake_sidecar.count
    assert main(["profile", "set", "ocr-extract", "temperature=0.2"]) == 0
    monkeypatch.setenv("OCR_SIDECAR_URL", "ftp://nowhere")
    assert "OCR_SIDECAR_URL" in fail(capsys, EXIT_USAGE, "ocr", "x.pdf")
    assert fake_sidecar.count == count


def test_an_unusable_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OCR_BACKEND_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert "ocr-backend migrate" in fail(capsys, EXIT_RUNTIME, "prompt", "list")
    monkeypatch.setenv("OCR_BACKEND_DATABASE_URL", "mysql://db/x")
    assert "OCR_BACKEND_DATABASE_URL" in fail(capsys, EXIT_USAGE, "prompt", "list")


def _run_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `ocr-backend` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    controller, terminal = pty.openpty()
    # A real terminal has a size; tqdm draws nothing on a zero-width one.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "backend_client.cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_a_progress_bar_per_page_on_a_terminal(
    tmp_path: Path, sidecar_env: RecordingSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'tty.sqlite3'}"  # one database is enough here
    monkeypatch.setenv("OCR_BACKEND_DATABASE_URL", database)
    assert main(["migrate"]) == 0
    env = {**os.environ, "OCR_SIDECAR_URL": sidecar_env.url}
    code, output = _run_on_a_terminal(["ocr", "doc.pdf", "--pages", "1-3"], env)
    assert code == 0, output
    assert "3/3" in output  # tqdm's page counter reached every page
    assert "doc.pdf" in output
    assert "text of page 3" in output
    assert [r.job["pages"] for r in sidecar_env.requests] == [[1, 2, 3]]
