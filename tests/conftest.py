"""Fixtures: the real app factory on a real temporary SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from collector.app import create_app
from collector.config import Config, Secret

SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class Clock:
    """A clock the test moves by hand (session timeouts, rate limits)."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Query the store through a separate read-only connection, as an analyst would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def batch(*events: dict[str, str]) -> dict[str, Any]:
    """A payload_data POST body."""
    return {"schema": SCHEMA, "data": list(events)}


def ev(e: str = "pv", **kw: str) -> dict[str, str]:
    """A valid event with the required fields."""
    return {"e": e, "p": "web", "tv": "js-4.10.1", **kw}


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(db=tmp_path / "events.db", cookie_secret=(Secret("test-secret"),), access_log=True)


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
