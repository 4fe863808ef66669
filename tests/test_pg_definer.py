"""The PostgreSQL store's SECURITY DEFINER functions and bookkeeping against its own writer role.

The collectors connect as `collector_writer`, which may call `collector_lifecycle` and
`collector_ensure_partitions` (they run with the owner's rights) and keep their bookkeeping
(retired ids, device states). Whatever that role sends, rows leave only by the recorded rules: each
test is an attack through the writer's own grants, with a control that the rule it abuses still
works. Found by an adversarial review; each failed before migration 0013.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from collector.config import Config
from collector.handlers import STATE
from tests.conftest import ev, rows
from tests.pg import PASSWORDS, PgServer, as_role, execute, run_sync

STORES = ("postgres",)
EVENT = (
    "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp, anonymous)"
    " VALUES ('{eid}', 'pv', 'web', 't', 'c', {at}, 0)"
)


def _month(seconds_ago: float) -> tuple[str, str, str]:
    """(partition name, its lower bound, its upper bound) of the UTC month `seconds_ago` back."""
    t = time.gmtime(time.time() - seconds_ago)
    start = f"{t.tm_year:04d}-{t.tm_mon:02d}-01"
    end = f"{t.tm_year + (t.tm_mon == 12):04d}-{t.tm_mon % 12 + 1:02d}-01"
    return f"events_{t.tm_year:04d}{t.tm_mon:02d}", start, end


def _old_month_with_a_row(server: PgServer, db: str) -> str:
    """A partition of a month 400 days back, holding one event: what 30 days' retention drops."""
    name, start, end = _month(400 * 86400)
    owner = "collector_owner"
    make = f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{start}') TO ('{end}')"
    assert as_role(server, db, owner, make) is None
    assert (
        as_role(server, db, owner, EVENT.format(eid="old", at=f"'{start}'::timestamptz + interval '1 day'"))
        is None
    )
    return name


async def _as_writer(server: PgServer, db: str, *sql: str) -> list[Any]:
    conn = await asyncpg.connect(server.url(db, "collector_writer", PASSWORDS["WRITER"]))
    try:
        return [await conn.fetch(s) for s in sql]
    finally:
        await conn.close()


def _shadow(parent: str, child: str) -> tuple[str, str]:
    """A temporary partitioned table of the writer's, named as one of ours, with a child named as one
    of ours whose bound is wholly in 1970: the names the functions look up, in pg_temp."""
    return (
        f"CREATE TEMP TABLE {parent} (collector_tstamp timestamptz) PARTITION BY RANGE (collector_tstamp)",
        f"CREATE TEMP TABLE {child} PARTITION OF {parent} FOR VALUES FROM ('1970-01-01') TO ('1970-01-02')",
    )


def test_the_writer_cannot_make_the_lifecycle_drop_this_months_partition(
    pg_server: PgServer, roles_db: str
) -> None:
    owner = pg_server.url(roles_db)
    assert as_role(pg_server, roles_db, "collector_owner", EVENT.format(eid="acked-now", at="now()")) is None
    old = _old_month_with_a_row(pg_server, roles_db)
    assert as_role(pg_server, roles_db, "collector_owner", "UPDATE lifecycle SET retention_days = 30") is None
    this_month, _, _ = _month(0)
    run_sync(
        _as_writer(
            pg_server,
            roles_db,
            *_shadow("events", this_month),
            "SELECT * FROM collector_lifecycle(now(), 0, '0000-00')",
        )
    )
    # the control: what the recorded rule lets go went, its partition with it
    assert rows(owner, "select to_regclass($1)", (f"public.{old}",))[0][0] is None
    assert [r[0] for r in rows(owner, "select event_id from events")] == ["acked-now"]
    assert rows(owner, "select to_regclass($1)", (f"public.{this_month}",))[0][0] is not None


def test_the_writer_cannot_make_the_lifecycle_drop_the_default_partition(
    pg_server: PgServer, roles_db: str
) -> None:
    owner = pg_server.url(roles_db)
    ahead = EVENT.format(eid="in-default", at="now() + interval '2 years'")  # past the months made ahead
    assert as_role(pg_server, roles_db, "collector_owner", ahead) is None
    assert as_role(pg_server, roles_db, "collector_owner", "UPDATE lifecycle SET retention_days = 30") is None
    assert rows(owner, "select count(*) from events_default")[0][0] == 1  # where it landed
    run_sync(
        _as_writer(
            pg_server,
            roles_db,
            "SELECT * FROM collector_lifecycle(now(), 0, '0000-00')",
            *_shadow("events", "events_default"),
            "SELECT * FROM collector_lifecycle(NULL, 0, '0000-00')",
        )
    )
    assert [r[0] for r in rows(owner, "select event_id from events")] == ["in-default"]


def test_a_writers_temporary_table_does_not_stop_a_month_being_made(
    pg_server: PgServer, roles_db: str
) -> None:
    owner = pg_server.url(roles_db)
    name, _, _ = _month(-5 * 31 * 86400)  # five months ahead: beyond those migrate made
    assert rows(owner, "select to_regclass($1)", (f"public.{name}",))[0][0] is None
    run_sync(
        _as_writer(
            pg_server, roles_db, f"CREATE TEMP TABLE {name} (x int)", "SELECT collector_ensure_partitions(6)"
        )
    )
    assert rows(owner, "select to_regclass($1)", (f"public.{name}",))[0][0] is not None


def test_the_writer_cannot_move_a_retired_ids_expiry_back(pg_server: PgServer, roles_db: str) -> None:
    owner = pg_server.url(roles_db)
    seed = "INSERT INTO retired_ids (value, expires) VALUES ('retired-duid-123456', '2100-01')"
    assert as_role(pg_server, roles_db, "collector_owner", seed) is None
    # the control: renewing (the writer's upsert moves an expiry forward) passes
    assert (
        as_role(pg_server, roles_db, "collector_writer", "UPDATE retired_ids SET expires = '2100-02'") is None
    )
    back = as_role(pg_server, roles_db, "collector_writer", "UPDATE retired_ids SET expires = '0000-01'")
    assert back is not None and "retired" in back, back
    sweep = "SELECT * FROM collector_lifecycle(NULL, 0, '9999-12')"
    assert as_role(pg_server, roles_db, "collector_writer", sweep) is None
    assert rows(owner, "select value, expires from retired_ids") == [("retired-duid-123456", "2100-02")]


def test_the_writer_cannot_delete_a_retired_devices_state(pg_server: PgServer, roles_db: str) -> None:
    owner = pg_server.url(roles_db)
    now_ms = "(extract(epoch from now()) * 1000)::bigint"
    seed = (
        "INSERT INTO device_state (device_id, session_id, session_index, last_ms, closed) VALUES"
        f" ('retired-dev', 's', 3, {now_ms}, 1), ('placeholder', 's', 0, {now_ms}, 0)"
    )
    assert as_role(pg_server, roles_db, "collector_owner", seed) is None
    assert as_role(pg_server, roles_db, "collector_writer", "DELETE FROM device_state") is None
    # the control: the writer's own delete (a placeholder it wrote) went; the retired device stays
    assert [r[0] for r in rows(owner, "select device_id from device_state")] == ["retired-dev"]


async def test_the_lifecycle_does_not_hold_the_writers_behind_an_analysts_read(
    make_client: Any, cfg: Config
) -> None:
    client = await make_client(cfg.replace(pg_statement_timeout=5000))
    name, start, end = _month(400 * 86400)
    run_sync(
        execute(
            str(cfg.db), f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{start}') TO ('{end}')"
        )
    )
    run_sync(execute(str(cfg.db), EVENT.format(eid="old", at=f"'{start}'::timestamptz + interval '1 day'")))
    assert (await client.get("/i", params=ev(eid="first"))).status == 200
    st = client.app[STATE]
    reader = await asyncpg.connect(str(cfg.db))
    try:
        read = reader.transaction(readonly=True)
        await read.start()
        await reader.fetchval("SELECT count(*) FROM events")  # an analyst's open read (a dashboard)
        run = asyncio.create_task(st.store.lifecycle(int(time.time() * 1000), 365, st.cfg.cookie_max_age))
        await asyncio.sleep(0.3)
        during = await client.get("/i", params=ev(eid="during"))
        # The run ends while the read is still open: it gave the month's DROP up after the partitions'
        # lock wait (pg_schema.PARTITION_LOCK_WAIT_MS). Waiting for the read, it held every writer up
        # behind its lock request until the statement timeout cancelled it (QueryCanceledError here).
        await run
        await read.rollback()
    finally:
        await reader.close()
    assert during.status == 200
    kept = {r[0] for r in rows(cfg.db, "select event_id from events")}
    assert kept == {"first", "during"}  # the old month's rows went all the same, row by row
    # and the next run, with nobody reading, drops the emptied month
    await st.store.lifecycle(int(time.time() * 1000), 365, st.cfg.cookie_max_age)
    assert rows(cfg.db, "select to_regclass($1)", (f"public.{name}",))[0][0] is None
