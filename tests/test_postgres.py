"""The PostgreSQL store itself: roles and append-only, read-only queries, data it refuses, a server
restart under load, and writers on several connections contending for the same devices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from collector.config import Config
from collector.handlers import STATE
from storage import pg_io
from storage.base import RejectedData, Submission
from storage.group import Writes
from storage.postgres import PostgresStore
from storage.sessions import SessionRules
from tests.conftest import TP2, batch, ev, event_row, rows
from tests.pg import PASSWORDS, PgServer, as_role, execute, run_sync
from tests.procs import Collector, cli
from tests.test_sessions import ANON_UE

STORES = ("postgres",)


async def test_events_round_trip_with_proper_types(client: Any, cfg: Config) -> None:
    resp = await client.post(TP2, json=batch(ev(eid="t1", se_va="2.5", dtm="1700000000123", vid="3")))
    assert resp.status == 200
    [row] = rows(cfg.db, "select * from events")
    assert row["se_value"] == 2.5 and row["domain_sessionidx"] == 3
    assert row["dvce_created_tstamp"] == "2023-11-14 22:13:20.123"  # a timestamptz, read back in UTC
    sql = "select column_name, data_type from information_schema.columns where table_name = 'events'"
    types = {r[0]: r[1] for r in rows(cfg.db, sql)}
    assert types["collector_tstamp"] == "timestamp with time zone" and types["contexts"] == "jsonb"
    assert types["se_value"] == "double precision"
    parts = rows(cfg.db, "select count(*) from pg_inherits where inhparent = 'events'::regclass")
    assert parts[0][0] >= 4  # monthly partitions ahead, and the default one


async def test_the_collectors_role_cannot_change_or_remove_rows(pg_server: PgServer, roles_db: str) -> None:
    url = pg_server.url(roles_db, "collector_writer", PASSWORDS["WRITER"])
    proc = Collector(url, env={"COLLECTOR_COOKIE_SECRET": "s"}).start()
    try:
        async with aiohttp.ClientSession() as s, s.get(proc.url + "/i", params=ev(eid="kept")) as r:
            assert r.status == 200
        async with aiohttp.ClientSession() as s, s.get(proc.url + "/i", params={"e": "pv"}) as r:
            assert r.status == 400  # a bad row too
    finally:
        assert proc.stop() == 0
    for table in ("events", "bad_rows"):
        for sql in (f"UPDATE {table} SET anonymous = 1", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            writer = as_role(pg_server, roles_db, "collector_writer", sql)
            assert writer is not None and "InsufficientPrivilege" in writer, (sql, writer)
            # the owner has the privileges; the triggers refuse it all the same
            owner = as_role(pg_server, roles_db, "collector_owner", sql)
            assert owner is not None and "append-only" in owner, (sql, owner)
        partition = f"{table}_default"
        owner = as_role(pg_server, roles_db, "collector_owner", f"TRUNCATE {partition}")
        assert owner is not None and "append-only" in owner
    # the writer may insert (what it is for), and the rows are still there
    stored = rows(pg_server.url(roles_db), "select count(*) from events")[0][0]
    assert stored == 1 and rows(pg_server.url(roles_db), "select count(*) from bad_rows")[0][0] == 1
    reader = as_role(pg_server, roles_db, "collector_reader", "INSERT INTO retired_ids VALUES ('x')")
    assert reader is not None and "InsufficientPrivilege" in reader


def test_a_collector_that_may_not_migrate_says_so(pg_server: PgServer) -> None:
    name = pg_server.new_database()
    env = {f"COLLECTOR_PG_{k}_PASSWORD": v for k, v in PASSWORDS.items()}
    assert cli("pg-roles", "--db", pg_server.url(name), "--database", name, env=env).returncode == 0
    url = pg_server.url(name, "collector_writer", PASSWORDS["WRITER"])
    proc = Collector(url, env={"COLLECTOR_COOKIE_SECRET": "s"})
    proc.start(wait=False)
    assert proc.proc is not None and proc.proc.wait(60) != 0
    assert "python -m collector migrate" in proc.log.read_text()


def test_a_database_that_is_not_utf8_is_refused_at_start(pg_server: PgServer) -> None:
    # text it cannot encode would be refused event by event, as a 400 the tracker drops: our fault
    name = "t_" + uuid.uuid4().hex[:12]
    pg_server.execute(
        f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )
    proc = Collector(pg_server.url(name), env={"COLLECTOR_COOKIE_SECRET": "s"})
    proc.start(wait=False)
    assert proc.proc is not None and proc.proc.wait(60) != 0
    assert "UTF8" in proc.log.read_text()
    done = cli("migrate", "--db", pg_server.url(name))
    assert done.returncode == 1 and "UTF8" in done.stderr and "Traceback" not in done.stderr
    # the control: the same start on a UTF8 database serves
    good = Collector(pg_server.url(pg_server.new_database()), env={"COLLECTOR_COOKIE_SECRET": "s"}).start()
    good.stop()


async def test_a_hung_server_is_a_503_within_the_statement_timeout_not_a_hang(
    make_client: Any, cfg: Config
) -> None:
    # A connection whose server stops answering (a partition that leaves the TCP connection open; here
    # its backends stopped with SIGSTOP): the server cannot enforce its statement_timeout, so the
    # collector must, or requests hang and /ready stays 200 while the load balancer keeps sending.
    import signal

    client = await make_client(cfg.replace(pg_statement_timeout=1000, pg_pool_size=1))
    assert (await client.get("/i", params=ev(eid="before"))).status == 200
    pids = [
        r[0]
        for r in rows(cfg.db, "select pid from pg_stat_activity where application_name = 'anon-collector'")
    ]
    assert pids  # the control: the collector's own backends, which the search finds
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        resp = await asyncio.wait_for(client.get("/i", params=ev(eid="during")), 15)  # not forever
        waited = time.monotonic() - started
        assert resp.status == 503, await resp.text()
        assert waited < 10, waited  # bounded by the timeout (1 s) and its margin, not by the outage
        assert (await client.get("/ready")).status == 503
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    for _ in range(100):  # the pool replaces the connection; the probe heals the store
        if (await client.get("/i", params=ev(eid="after"))).status == 200:
            break
        await asyncio.sleep(0.2)
    assert "after" in {r[0] for r in rows(cfg.db, "select event_id from events")}


async def test_query_is_read_only_whatever_the_sql(cfg: Config, client: Any) -> None:
    assert (await client.get("/i", params=ev(eid="q"))).status == 200
    done = cli("query", "select event_id from events", "--db", str(cfg.db), "--format", "csv")
    assert done.returncode == 0 and done.stdout.split() == ["event_id", "q"]
    for sql in ("insert into retired_ids values ('x')", "delete from device_state", "create table t (x int)"):
        done = cli("query", sql, "--db", str(cfg.db))
        assert done.returncode == 1 and "read-only" in done.stderr, (sql, done.stderr)
    assert rows(cfg.db, "select count(*) from retired_ids")[0][0] == 0


async def test_query_of_a_time_past_python_s_range_is_an_error_not_a_traceback(
    cfg: Config, client: Any
) -> None:
    # a device clock 30,000 years ahead is a valid PostgreSQL timestamp but no Python datetime
    assert (await client.get("/i", params=ev(eid="far", dtm="999999999999999"))).status == 200
    done = cli("query", "select dvce_created_tstamp from events", "--db", str(cfg.db))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "::text" in done.stderr  # it says how to read it
    done = cli(
        "query", "select dvce_created_tstamp::text from events", "--db", str(cfg.db), "--format", "csv"
    )
    assert done.returncode == 0 and "33658" in done.stdout, done.stderr  # the control: the row is there


async def test_text_postgresql_refuses_costs_only_its_own_request(cfg: Config) -> None:
    """A NUL character is valid JSON and valid SQLite text, but PostgreSQL refuses it in text and jsonb."""
    store = PostgresStore(str(cfg.db), SessionRules(1_800_000))
    await store.start()

    try:
        results = await asyncio.gather(
            store.append(Submission(0, None, [event_row("good-1", page_title="fine")])),
            store.append(Submission(0, None, [event_row("nul", page_title="a\x00b")])),
            store.append(Submission(0, None, [event_row("good-2", page_title="fine")])),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert isinstance(results[1], RejectedData)
    assert [r.stored for r in (results[0], results[2])] == [1, 1]  # type: ignore[union-attr]
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["good-1", "good-2"]


# A number PostgreSQL's numeric (so jsonb) cannot hold, which orjson reads (as 0.0). The collector
# stores the JSON it read, re-encoded, so the number is kept as read rather than refused.
TINY_CO = (
    '{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",'
    '"data":[{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"n":1e-20000}}]}'
)


async def test_a_number_numeric_cannot_hold_is_kept_as_the_collector_read_it(
    client: Any, cfg: Config
) -> None:
    resp = await client.post(TP2, json=batch(ev(eid="tiny", co=TINY_CO)))
    assert resp.status == 200, await resp.text()
    [row] = rows(cfg.db, "select contexts::text from events")
    assert '"n": 0.0' in row[0] and "1e-20000" not in row[0]


# Data PostgreSQL refuses (SQLSTATE class 22) that the collector cannot see beforehand: a trigger
# the test adds stands in for it (a domain, a check an operator added), so the path stays tested.
REFUSE = """
create function refuse_marked() returns trigger language plpgsql as $$
begin
  if new.page_title = 'refuse-me' then
    raise exception 'refused for the test' using errcode = '22023';
  end if;
  return new;
end $$;
create trigger refuse_marked before insert on events for each row execute function refuse_marked();
"""


async def test_data_postgresql_refuses_in_a_request_is_a_400_for_that_request(
    client: Any, cfg: Config
) -> None:
    async def add_trigger() -> None:
        conn = await asyncpg.connect(str(cfg.db))
        try:
            await conn.execute(REFUSE)
        finally:
            await conn.close()

    run_sync(add_trigger())
    resp = await client.post(TP2, json=batch(ev(eid="refused", page="refuse-me")))
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "unstorable"
    assert (await client.get("/i", params=ev(eid="after", page="fine"))).status == 200
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["after"]


async def test_a_refused_body_with_a_nul_keeps_its_bad_row(client: Any, cfg: Config) -> None:
    # The bad row of a body that is not JSON keeps its first bytes as text; a NUL among them (a
    # binary or mis-encoded body) must not make PostgreSQL refuse the record of the refusal. It is
    # dropped (a UTF-16 body then reads as sent: see the handler).
    resp = await client.post(TP2, data=b"not json \x00 here", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "bad_json"
    assert (await client.get("/i", params=ev(eid="after"))).status == 200  # committed behind the bad row
    [bad] = rows(cfg.db, "select reason, payload from bad_rows")
    assert bad["reason"] == "bad_json" and bad["payload"] == "not json  here"


async def test_a_nul_the_collector_decodes_itself_is_stored(client: Any, cfg: Config) -> None:
    # %00 in the page URL's query: the URL is storable text; the campaign parse_qsl decodes from it
    # must be too, or a storable request would be refused, with the good events beside it
    url = "https://shop.test/?utm_campaign=a%00b"
    resp = await client.post(TP2, json=batch(ev(eid="good"), ev(eid="decoded", url=url)))
    assert resp.status == 200, await resp.text()
    got = {
        r["event_id"]: r["mkt_campaign"] for r in rows(cfg.db, "select event_id, mkt_campaign from events")
    }
    assert got == {"good": None, "decoded": "a\ufffdb"}


async def _stream(url: str, acked: list[str], statuses: list[int], stop_at: float) -> None:
    async def worker(s: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            eids = [str(uuid.uuid4()) for _ in range(5)]
            try:
                async with s.post(url + TP2, json=batch(*[ev(eid=e) for e in eids])) as r:
                    await r.read()
                    statuses.append(r.status)
                    if r.status == 200:
                        acked.extend(eids)
                    else:
                        await asyncio.sleep(0.05)
            except aiohttp.ClientError:
                statuses.append(-1)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        await asyncio.gather(*(worker(s) for _ in range(4)))


@pytest.mark.slow
async def test_a_postgresql_restart_under_load_is_503s_then_recovery(tmp_path: Path) -> None:
    """Only 503s while the server is down, /ready 503 then 200, nothing acknowledged lost or doubled."""
    server = PgServer(Path(os.environ.get("TMPDIR", "/tmp")) / f"collector-pg-restart-{uuid.uuid4().hex[:8]}")
    server.start()
    try:
        url = server.url(server.new_database())
        proc = Collector(url, env={"COLLECTOR_COOKIE_SECRET": "s", "COLLECTOR_PG_STATEMENT_TIMEOUT": "2000"})
        proc.start()
        acked: list[str] = []
        statuses: list[int] = []
        readiness: list[int] = []

        async def watch_ready(stop_at: float) -> None:
            async with aiohttp.ClientSession() as s:
                while time.monotonic() < stop_at:
                    async with s.get(proc.url + "/ready") as r:
                        readiness.append(r.status)
                    await asyncio.sleep(0.1)

        async def restart() -> None:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(server.stop, "immediate")  # a crash: no checkpoint, WAL replay
            await asyncio.sleep(2.0)
            await asyncio.to_thread(server.start)

        stop_at = time.monotonic() + 8
        await asyncio.gather(_stream(proc.url, acked, statuses, stop_at), watch_ready(stop_at), restart())
        try:
            assert set(statuses) <= {200, 503}, sorted(set(statuses))
            assert 503 in statuses and statuses[-1] == 200, statuses[-20:]
            assert 503 in readiness and readiness[-1] == 200
            stored = [r[0] for r in rows(url, "select event_id from events")]
            assert len(stored) == len(set(stored))  # nothing twice
            assert set(acked) <= set(stored) and len(acked) > 50
        finally:
            assert proc.stop() == 0
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


async def test_four_writers_on_overlapping_devices_lose_no_update(cfg: Config) -> None:
    """Four stores (as four replicas) append events of the same 20 devices at once, for the same session.

    A lost update would show as a device with two session ids (two writers both started its first
    session); a deadlock as a failed append.
    """
    stores = [PostgresStore(str(cfg.db), SessionRules(3_600_000), pool_size=2) for _ in range(4)]
    for store in stores:
        await store.start()
    devices = [str(uuid.uuid4()) for _ in range(20)]

    async def writer(store: PostgresStore, n: int) -> None:
        for i in range(60):
            picks = [devices[(n * 7 + i * 3 + k) % 20] for k in range(5)]  # overlapping, in varied order
            sub = Submission(
                1_000 + i,
                picks[0],
                [event_row(f"{n}-{i}-{k}", network_userid=d) for k, d in enumerate(picks)],
            )
            await store.append(sub)

    try:
        await asyncio.wait_for(asyncio.gather(*(writer(s, n) for n, s in enumerate(stores))), 120)
    finally:
        for store in stores:
            await store.close()
    assert rows(cfg.db, "select count(*) from events")[0][0] == 4 * 60 * 5
    per_device = rows(cfg.db, "select network_userid, count(distinct session_id) from events group by 1")
    assert len(per_device) == 20 and all(r[1] == 1 for r in per_device), per_device
    indexes = {r[0] for r in rows(cfg.db, "select distinct session_index from events")}
    assert indexes == {1}
    assert rows(cfg.db, "select count(*) from device_state where session_index = 0")[0][0] == 0


async def test_retention_drops_whole_partitions(client: Any, cfg: Config, clock: Any) -> None:
    """A month wholly past the horizon leaves as a dropped partition (DDL: no row trigger involved)."""
    # 400 days before the server's clock, which bounds the horizon, whatever the test clock says
    old_t = time.time() - 400 * 86400
    old = time.gmtime(old_t)
    start = f"{old.tm_year:04d}-{old.tm_mon:02d}-01"
    end = f"{old.tm_year + (old.tm_mon == 12):04d}-{old.tm_mon % 12 + 1:02d}-01"
    name = f"events_{old.tm_year:04d}{old.tm_mon:02d}"
    sql = f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{start}') TO ('{end}')"
    run_sync(execute(str(cfg.db), sql))
    now = clock.t
    clock.t = old_t
    assert (await client.get("/i", params=ev(eid="old"))).status == 200
    clock.t = now
    assert (await client.get("/i", params=ev(eid="new"))).status == 200
    assert rows(cfg.db, f"select count(*) from {name}")[0][0] == 1
    st = client.app[STATE]
    removed = await st.store.lifecycle(int(now * 1000), 365, st.cfg.cookie_max_age)
    assert removed.events == 1
    assert rows(cfg.db, "select to_regclass(?)::text", (name,))[0][0] is None  # the partition is gone
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["new"]
    assert rows(cfg.db, "select count(*) from event_ids where event_id = 'old'")[0][0] == 0


def _month(ahead: int) -> str:
    """'YYYYMM' of the month `ahead` months from now, as the partitions are named."""
    t = time.gmtime()
    months = t.tm_year * 12 + t.tm_mon - 1 + ahead
    return f"{months // 12:04d}{months % 12 + 1:02d}"


async def test_a_month_whose_rows_sit_in_the_default_partition_blocks_no_start(
    client: Any, cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # A replica up for longer than the partitions made ahead (or whose clock is ahead) writes into the
    # default partition; making that month's partition then failed, at every start after.
    assert (await client.get("/i", params=ev(eid="now"))).status == 200
    later = (
        "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp, anonymous) "
        "VALUES ('later', 'pv', 'web', 't', 'c', date_trunc('month', now()) + interval '4 months 1 day', 0)"
    )
    run_sync(execute(str(cfg.db), later))
    assert rows(cfg.db, "select count(*) from events_default")[0][0] == 1
    run_sync(execute(str(cfg.db), "SELECT collector_ensure_partitions(4)"))  # what a start a month on runs
    assert rows(cfg.db, "select to_regclass(?)::text", (f"events_{_month(4)}",))[0][0] is None  # skipped
    assert rows(cfg.db, "select to_regclass(?)::text", (f"bad_rows_{_month(4)}",))[0][0] is not None
    assert rows(cfg.db, "select count(*) from events where event_id = 'later'")[0][0] == 1
    # and the collector says so: the function's WARNING reached no log (asyncpg drops a notice that
    # nothing listens for), so nobody learnt that a month stays in the default partition
    name = f"events_{_month(3)}"
    run_sync(execute(str(cfg.db), f"DROP TABLE {name}"))  # the month the lifecycle makes
    run_sync(execute(str(cfg.db), later.replace("'later'", "'third'").replace("4 months", "3 months")))
    st = client.app[STATE]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await st.store.lifecycle(int(time.time() * 1000), 0, st.cfg.cookie_max_age)
        await asyncio.sleep(0)  # the listener runs on the loop's next turn
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(name in m and "default" in m for m in said), said
    assert not any(f"bad_rows_{_month(3)}" in m for m in said), said  # a month made as usual: nothing said
    assert rows(cfg.db, "select to_regclass(?)::text", (name,))[0][0] is None


async def test_the_lifecycle_makes_the_partitions_ahead(client: Any, cfg: Config, clock: Any) -> None:
    # made at start only, they ran out under a replica up for longer than MONTHS_AHEAD
    name = f"events_{_month(3)}"
    run_sync(execute(str(cfg.db), f"DROP TABLE {name}"))  # as if this month had not been made yet
    st = client.app[STATE]
    await st.store.lifecycle(int(clock.t * 1000), 0, st.cfg.cookie_max_age)
    assert rows(cfg.db, "select to_regclass(?)::text", (name,))[0][0] == name


async def test_making_a_month_behind_an_analysts_read_holds_no_writer_up(
    make_client: Any, cfg: Config
) -> None:
    # a month's partition takes an exclusive lock on events: behind an analyst's open read the
    # lifecycle's run waited, every writer behind it, until their statement timeout (503)
    client = await make_client(cfg.replace(pg_statement_timeout=3000))
    assert (await client.get("/i", params=ev(eid="first"))).status == 200
    name = f"events_{_month(3)}"
    run_sync(execute(str(cfg.db), f"DROP TABLE {name}"))  # the month the next run makes
    st = client.app[STATE]
    reader = await asyncpg.connect(str(cfg.db))
    try:
        tr = reader.transaction(readonly=True)
        await tr.start()
        await reader.fetchval("SELECT count(*) FROM events")  # an analyst's open read (a dashboard)
        run = asyncio.create_task(st.store.lifecycle(int(time.time() * 1000), 0, st.cfg.cookie_max_age))
        await asyncio.sleep(0.05)
        during = await client.get("/i", params=ev(eid="during"))  # while the reader still reads
        await run  # it gave the month up for this run
        assert rows(cfg.db, "select to_regclass(?)::text", (name,))[0][0] is None
        await tr.rollback()
    finally:
        await reader.close()
    assert during.status == 200
    await st.store.lifecycle(int(time.time() * 1000), 0, st.cfg.cookie_max_age)  # the next run makes it
    assert rows(cfg.db, "select to_regclass(?)::text", (name,))[0][0] == name


async def test_a_start_behind_an_analysts_read_holds_no_writer_up(cfg: Config) -> None:
    # The same lock at start: a replica starting while a month ahead was missing waited behind the
    # analyst's read, and every writer of the other replicas behind it, until its statement timeout.
    first = PostgresStore(str(cfg.db), SessionRules(1_800_000))
    await first.start()  # migrates
    ahead = f"events_{_month(3)}"
    reader = await asyncpg.connect(str(cfg.db))
    try:
        run_sync(execute(str(cfg.db), f"DROP TABLE {ahead}"))
        tr = reader.transaction(readonly=True)
        await tr.start()
        await reader.fetchval("SELECT count(*) FROM events")  # an analyst's open read
        second = PostgresStore(str(cfg.db), SessionRules(1_800_000), statement_timeout_ms=120_000)
        started = asyncio.create_task(second.start())
        # a hang guard, not a timing: without the bound the start waits for the reader, here forever
        done, _ = await asyncio.wait([started], timeout=30)
        if not done:
            started.cancel()
        assert done, "the start waited behind the analyst's read"
        await started
        ok = await second.append(Submission(0, None, [event_row("during")]))
        assert ok is not None
        assert rows(cfg.db, "select to_regclass(?)::text", (ahead,))[0][0] is None  # left for the lifecycle
        await tr.rollback()
        await second.close()
    finally:
        await reader.close()
        await first.close()


async def test_a_start_without_this_months_partition_waits_for_it(cfg: Config) -> None:
    # This month's partition, though, a start waits for (up to its statement timeout): rows without it
    # would sit in the default partition, and its month could then never be made.
    first = PostgresStore(str(cfg.db), SessionRules(1_800_000))
    await first.start()
    await first.close()
    now = f"events_{_month(0)}"
    run_sync(execute(str(cfg.db), f"DROP TABLE {now}"))  # empty: nothing was written
    reader = await asyncpg.connect(str(cfg.db))
    second = PostgresStore(str(cfg.db), SessionRules(1_800_000), statement_timeout_ms=120_000)
    try:
        tr = reader.transaction(readonly=True)
        await tr.start()
        await reader.fetchval("SELECT count(*) FROM events")
        started = asyncio.create_task(second.start())
        await asyncio.sleep(0.5)  # past the bounded wait: the start now waits in full
        await tr.rollback()
        await asyncio.wait_for(started, 30)
        assert rows(cfg.db, "select to_regclass(?)::text", (now,))[0][0] == now
        assert await second.append(Submission(0, None, [event_row("first")])) is not None
        assert rows(cfg.db, "select count(*) from events_default")[0][0] == 0
    finally:
        await reader.close()
        await second.close()


async def test_two_writers_retiring_shared_ids_wait_for_each_other_and_never_deadlock(cfg: Config) -> None:
    # Two replicas rotating different devices that sent the same ids (a shared fingerprint) insert
    # them into retired_ids; in different orders each could hold the row the other waits for.
    store = PostgresStore(str(cfg.db), SessionRules(1_800_000))
    await store.start()  # migrates
    await store.close()
    values = [f"shared-tracker-id-{i:05d}" for i in range(4000)]
    conns = [await asyncpg.connect(str(cfg.db)) for _ in range(2)]

    async def retire(conn: asyncpg.Connection, order: list[str]) -> None:
        async with conn.transaction():
            await pg_io.write(conn, Writes(retired=order, retired_until="2999-12"), set())

    try:
        for _ in range(3):
            await asyncio.gather(retire(conns[0], values), retire(conns[1], values[::-1]))
    finally:
        for conn in conns:
            await conn.close()
    assert rows(cfg.db, "select count(*) from retired_ids")[0][0] == len(values)


def test_the_writer_role_removes_nothing_the_recorded_retention_keeps(
    pg_server: PgServer, roles_db: str
) -> None:
    # The writer may call collector_lifecycle, and the horizon was the caller's: passing the present
    # removed every acknowledged event and bad row, and every retired id, though retention was off.
    owner = pg_server.url(roles_db)
    for sql in (
        "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp, anonymous)"
        " VALUES ('acked', 'pv', 'web', 't', 'c', now() - interval '1 second', 0),"
        " ('old', 'pv', 'web', 't', 'c', now() - interval '40 days', 0)",
        "INSERT INTO bad_rows (received_at, reason, detail, size, anonymous)"
        " VALUES (now() - interval '1 second', 'r', 'd', 1, 0)",
        "INSERT INTO retired_ids (value, expires) VALUES ('retired-duid-123456', '9999-12')",
    ):
        assert as_role(pg_server, roles_db, "collector_owner", sql) is None
    everything = "SELECT * FROM collector_lifecycle(now(), 9223372036854775807, 'zzzz')"

    def left() -> list[int]:
        return [rows(owner, f"select count(*) from {t}")[0][0] for t in ("events", "bad_rows", "retired_ids")]

    assert as_role(pg_server, roles_db, "collector_writer", everything) is None
    assert left() == [2, 1, 1]  # retention is off (0 days recorded): nothing goes
    assert "InsufficientPrivilege" in (
        as_role(pg_server, roles_db, "collector_writer", "UPDATE lifecycle SET retention_days = 0") or ""
    )
    record = "UPDATE lifecycle SET retention_days = 30"
    assert as_role(pg_server, roles_db, "collector_owner", record) is None  # the owner records 30 days
    assert as_role(pg_server, roles_db, "collector_writer", everything) is None
    assert left() == [1, 1, 1]  # the control: what the recorded rule lets go goes
    assert [r[0] for r in rows(owner, "select event_id from events")] == ["acked"]


async def test_the_writer_role_rotates_and_renews_retired_ids(pg_server: PgServer, roles_db: str) -> None:
    # The README's setup: `pg-roles`, the owner migrates, the collectors connect as the writer. An
    # upsert (ON CONFLICT DO UPDATE) needs UPDATE on the table even when nothing conflicts: the
    # writer had only SELECT and INSERT on retired_ids, so every rotation, and every request still
    # sending a retired id whose month had moved, failed its whole commit group with 503.
    owner = pg_server.url(roles_db)
    seed = "INSERT INTO retired_ids VALUES ('duid-late-0001', '2000-01')"
    assert as_role(pg_server, roles_db, "collector_owner", seed) is None
    url = pg_server.url(roles_db, "collector_writer", PASSWORDS["WRITER"])
    proc = Collector(url, env={"COLLECTOR_COOKIE_SECRET": "s"}).start()
    statuses = []
    try:
        async with aiohttp.ClientSession() as s:
            for body in (
                batch(ev(eid="a", duid="duid-writer-0001")),
                batch(ev("ue", eid="anon", duid="duid-writer-0001", ue_pr=ANON_UE)),
                batch(ev(eid="late", duid="duid-late-0001")),
            ):
                async with s.post(proc.url + TP2, json=body) as r:
                    statuses.append(r.status)
    finally:
        assert proc.stop() == 0
    assert statuses == [200, 200, 200], statuses
    retired = dict(rows(owner, "select value, expires from retired_ids"))
    assert "duid-writer-0001" in retired and retired["duid-late-0001"] > "2000-01"  # retired, renewed
    # and nothing more than the expiry: the writer may not rewrite a retired value
    refused = as_role(pg_server, roles_db, "collector_writer", "UPDATE retired_ids SET value = 'x'")
    assert refused is not None and "InsufficientPrivilege" in refused


def test_a_function_added_after_a_superusers_migrate_is_not_publics(pg_server: PgServer) -> None:
    # Run by a superuser (the pg-roles URL), migration 0012's default privileges were that superuser's:
    # a function the owner created later was callable by every role again.
    name = pg_server.new_database()
    env = {f"COLLECTOR_PG_{k}_PASSWORD": v for k, v in PASSWORDS.items()}
    assert cli("pg-roles", "--db", pg_server.url(name), "--database", name, env=env).returncode == 0
    done = cli("migrate", "--db", pg_server.url(name))  # as postgres
    assert done.returncode == 0, done.stderr
    later = "CREATE FUNCTION later_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    assert as_role(pg_server, name, "collector_owner", later) is None
    refused = as_role(pg_server, name, "collector_reader", "SELECT later_fn()")
    assert refused is not None and "InsufficientPrivilege" in refused, refused
    assert as_role(pg_server, name, "collector_owner", "SELECT later_fn()") is None  # the control


def test_the_reader_may_select_every_view_and_no_bookkeeping(pg_server: PgServer, roles_db: str) -> None:
    for view in ("sessions", "devices", "page_views", "users"):
        assert as_role(pg_server, roles_db, "collector_reader", f"SELECT * FROM {view}") is None, view
    # the same check refuses what the reader was not granted
    refused = as_role(pg_server, roles_db, "collector_reader", "SELECT * FROM device_state")
    assert refused is not None and "InsufficientPrivilege" in refused


def test_the_reader_may_call_no_function_that_writes(pg_server: PgServer, roles_db: str) -> None:
    # PostgreSQL grants EXECUTE on a new function to PUBLIC: the analysts' role could run the
    # lifecycle's SECURITY DEFINER function with a cull cutoff of its choosing (every device state
    # gone, so an opt-out found nothing to retire) and make partitions.
    owner = pg_server.url(roles_db)
    assert (
        as_role(
            pg_server,
            roles_db,
            "collector_owner",
            "INSERT INTO device_state (device_id, session_id,"
            " session_index, last_ms) VALUES ('d-1', 's-1', 1, 1)",
        )
        is None
    )
    cull = "SELECT * FROM collector_lifecycle(NULL, 9223372036854775807, '0000-00')"
    for role in ("collector_reader",):
        for sql in (cull, "SELECT collector_ensure_partitions(24)"):
            refused = as_role(pg_server, roles_db, role, sql)
            assert refused is not None and "InsufficientPrivilege" in refused, (role, sql, refused)
    assert rows(owner, "select count(*) from device_state")[0][0] == 1
    # nor any other function of the schema, now or added by a later migration (default privileges)
    callable_by_public = rows(
        owner,
        "select p.proname from pg_proc p where p.pronamespace = 'public'::regnamespace"
        " and has_function_privilege('collector_reader', p.oid, 'EXECUTE')",
    )
    assert callable_by_public == []
    assert (
        as_role(
            pg_server,
            roles_db,
            "collector_owner",
            "CREATE FUNCTION later() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        )
        is None
    )
    assert "InsufficientPrivilege" in (
        as_role(pg_server, roles_db, "collector_reader", "SELECT later()") or ""
    )
    # the control: the writer, granted them, may call both (and the cull takes the state)
    assert as_role(pg_server, roles_db, "collector_writer", "SELECT collector_ensure_partitions(3)") is None
    assert as_role(pg_server, roles_db, "collector_writer", cull) is None
    assert rows(owner, "select count(*) from device_state")[0][0] == 0
