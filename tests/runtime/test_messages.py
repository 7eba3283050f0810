"""What operators and callers read: redacted details, one size unit, tracebacks in the log only."""

from __future__ import annotations

import json
import logging
import os
import string
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.errors import ApiError, redact_paths
from sidecar.limits import declared_length
from sidecar.observability import (
    PROGRESS_BAR_OFF,
    JsonFormatter,
    configure_logging,
    route_library_loggers,
)
from sidecar.units import MIB, mib_text
from tests.runtime.test_probes import StagedRetrieval
from tests.server import serve

SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12)
PATHS = st.lists(SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z]{2,6}){0,2}(:[0-9]{2,5})?", fullmatch=True)
URLS = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}{path}",
    st.sampled_from(["http", "https", "hf"]),
    HOSTS,
    st.one_of(st.just(""), PATHS),
)


@given(path=PATHS, prefix=st.sampled_from(["", "at ", "open '", "(", "cache="]))
def test_filesystem_paths_are_blanked(path: str, prefix: str) -> None:
    redacted = redact_paths(f"{prefix}{path} failed")
    assert path not in redacted and "<path>" in redacted


@given(url=URLS, path=PATHS)
def test_urls_stay_whole_next_to_blanked_paths(url: str, path: str) -> None:
    redacted = redact_paths(f"We couldn't connect to '{url}' to load {path}")
    assert f"'{url}'" in redacted
    assert redacted.endswith("to load <path>")


def test_the_hub_message_that_used_to_be_mangled() -> None:
    message = "We couldn't connect to 'https://huggingface.co' to load this file"
    assert redact_paths(message) == message
    assert redact_paths("see file:///root/.cache/model.bin") == "see <path>"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [([], None), ([(b"content-length", b"0")], 0), ([(b"content-length", b" 1024 ")], 1024)],
)
def test_declared_length(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert declared_length({"type": "http", "headers": headers}) == expected


@pytest.mark.parametrize("value", [b"", b"abc", b"-5", b"1e3", b"12 34", b"0x10"])
def test_a_content_length_that_is_not_a_count_is_refused(value: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        declared_length({"type": "http", "headers": [(b"content-length", value)]})
    assert caught.value.code == "validation_error" and caught.value.status == 422


@given(st.integers(min_value=1, max_value=10_000))
def test_sizes_read_in_mib(mib: int) -> None:
    assert mib_text(mib * MIB) == f"{mib} MiB"


def test_half_sizes_keep_their_fraction() -> None:
    assert mib_text(MIB + MIB // 2) == "1.5 MiB"


def test_the_json_log_line_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord(
            {"msg": "unhandled error", "levelno": logging.ERROR, "exc_info": sys.exc_info()}
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["exc_type"] == "ValueError"
    assert line["traceback"].startswith("Traceback (most recent call last):")
    assert line["traceback"].endswith("ValueError: boom")
    assert "test_the_json_log_line_carries_the_traceback" in line["traceback"]


class ExplodingRetrieval(StagedRetrieval):
    def health(self) -> dict[str, Any]:
        raise RuntimeError("/very/secret/internal/path exploded")


class SeesErrors:
    """An outer ASGI layer (where a server sits): records what propagates out of the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.errors.append(exc)
            raise


def test_a_500_is_logged_with_its_request_id_and_traceback_not_answered_with_them(
    make_settings: Callable[..., Settings],
    api_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outer = SeesErrors(create_app(make_settings(), retrieval=ExplodingRetrieval()))
    with caplog.at_level(logging.ERROR), serve(outer) as server:
        reply = httpx.get(
            f"{server.url}/health", headers={"X-API-Key": api_key, "X-Request-ID": "diag-7"}
        )
    assert reply.status_code == 500 and reply.json()["code"] == "internal_error"
    assert reply.headers["x-request-id"] == "diag-7"
    assert "exploded" not in reply.text and "Traceback" not in reply.text
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "diag-7"]
    (ours,) = [record for record in logged if record.exc_info]
    line = json.loads(JsonFormatter().format(ours))
    assert line["request_id"] == "diag-7" and line["exc_type"] == "RuntimeError"
    assert "exploded" in line["traceback"] and "in health" in line["traceback"]
    # Re-raised after the answer, as Starlette's ServerErrorMiddleware does: the server sees it.
    assert [type(error) for error in outer.errors] == [RuntimeError]


@pytest.fixture
def configured_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`configure_logging` as the process runs it, undone afterwards (it is process-global)."""
    for name in PROGRESS_BAR_OFF:  # touched first, so monkeypatch restores what was there
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in chatty.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def test_stdout_gets_json_lines_for_warnings_and_no_httpx_chatter(
    configured_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("tokenizer is deprecated", FutureWarning, stacklevel=1)
    logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1:11434/api/version "200"')
    logging.getLogger("sidecar.test").info("hello", extra={"answer": 42})
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [record["logger"] for record in records] == ["py.warnings", "sidecar.test"]
    assert "FutureWarning: tokenizer is deprecated" in records[0]["msg"]
    assert records[1]["answer"] == 42
    assert captured.err == ""
    assert all(os.environ[name] == "1" for name in PROGRESS_BAR_OFF)  # tqdm and the hub: off


def test_library_logs_go_through_the_json_handler(configured_logging: None) -> None:
    configure_logging("INFO", "json")
    route_library_loggers()  # the app does this in a thread before loading a model
    for name in ("transformers", "huggingface_hub"):
        library = logging.getLogger(name)
        # pytest's own capture handlers may sit there; no library stderr handler may.
        assert not [h for h in library.handlers if type(h) is logging.StreamHandler]
        assert library.propagate
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, JsonFormatter)
    record = logging.makeLogRecord({"msg": "hi", "color_message": "\x1b[36mhi"})
    assert "color_message" not in json.loads(JsonFormatter().format(record))
