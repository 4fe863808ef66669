"""The data lifecycle on both stores: retention past a horizon the database enforces, culling of
devices and retired ids, and recorded erasure; with a controllable clock and real files and servers."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from collector.config import Config
from collector.events import format_ms
from collector.handlers import MAX_BAD_PAYLOAD, STATE
from storage import lifecycle as lifecycle_rules
from storage.sqlite import connect, writers_turn
from tests.conftest import TP2, Clock, batch, ev, only, rows
from tests.pg import run_sync
from tests.procs import ROOT
from tests.test_sessions import ANON_UE, Browser

STORES = ("sqlite", "postgres")
DAY = 86400.0


@pytest.fixture(autouse=True)
def _clock_at_the_present(clock: Clock) -> None:
    """The test clock starts at the present: the database's own clock bounds the horizon (never past
    the present; on PostgreSQL no later than the recorded retention allows), so the tests' times are
    set relative to it."""
    clock.t = time.time()


async def lifecycle(client: Any, clock: Clock, retention_days: int = 365) -> Any:
    """One lifecycle run at the test clock's now, as the collector's periodic task does it."""
    st = client.app[STATE]
    removed = await st.store.lifecycle(int(clock() * 1000), retention_days, st.cfg.cookie_max_age)
    st.metrics.lifecycle(removed)
    return removed


async def pixels_aged(client: Any, clock: Clock, aged: Iterable[tuple[str, float]]) -> None:
    """One pixel an event id, each through the test clock set that many days back (negative: ahead);
    the clock is back at its start after."""
    now = clock.t
    for eid, age in aged:
        clock.t = now - age * DAY
        assert (await client.get("/i", params=ev(eid=eid))).status == 200
    clock.t = now


def plain_sql(db: Path | str, sql: str) -> str | None:
    """The error a plain connection (no collector involved) gets for sql, or None."""
    if isinstance(db, Path):
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute(sql)
        except sqlite3.Error as exc:
            return str(exc)
        finally:
            conn.close()
        return None

    async def go() -> str | None:
        conn = await asyncpg.connect(str(db))  # the server's superuser: the triggers bind it too
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return str(exc)
        finally:
            await conn.close()
        return None

    return run_sync(go())


async def test_retention_removes_what_is_past_the_horizon_and_nothing_else(
    client: Any, cfg: Config, clock: Clock
) -> None:
    now = clock.t
    for eid, age in (("d400", 400), ("d366", 366), ("d364", 364), ("d10", 10)):
        clock.t = now - age * DAY
        assert (await client.get("/i", params=ev(eid=eid))).status == 200
        assert (await client.get("/i", params={"e": "pv", "eid": f"bad-{eid}"})).status == 400
    clock.t = now
    assert (await client.get("/i", params=ev(eid="today"))).status == 200
    removed = await lifecycle(client, clock, 365)
    assert (removed.events, removed.bad_rows) == (2, 2)
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["d10", "d364", "today"]
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 2
    # the database itself: UPDATE refused everywhere; DELETE refused for a row newer than the horizon
    assert "append-only" in (plain_sql(cfg.db, "UPDATE events SET app_id = 'x'") or "")
    assert "append-only" in (plain_sql(cfg.db, "DELETE FROM events WHERE event_id = 'd364'") or "")
    assert "append-only" in (plain_sql(cfg.db, "DELETE FROM bad_rows") or "")
    # the horizon only moves forward
    assert "forward" in (plain_sql(cfg.db, "UPDATE lifecycle SET horizon = '1980-01-01'") or "")
    assert rows(cfg.db, "select count(*) from events")[0][0] == 3
    metrics = await (await client.get("/metrics")).text()
    assert 'collector_lifecycle_removed_total{kind="events"} 2.0' in metrics


async def test_the_sessions_view_shows_what_remains_of_a_cut_session(
    client: Any, cfg: Config, clock: Clock
) -> None:
    now = clock.t
    b = Browser(client)
    clock.t = now - 365 * DAY - 600  # a session that spans the horizon: 10 minutes before, 5 after
    await b.send(ev(eid="s1"))
    clock.t = now - 365 * DAY + 300
    await b.send(ev(eid="s2"))
    clock.t = now
    await lifecycle(client, clock, 365)
    [session] = rows(cfg.db, "select event_count, session_index from sessions")
    assert (session[0], session[1]) == (1, 1)


@pytest.mark.slow
@only("sqlite")  # a file's size; PostgreSQL drops whole partitions instead
async def test_the_file_stops_growing_once_the_horizon_is_reached(
    client: Any, cfg: Config, clock: Clock
) -> None:
    assert isinstance(cfg.db, Path)
    start, sizes = time.time() - 12 * DAY, []  # the database bounds the horizon by its real clock
    for day in range(12):  # a steady load: the same traffic every day, three days kept
        clock.t = start + day * DAY
        for i in range(20):
            body = batch(*[ev(eid=f"{day}-{i}-{k}", url="https://shop.test/" + "p" * 300) for k in range(25)])
            assert (await client.post(TP2, json=body)).status == 200
        await lifecycle(client, clock, 3)
        conn = sqlite3.connect(cfg.db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        sizes.append(cfg.db.stat().st_size)
    assert rows(cfg.db, "select count(*) from events")[0][0] == 4 * 500  # today and three days back
    assert sizes[-1] <= sizes[5] * 1.05, sizes  # flat after the horizon (a page or two either way)
    assert sizes[5] > sizes[0] * 2, sizes  # it did grow before the horizon was reached


@only("sqlite")  # the order of rowids; PostgreSQL drops partitions
async def test_retention_takes_rows_appended_out_of_order_within_the_clock_margin(
    client: Any, cfg: Config, clock: Clock
) -> None:
    # a replica's clock half a day behind another's: rows stamped out of their arrival order (a scan
    # that stopped at the first row inside the horizon, with no margin, would keep d365.3 and d365.1)
    await pixels_aged(client, clock, ((f"d{a}", a) for a in (366, 364.9, 365.3, 364.6, 365.1, 10)))
    removed = await lifecycle(client, clock, 365)
    assert removed.events == 3
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["d10", "d364.6", "d364.9"]


@only("sqlite")
async def test_a_row_behind_a_clock_stepped_back_past_the_margin_leaves_at_a_later_run(
    client: Any, cfg: Config, clock: Clock
) -> None:
    # the margin's assumption broken on purpose: a clock stepped back 100 days. Its row is found once
    # the horizon is within a day of the row appended before it, not earlier.
    await pixels_aged(client, clock, (("d300", 300), ("d400", 400), ("d10", 10)))
    assert (await lifecycle(client, clock, 365)).events == 0
    clock.t += 64.5 * DAY  # the horizon half a day behind the row before it: within the margin
    assert (await lifecycle(client, clock, 365)).events == 1
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["d10", "d300"]


@only("sqlite")
async def test_a_row_stamped_in_the_future_does_not_halt_retention_behind_it(
    client: Any, cfg: Config, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one request through a clock set five years ahead: the read must not stop at its row (it did,
    # in a first version, and every row after it stayed until the present caught up)
    monkeypatch.setattr(lifecycle_rules, "BATCH", 2)  # and several batches, each its own transaction
    aged = (("old-0", 400), ("future", -5 * 365), *((f"old-{i}", 400) for i in range(1, 6)), ("today", 0))
    await pixels_aged(client, clock, aged)
    assert (await lifecycle(client, clock, 365)).events == 6
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["future", "today"]


@only("sqlite")
async def test_culling_pages_through_the_devices_a_batch_at_a_time(
    make_client: Any, cfg: Config, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle_rules, "BATCH", 2)
    client = await make_client(cfg.replace(cookie_max_age=30 * 86400))
    now = clock.t
    clock.t = now - 40 * DAY
    for i in range(5):
        await Browser(client).send(ev(eid=f"g{i}"))
    clock.t = now
    kept = Browser(client)
    await kept.send(ev(eid="k"))
    assert (await lifecycle(client, clock, 0)).devices == 5
    assert [r[0] for r in rows(cfg.db, "select device_id from device_state")] == [kept.device]


@only("sqlite")  # a file's pages
async def test_retention_gives_the_freed_pages_back_to_the_file_system(
    client: Any, cfg: Config, clock: Clock
) -> None:
    assert isinstance(cfg.db, Path)
    now = clock.t
    for day, age in enumerate((400, 1)):  # as many events past the horizon as inside it
        clock.t = now - age * DAY
        for i in range(20):
            body = batch(*[ev(eid=f"{day}-{i}-{k}", url="https://shop.test/" + "p" * 300) for k in range(25)])
            assert (await client.post(TP2, json=body)).status == 200
    clock.t = now

    def pages() -> tuple[int, int]:
        conn = sqlite3.connect(cfg.db)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return conn.execute("PRAGMA page_count").fetchone()[0], conn.execute(
                "PRAGMA freelist_count"
            ).fetchone()[0]
        finally:
            conn.close()

    before, _ = pages()
    assert (await lifecycle(client, clock, 365)).events == 500
    after, free = pages()
    print(f"pages {before} -> {after}, {free} free")
    assert free == 0 and after < before * 0.75  # half the events left, and the file shrank with them


def _in_the_lock(db: Path, run: Callable[[sqlite3.Connection], object]) -> int:
    """SQLite VM instructions, in hundreds, run while the connection is inside a write transaction:
    the work the collector's writer waits behind, counted instead of timed."""
    conn = connect(db)
    inside = 0

    def count() -> int:
        nonlocal inside
        inside += conn.in_transaction
        return 0

    conn.set_progress_handler(count, 100)
    try:
        run(conn)
    finally:
        conn.close()
    return inside


def _as_first_written(conn: sqlite3.Connection, before: str, cull_before: int) -> None:
    """The lifecycle's statements before it read beside the writer: each a scan inside the lock."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE collector_tstamp < ? "
        "ORDER BY rowid LIMIT 5000)",
        (before,),
    )
    conn.execute("DELETE FROM device_state WHERE last_ms < ?", (cull_before,))
    conn.execute("ROLLBACK")


@only("sqlite")
async def test_the_lifecycle_holds_the_lock_for_what_it_removes_not_for_the_tables_size(
    client: Any, cfg: Config, clock: Clock
) -> None:
    assert isinstance(cfg.db, Path)
    db, now_ms = cfg.db, int(clock() * 1000)
    before = format_ms(now_ms - 365 * 86_400_000)
    cull_before = lifecycle_rules.cull_before_ms(now_ms, cfg.cookie_max_age)
    now_run, first_run = [], []
    for _ in range(2):  # 600 devices and events, then 1800: nothing old enough to leave
        for i in range(600 * (1 + 2 * len(now_run))):
            assert (await client.get("/i", params=ev(eid=f"{len(now_run)}-{i}"))).status == 200
        now_run.append(
            _in_the_lock(
                db,
                lambda c: lifecycle_rules.sqlite_run(
                    c, now_ms, 365, cfg.cookie_max_age, lambda: writers_turn(db)
                ),
            )
        )
        first_run.append(_in_the_lock(db, lambda c: _as_first_written(c, before, cull_before)))
    print("in the lock, hundreds of instructions: now", now_run, "as first written", first_run)
    assert rows(db, "select count(*) from events")[0][0] == 2400  # nothing was removed
    assert first_run[1] > 2 * first_run[0]  # the measure sees a scan grow with the tables
    assert now_run[1] <= now_run[0] < first_run[0]


async def test_culling_forgets_devices_that_cannot_come_back(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg.replace(cookie_max_age=30 * 86400, session_timeout=7 * 86400))
    now = clock.t
    gone, kept = Browser(client), Browser(client)
    clock.t = now - 40 * DAY  # not seen since: its cookie (30 days, refreshed on every answer) expired
    await gone.send(ev(eid="g1"))
    clock.t = now - 2 * DAY
    await kept.send(ev(eid="k1"))
    clock.t = now
    removed = await lifecycle(client, clock, 0)  # retention off: culling only
    assert removed.devices == 1
    assert [r[0] for r in rows(cfg.db, "select device_id from device_state")] == [kept.device]
    await kept.send(ev(eid="k2"))  # the device seen within the lifetime keeps its session
    got = {r[0]: r[1] for r in rows(cfg.db, "select event_id, session_id from events")}
    assert got["k1"] == got["k2"]
    assert rows(cfg.db, "select count(*) from events")[0][0] == 3  # culling removes no event


async def test_a_retired_device_stays_retired_while_its_events_stay(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # A signed device id never expires: culling a rotated device's state like any other's made a
    # replayed cookie (a server-side tracker forwarding it as nuid) a live device again, its new events
    # joined to its history before the rotation. Its state now goes only with its events (retention).
    client = await make_client(cfg.replace(cookie_max_age=30 * 86400))
    now = clock.t
    clock.t = now - 400 * DAY  # the database's own clock refuses a horizon past the present
    b = Browser(client)
    await b.send(ev(eid="before", uid="erin-5"))
    old_cookie, old = b.cookie, b.device
    await b.send(ev("ue", eid="anon", ue_pr=ANON_UE))  # rotate: `old` is retired for good
    assert b.device != old
    idle = Browser(client)
    await idle.send(ev(eid="idle"))  # the control: a device that only went quiet is culled
    for days, retention in ((360, 0), (0, 300)):  # retention off, then on and past them both
        clock.t = now - days * DAY
        await lifecycle(client, clock, retention)
        r = await client.post(TP2, json=batch(ev(eid=f"replayed-{days}", nuid=old_cookie)))
        assert r.status == 200
        [(got,)] = rows(cfg.db, "select network_userid from events where event_id = ?", (f"replayed-{days}",))
        states = {r[0] for r in rows(cfg.db, "select device_id from device_state")}
        if retention == 0:
            assert got is None and old in states  # kept without a device, the retired state kept
            assert idle.device not in states
        else:  # its events gone, its id links nothing: it may come back as any unknown device
            assert rows(cfg.db, "select count(*) from events where event_id in ('before', 'anon')")[0][0] == 0
            assert got == old


@only("sqlite")  # PostgreSQL's rule is inside collector_lifecycle, which every version calls
async def test_a_retired_devices_state_is_kept_from_any_connections_cull(client: Any, cfg: Config) -> None:
    # the rule above lived in this version's Python only: an older replica's cull, during a rolling
    # upgrade, still took a retired device's state, and its replayed cookie was a live device again
    assert isinstance(cfg.db, Path)
    b, idle = Browser(client), Browser(client)
    await b.send(ev(eid="before", uid="erin-5"))
    old = b.device
    await b.send(ev("ue", eid="anon", ue_pr=ANON_UE))  # rotate: `old` is retired
    await idle.send(ev(eid="idle"))
    assert plain_sql(cfg.db, "DELETE FROM device_state") is None  # an older version's cull, say
    states = {r[0] for r in rows(cfg.db, "select device_id from device_state")}
    assert old in states and idle.device not in states  # the control: the live device's state went
    assert "devices=1" in erase(cfg.db, "--device-id", old)  # inside an erasure it goes
    assert old not in {r[0] for r in rows(cfg.db, "select device_id from device_state")}


async def test_a_retired_tracker_id_is_refused_while_a_tracker_could_send_it(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg.replace(retired_days=365))
    start = clock.t = clock.t - 620 * DAY  # no month later than the database's own goes by
    b = Browser(client)
    await b.send(ev(eid="a", duid="duid-RET"))
    await b.send(ev("ue", eid="anon", duid="duid-RET", ue_pr=ANON_UE))
    clock.t = start + 200 * DAY
    await lifecycle(client, clock, 0)
    await Browser(client).send(ev(eid="later", duid="duid-RET"))
    assert rows(cfg.db, "select domain_userid from events where event_id = 'later'")[0][0] is None
    # A tracker renews its own cookie with every event it sends (the browser tracker's `_sp_id`
    # lasts two years from the last): retirement was dated from the rotation, and an app that forgot
    # clearUserData() got its old duid stored again, beside the old device's rows that hold it.
    clock.t = start + 420 * DAY  # 365 days after the rotation, 220 after it was last sent
    assert (await lifecycle(client, clock, 0)).retired == 0
    assert rows(cfg.db, "select count(*) from retired_ids")[0][0] == 1
    clock.t = start + 600 * DAY  # past what a tracker's cookie set at its last send can live: forgotten
    assert (await lifecycle(client, clock, 0)).retired == 1
    assert rows(cfg.db, "select count(*) from retired_ids")[0][0] == 0


async def test_a_flood_of_cookieless_requests_is_bounded_by_the_cookie_lifetime(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg.replace(cookie_max_age=86400))
    start = clock.t
    per_day = []
    for day in range(5):
        clock.t = start + day * DAY
        for i in range(30):  # a server-side tracker that never forwards the cookie: a device a request
            assert (await client.get("/i", params=ev(eid=f"f{day}-{i}"))).status == 200
        await lifecycle(client, clock, 0)
        per_day.append(rows(cfg.db, "select count(*) from device_state")[0][0])
    # a row a request until the lifetime (a day) and its margin (a day) have passed, then flat
    assert per_day == [30, 60, 90, 90, 90], per_day


@only(
    "sqlite"
)  # PostgreSQL's writer may not insert into lifecycle or erasures; its triggers bind REPLACE's kin
async def test_insert_or_replace_neither_moves_the_horizon_nor_rewrites_a_record(
    client: Any, cfg: Config
) -> None:
    # REPLACE deletes the row it conflicts with and fires neither a DELETE nor an UPDATE trigger: it
    # moved the horizon past the present (then every DELETE passed as retention) and rewrote a closed
    # erasure record
    assert isinstance(cfg.db, Path)
    await Browser(client).send(ev(eid="a", uid="alice-4f1e"))
    assert (await client.post(TP2, json={"schema": "x", "data": []})).status == 400  # a bad row
    erase(cfg.db, "--user-id", "alice-4f1e")
    assert (await client.get("/i", params=ev(eid="acked"))).status == 200
    [entry] = rows(cfg.db, "select * from erasures")
    [bad] = rows(cfg.db, "select * from bad_rows")
    refused = {
        "horizon": plain_sql(
            cfg.db, "INSERT OR REPLACE INTO lifecycle VALUES (1, '9999-12-31 00:00:00.000')"
        ),
        "ledger": plain_sql(
            cfg.db,
            "INSERT OR REPLACE INTO erasures (id, at, selector, events, bad_rows, devices, open)"
            f" VALUES ({entry['id']}, '2000-01-01 00:00:00.000', 'device_id', 0, 0, 0, 0)",
        ),
        "bad row": plain_sql(
            cfg.db,
            "INSERT OR REPLACE INTO bad_rows (id, received_at, reason, detail, size, anonymous)"
            f" VALUES ({bad['id']}, '2000-01-01 00:00:00.000', 'r', 'd', 1, 0)",
        ),
        "delete": plain_sql(cfg.db, "DELETE FROM events"),
    }
    assert all(refused.values()), refused
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["acked"]
    assert [tuple(r) for r in rows(cfg.db, "select * from erasures")] == [tuple(entry)]
    assert [tuple(r) for r in rows(cfg.db, "select * from bad_rows")] == [tuple(bad)]
    assert rows(cfg.db, "select horizon from lifecycle")[0][0] == "1970-01-01 00:00:00.000"


@pytest.mark.parametrize(
    "hidden",
    ["id", "rowid", None],  # the column set: id, or its rowid alias (which `UPDATE OF id` misses)
    ids=["moved-by-id", "moved-by-rowid", "control-left-as-is"],
)
def test_an_entry_cannot_be_moved_onto_a_closed_one_to_hide_a_delete(
    tmp_path: Path, hidden: str | None
) -> None:
    """UPDATE OR REPLACE of an open entry onto a closed one's id deletes the closed one and fires no
    DELETE trigger: a plain connection deleted events and left the ledger exactly as it was."""
    from storage.migrate import migrate

    db = tmp_path / "events.db"
    conn = connect(db)
    migrate(conn)
    for i, user in enumerate(("alice", "bob", "bob")):
        conn.execute(
            "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp,"
            " network_userid, user_id, anonymous) VALUES (?, 'page_view', 'web', 'js-3', 'c', ?, ?, ?, 0)",
            (f"e{i}", "2026-12-01 00:00:00.000", f"dev-{user}", user),
        )
    lifecycle_rules.sqlite_erase(conn, int(time.time() * 1000), "alice", None)
    [closed] = conn.execute("SELECT * FROM erasures").fetchall()
    other = sqlite3.connect(db, isolation_level=None)  # a plain connection, no collector
    other.execute("BEGIN")
    other.execute("INSERT INTO erasures (id, at, selector) VALUES (?, 'x', 'user_id')", (2**40,))
    other.execute("DELETE FROM events WHERE user_id = 'bob'")  # recorded: its own open entry
    refused = None
    if hidden:
        try:
            other.execute(f"UPDATE OR REPLACE erasures SET {hidden} = ? WHERE id = ?", (closed[0], 2**40))
        except sqlite3.DatabaseError as exc:
            refused = str(exc)
    other.execute("COMMIT")
    other.close()
    ledger = conn.execute("SELECT id FROM erasures ORDER BY id").fetchall()
    bobs = conn.execute("SELECT count(*) FROM events WHERE user_id = 'bob'").fetchone()[0]
    conn.close()
    # either way the delete stands with its entry beside the closed one: the ledger records it
    assert (bobs, ledger) == (0, sorted([(closed[0],), (2**40,)])), (refused, ledger)
    assert (refused is not None) == (hidden is not None)


@only("sqlite")  # on PostgreSQL only the owner may insert into the ledger, and it may drop the triggers
async def test_an_erasure_entry_left_open_lets_no_later_delete_through(client: Any, cfg: Config) -> None:
    # DELETEs pass inside an erasure: an entry another connection opened and committed let every later
    # DELETE through, from anyone, for good
    assert isinstance(cfg.db, Path)
    await client.get("/i", params=ev(eid="acked"))
    assert (
        plain_sql(cfg.db, "INSERT INTO erasures (at, selector) VALUES ('2026-01-01 00:00:00.000', 'user_id')")
        is None
    )
    assert "append-only" in (plain_sql(cfg.db, "DELETE FROM events") or "")
    other = sqlite3.connect(cfg.db, isolation_level=None)
    try:  # nor a connection whose last insert, into a table of its own, got the entry's rowid (1)
        other.execute("CREATE TEMP TABLE scratch (x)")
        other.execute("INSERT INTO scratch (x) VALUES ('unrelated')")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            other.execute("DELETE FROM events")
    finally:
        other.close()
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["acked"]
    conn = sqlite3.connect(cfg.db, isolation_level=None)  # the control: inside its own entry's transaction
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO erasures (id, at, selector)"
            " VALUES (4294967297, '2026-01-01 00:00:00.000', 'device_id')"
        )
        assert conn.execute("DELETE FROM events").rowcount == 1
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_the_horizon_cannot_pass_the_present_so_no_fast_clock_takes_what_is_acknowledged(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg)
    real = clock.t = time.time()  # the database bounds the horizon by its own (real) clock
    assert (await client.get("/i", params=ev(eid="acked"))).status == 200
    clock.t = real + 400 * DAY  # one replica's clock (or the host running `retain`) a year ahead
    try:
        await lifecycle(client, clock, 30)
    except (sqlite3.Error, asyncpg.PostgresError) as exc:  # SQLite refuses a horizon past the present
        assert "present" in str(exc) and isinstance(cfg.db, Path)
    else:  # PostgreSQL takes none later than the recorded retention allows, by its own clock
        assert not isinstance(cfg.db, Path)
    clock.t = real
    assert (await lifecycle(client, clock, 30)).events == 0
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["acked"]
    # and through any connection: a horizon past the present would let every DELETE through
    ahead = "'9999-12-31 00:00:00.000'" if isinstance(cfg.db, Path) else "'9999-12-31 00:00:00+00'"
    assert "present" in (plain_sql(cfg.db, f"UPDATE lifecycle SET horizon = {ahead}") or "")
    assert "append-only" in (plain_sql(cfg.db, "DELETE FROM events") or "")
    # the control: the horizon still moves forward, up to the present (a day ago, past the last run's)
    day_ago = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - DAY))
    past = f"'{day_ago}.000'" if isinstance(cfg.db, Path) else f"'{day_ago}+00'"
    assert plain_sql(cfg.db, f"UPDATE lifecycle SET horizon = {past}") is None


def erase(db: Path | str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "erase", "--db", str(db), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_erasure_removes_a_person_and_their_devices_and_records_only_the_count(
    client: Any, cfg: Config
) -> None:
    alice, bob = Browser(client), Browser(client)
    await alice.send(ev(eid="a-pre", url="https://shop.test/before-login"))  # stitched to her later
    await alice.send(ev(eid="a-in", uid="alice-4f1e"))
    await bob.send(ev(eid="b-in", uid="bob-77a0"))
    await client.post(TP2, json=batch({**ev(eid="a-bad"), "uid": "alice-4f1e", "se_va": {"x": 1}}))
    await client.get("/i", params=ev(eid="flush"))
    device = alice.device
    assert "events=2" in erase(cfg.db, "--user-id", "alice-4f1e")
    left = {r[0] for r in rows(cfg.db, "select event_id from events")}
    assert left == {"b-in", "flush"}
    assert rows(cfg.db, "select count(*) from device_state where device_id = ?", (device,))[0][0] == 0
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 0
    [entry] = rows(cfg.db, "select * from erasures")
    assert entry["selector"] == "user_id" and entry["events"] == 2 and entry["bad_rows"] == 1
    assert "alice" not in str(tuple(entry))
    text = "\n".join(
        str(tuple(r))
        for t in ("events", "bad_rows", "device_state", "sessions", "devices")
        for r in rows(cfg.db, f"select * from {t}")
    )
    assert "alice-4f1e" not in text and device not in text and "bob-77a0" in text
    if isinstance(cfg.db, Path):  # every byte of the file and its WAL, after the space is reclaimed
        raw = b"".join(p.read_bytes() for p in cfg.db.parent.glob(cfg.db.name + "*") if p.is_file())
        assert b"alice-4f1e" not in raw and device.encode() not in raw
        assert b"bob-77a0" in raw  # the same search finds what is still there
    # outside an erasure, a DELETE is still refused
    assert "append-only" in (plain_sql(cfg.db, "DELETE FROM events WHERE event_id = 'b-in'") or "")
    assert "append-only" in (plain_sql(cfg.db, "DELETE FROM erasures") or "")


async def test_erasure_finds_a_bad_row_by_the_id_as_a_value_escaped_or_not_and_no_other(
    client: Any, cfg: Config
) -> None:
    # a bad row keeps a refused event's params as JSON (and a refused body as sent): an id with a quote
    # or a backslash is stored escaped, and another person's text that merely contains a short id, or
    # the id in another case, is not theirs
    tricky = 'o"brien\\x'
    await Browser(client).send(ev(eid="t-in", uid=tricky))
    await Browser(client).send(ev(eid="s-in", uid="42"))
    refused = {"t-bad": tricky, "c-bad": "carol", "u-bad": tricky.upper()}
    for eid, uid in refused.items():
        await client.post(
            TP2, json=batch({**ev(eid=eid), "uid": uid, "page": "order 1421", "se_va": {"x": 1}})
        )
    schema = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    body = '{"schema":"' + schema + '","data":[{"e":"pv","uid":'
    await client.post(
        TP2, data=body + orjson.dumps(tricky).decode(), headers={"Content-Type": "application/json"}
    )
    await client.get("/i", params=ev(eid="flush"))
    bad = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert sum(orjson.dumps(tricky).decode() in p for p in bad) == 2  # the search finds it where it is

    assert "bad_rows=2" in erase(cfg.db, "--user-id", tricky)
    assert "bad_rows=0" in erase(cfg.db, "--user-id", "42")
    left = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert len(left) == 2 and not any(orjson.dumps(tricky).decode() in p for p in left)
    assert any('"carol"' in p for p in left) and any(orjson.dumps(tricky.upper()).decode() in p for p in left)
    assert [tuple(r) for r in rows(cfg.db, "select events, bad_rows from erasures order by at")] == [
        (1, 2),
        (1, 0),
    ]


async def test_erasure_finds_a_bad_row_by_the_id_in_every_spelling_the_collector_reads(
    client: Any, cfg: Config
) -> None:
    # A refused event's params are kept as JSON, its entities (`co`, base64 `cx`) decoded into `co`; but
    # a URL's query stays percent-encoded, and a body that did not parse is kept as it came: JSON's
    # `\u` escapes, base64 `cx`. The collector would have read the id out of each, so an erasure must
    # find it in each; another person's id, or this one in another case, is not theirs.
    who, other = "alice-4f1e", "alice-4f1e2"

    def entity(uid: str, escaped: bool = False) -> str:
        value = "".join(f"\\u{ord(c):04x}" for c in uid) if escaped else uid
        return (
            '{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{"schema":'
            '"iglu:com.acme/account/jsonschema/1-0-0","data":{"owner":"' + value + '"}}]}'
        )

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    bad = {"se_va": {"x": 1}}  # refused: a param that is not a string
    events = {
        "co-escaped": {"co": entity(who, escaped=True)},
        "cx": {"cx": b64(entity(who))},
        "url": {"url": "https://shop.example/?owner=alice%2D4f1e"},
        "cx-other": {"cx": b64(entity(other))},
        "co-upper": {"co": entity(who.upper())},
    }
    for eid, params in events.items():
        assert (await client.post(TP2, json=batch({**ev(eid=eid), **params, **bad}))).status == 400
    schema = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    head = '{"schema":"' + schema + '","data":[{"e":"pv",'
    bodies = {  # cut short: refused as they came
        "escaped": head + '"uid":"\\u0061lice-4f1e","page":"ord',
        "cx": head + '"cx":"' + b64(entity(who)) + '","page":"ord',
        "cx-other": head + '"cx":"' + b64(entity(other)) + '","page":"ord',
    }
    headers = {"Content-Type": "application/json"}
    for body in bodies.values():
        assert (await client.post(TP2, data=body, headers=headers)).status == 400
    await client.get("/i", params=ev(eid="flush"))
    payloads = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert len(payloads) == 8
    # the spellings are where they were sent, and the id as a plain value is only in the decoded entities
    for spelling in ("alice%2D4f1e", "\\u0061lice-4f1e", b64(entity(who))):
        assert sum(spelling in p for p in payloads) == 1, spelling
    in_co = orjson.dumps(orjson.dumps(who).decode()).decode()[1:-1]  # the id as a string inside `co`
    assert sum(in_co in p for p in payloads) == 2  # co-escaped, cx

    assert "bad_rows=5" in erase(cfg.db, "--user-id", who)
    left = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert len(left) == 3 and sum(b64(entity(other)) in p for p in left) == 1
    assert any(orjson.dumps(entity(other)).decode()[1:-1] in p for p in left)
    assert any(who.upper() in p for p in left)
    assert not any(s in p for p in left for s in ("alice%2D4f1e", "\\u0061lice", b64(entity(who)), in_co))


async def test_erasure_of_a_device_finds_its_signed_cookie_and_its_id_in_text_in_bad_rows(
    client: Any, cfg: Config
) -> None:
    # the device id is a random UUID, so it is found as a token wherever a bad row keeps it: its signed
    # cookie `<uuid>.<mac>` pasted into a field or a URL, free text naming it, a map keyed by it; not
    # inside a longer run (another value that merely contains it)
    mine, theirs = Browser(client), Browser(client)
    await mine.send(ev(eid="m-in"))
    await theirs.send(ev(eid="t-in"))
    bad = {"se_va": {"x": 1}}  # refused: a param that is not a string
    refused = {
        "cookie": {"page": f"cookie sp={mine.cookie}; _ga=GA1.2"},
        "url": {"url": f"https://shop.example/?sp={mine.cookie}"},
        "text": {"se_la": f"device {mine.device} twice"},
        "other": {"se_la": f"device {theirs.device}"},
        "longer": {"se_la": f"device {mine.device}0"},
    }
    for eid, params in refused.items():
        assert (await client.post(TP2, json=batch({**ev(eid=eid), **params, **bad}))).status == 400
    schema = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    body = '{"schema":"' + schema + '","data":[{"e":"pv","co":{"' + mine.device + '":1},"page":"ord'
    assert (await client.post(TP2, data=body, headers={"Content-Type": "application/json"})).status == 400
    await client.get("/i", params=ev(eid="flush"))
    payloads = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert len(payloads) == 6 and sum(mine.device in p for p in payloads) == 5  # where it is

    assert "bad_rows=4" in erase(cfg.db, "--device-id", mine.device)
    left = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert (
        len(left) == 2 and any(theirs.device in p for p in left) and any(mine.device + "0" in p for p in left)
    )


async def test_erasure_by_user_id_takes_the_device_state_that_names_them_after_their_events_left(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg)
    clock.t = time.time() - 40 * DAY  # the database bounds the horizon by its own (real) clock
    dave = Browser(client)
    await dave.send(ev(eid="d-old", uid="dave-9"))
    clock.t += 40 * DAY
    assert (await lifecycle(client, clock, 30)).events == 1  # retention took the event
    state = rows(cfg.db, "select device_id from device_state where user_id = ?", ("dave-9",))
    assert [r[0] for r in state] == [dave.device]  # the device's state still names him
    assert "devices=1" in erase(cfg.db, "--user-id", "dave-9")
    assert rows(cfg.db, "select count(*) from device_state where user_id = 'dave-9'")[0][0] == 0


async def test_erasure_by_device(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev(eid="d1"), ev(eid="d2"))
    await Browser(client).send(ev(eid="other"))
    erase(cfg.db, "--device-id", b.device)
    assert {r[0] for r in rows(cfg.db, "select event_id from events")} == {"other"}
    [entry] = rows(cfg.db, "select selector, events, devices from erasures")
    assert tuple(entry) == ("device_id", 2, 1)


async def test_erasure_takes_the_persons_device_ids_out_of_the_retired_ids(client: Any, cfg: Config) -> None:
    # A rotation retires the ids the device sent (a MAC, the duid) so that none is stored again; once
    # the person's events are erased, the retired values are theirs alone, and go with them.
    mac, duid, theirs = "a4:83:e7:1b:2c:9f", "duid-7c1e0a52-erin", "duid-5d0b7f31-bystander"
    phone, other = Browser(client), Browser(client)
    await phone.send(ev(eid="e-1", uid="erin-5", mac=mac, duid=duid))
    await phone.send(ev("ue", eid="e-2", ue_pr=ANON_UE))  # rotate: mac and duid retired
    await other.send(ev(eid="o-1", duid=theirs))
    await other.send(ev("ue", eid="o-2", ue_pr=ANON_UE))
    retired = {r[0] for r in rows(cfg.db, "select value from retired_ids")}
    assert {mac, duid, theirs} <= retired  # the control: where the check below looks, they are
    assert "events=2" in erase(cfg.db, "--user-id", "erin-5")
    kept = "\n".join(
        str(tuple(r))
        for t in ("events", "bad_rows", "device_state", "retired_ids", "erasures")
        for r in rows(cfg.db, f"select * from {t}")
    )
    assert mac not in kept and duid not in kept
    assert theirs in {r[0] for r in rows(cfg.db, "select value from retired_ids")}  # another's stay
    if isinstance(cfg.db, Path):  # nor in the file's or the WAL's bytes (secure_delete, truncated WAL)
        raw = b"".join(p.read_bytes() for p in cfg.db.parent.glob(cfg.db.name + "*") if p.is_file())
        assert mac.encode() not in raw and duid.encode() not in raw
        assert theirs.encode() in raw


class _Meanwhile:
    """The erasure's connection, running `meanwhile` once, right after the statement `after` names."""

    def __init__(self, conn: Any, after: str, meanwhile: Callable[[], Any]) -> None:
        self._conn, self._after, self._meanwhile = conn, after, meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def _then(self, sql: str, out: Any) -> Any:
        if sql.startswith(self._after) and self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            await meanwhile()
        return out

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._then(sql, await self._conn.fetch(sql, *args))

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._then(sql, await self._conn.execute(sql, *args))


@only("postgres")
@pytest.mark.parametrize(
    ("after", "waits"),
    [
        ("SELECT network_userid FROM events", False),
        ("DELETE FROM events", False),
        ("DELETE FROM event_ids", True),
    ],
    ids=["devices-read", "events-deleted", "under-the-locks"],
)
async def test_a_pg_erasure_is_not_overtaken_by_a_commit_while_it_runs(
    client: Any, cfg: Config, after: str, waits: bool
) -> None:
    # At READ COMMITTED the erasure read the person's devices once: a login committed after that read
    # left the new device's earlier events and a state naming them; an event committed after the
    # DELETE stayed. Now writers go on while it first reads and deletes, and wait while it looks again
    # (as on SQLite, the writers' turn): whatever is acknowledged before it commits is erased, and
    # what waits for it comes after it.
    phone, laptop, other = Browser(client), Browser(client), Browser(client)
    await phone.send(ev(eid="p-in", uid="erin-5"))
    await laptop.send(ev(eid="l-pre"))  # not theirs yet
    await other.send(ev(eid="o-1"))
    sent: list[asyncio.Task[Any]] = []

    async def meanwhile() -> None:  # they log in on the laptop, and the phone sends one more
        sent.append(asyncio.create_task(laptop.send(ev(eid="l-in", uid="erin-5"))))
        sent.append(asyncio.create_task(phone.send(ev(eid="p-late", uid="erin-5"))))
        await asyncio.sleep(1.0)  # ample for both to commit, unless they wait for the erasure

    conn = await asyncpg.connect(str(cfg.db))
    try:
        await lifecycle_rules.pg_erase(
            _Meanwhile(conn, after, meanwhile), int(time.time() * 1000), "erin-5", None
        )
        acknowledged = [t.done() for t in sent]
        await asyncio.gather(*sent)
    finally:
        await conn.close()
    left = {r[0] for r in rows(cfg.db, "select event_id from events")}
    named = rows(cfg.db, "select count(*) from device_state where user_id = 'erin-5'")[0][0]
    assert acknowledged == [not waits, not waits], acknowledged  # under the locks, the writers wait
    if waits:  # stored after the erasure: theirs again
        assert (left, named) == ({"o-1", "l-pre", "l-in", "p-late"}, 2)
    else:  # acknowledged before it committed: erased, the laptop's earlier event with the login
        assert (left, named) == ({"o-1"}, 0)


async def test_an_erasure_leaves_retired_what_a_rotated_device_that_stays_retired(
    client: Any, cfg: Config
) -> None:
    # the erased person's ids leave the retired ids, but a value another device sent too and retired
    # with its own rotation (a fingerprint many browsers share) stays retired: taking it out linked
    # that device's ids before and after its rotation
    fp = "fp-1234567"
    erin, dana = Browser(client), Browser(client)
    await erin.send(ev(eid="e-1", uid="erin-5", fp=fp))
    await dana.send(ev(eid="d-1", fp=fp))
    before = dana.device
    await dana.send(ev("ue", eid="d-2", ue_pr=ANON_UE))  # dana rotates: fp retired
    await dana.send(ev(eid="d-3", fp=fp))
    assert rows(cfg.db, "select user_fingerprint from events where event_id = 'd-3'")[0][0] is None
    erase(cfg.db, "--user-id", "erin-5")  # someone else's erasure
    await dana.send(ev(eid="d-4", fp=fp))
    assert rows(cfg.db, "select user_fingerprint from events where event_id = 'd-4'")[0][0] is None
    linked = {
        r[0] for r in rows(cfg.db, "select network_userid from events where user_fingerprint = ?", (fp,))
    }
    assert linked == {before}  # the control: the value is kept where it was stored before the rotation


@only("postgres")
async def test_writers_go_on_while_a_pg_erasure_reads_the_bad_rows(make_client: Any, cfg: Config) -> None:
    # its locks were taken first: every writer waited for the whole erasure, the decoding of every bad
    # row's payload included, and answered 503 past its statement timeout
    client = await make_client(cfg)
    await Browser(client).send(ev(eid="p-in", uid="erin-5"))
    payload = '{"schema":"iglu:x/y/jsonschema/1-0-0","data":[{"e":"pv","url":"' + "a" * 420 + '"}]}'
    conn = await asyncpg.connect(str(cfg.db))
    try:
        await conn.execute(
            "INSERT INTO bad_rows (received_at, reason, detail, payload, size, anonymous) "
            "SELECT now(), 'bad_json', 'd', $1, 500, 0 FROM generate_series(1, 50000)",
            payload,
        )
        erasing = asyncio.create_task(lifecycle_rules.pg_erase(conn, int(time.time() * 1000), "erin-5", None))
        await asyncio.sleep(0.3)  # it is reading the bad rows now
        during = await client.get("/i", params=ev(eid="during"))
        answered_first = not erasing.done()
        erased = await erasing
    finally:
        await conn.close()
    assert during.status == 200 and answered_first  # answered while the erasure still ran
    assert erased.events == 1
    assert rows(cfg.db, "select count(*) from events where event_id = 'during'")[0][0] == 1


def _erase_in_thread(
    client: Any, db: Path, user_id: str | None, device_id: str | None, meanwhile: Callable[[], Any]
) -> tuple[Any, list[int]]:
    """An erasure as the CLI runs it (its own connection, the writers' turn), with `meanwhile` (a
    coroutine function, run on the test's loop) between its first read and its first turn; returns
    the erasure's counts and, for each turn it took before its ledger entry (the later ones give the
    freed pages back), the events' largest rowid then."""
    loop = asyncio.get_running_loop()
    tops: list[int] = []
    recorded: list[int] = []  # the ledger's entries after `meanwhile`

    @contextmanager
    def turn() -> Iterator[None]:
        if not recorded:
            asyncio.run_coroutine_threadsafe(meanwhile(), loop).result(timeout=30)
            recorded.append(rows(db, "select count(*) from erasures")[0][0])
        with writers_turn(db):
            if rows(db, "select count(*) from erasures")[0][0] == recorded[0]:
                tops.append(rows(db, "select max(rowid) from events")[0][0])
            yield

    def run() -> Any:
        conn = connect(db)
        try:
            return lifecycle_rules.sqlite_erase(conn, int(time.time() * 1000), user_id, device_id, turn)
        finally:
            conn.close()

    return loop.run_in_executor(None, run), tops


@only("sqlite")
@pytest.mark.parametrize("reads", [lifecycle_rules.ERASE_READS, 1])
async def test_erasure_takes_what_arrives_while_it_reads_on_a_device_it_already_knew_or_a_new_one(
    client: Any, cfg: Config, monkeypatch: pytest.MonkeyPatch, reads: int
) -> None:
    # with one read allowed, the late login has the erasure scan inside its turn instead
    monkeypatch.setattr(lifecycle_rules, "ERASE_READS", reads)
    assert isinstance(cfg.db, Path)
    phone, laptop, other = Browser(client), Browser(client), Browser(client)
    await phone.send(ev(eid="p-in", uid="erin-5"))
    await laptop.send(ev(eid="l-pre"))  # not yet hers: the first read does not look for it
    await other.send(ev(eid="o-1"))
    refused = {"se_va": {"x": 1}}  # each makes a bad row
    assert (await client.post(TP2, json=batch({**ev(eid="b-pre", uid="erin-5"), **refused}))).status == 400

    async def meanwhile() -> None:
        await phone.send(ev(eid="p-late"))  # a device the read found
        await laptop.send(ev(eid="l-in", uid="erin-5"))  # she logs in on another one
        for url in ("https://x.example/?u=erin%2D5", "https://x.example/?u=erin-55"):  # hers, not hers
            assert (
                await client.post(TP2, json=batch({**ev(eid="b-late", url=url), **refused}))
            ).status == 400
        await other.send(ev(eid="o-2"))  # the bad rows are written with the next commit

    pending, tops = _erase_in_thread(client, cfg.db, "erin-5", None, meanwhile)
    erased = await pending
    assert {r[0] for r in rows(cfg.db, "select event_id from events")} == {"o-1", "o-2"}
    assert {r[0] for r in rows(cfg.db, "select device_id from device_state")} == {other.device}
    assert (erased.events, erased.devices, erased.bad_rows) == (4, 2, 2)
    assert ["erin-55" in r[0] for r in rows(cfg.db, "select payload from bad_rows")] == [True]
    assert len(tops) == min(2, reads)  # the late login sent it back to read once more, if it may


@only("sqlite")
async def test_erasure_finds_its_rows_again_when_a_rowid_it_read_is_reused(client: Any, cfg: Config) -> None:
    assert isinstance(cfg.db, Path)
    db = cfg.db
    frank, last = Browser(client), Browser(client)
    await frank.send(ev(eid="f-1", uid="frank-3"))
    await last.send(ev(eid="z-1"), ev(eid="z-2"))  # the events' last rows as the erasure reads
    read_top = rows(db, "select max(rowid) from events")[0][0]

    async def meanwhile() -> None:
        # another erasure takes the last rows, and frank's next event gets one of their rowids
        assert "events=2" in await asyncio.to_thread(erase, db, "--device-id", last.device)
        await frank.send(ev(eid="f-2"))
        assert rows(db, "select rowid from events where event_id = 'f-2'")[0][0] <= read_top

    pending, tops = _erase_in_thread(client, db, "frank-3", None, meanwhile)
    erased = await pending
    assert rows(db, "select count(*) from events")[0][0] == 0
    assert len(tops) == 1 and erased.events == 2


@only("sqlite")
@pytest.mark.parametrize("reading", [False, True])
async def test_erasure_truncates_the_wal_in_short_turns_while_an_analyst_reads(
    client: Any, cfg: Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reading: bool
) -> None:
    assert isinstance(cfg.db, Path)
    db = cfg.db
    monkeypatch.setattr(lifecycle_rules, "TRUNCATE_TRIES", 3)
    b = Browser(client)
    await b.send(ev(eid="g-1"))
    analyst = sqlite3.connect(db, isolation_level=None)
    analyst.execute("BEGIN")
    analyst.execute("SELECT count(*) FROM events").fetchone()  # holds its snapshot
    if not reading:
        analyst.execute("COMMIT")
    await Browser(client).send(ev(eid="other"))  # frames past the analyst's snapshot
    turns: list[int] = []

    @contextmanager
    def turn() -> Iterator[None]:
        with writers_turn(db):
            turns.append(1)
            yield

    conn = connect(db)
    try:
        erased = await asyncio.to_thread(
            lifecycle_rules.sqlite_erase, conn, int(time.time() * 1000), None, b.device, turn
        )
    finally:
        conn.close()
        analyst.close()
    assert erased.events == 1
    wal = db.with_name(db.name + "-wal")
    warned = [r for r in caplog.records if "kept the WAL" in r.getMessage()]
    if reading:  # each try in a turn of its own, the writer going on between them
        assert warned and wal.stat().st_size > 0 and len(turns) >= 1 + 3
    else:
        assert not warned and wal.stat().st_size == 0


def _in_the_turn(db: Path, run: Callable[[sqlite3.Connection, lifecycle_rules.Turn], object]) -> int:
    """SQLite VM instructions, in hundreds, run while the connection holds the writers' turn."""
    conn = connect(db)
    inside = 0
    held = False

    def count() -> int:
        nonlocal inside
        inside += held
        return 0

    @contextmanager
    def turn() -> Iterator[None]:
        nonlocal held
        with writers_turn(db):
            held = True
            try:
                yield
            finally:
                held = False

    conn.set_progress_handler(count, 100)
    try:
        run(conn, turn)
    finally:
        conn.close()
    return inside


def _erase_as_first_written(conn: sqlite3.Connection, device: str, turn: lifecycle_rules.Turn) -> None:
    """The erasure's scan as first written: a DELETE over the whole table inside the turn."""
    with turn():
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(  # an id as the erasure draws them (the delete guard wants one from 2^32 up)
            "INSERT INTO erasures (id, at, selector)"
            " VALUES (4294967297, '2026-12-01 00:00:00.000', 'device_id')"
        )
        conn.execute("DELETE FROM events WHERE network_userid IN (?)", (device,))
        conn.execute("ROLLBACK")


@only("sqlite")
async def test_erasure_holds_the_turn_for_what_it_removes_not_for_the_tables_size(
    client: Any, cfg: Config
) -> None:
    assert isinstance(cfg.db, Path)
    db, now_ms = cfg.db, int(time.time() * 1000)
    now_run, first_run = [], []
    for round_ in range(2):  # 600 other events, then 1800, beside one device's three
        for i in range(600 * (1 + 2 * round_)):
            assert (await client.get("/i", params=ev(eid=f"{round_}-{i}"))).status == 200
        b = Browser(client)
        await b.send(*(ev(eid=f"{round_}-b{k}") for k in range(3)))
        device = b.device
        first_run.append(_in_the_turn(db, lambda c, t, d=device: _erase_as_first_written(c, d, t)))  # type: ignore[misc]
        now_run.append(
            _in_the_turn(db, lambda c, t, d=device: lifecycle_rules.sqlite_erase(c, now_ms, None, d, t))  # type: ignore[misc]
        )
        assert rows(db, "select count(*) from events where network_userid = ?", (device,))[0][0] == 0
    print("in the turn, hundreds of instructions: now", now_run, "as first written", first_run)
    assert first_run[1] > 2 * first_run[0]  # the measure sees a scan grow with the table
    assert now_run[1] <= now_run[0] * 1.2 and now_run[0] < first_run[0]


async def test_the_collector_runs_the_lifecycle_by_itself(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg.replace(lifecycle_interval=1, retention_days=30))
    clock.t = time.time() - 40 * DAY  # the database bounds the horizon by its own (real) clock
    assert (await client.get("/i", params=ev(eid="old"))).status == 200
    clock.t += 40 * DAY
    assert (await client.get("/i", params=ev(eid="new"))).status == 200
    for _ in range(50):  # the first run comes a second after start
        await asyncio.sleep(0.1)
        if len(rows(cfg.db, "select event_id from events")) == 1:
            break
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["new"]
    line = 'collector_lifecycle_removed_total{kind="events"} 1.0'
    for _ in range(50):  # the run counts what it removed once its transaction is back
        metrics = await (await client.get("/metrics")).text()
        if line in metrics:
            break
        await asyncio.sleep(0.1)
    assert line in metrics


@only("sqlite")  # PostgreSQL's read is a cursor, fetched as it goes
async def test_an_erasure_s_read_fetches_bad_rows_a_bounded_window_at_a_time(
    client: Any, cfg: Config
) -> None:
    # a payload is up to 64 KiB: a statement of READ_ROWS of them could hold 3.2 GiB at once
    await client.get("/i", params=ev(eid="flush"))  # the store's file, migrated
    n = 2_500
    conn = connect(cfg.db)
    with conn:
        conn.executemany(
            "INSERT INTO bad_rows (received_at, reason, detail, payload, size, anonymous)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            [("2026-12-04 00:00:00.000", "bad_json", "x", f'{{"uid":"u{i}"}}', 12) for i in range(n)],
        )

    fetched: list[int] = []

    class Counting:  # the real connection, each statement's rows counted
        def execute(self, sql: str, params: Any = ()) -> Any:
            cur = conn.execute(sql, params)
            if "payload FROM bad_rows" not in sql:
                return cur
            got = cur.fetchall()
            fetched.append(len(got))
            return type("Rows", (), {"fetchall": lambda self: got})()

    found = lifecycle_rules._find(Counting(), "u7", set())  # type: ignore[arg-type]
    conn.close()
    assert len(found.bad_rows) == 1 and sum(fetched) == n
    assert max(fetched) * MAX_BAD_PAYLOAD <= 64 * 1024**2  # what one statement can hold at most
