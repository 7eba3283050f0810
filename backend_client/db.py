"""Async engine and sessions for the governance tables, on SQLite (default) or PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from backend_client.errors import ConfigurationError, DatabaseConflict, DatabaseError

DATABASE_URL_ENV = "OCR_BACKEND_DATABASE_URL"
DEFAULT_SQLITE_FILE = Path("var") / "ocr-backend.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 5000

# Drivers we run on; a bare dialect name is given the async driver we ship with.
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def default_database_url(base: Path | None = None) -> str:
    """SQLite file under `./var/` (created), the zero-configuration default."""
    path = (base or Path.cwd()) / DEFAULT_SQLITE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


def resolve_database_url(url: str | None = None) -> URL:
    """Parse `url` (or the environment, or the default) into a URL with an async driver."""
    raw = url or os.environ.get(DATABASE_URL_ENV) or default_database_url()
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(
            f"{DATABASE_URL_ENV} is not a database URL "
            "(expected postgresql+psycopg://user@host/db or sqlite+aiosqlite:///path)"
        ) from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigurationError(
            f"{DATABASE_URL_ENV} uses driver {parsed.drivername!r}; "
            "use postgresql+psycopg:// or sqlite+aiosqlite://"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return parsed


def redacted(url: URL | str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


# Execution option that makes a SQLite transaction take the write lock when it begins.
SQLITE_WRITE_OPTION = "ocr_backend_sqlite_write"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # We emit BEGIN ourselves (below): pysqlite's implicit transactions start only at the first
    # INSERT/UPDATE, which would leave DDL (migrations) and read-then-write sequences outside
    # any transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Wait for a concurrent writer instead of failing at once with "database is locked".
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # A writer that began deferred could fail to upgrade its lock under a concurrent writer
    # ("database is locked" with no wait); BEGIN IMMEDIATE queues on busy_timeout instead.
    write = connection.get_execution_options().get(SQLITE_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_engine(url: URL | str | None = None, **engine_options: Any) -> AsyncEngine:
    resolved = url if isinstance(url, URL) else resolve_database_url(url)
    if resolved.get_backend_name() == "postgresql":
        engine_options.setdefault("pool_pre_ping", True)
    engine = create_async_engine(resolved, **engine_options)
    if resolved.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


class Database:
    """One engine and its session factory; share one per process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._writer_sessions = async_sessionmaker(
            engine.execution_options(**{SQLITE_WRITE_OPTION: True}), expire_on_commit=False
        )

    @classmethod
    def from_url(cls, url: URL | str | None = None, **engine_options: Any) -> Database:
        return cls(create_engine(url, **engine_options))

    @property
    def url(self) -> URL:
        return self.engine.url

    @asynccontextmanager
    async def transaction(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        `write=True` for transactions that read then write (on SQLite they take the write lock
        up front; on PostgreSQL the repositories lock rows with SELECT ... FOR UPDATE).
        Driver errors, the commit's included, leave as one-line `DatabaseError`s.
        """
        factory = self._writer_sessions if write else self.sessions
        with self.translated_errors():
            async with factory() as session, session.begin():
                yield session

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """SQLAlchemy's errors become `DatabaseError` here and only here (the way httpx maps
        transport exceptions in one context manager); `transaction()` uses it, and so does work
        on the bare engine such as migrations."""
        try:
            yield
        except SQLAlchemyError as exc:
            raise database_error(exc, self.url) from None

    async def dispose(self) -> None:
        await self.engine.dispose()


def database_error(exc: SQLAlchemyError, url: URL | str) -> DatabaseError:
    """A one-line `DatabaseError` for a driver error: not migrated, unreachable, or other."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    message = lines[0] if lines else type(original).__name__
    lowered = message.lower()
    if isinstance(exc, IntegrityError):
        return DatabaseConflict(f"database {redacted(url)} refused the write: {message}")
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return DatabaseError(
            f"database {redacted(url)} is not migrated ({message}); run: ocr-backend migrate"
        )
    if isinstance(exc, OperationalError) and ("connect" in lowered or "unable to open" in lowered):
        return DatabaseError(f"database {redacted(url)} is unreachable: {message}")
    return DatabaseError(f"database error on {redacted(url)}: {message}")
