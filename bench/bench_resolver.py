"""What reading the profile and active prompt fresh for every job costs.

Per job, `SnapshotResolver.resolve()` reads the `ai_execution_profiles` row joined with the
active `ai_prompts` row in one query and validates both with the sidecar's schemas. The
baseline, measured in the same run on the same engine and pool, is a bare `SELECT 1` round trip
(pool checkout, one query, check-in). The two are interleaved so drift hits both alike.

    .venv/bin/python bench/bench_resolver.py                     # PostgreSQL, ~20 s
    .venv/bin/python bench/bench_resolver.py --database sqlite

PostgreSQL: a database `ocr_bench_<random>` is created through the `postgres` maintenance DB
(OCR_BENCH_PG_ADMIN_URL, default postgres@127.0.0.1:5432) and dropped at the end. Results go to
bench/results/resolver.json (PostgreSQL) or resolver_sqlite.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend_client import migrate  # noqa: E402
from backend_client.db import Database  # noqa: E402
from backend_client.resolver import SnapshotResolver  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get(
    "OCR_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"ocr_bench_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    host = PG_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
    user = PG_ADMIN_URL.split("//", 1)[1].split("@", 1)[0]
    try:
        yield f"postgresql+psycopg://{user}@{host}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}"


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(statistics.median(ordered), 4),
        "p99_ms": round(cut[98], 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "min_ms": round(ordered[0], 4),
    }


async def timed(operation: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await operation()
    return (time.perf_counter() - start) * 1000


async def measure(url: str, iterations: int, warmup: int) -> dict[str, Any]:
    db = Database.from_url(url)
    try:
        await migrate.upgrade(db.engine)
        resolver = SnapshotResolver(db)

        async def select_one() -> None:
            async with db.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        async def resolve() -> None:
            await resolver.resolve()

        for _ in range(warmup):
            await select_one()
            await resolve()
        baseline: list[float] = []
        resolution: list[float] = []
        for _ in range(iterations):
            baseline.append(await timed(select_one))
            resolution.append(await timed(resolve))
        snapshot = await resolver.resolve()
    finally:
        await db.dispose()
    base, res = percentiles(baseline), percentiles(resolution)
    return {
        "baseline_select_1": base,
        "resolve_snapshot": res,
        "ratio_p50": round(res["p50_ms"] / base["p50_ms"], 2),
        "ratio_p99": round(res["p99_ms"] / base["p99_ms"], 2),
        "extra_p50_ms": round(res["p50_ms"] - base["p50_ms"], 4),
        "snapshot_checked": {
            "model": snapshot.profile.model,
            "prompt_version": snapshot.prompt.version,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    database = postgres_database if args.database == "postgres" else sqlite_database
    with database() as url:
        figures = asyncio.run(measure(url, args.iterations, args.warmup))
    result = {
        "benchmark": "resolver",
        "database": args.database,
        "iterations": args.iterations,
        "what": "SnapshotResolver.resolve() per job (one join query, pydantic validation) "
        "vs a bare SELECT 1 round trip on the same pool, interleaved",
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            # Other work on the host slows both sides; the ratio is the figure to compare.
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        },
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "resolver.json" if args.database == "postgres" else "resolver_sqlite.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
