"""Fixtures: the real app factory on a real temporary SQLite file, or a real PostgreSQL database.

A test module that sets `STORES = ("sqlite", "postgres")` runs each test that uses `cfg` on both
stores; `rows()` queries either, as an analyst would.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from collector.app import create_app
from collector.config import Config, DatabaseUrl, Secret
from storage.base import COL, COLUMNS
from tests import pg

SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
F = TypeVar("F", bound=Callable[..., Any])
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class Clock:
    """A clock the test moves by hand (session timeouts, rate limits)."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rows(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Query the store through a separate read-only connection, as an analyst would."""
    if isinstance(db, str):  # a PostgreSQL URL: the same SQL, with $n placeholders
        parts = sql.split("?")
        text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        return pg.query(db, text, params)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def tables(db: Path | str) -> list[str]:
    """Every table and view of the store (on PostgreSQL, the partitions too)."""
    if isinstance(db, str):
        sql = "select table_name from information_schema.tables where table_schema = 'public'"
    else:
        sql = "select name from sqlite_master where type in ('table', 'view')"
    return [r[0] for r in rows(db, sql)]


def columns(db: Path | str, table: str) -> list[str]:
    """A table's columns, in order."""
    if isinstance(db, str):
        sql = "select column_name from information_schema.columns where table_name = ? order by 1"
        sql = sql.replace("order by 1", "order by ordinal_position")
        return [r[0] for r in rows(db, sql, (table,))]
    return [r[1] for r in rows(db, f"pragma table_info({table})")]


def event_row(eid: str, **values: Any) -> list[Any]:
    """A minimal store row (for tests of a store itself, below the HTTP edge)."""
    r: list[Any] = [None] * len(COLUMNS)
    r[COL["event_id"]], r[COL["event"]], r[COL["platform"]] = eid, "pv", "web"
    r[COL["v_tracker"]], r[COL["v_collector"]] = "t", "c"
    r[COL["collector_tstamp"]], r[COL["anonymous"]] = "2026-12-01 10:00:00.000", 0
    for k, v in values.items():
        r[COL[k]] = v
    return r


def batch(*events: dict[str, str]) -> dict[str, Any]:
    """A payload_data POST body."""
    return {"schema": SCHEMA, "data": list(events)}


def ev(e: str = "pv", **kw: str) -> dict[str, str]:
    """A valid event with the required fields."""
    return {"e": e, "p": "web", "tv": "js-4.10.1", **kw}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        stores = getattr(metafunc.function, "stores", None) or getattr(metafunc.module, "STORES", ("sqlite",))
        metafunc.parametrize("store_kind", stores)


def only(*stores: str) -> Callable[[F], F]:
    """Run a test on these stores only (it exercises one store's own mechanism)."""

    def mark(fn: F) -> F:
        fn.stores = stores  # type: ignore[attr-defined]
        return fn

    return mark


@pytest.fixture
def roles_db(pg_server: pg.PgServer) -> str:
    """A PostgreSQL database with the README's roles, migrated by the owner (pg.roles_database)."""
    return pg.roles_database(pg_server)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.PgServer]:
    """One PostgreSQL cluster for the whole run (each test gets its own database)."""
    why = pg.available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI: {why}")
        pytest.skip(why)
    # not under pytest's tmp dirs: those are private to root, and the server runs as another user
    root = Path(tempfile.mkdtemp(prefix="collector-pg-"))
    server = pg.PgServer(root).start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store_db(tmp_path: Path, store_kind: str, request: pytest.FixtureRequest) -> Path | DatabaseUrl:
    """A new empty store: a SQLite file path, or a fresh PostgreSQL database's URL."""
    if store_kind == "postgres":
        server: pg.PgServer = request.getfixturevalue("pg_server")
        return DatabaseUrl(server.url(server.new_database()))
    return tmp_path / "events.db"


@pytest.fixture
def cfg(store_db: Path | DatabaseUrl) -> Config:
    return Config(db=store_db, cookie_secret=(Secret("test-secret"),), access_log=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_client(
    aiohttp_client: ClientFactory, clock: Clock
) -> Callable[[Config], Awaitable[TestClient[web.Request, web.Application]]]:
    async def make(config: Config) -> TestClient[web.Request, web.Application]:
        return await aiohttp_client(create_app(config, clock=clock))

    return make


@pytest.fixture
async def client(make_client: Any, cfg: Config) -> TestClient[web.Request, web.Application]:
    return await make_client(cfg)  # type: ignore[no-any-return]
