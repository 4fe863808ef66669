"""The analysts' view: `browse`'s refusals and command line, and every canned query, run by Datasette
in-process on a store the real collector filled (the app factory, real cookies, a hand-moved clock).

The fixture, by week (Mondays 2026-11-30, 12-07, 12-14; paths on https://shop.test):
  device A  W1 Mon 10:00  /a (from www.google.com, 3 page pings) -> /b -> /c    session A1
            W2 Tue 10:00  /a                                                   session A2
            W3 Mon 10:00  /c                                                   session A3
  anonymous W1 Mon 11:00  /a -> /b  (SP-Anonymous, tracker session anon-1)
  device B  W1 Tue 10:00  /b (from news.ycombinator.com) -> /a -> a structured event   session B1
            W2 Wed 10:00  /b, as user alice                                    session B2
  device C  W2 Mon 12:00  /b -> /c                                             session C1
16 events, 12 page views, 7 sessions, 3 devices, 1 user.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from datasette.app import Datasette

from collector import browse
from collector.browse import serve
from collector.config import Config
from tests.conftest import TP2, Clock, batch, ev

W1 = calendar.timegm(dt.datetime(2026, 11, 30, 10, 0).timetuple())  # Monday 10:00 UTC
DAY, MINUTE = 86400, 60
SHOP = "https://shop.test"
WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"


class Device:
    """One browser: keeps the collector's cookie (the test client's jar drops Secure cookies on http)."""

    def __init__(
        self, client: TestClient[web.Request, web.Application], clock: Clock, anonymous: bool
    ) -> None:
        self.client, self.clock, self.anonymous = client, clock, anonymous
        self.cookie: str | None = None
        self.page_view = ""
        self.n = 0

    async def send(self, at: float, event: dict[str, str]) -> None:
        self.clock.t = at
        headers = {"SP-Anonymous": "*"} if self.anonymous else {}
        if self.cookie:
            headers["Cookie"] = f"sp={self.cookie}"
        resp = await self.client.post(TP2, json=batch(event), headers=headers)
        assert resp.status == 200, await resp.text()
        if "sp" in resp.cookies:
            self.cookie = resp.cookies["sp"].value or None

    def _context(self) -> str:
        return orjson.dumps(
            {"schema": CONTEXTS, "data": [{"schema": WEB_PAGE, "data": {"id": self.page_view}}]}
        ).decode()

    async def view(self, at: float, path: str, refr: str | None = None, **extra: str) -> None:
        """A page view; refr None: from the shop's previous page (none for the first), "": typed in."""
        self.page_view = str(uuid.uuid4())
        if refr is None:
            refr = f"{SHOP}/" if self.n else ""
        self.n += 1
        params = {"url": SHOP + path, "page": path, "co": self._context(), **extra}
        await self.send(at, ev("pv", eid=str(uuid.uuid4()), **({"refr": refr} if refr else {}), **params))

    async def ping(self, at: float, path: str) -> None:
        await self.send(
            at,
            ev("pp", eid=str(uuid.uuid4()), url=SHOP + path, co=self._context(), pp_miy="0", pp_may="400"),
        )


MakeClient = Callable[[Config], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def analyst(make_client: MakeClient, cfg: Config, clock: Clock) -> Datasette:
    """The fixture store above, and Datasette with the packaged metadata on it."""
    client = await make_client(cfg)
    a, anon, b, c = (Device(client, clock, anonymous) for anonymous in (False, True, False, False))
    t = W1
    await a.view(t, "/a", refr="https://www.google.com/search?q=shop")
    for s in (5, 15, 25):
        await a.ping(t + s, "/a")
    await a.view(t + MINUTE, "/b")
    await a.view(t + 2 * MINUTE, "/c")
    await anon.view(t + 60 * MINUTE, "/a", sid="anon-1")
    await anon.view(t + 62 * MINUTE, "/b", sid="anon-1")
    t = W1 + DAY
    await b.view(t, "/b", refr="https://news.ycombinator.com/")
    await b.view(t + 2 * MINUTE, "/a")
    await b.send(t + 5 * MINUTE, ev("se", eid="b-se", se_ca="cart", se_ac="add"))
    await c.view(W1 + 7 * DAY + 120 * MINUTE, "/b")  # C's first view: direct
    await c.view(W1 + 7 * DAY + 121 * MINUTE, "/c")
    await a.view(W1 + 8 * DAY, "/a", refr="")  # the later sessions start from a bookmark: direct
    await b.view(W1 + 9 * DAY, "/b", refr="", uid="alice")
    await a.view(W1 + 14 * DAY, "/c", refr="")
    assert isinstance(cfg.db, Path)
    ds = Datasette(
        files=[str(cfg.db)],
        metadata=browse.metadata(cfg.db.stem, protected=False),
        settings=dict(browse.SETTINGS),
    )
    await ds.invoke_startup()
    return ds


async def canned(ds: Datasette, name: str, **params: str) -> list[dict[str, Any]]:
    resp = await ds.client.get(f"/events/{name}.json", params={"_shape": "array", **params})
    body = resp.json()
    assert resp.status_code == 200, body
    return list(body)


def test_refusals(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    assert "no database" in str(browse.refusal(db, "127.0.0.1", ""))
    db.write_bytes(b"")
    assert browse.refusal(db, "127.0.0.1", "") is None
    assert browse.refusal(db, "::1", "") is None
    assert browse.refusal(db, "localhost", "") is None
    for host in ("0.0.0.0", "192.168.1.10", "analytics.example.com"):
        assert "COLLECTOR_BROWSE_PASSWORD_HASH" in str(browse.refusal(db, host, ""))
        assert browse.refusal(db, host, "pbkdf2_sha256$480000$salt$hash") is None
    assert "PostgreSQL" in str(browse.refusal("postgresql://u@h/db", "127.0.0.1", ""))
    assert "not a hash" in str(browse.refusal(db, "127.0.0.1", "hunter2"))
    assert "hunter2" not in str(browse.refusal(db, "127.0.0.1", "hunter2"))
    # `datasette serve` refused a file that is not SQLite; the server would start and fail every page
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a SQLite database\n" * 100)
    assert "not a SQLite database" in str(browse.refusal(junk, "127.0.0.1", ""))


def test_command_is_read_only_mode_and_loopback_host(tmp_path: Path) -> None:
    cmd = browse.command(tmp_path / "events.db", "127.0.0.1", 8081, tmp_path / "m.json")
    assert cmd[1:3] == ["-m", "collector.browse.serve"] and str(tmp_path / "events.db") in cmd
    assert "127.0.0.1" in cmd
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(browse.metadata("events", protected=False)))
    sqlite3.connect(tmp_path / "events.db").close()
    ds = serve.datasette(tmp_path / "events.db", meta)
    db = ds.get_database("events")
    assert db.is_mutable and not ds.immutables and not ds.crossdb  # read live, opened read-only
    assert ds.setting("allow_download") is False and ds.setting("sql_time_limit_ms") == 10000


def test_metadata_renamed_and_protected() -> None:
    meta = browse.metadata("store", protected=True)
    assert set(meta["databases"]) == {"store"}
    charts = meta["plugins"]["datasette-dashboards"]["overview"]["charts"].values()
    assert {c["db"] for c in charts} == {"store"}
    assert meta["allow"] == {"id": "analyst"}
    assert meta["plugins"]["datasette-auth-passwords"] == {
        "analyst_password_hash": {"$env": "COLLECTOR_BROWSE_PASSWORD_HASH"}
    }
    assert "allow" not in browse.metadata("store", protected=False)


async def test_overview(analyst: Datasette) -> None:
    assert await canned(analyst, "overview") == [
        {
            "events": 16,
            "page_views": 12,
            "sessions": 7,
            "devices": 3,
            "users": 1,
            "anonymous_pct": 12.5,
            "first_event": "2026-11-30 10:00:00.000",
            "last_event": "2026-12-14 10:00:00.000",
        }
    ]


async def test_top_pages(analyst: Datasette) -> None:
    assert await canned(analyst, "top_pages") == [
        {"page_url": f"{SHOP}/b", "page_views": 5, "devices": 3, "sessions": 5},
        {"page_url": f"{SHOP}/a", "page_views": 4, "devices": 2, "sessions": 4},
        {"page_url": f"{SHOP}/c", "page_views": 3, "devices": 2, "sessions": 3},
    ]


async def test_sessions_per_day(analyst: Datasette) -> None:
    got = [
        (r["day"], r["sessions"], r["anonymous_sessions"], r["devices"], r["events"])
        for r in await canned(analyst, "sessions_per_day")
    ]
    assert got == [
        ("2026-11-30", 2, 1, 1, 8),
        ("2026-12-01", 1, 0, 1, 3),
        ("2026-12-07", 1, 0, 1, 2),
        ("2026-12-08", 1, 0, 1, 1),
        ("2026-12-09", 1, 0, 1, 1),
        ("2026-12-14", 1, 0, 1, 1),
    ]


async def test_retention_weekly(analyst: Datasette) -> None:
    got = [tuple(r.values()) for r in await canned(analyst, "retention_weekly")]
    assert got == [
        ("2026-11-30", 0, 2, 2, 100.0),
        ("2026-11-30", 1, 2, 2, 100.0),
        ("2026-11-30", 2, 1, 2, 50.0),
        ("2026-12-07", 0, 1, 1, 100.0),
    ]


async def test_latest_events(analyst: Datasette) -> None:
    got = await canned(analyst, "latest_events")
    assert len(got) == 16
    assert (got[0]["page_url"], got[0]["collector_tstamp"]) == (f"{SHOP}/c", "2026-12-14 10:00:00.000")
    assert got[-1]["page_url"] == f"{SHOP}/a" and got[-1]["collector_tstamp"] == "2026-11-30 10:00:00.000"
    assert [r["event"] for r in got].count("pp") == 3
    anon = [r for r in got if r["anonymous"]]
    assert len(anon) == 2 and {r["device_id"] for r in anon} == {None}
    assert {r["user_id"] for r in got} == {None, "alice"}


async def test_funnel(analyst: Datasette) -> None:
    got = await canned(analyst, "funnel", step1="/a", step2="/b", step3="/c")
    assert got == [
        {"step": 1, "page_urlpath": "/a", "sessions": 4, "pct_of_step1": 100.0},  # A1, anon-1, B1, A2
        {"step": 2, "page_urlpath": "/b", "sessions": 2, "pct_of_step1": 50.0},  # B1 saw /b before /a
        {"step": 3, "page_urlpath": "/c", "sessions": 1, "pct_of_step1": 25.0},  # A1 only
    ]
    # the same steps the other way round: only C1 went /b -> /c, and nobody /c -> /a after it
    got = await canned(analyst, "funnel", step1="/b", step2="/c", step3="/a")
    assert [r["sessions"] for r in got] == [5, 2, 0]


async def test_engaged_time_by_page(analyst: Datasette) -> None:
    got = {r["page_urlpath"]: r for r in await canned(analyst, "engaged_time_by_page")}
    # three pings in three 10 s buckets: 10 x (3 - 1) + 5
    assert (got["/a"]["page_views"], got["/a"]["engaged_time_in_s"]) == (4, 25)
    assert [r["page_views"] for r in (got["/b"], got["/c"])] == [5, 3]
    assert not got["/b"]["engaged_time_in_s"] and not got["/c"]["engaged_time_in_s"]


async def test_top_referrers(analyst: Datasette) -> None:
    assert await canned(analyst, "top_referrers") == [
        {"referrer_host": "(direct)", "sessions": 5, "page_views": 7, "engaged_sessions": 2},
        {"referrer_host": "news.ycombinator.com", "sessions": 1, "page_views": 2, "engaged_sessions": 1},
        {"referrer_host": "www.google.com", "sessions": 1, "page_views": 3, "engaged_sessions": 1},
    ]


async def test_dashboard_and_writes_refused(analyst: Datasette) -> None:
    page = await analyst.client.get("/-/dashboards/overview")
    assert page.status_code == 200 and "Events per day" in page.text
    chart = await analyst.client.get("/-/dashboards/overview/anonymous-share")
    assert chart.status_code == 200
    share = await analyst.client.get(
        "/events.json",
        params={"_shape": "array", "sql": "select anonymous, count(*) as n from events group by 1"},
    )
    assert share.json() == [{"anonymous": 0, "n": 14}, {"anonymous": 1, "n": 2}]
    for sql in ("delete from events", "insert into bad_rows (id) values (1)", "pragma journal_mode=delete"):
        resp = await analyst.client.get("/events.json", params={"sql": sql})
        assert resp.status_code in (400, 403), (sql, resp.status_code)
    count = await analyst.client.get(
        "/events.json", params={"_shape": "array", "sql": "select count(*) n from events"}
    )
    assert count.json() == [{"n": 16}]
