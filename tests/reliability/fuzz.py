"""Schema fuzzing with schemathesis 4 against a real sidecar on loopback.

Every operation of the served OpenAPI document, positive and negative cases, each sent twice:
with the real key (schemathesis' own `x-api-key` value replaced) and with no key at all. Each
answer must be no 5xx, a documented status, a documented content type and a body that matches its
schema. Shared by `test_schema_fuzz.py` (CI size) and `bench/bench_reliability.py` (full size).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.generated import generated_examples

KEY_HEADER = "x-api-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def served_schema(url: str, api_key: str, fallback: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`/openapi.json` as served (behind auth); the app's own schema when the route is off."""
    response = httpx.get(f"{url}/openapi.json", headers={KEY_HEADER: api_key}, timeout=30)
    if response.status_code == 200:
        return response.json()  # type: ignore[no-any-return]
    return fallback()


@dataclass
class FuzzReport:
    cases: int = 0  # generated cases (each is sent with and without the key)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)
    per_operation: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": self.server_errors,
            "schema_failures": len(self.failures),
            "per_operation": dict(self.per_operation),
        }


def _send(case: Any, url: str, session: requests.Session, report: FuzzReport, label: str) -> None:
    response = case.call(base_url=url, session=session, timeout=60)
    try:
        case.validate_response(response, checks=CHECKS)
        failure = None
    except AssertionError as error:  # schemathesis' FailureGroup is an AssertionError
        failure = f"{label} [{response.status_code}]: {error}"[:2000]
    with report.lock:
        report.requests += 1
        report.statuses[response.status_code] += 1
        report.server_errors += response.status_code >= 500
        if failure is not None and len(report.failures) < 50:
            report.failures.append(failure)


def _send_both_ways(case: Any, url: str, api_key: str, report: FuzzReport, label: str) -> None:
    """With the real key (replacing schemathesis' generated value), then with no key at all."""
    session = _thread_session()
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != KEY_HEADER}
    case.headers = {**headers, KEY_HEADER: api_key}
    _send(case, url, session, report, f"{label} with key")
    case.headers = headers
    _send(case, url, session, report, f"{label} without key")


_local = threading.local()


def _thread_session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session  # type: ignore[no-any-return]


def generated_cases(schema: dict[str, Any], per_operation: int, seed: int) -> list[tuple[Any, str]]:
    """`per_operation` positive and as many negative cases of every operation, with labels."""
    loaded = schemathesis.openapi.from_dict(schema)
    cases = []
    for result in loaded.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            try:
                drawn = generated_examples(strategy, per_operation, seed)
            except Unsatisfiable:  # nothing to negate (no parameters, no body)
                continue
            cases += [(case, f"{operation.label} {mode.value}") for case in drawn]
    return cases


def fuzz(
    schema: dict[str, Any], url: str, api_key: str, per_operation: int, seed: int, workers: int = 8
) -> FuzzReport:
    """Send every generated case with and without the key, `workers` at a time (concurrent
    embeds share micro-batches, as real clients' do)."""
    report = FuzzReport()
    cases = generated_cases(schema, per_operation, seed)
    for case, _ in cases:
        report.per_operation[case.operation.label] += 1
    report.cases = len(cases)
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(_send_both_ways, c, url, api_key, report, lb) for c, lb in cases]:
            done.result()
    return report
