"""Dedupe: a retry is stored once, on both stores, before and after the key moved to (dtm, eid)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.config import Config
from collector.events import format_ms
from storage import migrate as sqlite_migrate
from storage import pg_schema, sqlite_io
from tests.conftest import TP2, Clock, batch, ev, only, rows
from tests.test_lifecycle import erase
from tests.test_sessions import Browser

STORES = ("sqlite", "postgres")
DTM = 1_764_583_200_123  # 2025-12-01 10:00:00.123 UTC


async def test_a_retry_is_stored_once_although_its_send_time_moved(client: Any, cfg: Config) -> None:
    for attempt in range(3):  # what a tracker's outbox resends: the same eid and dtm, a new stm
        body = batch(
            *(ev("pv", eid=f"r-{i}", dtm=str(DTM + i), stm=str(DTM + 1000 * attempt)) for i in range(3))
        )
        assert (await client.post(TP2, json=body)).status == 200
    assert (
        await client.get("/i", params=ev("pv", eid="r-0", dtm=str(DTM), stm=str(DTM + 9000)))
    ).status == 200
    got = rows(cfg.db, "select event_id, dvce_created_tstamp from events order by event_id")
    assert [tuple(r) for r in got] == [(f"r-{i}", format_ms(DTM + i)) for i in range(3)]


async def test_an_id_reused_at_another_creation_time_is_another_event(client: Any, cfg: Config) -> None:
    # Snowplow's "synthetic duplicates" (bots, broken id generators): one id, two events; both kept
    for _ in range(2):
        body = batch(ev("pv", eid="same", dtm=str(DTM)), ev("pv", eid="same", dtm=str(DTM + 1)))
        assert (await client.post(TP2, json=body)).status == 200
    got = rows(cfg.db, "select dvce_created_tstamp from events where event_id = 'same' order by 1")
    assert [r[0] for r in got] == [format_ms(DTM), format_ms(DTM + 1)]


async def test_events_without_a_creation_time_dedupe_by_id(client: Any, cfg: Config) -> None:
    for _ in range(2):
        assert (
            await client.post(TP2, json=batch(ev("pv", eid="no-dtm"), ev("pv", eid="no-dtm")))
        ).status == 200
    assert rows(cfg.db, "select count(*) from events where event_id = 'no-dtm'")[0][0] == 1


@only("sqlite")
def test_the_lookup_probes_the_dedupe_index(tmp_path: Path) -> None:
    # A plan that scans events would make every group read the whole table (it did, with row values
    # and IN: 0.9 ms an event at 600,000 rows); one probe of the index per key is what keeps it flat.
    conn = sqlite3.connect(tmp_path / "p.db")
    sqlite_migrate.migrate(conn)
    plan = [
        r[3]
        for r in conn.execute("EXPLAIN QUERY PLAN " + sqlite_io.SELECT_SEEN.format("(?,?),(?,?)"), "abcd")
    ]
    assert any("USING INDEX events_dedupe" in p for p in plan), plan
    assert not any(p.startswith("SCAN e") for p in plan), plan


OLD_EVENT = (
    "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp, anonymous, "
    "dvce_created_tstamp) VALUES ($1, 'pv', 'web', 't', 'c', '2025-12-01 10:00:01.000', 0, $2)"
)


@only("sqlite")
async def test_rows_stored_before_the_new_key_still_dedupe_their_retries(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_client: Any
) -> None:
    old = tmp_path / "migrations"
    old.mkdir()
    for path in sqlite_migrate.MIGRATIONS.glob("000[1-8]_*.sql"):
        shutil.copy(path, old)
    assert isinstance(cfg.db, Path)
    conn = sqlite3.connect(cfg.db, isolation_level=None)
    try:
        with monkeypatch.context() as m:
            m.setattr(sqlite_migrate, "MIGRATIONS", old)
            sqlite_migrate.migrate(conn)
        sql = OLD_EVENT.replace("$1", "?").replace("$2", "?")
        conn.execute(sql, ("old-timed", format_ms(DTM)))
        conn.execute(sql, ("old-untimed", None))
    finally:
        conn.close()
    await _retry_old_events(make_client, cfg)


async def _at_pg_0004(cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> asyncpg.Connection:
    """A connection to the test's database, migrated only up to 0004 (before the new key)."""
    old = tmp_path / "migrations"
    old.mkdir()
    for path in pg_schema.MIGRATIONS.glob("000[1-4]_*.sql"):
        shutil.copy(path, old)
    conn = await asyncpg.connect(str(cfg.db))
    with monkeypatch.context() as m:
        m.setattr(pg_schema, "MIGRATIONS", old)
        await pg_schema.migrate(conn)
    return conn


@only("postgres")
async def test_postgres_ids_claimed_before_the_new_key_still_dedupe_their_retries(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_client: Any
) -> None:
    conn = await _at_pg_0004(cfg, tmp_path, monkeypatch)
    try:
        for eid, created in (("old-timed", datetime.fromtimestamp(DTM / 1000, UTC)), ("old-untimed", None)):
            await conn.execute(OLD_EVENT, eid, created)
            await conn.execute("INSERT INTO event_ids (event_id) VALUES ($1)", eid)  # as the old claim did
    finally:
        await conn.close()
    await _retry_old_events(make_client, cfg)
    claimed = rows(cfg.db, "select created, event_id from event_ids order by event_id")
    assert [tuple(r) for r in claimed] == [("", "new"), (format_ms(DTM), "old-timed"), ("", "old-untimed")]
    # a replica still on the old code claims without `created`: refused (it answers 503 and the
    # tracker retries elsewhere), where a default '' would let it store a retry a second time
    conn = await asyncpg.connect(str(cfg.db))
    try:
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("INSERT INTO event_ids (event_id) VALUES ('from-an-old-replica')")
    finally:
        await conn.close()


@only("postgres")
async def test_postgres_back_fill_outlasts_the_collectors_statement_timeout(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a collector migrates at start on a connection with a statement timeout (10 s by default); the
    # back-fill of a big store takes longer, so the migration lifts the timeout for itself
    conn = await _at_pg_0004(cfg, tmp_path, monkeypatch)
    try:
        await conn.execute(
            "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp, "
            "anonymous, dvce_created_tstamp) SELECT 'id-' || g, 'pv', 'web', 't', 'c', now(), 0, "
            "now() - g * interval '1 ms' FROM generate_series(1, 200000) g"
        )
        await conn.execute(
            "INSERT INTO event_ids (event_id) SELECT 'id-' || g FROM generate_series(1, 200000) g"
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(str(cfg.db), server_settings={"statement_timeout": "300"})
    try:
        applied = await pg_schema.migrate(conn)
    finally:
        await conn.close()
    assert "0005_dedupe_by_creation" in applied
    assert rows(cfg.db, "select count(*) from event_ids where created <> ''")[0][0] == 200_000


async def _retry_old_events(make_client: Any, cfg: Config) -> None:
    """The collector (migrating at start) is sent retries of the old rows and one new event."""
    client = await make_client(cfg)
    body = batch(ev("pv", eid="old-timed", dtm=str(DTM)), ev("pv", eid="old-untimed"), ev("pv", eid="new"))
    resp = await client.post(TP2, json=body)
    assert resp.status == 200, await resp.text()
    got = rows(cfg.db, "select event_id, count(*) from events group by event_id order by event_id")
    assert [tuple(r) for r in got] == [("new", 1), ("old-timed", 1), ("old-untimed", 1)]


async def test_two_events_sharing_an_id_are_two_page_views(client: Any, cfg: Config) -> None:
    # the views named a row by its event id: each of the pair took the other's pings (found in review)
    url = "https://shop.test/p"
    body = batch(
        ev("pv", eid="same", dtm=str(DTM), stm=str(DTM + 20_000), url=url),
        ev("pv", eid="same", dtm=str(DTM + 1000), stm=str(DTM + 20_000), url=url),
        ev("pp", eid="ping-1", dtm=str(DTM + 11_000), stm=str(DTM + 20_000), url=url),
    )
    assert (await client.post(TP2, json=body)).status == 200
    views = rows(cfg.db, "select page_pings, engaged_time_in_s from page_views order by start_tstamp")
    assert [tuple(r) for r in views] == [(0, 0), (1, 5)]  # the ping follows the later view only
    [s] = rows(cfg.db, "select page_views, engaged_time_in_s, event_count from sessions")
    assert tuple(s) == (2, 5, 3)


def _web_page(page_id: str) -> str:
    entity = {
        "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
        "data": {"id": page_id},
    }
    return json.dumps(
        {"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0", "data": [entity]}
    )


async def test_a_ping_naming_a_replayed_page_view_counts_once(client: Any, cfg: Config) -> None:
    # a replayed page view (same eid and web_page id, another dtm): the ping goes to the first of them
    # only; joined by the page id alone, each took it (2 pings, 10 s engaged: found in review)
    url, co = "https://shop.test/p", _web_page("wp-1")
    await Browser(client).send(
        ev("pv", eid="same", dtm=str(DTM), stm=str(DTM + 20_000), url=url, co=co),
        ev("pv", eid="same", dtm=str(DTM + 1000), stm=str(DTM + 20_000), url=url, co=co),
        ev("pp", eid="ping-1", dtm=str(DTM + 11_000), stm=str(DTM + 20_000), url=url, co=co),
    )
    views = rows(cfg.db, "select page_pings, engaged_time_in_s from page_views order by start_tstamp")
    assert [tuple(r) for r in views] == [(1, 5), (0, 0)]
    [s] = rows(cfg.db, "select page_views, engaged_time_in_s, is_engaged from sessions")
    assert tuple(s) == (2, 5, 1)  # two page views: engaged by Snowplow's rule, with 5 s, not 10


@pytest.mark.parametrize("order", ["a_first", "b_first"])
async def test_a_pair_at_one_time_is_ordered_by_its_key(
    client: Any, cfg: Config, clock: Clock, order: str
) -> None:
    # without stm both of the pair have the collector's time: the order of the batch decided which
    # page view came first, and so whether the ping counted (found in review)
    url = "https://shop.test/p"
    a = ev("pv", eid="same", dtm=str(DTM), url=url + "/a")
    b = ev("pv", eid="same", dtm=str(DTM + 1000), url=url + "/b")
    browser = Browser(client)
    await browser.send(*((a, b) if order == "a_first" else (b, a)))
    clock.t += 5
    await browser.send(ev("pp", eid="ping-1", dtm=str(DTM + 11_000), url=url + "/b"))
    views = rows(cfg.db, "select page_url, page_pings from page_views order by page_url")
    assert [tuple(r) for r in views] == [(url + "/a", 0), (url + "/b", 1)]


async def test_an_erased_event_sent_again_is_stored_again(client: Any, cfg: Config) -> None:
    # on PostgreSQL the erased events' claims stayed in event_ids: the re-send counted as a duplicate
    # and the claim kept the erased event's id and device time (found in review)
    browser = Browser(client)
    await browser.send(ev("pv", eid="erased-1", dtm=str(DTM)), ev("pv", eid="kept-1", dtm=str(DTM)))
    await Browser(client).send(ev("pv", eid="other-device", dtm=str(DTM)))
    erase(cfg.db, "--device-id", browser.device)
    if isinstance(cfg.db, str):
        claimed = rows(cfg.db, "select event_id from event_ids order by 1")
        assert [r[0] for r in claimed] == ["other-device"]
    await Browser(client).send(ev("pv", eid="erased-1", dtm=str(DTM)))  # the tracker re-sends it
    got = rows(cfg.db, "select event_id from events order by 1")
    assert [r[0] for r in got] == ["erased-1", "other-device"]
