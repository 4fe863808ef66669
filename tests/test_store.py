"""The SQLite store itself: append-only, migrations, WAL, durability level, read-only queries."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import storage.migrate as migrate_module
from collector.config import Config, Secret
from collector.identity import sign
from storage.migrate import MIGRATIONS, migrate, statements
from storage.sqlite import connect
from tests.conftest import TP2, batch, ev, rows
from tests.test_sessions import ANON_UE, Browser

ROOT = Path(__file__).resolve().parent.parent


async def _seed(client: Any) -> None:
    resp = await client.post(TP2, json=batch(ev(eid="s-1"), ev(eid="s-2")))
    assert resp.status == 200
    assert (await client.post(TP2, data=b"{", headers={"Content-Type": "application/json"})).status == 400
    # the bad row is queued without waiting; a committed request behind it means it is committed too
    assert (await client.get("/i", params=ev(eid="s-3"))).status == 200


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET user_id = 'x'",
        "DELETE FROM events",
        "DELETE FROM events WHERE event_id = 's-1'",
        "UPDATE bad_rows SET payload = NULL",
        "DELETE FROM bad_rows",
    ],
)
async def test_events_and_bad_rows_are_append_only(client: Any, cfg: Config, sql: str) -> None:
    await _seed(client)
    conn = sqlite3.connect(cfg.db, isolation_level=None)  # a normal, writable connection
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(sql)
    conn.close()
    assert rows(cfg.db, "select count(*) from events")[0][0] == 3
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 1


async def test_wal_and_synchronous_level(cfg: Config, tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db", "FULL")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert connect(tmp_path / "y.db", "NORMAL").execute("PRAGMA synchronous").fetchone()[0] == 1


def test_migrations_are_recorded_ordered_and_applied_once(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.db")
    files = sorted(p.stem for p in MIGRATIONS.glob("*.sql"))
    assert migrate(conn) == files
    assert migrate(conn) == []
    assert [r[0] for r in conn.execute("select name from schema_migrations order by version")] == files


def test_statement_splitter_keeps_trigger_bodies() -> None:
    sql = (
        "CREATE TABLE t (a);\n-- c\n"
        "CREATE TRIGGER x BEFORE DELETE ON t\nBEGIN SELECT RAISE(ABORT, 'no'); END;\n"
    )
    assert len(statements(sql)) == 2


def _query(db: Path, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "query", sql, "--db", str(db), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_query_cli_reads_and_cannot_write(client: Any, cfg: Config) -> None:
    await _seed(client)
    ok = _query(cfg.db, "select event, count(*) as n from events group by 1")
    assert ok.returncode == 0 and ok.stdout.splitlines()[2].split() == ["pv", "3"]
    js = _query(cfg.db, "select event_id from events order by 1", "--format", "json")
    assert js.stdout.strip() == '[{"event_id":"s-1"},{"event_id":"s-2"},{"event_id":"s-3"}]'
    csv = _query(cfg.db, "select event_id from events order by 1", "--format", "csv")
    assert csv.stdout.splitlines() == ["event_id", "s-1", "s-2", "s-3"]
    for sql in [
        "insert into bad_rows (received_at, reason, detail, size, anonymous) values ('', '', '', 0, 0)",
        "create table sneaky (a)",
        "drop view sessions",
        "PRAGMA journal_mode = DELETE",
    ]:
        res = _query(cfg.db, sql)
        assert res.returncode == 1 and "error" in res.stderr, sql
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 1
    assert rows(cfg.db, "select count(*) from sqlite_master where name = 'sneaky'")[0][0] == 0


async def test_unstorable_data_fails_only_its_own_request(tmp_path: Path) -> None:
    import asyncio

    from collector.events import base_row
    from storage.base import COL, RejectedData, Submission
    from storage.sessions import SessionRules
    from storage.sqlite import SqliteStore

    db = tmp_path / "poison.db"
    store = SqliteStore(db, SessionRules(1_800_000), busy_timeout=20000)
    await store.start()

    def row(eid: str, title: str) -> list[object]:
        r = base_row("2026-01-01 00:00:00.000", None, None, False)
        r[COL["event_id"]], r[COL["event"]], r[COL["platform"]], r[COL["v_tracker"]] = eid, "pv", "web", "t"
        r[COL["page_title"]] = title
        return r

    attempts: list[list[str]] = []  # the event ids of each transaction the writer tries
    real = store._group

    def observed(conn: Any, subs: Any) -> Any:
        attempts.append([s.rows[0][COL["event_id"]] for s in subs])
        return real(conn, subs)

    store._group = observed  # type: ignore[method-assign]
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's first group waits for this lock...
    first = asyncio.ensure_future(store.append(Submission(0, None, [row("first", "ok")])))
    await asyncio.sleep(0.2)
    # ...while these two queue behind it, so the next group holds both
    good = asyncio.ensure_future(store.append(Submission(0, None, [row("good", "fine")])))
    poison = asyncio.ensure_future(store.append(Submission(0, None, [row("poison", "\ud800")])))
    await asyncio.sleep(0.1)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert (await first).stored == 1
    assert (await good).stored == 1
    with pytest.raises(RejectedData):
        await poison
    await store.close()
    # the mixed group failed whole; a probe found the poison, and the rest committed together again
    assert attempts == [["first"], ["good", "poison"], ["good"]]
    assert sorted(r[0] for r in rows(db, "select event_id from events")) == ["first", "good"]


def test_processes_starting_together_on_a_new_file_all_open_it(tmp_path: Path) -> None:
    """Replicas starting together on a new volume: every one opens the file (WAL) and migrates once.

    Two connections escalating their locks at once get SQLITE_BUSY without the busy handler (SQLite's
    deadlock avoidance); that interleaving cannot be forced from Python, so this is a stress test: on
    the code before the retry it failed the load-balancer suite, and about 1 process start in 90.
    """
    import time

    code = (
        "import sys, time; from pathlib import Path; from storage.sqlite import connect; "
        "from storage.migrate import migrate; time.sleep(max(0, float(sys.argv[2]) - time.time())); "
        "migrate(connect(Path(sys.argv[1])))"
    )
    for attempt in range(3):
        db = tmp_path / f"new-{attempt}.db"
        start = time.time() + 0.8  # every process sleeps until the same instant, then opens the file
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(db), str(start)], cwd=ROOT, stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [err for p, err in zip(procs, errors, strict=True) if p.returncode != 0] == []
        assert rows(db, "select count(*) from schema_migrations")[0][0] == len(list(MIGRATIONS.glob("*.sql")))


async def test_store_query_reads_and_cannot_write(client: Any, cfg: Config) -> None:
    from collector.handlers import STATE

    await _seed(client)
    store = client.app[STATE].store
    assert await store.query("select event_id from events order by 1") == [("s-1",), ("s-2",), ("s-3",)]
    assert await store.query("select count(*) from bad_rows where reason = ?", ("bad_json",)) == [(1,)]
    for sql in ("delete from bad_rows", "create table sneaky (a)"):
        with pytest.raises(sqlite3.OperationalError):
            await store.query(sql)
    assert rows(cfg.db, "select count(*) from sqlite_master where name = 'sneaky'")[0][0] == 0


async def test_writers_on_one_host_take_turns_on_the_lock_file(client: Any, cfg: Config) -> None:
    """Another process holding the writers' flock (as a second --workers process does while it
    commits) holds this writer's commit back, and its release lets it through at once: the turn is
    handed over by the kernel, not found by SQLite's sleeping busy handler."""
    import asyncio
    import fcntl
    import os

    from storage.sqlite import turns_path

    assert (await client.post(TP2, json=batch(ev(eid="t-0")))).status == 200  # the store is open
    lock = turns_path(Path(cfg.db))
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        pending = asyncio.ensure_future(client.post(TP2, json=batch(ev(eid="t-1"))))
        await asyncio.sleep(1.0)
        assert not pending.done()  # waiting for its turn
        assert rows(cfg.db, "select count(*) from events where event_id = 't-1'")[0][0] == 0
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits: its lock goes with it
        holder.wait(10)
        resp = await asyncio.wait_for(pending, 10)
        assert resp.status == 200
        assert rows(cfg.db, "select count(*) from events where event_id = 't-1'")[0][0] == 1
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    fd = os.open(lock, os.O_RDWR)  # and the writer let go of it after its commit
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


async def test_a_device_remembered_before_brief_ids_still_retires_what_it_remembered(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store written before migration 0013 (brief_ids): its devices' tracker_ids hold every kind of id
    # together. Opened by this version, such a device rotates and must retire them all.
    older = tmp_path / "older"
    older.mkdir()
    for path in MIGRATIONS.glob("*.sql"):
        if int(path.name.split("_")[0]) < 13:
            (older / path.name).write_text(path.read_text())
    db = tmp_path / "events.db"
    conn = connect(db)
    monkeypatch.setattr(migrate_module, "MIGRATIONS", older)
    migrate(conn)
    monkeypatch.undo()
    device, kept = "dddddddd-0000-4000-8000-00000000000d", ["old-page-view-id-1", "old-tab-id-12345"]
    conn.execute(
        "INSERT INTO device_state (device_id, session_id, session_index, last_ms, tracker_duid, tracker_ids)"
        " VALUES (?, 'sess-1', 1, 0, 'old-duid-123456', ?)",
        (device, f'["{kept[0]}", "{kept[1]}"]'),
    )
    conn.close()
    assert "brief_ids" not in {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(device_state)")}
    b = Browser(await make_client(Config(db=db, cookie_secret=(Secret("test-secret"),))))
    b.cookie = sign(device, b"test-secret")
    await b.send(ev("ue", eid="rot", ue_pr=ANON_UE))
    retired = {r[0] for r in rows(db, "select value from retired_ids")}
    assert {"old-duid-123456", *kept} <= retired
    assert b.device != device
