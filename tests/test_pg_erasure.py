"""PostgreSQL's erasure in two phases (storage/lifecycle.py pg_erase), what commits between them.

Each test runs pg_erase on a connection whose statements are observed; `meanwhile` runs right
before (or after) the statement named, i.e. between phase 1 (no table locks) and phase 2 (locks):
writers commit there in production, since phase 1 holds no lock they wait on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from collector.config import Config
from storage import lifecycle as lifecycle_rules
from tests.conftest import TP2, batch, ev, only, rows
from tests.test_sessions import ANON_UE, Browser

STORES = ("postgres",)
REFUSED: dict[str, Any] = {"se_va": {"x": 1}}  # a param that is not a string: the event becomes a bad row


class _Hook:
    """The erasure's connection, running `meanwhile` once, before the first statement starting with
    `before` (or after the first starting with `after`)."""

    def __init__(
        self, conn: Any, meanwhile: Callable[[], Any], before: str | None = None, after: str | None = None
    ) -> None:
        self._conn, self._before, self._after = conn, before, after
        self._meanwhile: Callable[[], Any] | None = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def _run(self, sql: str, prefix: str | None) -> None:
        if prefix is not None and sql.startswith(prefix) and self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            await meanwhile()

    async def _call(self, name: str, sql: str, *args: Any) -> Any:
        await self._run(sql, self._before)
        out = await getattr(self._conn, name)(sql, *args)
        await self._run(sql, self._after)
        return out

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._call("fetch", sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call("fetchval", sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._call("execute", sql, *args)


async def _erase(cfg: Config, user_id: str | None, device_id: str | None, hook: Any) -> Any:
    conn = await asyncpg.connect(str(cfg.db))
    try:
        return await lifecycle_rules.pg_erase(hook(conn), int(time.time() * 1000), user_id, device_id)
    finally:
        await conn.close()


@only("postgres")
async def test_a_device_first_tied_between_the_phases_loses_its_older_bad_rows_too(
    client: Any, cfg: Config
) -> None:
    # phase 2 finds the laptop (a login committed between the phases) but scans only the bad rows
    # after phase 1's max(id): the laptop's bad rows from before stay, naming the device
    phone, laptop, other = Browser(client), Browser(client), Browser(client)
    await phone.send(ev(eid="p-in", uid="erin-5"))
    await laptop.send(ev(eid="l-pre"))  # not hers yet
    assert (
        await client.post(TP2, json=batch({**ev(eid="l-bad", se_la=f"device {laptop.device}"), **REFUSED}))
    ).status == 400
    await other.send(ev(eid="o-1"))  # flushes the bad row
    assert sum(laptop.device in r[0] for r in rows(cfg.db, "select payload from bad_rows")) == 1

    async def meanwhile() -> None:  # she logs in on the laptop, acknowledged before the erasure ends
        await laptop.send(ev(eid="l-in", uid="erin-5"))

    erased = await _erase(
        cfg, "erin-5", None, lambda c: _Hook(c, meanwhile, before="LOCK TABLE device_state")
    )
    assert {r[0] for r in rows(cfg.db, "select event_id from events")} == {"o-1"}  # the laptop's went
    assert erased.devices == 2
    left = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert not any(laptop.device in p for p in left), left  # as on SQLite (ERASE_READS re-read)


@only("postgres")
async def test_a_bad_row_committed_out_of_id_order_is_erased(client: Any, cfg: Config) -> None:
    # bad_rows ids come from a sequence: a replica's transaction holding id N may commit after another
    # replica's N+1. Phase 1 reads max(id) = N+1 and sees no N (uncommitted); phase 2 looks only above
    # N+1. The bad row naming the person stays.
    await Browser(client).send(ev(eid="p-in", uid="erin-5"))
    insert = (
        "INSERT INTO bad_rows (received_at, reason, detail, payload, size, anonymous) "
        "VALUES (now(), 'bad_json', 'd', $1, 10, 0)"
    )
    slow, fast = await asyncpg.connect(str(cfg.db)), await asyncpg.connect(str(cfg.db))
    try:
        tr = slow.transaction()
        await tr.start()
        await slow.execute(insert, '{"e":"pv","uid":"erin-5"}')  # id N, its commit in flight
        await fast.execute(insert, '{"e":"pv","uid":"someone"}')  # id N+1, committed first

        async def meanwhile() -> None:
            await tr.commit()  # committed while phase 1 ran (decoding payloads takes seconds)

        await _erase(cfg, "erin-5", None, lambda c: _Hook(c, meanwhile, before="LOCK TABLE device_state"))
    finally:
        await slow.close()
        await fast.close()
    left = [r[0] for r in rows(cfg.db, "select payload from bad_rows")]
    assert not any("erin-5" in p for p in left), left


@only("postgres")
async def test_a_device_found_in_phase_2_that_retired_takes_the_persons_ids_from_the_retired(
    client: Any, cfg: Config
) -> None:
    # phase 1's "still retired" set excludes only phase 1's devices: a device she logged in on and
    # that rotated between the phases is both erased (phase 2) and counted as a staying retired device
    mac = "a4:83:e7:1b:2c:9f"
    phone, laptop = Browser(client), Browser(client)
    await phone.send(ev(eid="p-in", uid="erin-5"))
    await laptop.send(ev(eid="l-pre"))

    async def meanwhile() -> None:
        await laptop.send(ev(eid="l-in", uid="erin-5", mac=mac))
        await laptop.send(ev("ue", eid="l-rot", ue_pr=ANON_UE))  # rotate: mac retired

    await _erase(cfg, "erin-5", None, lambda c: _Hook(c, meanwhile, after="DELETE FROM bad_rows"))
    assert {r[0] for r in rows(cfg.db, "select event_id from events")} <= {"l-rot"}
    assert mac not in {r[0] for r in rows(cfg.db, "select value from retired_ids")}


@only("postgres")
async def test_a_retention_another_owner_recorded_meanwhile_is_not_logged_as_a_change(
    client: Any, cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = await asyncpg.connect(str(cfg.db)), await asyncpg.connect(str(cfg.db))
    try:
        tr = first.transaction()
        await tr.start()
        await first.execute("UPDATE lifecycle SET retention_days = 30 WHERE id = 1")  # another owner
        pid = second.get_server_pid()
        caplog.set_level(logging.WARNING, "collector.lifecycle")
        recording = asyncio.create_task(lifecycle_rules.record_retention(second, 30))
        while not await first.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", pid
        ):  # it waits for the row
            await asyncio.sleep(0.01)
        await tr.commit()
        await recording
    finally:
        await first.close()
        await second.close()
    # the recorded period was already 30 when this collector's UPDATE ran: no change to log
    assert [r.getMessage() for r in caplog.records if "retention" in r.getMessage()] == []
