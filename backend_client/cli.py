"""`ocr-backend`: migrate the database, govern profiles and prompts, run OCR and the sandbox.

Every error ends the command with one line on stderr and a non-zero exit: 2 for a usage or
configuration problem, 1 for anything that went wrong while running, 3 when OCR finished with
pages missing (each listed). Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tqdm import tqdm

from backend_client import governance, migrate
from backend_client.client import SidecarClient
from backend_client.db import Database, redacted
from backend_client.documents import Document, DocumentPath, DocumentUpload
from backend_client.errors import BackendError, ConfigurationError, InvalidJobRequest
from backend_client.models import AiExecutionProfile, AiPrompt
from backend_client.page_count import check_page_range, count_local_pages, count_pages
from backend_client.resolver import SnapshotResolver
from backend_client.services import (
    OcrService,
    PromptDraft,
    SandboxOcrEngineService,
    failed_pages,
)
from backend_client.settings import BackendSettings, load_backend_settings
from backend_client.snapshot import OCR_PROFILE_NAME, OCR_PROMPT_KEY
from sidecar.schemas import OcrPageResult, OcrResponse

PROG = "ocr-backend"
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class PartialResult(BackendError):
    """OCR finished, but some pages failed (and were not recovered by --retry-failed)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus the exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------- argument values


def parse_pages(text: str) -> list[int]:
    """`1-3,5` → [1, 2, 3, 5]."""
    pages: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            start = int(first)
            end = int(last) if dash else start
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a page list like 1-3,5") from None
        if start < 1 or end < start:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: pages start at 1, ranges go up")
        pages.extend(range(start, end + 1))
    return pages


def parse_tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it is JSON (0.2, null, {"a":1}), else text.

    An empty value means NULL (unset: Ollama then uses the Modelfile's value).
    """
    values: dict[str, Any] = {}
    for item in items:
        key, equals, raw = item.partition("=")
        if not equals or not key.strip():
            raise ConfigurationError(f"{item!r} is not key=value")
        raw = raw.strip()
        if not raw:
            values[key.strip()] = None
            continue
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def read_text_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ConfigurationError(f"{what} {path}: {reason}") from None


# ---------------------------------------------------------------- output


def _emit_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _profile_dict(row: AiExecutionProfile) -> dict[str, Any]:
    return {
        "name": row.name,
        "model": row.model,
        "temperature": row.temperature,
        "top_p": row.top_p,
        "repeat_penalty": row.repeat_penalty,
        "max_tokens": row.max_tokens,
        "keep_alive": row.keep_alive,
        "options": row.options,
        "description": row.description,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


def _prompt_dict(row: AiPrompt) -> dict[str, Any]:
    return {
        "id": row.id,
        "prompt_key": row.prompt_key,
        "version": row.version,
        "is_active": row.is_active,
        "dms_tags": row.dms_tags,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "created_by": row.created_by,
        "change_note": row.change_note,
        "system_prompt": row.system_prompt,
        "user_template": row.user_template,
    }


def _print_profile(row: AiExecutionProfile) -> None:
    for key, value in _profile_dict(row).items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
        print(f"{key:15} {'(unset)' if value is None else shown}")


def _page_heading(label: str, page: OcrPageResult) -> str:
    if page.error is not None:
        return f"== {label} · page {page.page} · FAILED ({page.error.code}: {page.error.detail}) =="
    state = "complete" if page.complete else "INCOMPLETE"
    return (
        f"== {label} · page {page.page} · {state} ({page.done_reason}) · {page.duration_ms} ms =="
    )


def _summary_line(label: str, response: OcrResponse) -> str:
    prompt = f"v{response.prompt.version}" if response.prompt.version else "draft"
    failed = failed_pages(response)
    state = f"{len(failed)} of {len(response.pages)} pages failed" if failed else "complete"
    return (
        f"# {label}: {state}; model {response.model}, prompt {prompt}, "
        f"keep_alive {response.residency.keep_alive} ({response.residency.reason}), "
        f"{response.timings.total_ms} ms, request {response.request_id}"
    )


def _print_response(label: str, response: OcrResponse) -> None:
    print(_summary_line(label, response))
    for page in response.pages:
        print(_page_heading(label, page))
        if page.text is not None:
            print(page.text)


def _progress(total: int | None, label: str) -> tqdm:
    # Only on a terminal: a pipe or a log file gets the results, not bar redraws. The finished
    # bar stays, one line per document with its page count.
    on_terminal = sys.stdout.isatty() and sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit="page", file=sys.stderr, disable=not on_terminal)


def _json_line(value: dict[str, Any]) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


# ---------------------------------------------------------------- commands


async def cmd_migrate(args: argparse.Namespace, db: Database) -> None:
    if args.downgrade:
        await migrate.downgrade(db.engine, args.downgrade)
    else:
        await migrate.upgrade(db.engine, args.revision)
    revision = await migrate.current_revision(db.engine)
    if args.json:
        _emit_json({"database": redacted(db.url), "revision": revision})
    else:
        print(f"database {redacted(db.url)} at revision {revision or 'base (empty)'}")


async def cmd_profile_show(args: argparse.Namespace, db: Database) -> None:
    rows = await governance.get_profiles(db, args.name)
    if args.json:
        _emit_json([_profile_dict(row) for row in rows])
        return
    for position, row in enumerate(rows):
        if position:
            print()
        _print_profile(row)


async def cmd_profile_set(args: argparse.Namespace, db: Database) -> None:
    edits = parse_assignments(args.assignments)
    row = await governance.update_profile(db, args.name, edits)
    if args.json:
        _emit_json(_profile_dict(row))
    else:
        _print_profile(row)


async def cmd_prompt_list(args: argparse.Namespace, db: Database) -> None:
    rows = await governance.list_prompts(db, args.key)
    if args.json:
        _emit_json([_prompt_dict(row) for row in rows])
        return
    print(f"{'KEY':20} {'VER':>4} {'ACTIVE':6} {'CREATED':19} {'BY':16} NOTE / TAGS")
    for row in rows:
        created = row.created_at.strftime("%Y-%m-%d %H:%M:%S") if row.created_at else ""
        print(
            f"{row.prompt_key:20} {row.version:>4} {'*' if row.is_active else '':6} {created:19} "
            f"{(row.created_by or '')[:16]:16} {row.change_note or ''} [{', '.join(row.dms_tags)}]"
        )


async def cmd_prompt_add(args: argparse.Namespace, db: Database) -> None:
    system_prompt = read_text_file(args.file, "prompt file")
    user_template = (
        read_text_file(args.user_template_file, "user template file")
        if args.user_template_file
        else None
    )
    row = await governance.add_prompt_version(
        db,
        args.key,
        system_prompt=system_prompt,
        dms_tags=args.tags,
        user_template=user_template,
        created_by=args.by,
        change_note=args.note,
        activate=args.activate,
    )
    if args.json:
        _emit_json(_prompt_dict(row))
    else:
        state = "active" if row.is_active else f"inactive; activate: {PROG} prompt activate"
        hint = f" {row.prompt_key} {row.version}" if not row.is_active else ""
        print(f"added {row.prompt_key} version {row.version} ({state}{hint})")


async def cmd_prompt_activate(args: argparse.Namespace, db: Database) -> None:
    row = await governance.activate_prompt(db, args.key, args.version)
    if args.json:
        _emit_json(_prompt_dict(row))
    else:
        print(f"{row.prompt_key} version {row.version} is now active")


async def _document(path: str, upload: bool) -> tuple[Document, int | None]:
    """The document to send and its page count when it can be read here (None otherwise)."""
    if upload:
        document = await asyncio.to_thread(DocumentUpload.from_file, Path(path))
        return document, await asyncio.to_thread(count_pages, document.content)
    return DocumentPath(path), await asyncio.to_thread(count_local_pages, Path(path))


async def cmd_ocr(args: argparse.Namespace, db: Database, settings: BackendSettings) -> None:
    """One job per document, pages shown as they arrive; every range is checked first."""
    documents = [await _document(path, args.upload) for path in args.paths]
    for document, page_count in documents:
        check_page_range(document.label, args.pages, page_count)
    partial: list[str] = []
    async with SidecarClient.from_settings(settings) as client:
        service = OcrService(
            SnapshotResolver(db), client, profile_name=args.profile, prompt_key=args.prompt_key
        )
        for document, page_count in documents:
            total = len(args.pages) if args.pages else page_count
            response = await _ocr_document(service, document, total, args)
            failed = failed_pages(response)
            if failed:
                codes = sorted({p.error.code for p in response.pages if p.error is not None})
                listed = ", ".join(str(page) for page in failed)
                partial.append(f"{document.label} page(s) {listed} failed ({', '.join(codes)})")
    if partial:
        raise PartialResult("; ".join(partial))


async def _ocr_document(
    service: OcrService, document: Document, total: int | None, args: argparse.Namespace
) -> OcrResponse:
    label = document.label
    with _progress(total, label) as bar:

        def show(page: OcrPageResult) -> None:
            bar.update(1)
            if args.json:
                _json_line({"event": "page", "document": label, **page.model_dump(mode="json")})
                return
            bar.write(_page_heading(label, page), file=sys.stdout)
            if page.text is not None:
                bar.write(page.text, file=sys.stdout)

        response = await service.extract(document, pages=args.pages, on_page=show)
        if args.retry_failed and failed_pages(response):
            bar.reset(total=len(failed_pages(response)))
            response = await service.retry_failed(document, response, on_page=show)
    if args.json:
        summary = response.model_dump(mode="json", exclude={"pages"})
        _json_line(
            {"event": "done", "document": label, **summary, "failed_pages": failed_pages(response)}
        )
    else:
        print(_summary_line(label, response))
    return response


async def cmd_sandbox(args: argparse.Namespace, db: Database, settings: BackendSettings) -> None:
    draft = None
    if args.prompt_file or args.user_template_file or args.tags is not None:
        draft = PromptDraft(
            system_prompt=read_text_file(args.prompt_file, "prompt file")
            if args.prompt_file
            else None,
            user_template=(
                read_text_file(args.user_template_file, "user template file")
                if args.user_template_file
                else None
            ),
            dms_tags=args.tags,
        )
    edits = parse_assignments(args.set)
    upload, page_count = await _document(args.file, upload=True)
    assert isinstance(upload, DocumentUpload)
    check_page_range(upload.label, args.pages, page_count)
    async with SidecarClient.from_settings(settings) as client:
        service = SandboxOcrEngineService(
            SnapshotResolver(db), client, profile_name=args.profile, prompt_key=args.prompt_key
        )
        total = len(args.pages) if args.pages else page_count
        with _progress(total, upload.label) as bar:
            outcome = await service.run(
                upload, draft, edits, pages=args.pages, on_page=lambda _page: bar.update(1)
            )
    if args.json:
        _emit_json(outcome.as_dict())
        return
    base = (
        f"active version {outcome.active_version}"
        if outcome.active_version
        else "no active version"
    )
    if not outcome.differences:
        print(f"sandbox: same parameters as {base}")
    else:
        print(f"sandbox: differs from {base} in:")
        for difference in outcome.differences:
            print(
                f"  {difference.field}: {_short(difference.active)} -> {_short(difference.sandbox)}"
            )
    _print_response(upload.label, outcome.result)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log retries and other warnings to stderr"
    )
    common.add_argument(
        "--database-url", help="overrides OCR_BACKEND_DATABASE_URL (default: SQLite under ./var/)"
    )
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--pages", type=parse_pages, help="pages to OCR, e.g. 1-3,5 (default: all)")
    job.add_argument("--profile", default=OCR_PROFILE_NAME, help="execution profile name")
    job.add_argument("--prompt-key", default=OCR_PROMPT_KEY, help="prompt key")

    parser = _OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    migrate_cmd = commands.add_parser(
        "migrate", parents=[common], help="upgrade the database schema"
    )
    migrate_cmd.add_argument("--revision", default="head", help="upgrade target (default head)")
    migrate_cmd.add_argument(
        "--downgrade", metavar="REVISION", help="downgrade to REVISION (e.g. base)"
    )
    migrate_cmd.set_defaults(handler=cmd_migrate)

    profile = commands.add_parser("profile", help="show or edit execution profiles")
    profile_commands = profile.add_subparsers(
        dest="action", required=True, parser_class=_OneLineParser
    )
    show = profile_commands.add_parser("show", parents=[common], help="show one profile or all")
    show.add_argument("name", nargs="?")
    show.set_defaults(handler=cmd_profile_show)
    set_cmd = profile_commands.add_parser(
        "set",
        parents=[common],
        help="set fields: temperature=0.2 keep_alive=10m options.num_ctx=8192 top_p= (unset)",
    )
    set_cmd.add_argument("name")
    set_cmd.add_argument("assignments", nargs="+", metavar="key=value")
    set_cmd.set_defaults(handler=cmd_profile_set)

    prompt = commands.add_parser("prompt", help="list, add and activate prompt versions")
    prompt_commands = prompt.add_subparsers(
        dest="action", required=True, parser_class=_OneLineParser
    )
    list_cmd = prompt_commands.add_parser("list", parents=[common], help="list prompt versions")
    list_cmd.add_argument("--key", help="only this prompt key")
    list_cmd.set_defaults(handler=cmd_prompt_list)
    add = prompt_commands.add_parser("add", parents=[common], help="add a new version")
    add.add_argument("--key", required=True)
    add.add_argument("--file", required=True, help="system prompt text ({{dms_tags}} placeholder)")
    add.add_argument("--tags", type=parse_tags, help="a,b,c (default: the active version's)")
    add.add_argument(
        "--user-template-file", help="user message template (default: the active version's)"
    )
    add.add_argument("--note", help="change note")
    add.add_argument("--by", default=_current_user(), help="author (default: current user)")
    add.add_argument("--activate", action="store_true", help="activate it in the same transaction")
    add.set_defaults(handler=cmd_prompt_add)
    activate = prompt_commands.add_parser("activate", parents=[common], help="activate a version")
    activate.add_argument("key")
    activate.add_argument("version", type=int)
    activate.set_defaults(handler=cmd_prompt_activate)

    ocr = commands.add_parser(
        "ocr",
        parents=[common, job],
        help="OCR documents with the active parameters, one job per document",
        description=(
            "One job per document, pages shown as they arrive. --json prints one JSON line per "
            "page, then one per document (event done). Pages that failed are listed and the exit "
            f"code is {EXIT_PARTIAL}. A PATH that exists here too (or an --upload file) has its "
            "pages counted first: a range beyond it is refused before anything is sent."
        ),
    )
    ocr.add_argument(
        "paths", nargs="+", metavar="PATH", help="as the sidecar sees it (under UPLOAD_BASE)"
    )
    ocr.add_argument(
        "--upload", action="store_true", help="PATHs are local files: upload their bytes"
    )
    ocr.add_argument(
        "--retry-failed",
        action="store_true",
        help="when pages fail, send those pages (only those) once more and merge them in",
    )
    ocr.set_defaults(handler=cmd_ocr, needs_sidecar=True)

    sandbox = commands.add_parser(
        "sandbox", parents=[common, job], help="try a draft prompt / profile edits; saves nothing"
    )
    sandbox.add_argument("file", metavar="FILE", help="local file, uploaded")
    sandbox.add_argument("--prompt-file", help="draft system prompt")
    sandbox.add_argument("--user-template-file", help="draft user template")
    sandbox.add_argument("--tags", type=parse_tags, help="draft DMS tags a,b,c")
    sandbox.add_argument("--set", nargs="+", default=[], metavar="key=value", help="profile edits")
    sandbox.set_defaults(handler=cmd_sandbox, needs_sidecar=True)
    return parser


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


async def run(args: argparse.Namespace) -> None:
    settings = load_backend_settings(
        **({"database_url": args.database_url} if args.database_url else {})
    )
    db = Database.from_url(settings.database_url)
    try:
        with db.translated_errors():  # `migrate` works on the bare engine, not in transaction()
            if getattr(args, "needs_sidecar", False):
                await args.handler(args, db, settings)
            else:
                await args.handler(args, db)
    finally:
        await db.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "verbose", False) else logging.ERROR,
        format=f"{PROG}: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(run(args))
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigurationError, InvalidJobRequest) as exc:
        return _fail(exc, EXIT_USAGE)
    except PartialResult as exc:
        return _fail(f"partial result: {exc}", EXIT_PARTIAL)
    except BackendError as exc:
        return _fail(exc, EXIT_RUNTIME)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # the last line of defence: one line, no traceback
        return _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_RUNTIME)
    return 0


def _fail(error: object, code: int) -> int:
    message = " ".join(str(error).split())
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
