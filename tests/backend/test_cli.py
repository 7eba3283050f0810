"""`ocr-backend` in-process: every command, `--json` output, and one-line errors with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend_client.cli import EXIT_RUNTIME, EXIT_USAGE, main
from tests.backend.fake_sidecar import RecordingSidecar, Scripted, problem


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
    assert "at revision 0001" in capsys.readouterr().out
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
    prompt_file = tmp_path / "v2.txt"
    prompt_file.write_text("Read carefully. Fields: {{dms_tags}}", encoding="utf-8")
    added = run_json(
        capsys, "prompt", "add", "--key", "ocr-extract", "--file", str(prompt_file),
        "--tags", "invoice_no, total", "--note", "focus on invoices", "--activate",
    )  # fmt: skip
    assert isinstance(added, dict)
    assert (added["version"], added["is_active"], added["dms_tags"]) == (
        2,
        True,
        ["invoice_no", "total"],
    )
    listed = run_json(capsys, "prompt", "list", "--key", "ocr-extract")
    assert isinstance(listed, list)
    assert [(p["version"], p["is_active"]) for p in listed] == [(1, False), (2, True)]
    assert main(["prompt", "activate", "ocr-extract", "1"]) == 0
    listed = run_json(capsys, "prompt", "list")
    assert isinstance(listed, list)
    assert [(p["version"], p["is_active"]) for p in listed] == [(1, True), (2, False)]
    assert "no version 9" in fail(capsys, EXIT_RUNTIME, "prompt", "activate", "ocr-extract", "9")
    missing = str(tmp_path / "missing.txt")
    fail(capsys, EXIT_USAGE, "prompt", "add", "--key", "k", "--file", missing)
    fail(capsys, EXIT_USAGE, "prompt", "activate", "ocr-extract", "two")


def test_ocr_and_sandbox_against_a_sidecar(
    cli_db: str,
    tmp_path: Path,
    fake_sidecar: RecordingSidecar,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OCR_SIDECAR_URL", fake_sidecar.url)
    result = run_json(capsys, "ocr", "a/one.pdf", "b/two.pdf", "--pages", "1-2")
    assert isinstance(result, dict)
    documents = result["documents"]
    assert [d["document"] for d in documents] == ["a/one.pdf", "b/two.pdf"]
    assert [[p["page"] for p in d["pages"]] for d in documents] == [[1, 2], [1, 2]]
    assert [r.path for r in fake_sidecar.requests] == ["a/one.pdf"] * 2 + ["b/two.pdf"] * 2

    scan = tmp_path / "scan.png"
    scan.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    capsys.readouterr()
    assert main(["ocr", "--upload", str(scan)]) == 0
    out = capsys.readouterr().out
    assert "== scan.png · page 1 · complete (stop)" in out
    assert "text of page 1" in out
    assert fake_sidecar.requests[-1].upload == scan.read_bytes()

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
    assert fake_sidecar.requests[-1].job["prompt"]["system_prompt"] == "Draft {{dms_tags}}"


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
