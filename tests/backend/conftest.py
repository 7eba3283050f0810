"""Backend fixtures: a migrated database per test (SQLite file, or the real PostgreSQL) and a
real loopback HTTP server standing in for the sidecar that records every request it gets.

PostgreSQL: each test session creates its own database `ocr_test_<random>` through the
`postgres` maintenance database and drops it (WITH (FORCE)) at the end; every test starts from
`downgrade base` + `upgrade head`, i.e. exactly the seeded state.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from backend_client import migrate
from backend_client.client import SidecarClient
from backend_client.db import Database
from backend_client.resolver import SnapshotResolver
from backend_client.services import OcrService
from tests.backend.fake_sidecar import RecordingSidecar
from tests.server import ThreadedServer

PG_ADMIN_URL = os.environ.get(
    "OCR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

# Tests build their own settings; a developer's environment must not leak into them.
for _name in ("OCR_BACKEND_DATABASE_URL", "OCR_SIDECAR_URL", "OCR_SIDECAR_API_KEY"):
    os.environ.pop(_name, None)


def _admin_connect() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the real server, dropped at the end of the session."""
    try:
        admin = _admin_connect()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}".splitlines()[0])
    name = f"ocr_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with _admin_connect() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs twice: on a SQLite file and on PostgreSQL."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite+aiosqlite:///{tmp_path / 'backend.sqlite3'}"


@pytest.fixture
async def bare_db(database_url: str) -> AsyncIterator[Database]:
    """An engine on an empty database (no tables)."""
    db = Database.from_url(database_url)
    await migrate.downgrade(db.engine, "base")
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def db(bare_db: Database) -> Database:
    """The database migrated to head: tables plus the seeded profile and prompt v1."""
    await migrate.upgrade(bare_db.engine)
    return bare_db


@pytest.fixture(scope="session")
def sidecar_server() -> Iterator[tuple[RecordingSidecar, ThreadedServer]]:
    fake = RecordingSidecar()
    server = ThreadedServer(fake.app).start()
    try:
        yield fake, server
    finally:
        server.stop()


@pytest.fixture
def fake_sidecar(
    sidecar_server: tuple[RecordingSidecar, ThreadedServer],
) -> RecordingSidecar:
    """The recording sidecar, emptied and with no scripted failures; `.url` to reach it."""
    fake, server = sidecar_server
    fake.reset(url=server.url)
    return fake


class SleepRecorder:
    """Injected in place of asyncio.sleep: records each retry wait instead of spending it."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def sidecar_client(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> AsyncIterator[SidecarClient]:
    async with SidecarClient(fake_sidecar.url, sleep=sleeps) as client:
        yield client


@pytest.fixture
def ocr_service(db: Database, sidecar_client: SidecarClient) -> OcrService:
    return OcrService(SnapshotResolver(db), sidecar_client)
