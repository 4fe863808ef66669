"""The data lifecycle: retention, culling and erasure. One rule set (the pure functions here), one
statement set per backend (SQLite's below; PostgreSQL's in its migrations, as functions).

* Retention: events and bad rows older than the horizon (now minus COLLECTOR_RETENTION_DAYS) leave,
  oldest first. The horizon is recorded in the store and only moves forward; the database refuses a
  DELETE of any row newer than it, unless inside a recorded erasure.
* Culling: a device not seen for longer than its cookie's lifetime plus a margin can never come back
  (the cookie is refreshed on every answer, so it has expired): its state goes. A retired tracker id
  goes once no tracker can still send it (COLLECTOR_RETIRED_DAYS, the trackers' own cookie lifetime).
* Erasure: a person's (user id) or a device's events go, with everything derived from them, inside
  one transaction that records in the ledger when, which kind of selector and how many rows, never
  the selector itself.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from collector import identifiers
from collector.events import format_ms  # the stores' text form of a time
from storage.sessions import STATE_COLUMNS, remembered, state_of

CULL_MARGIN_S = 86400  # a day past the cookie's lifetime: clocks differ, a request may be in flight
BATCH = 5000  # rows per DELETE transaction: the collector's writer never waits long for the lock
VACUUM_PAGES = 1000  # pages moved and freed a turn: 4 MiB of WAL, like a checkpoint's worth
CLOCK_MARGIN_MS = 86_400_000  # the writers' clocks agree within a day (retention's scan stops there)
DAY_MS = 86_400_000
log = logging.getLogger("collector.lifecycle")


def horizon_ms(now_ms: int, retention_days: int) -> int | None:
    """The retention horizon: rows older than this leave; None when retention is off (0 days)."""
    return now_ms - retention_days * DAY_MS if retention_days > 0 else None


def cull_before_ms(now_ms: int, cookie_max_age_s: int) -> int:
    """Devices last seen before this cannot come back: their cookie has expired."""
    return now_ms - (cookie_max_age_s + CULL_MARGIN_S) * 1000


def month_after(now_ms: int, days: int) -> str:
    """'YYYY-MM' of the month that holds now + days: a retired id's expiry, at a month's grain."""
    return time.strftime("%Y-%m", time.gmtime(now_ms // 1000 + days * 86400))


def month_of(now_ms: int) -> str:
    """'YYYY-MM' of now."""
    return time.strftime("%Y-%m", time.gmtime(now_ms // 1000))


@dataclass
class Removed:
    """What one lifecycle run removed."""

    events: int = 0
    bad_rows: int = 0
    devices: int = 0
    retired: int = 0


Turn = Callable[[], AbstractContextManager[object]]  # the writers' turn on this host (storage.sqlite)


def _write(conn: sqlite3.Connection, turn: Turn, sql: str, params: Iterable[Sequence[Any]]) -> int:
    """One short IMMEDIATE transaction in the writers' turn: the collector's writer, waiting on the
    turn's flock, is woken the moment it ends (on SQLite's own lock it would sleep in steps)."""
    with turn():
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = conn.executemany(sql, params).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return removed


def _delete_before(
    conn: sqlite3.Connection, turn: Turn, table: str, column: str, before: str, after: str, ahead: str
) -> int:
    """Delete a table's rows stamped before `before`, BATCH at a time, holding the lock only to delete.

    Finding them is a read beside the writer (WAL), and it stops at the first row stamped `after` (a
    day past the horizon): rows are appended in arrival order, stamped by the writers' clocks, which
    agree within that margin, so no row older than the horizon follows it. Scanning for `column <
    before` to the end instead read the whole table inside the write lock at every run (765 ms on 2
    million events, the writer waiting). A row stamped later than `ahead` (a day past now) is no
    place to stop: a clock set years ahead for one request would otherwise halt retention behind it
    until the present caught up. Each DELETE names the rowid range of one batch and checks the stamp
    again, so rows inside the range that are not past the horizon stay.
    """
    (end,) = conn.execute(
        f"SELECT coalesce((SELECT rowid FROM {table} WHERE {column} >= ? AND {column} <= ?"
        f" ORDER BY rowid LIMIT 1), (SELECT max(rowid) + 1 FROM {table}), 0)",
        (after, ahead),
    ).fetchone()
    total, last = 0, -1
    while True:
        first, last_found, n = conn.execute(
            f"SELECT min(rowid), max(rowid), count(*) FROM (SELECT rowid FROM {table}"
            f" WHERE rowid > ? AND rowid < ? AND {column} < ? ORDER BY rowid LIMIT {BATCH})",
            (last, end, before),
        ).fetchone()
        if n == 0:
            return total
        sql = f"DELETE FROM {table} WHERE rowid BETWEEN ? AND ? AND {column} < ?"
        total += _write(conn, turn, sql, [(first, last_found, before)])
        last = last_found


def _cull(
    conn: sqlite3.Connection, turn: Turn, table: str, key: str, where: str, params: tuple[object, ...]
) -> int:
    """Delete the rows `where` holds for, found BATCH at a time in key order by a read beside the
    writer (never all of them in memory at once); each DELETE checks `where` again, so a device seen
    since the read stays."""
    find = f"SELECT {key} FROM {table} WHERE {key} > ? AND {where} ORDER BY {key} LIMIT {BATCH}"
    sql = f"DELETE FROM {table} WHERE {key} = ? AND {where}"
    total, last = 0, ""
    while keys := [k for (k,) in conn.execute(find, (last, *params))]:
        total += _write(conn, turn, sql, [(k, *params) for k in keys])
        last = keys[-1]
    return total


def sqlite_run(
    conn: sqlite3.Connection,
    now_ms: int,
    retention_days: int,
    cookie_max_age_s: int,
    turn: Turn = nullcontext,
) -> Removed:
    """One lifecycle run on SQLite: advance the horizon and remove what is past it, cull, reclaim."""
    out = Removed()
    horizon = horizon_ms(now_ms, retention_days)
    if horizon is not None:
        _write(
            conn, turn, "UPDATE lifecycle SET horizon = max(horizon, ?) WHERE id = 1", [(format_ms(horizon),)]
        )
        (before,) = conn.execute("SELECT horizon FROM lifecycle").fetchone()
        after = format_ms(
            int(datetime.fromisoformat(before).replace(tzinfo=UTC).timestamp() * 1000) + CLOCK_MARGIN_MS
        )
        ahead = format_ms(now_ms + CLOCK_MARGIN_MS)
        out.events = _delete_before(conn, turn, "events", "collector_tstamp", before, after, ahead)
        out.bad_rows = _delete_before(conn, turn, "bad_rows", "received_at", before, after, ahead)
    # A retired (closed) device's state stays while its events may (until the horizon passes it; for
    # good when retention is off): its signed id never expires, and once its state went, a cookie
    # replayed (a server-side tracker forwarding it as `nuid`) was a live device again, its new events
    # joined to its history. Migration 0015's trigger keeps it from any other DELETE too (an older
    # replica's); this one does not hand it the rows to skip.
    (recorded,) = conn.execute("SELECT horizon FROM lifecycle").fetchone()
    gone = datetime.fromisoformat(recorded).replace(tzinfo=UTC).timestamp() * 1000
    out.devices = _cull(
        conn,
        turn,
        "device_state",
        "device_id",
        "last_ms < ? AND (closed = 0 OR last_ms < ?)",
        (cull_before_ms(now_ms, cookie_max_age_s), int(gone)),
    )
    out.retired = _cull(conn, turn, "retired_ids", "value", "expires < ?", (month_of(now_ms),))
    reclaim(conn, turn)
    return out


def reclaim(conn: sqlite3.Connection, turn: Turn = nullcontext) -> None:
    """Give the pages deletes freed back to the file system (new files use incremental auto-vacuum),
    VACUUM_PAGES a turn.

    Through executescript, which steps the pragma to its end: conn.execute steps a statement once,
    and incremental_vacuum frees one page a step (so each run freed one page, and the file kept
    every page retention had emptied).
    """
    assert not conn.in_transaction  # executescript would commit it first
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # an older file reuses its free pages
        return
    free = None
    while True:
        with turn():
            (left,) = conn.execute("PRAGMA freelist_count").fetchone()
            if left in (0, free):  # done, or a file whose free pages cannot go (none moved)
                return
            conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
        free = left


@dataclass
class Erased:
    """What one erasure removed (the ledger records these counts, never the selector)."""

    events: int
    bad_rows: int
    devices: int


def _erased_ids(user_id: str | None, devices: Iterable[str | None]) -> set[str]:
    """The ids whose mention takes a bad row with the erasure: the person's and their devices'."""
    return {v for v in (user_id, *devices) if v}


# The last row of each table when an erasure read it: its rowid and what identifies that row, since a
# row is never changed.
_TOPS = {
    "events": "SELECT rowid, event_id, collector_tstamp FROM events",
    "bad_rows": "SELECT id, received_at, reason, size FROM bad_rows",
}
ERASE_READS = 3  # reads beside the writer before the erasure scans inside the turn instead
IN_CHUNK = 500  # rowids a DELETE names
TRUNCATE_WAIT_MS, TRUNCATE_TRIES = 100, 50  # the erasure's WAL truncation, in turns (10 s in all)
READ_ROWS = 50_000  # rowids an erasure's read statement scans (some 15 ms on this machine)
READ_PAYLOADS = 1_000  # bad rows a statement fetches whole: at most 64 MiB of payloads (not 3.2 GiB)


@dataclass
class _Found:
    """What an erasure's read found: the devices, and the rowids of the rows to go, as of the last
    row of each table (`tops`); rows after those are looked at again inside the turn."""

    devices: set[str]
    events: list[int]
    bad_rows: list[int]
    tops: dict[str, tuple[Any, ...] | None]
    ids: set[str]  # the tracker ids the events found carry (identifiers.row_tracker_ids)
    still: set[str]  # what the retired devices that stay remember: retired still (_still_retired)


def _events_of(user_id: str | None, devices: set[str]) -> tuple[str, list[str]]:
    """The erased events: the devices' and the person's."""
    where = f"network_userid IN ({','.join('?' * len(devices))})" if devices else "0"
    params = [*devices]
    if user_id is not None:
        where += " OR user_id = ?"
        params.append(user_id)
    return where, params


def _bad_rows_holding(rows: Iterable[tuple[int, str]], user_id: str | None, devices: set[str]) -> list[int]:
    """The erased bad rows among (id, payload): a refused event's payload, or a refused body, that
    holds the person's or a device's id in any spelling the collector reads (identifiers.payload_holds:
    JSON escapes, `co` inside a string, base64 `cx`, a percent-encoded query). SQL cannot decode those,
    so the payloads are read here; bad rows are few beside the events."""
    ids = _erased_ids(user_id, devices)
    return [i for i, payload in rows if identifiers.payload_holds(payload, ids, devices)] if ids else []


def _scan(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    where: str,
    params: list[str],
    top: tuple[Any, ...] | None,
) -> Iterator[Any]:
    """`column` of the table's rows up to the `top` row for which `where` holds, READ_ROWS rowids a
    statement: outside a transaction each is a read of its own, short, so the checkpointer can start
    the WAL over between them (one read of the whole table held the WAL's start for seconds)."""
    for (value,) in _scan_rows(conn, table, column, where, params, top):
        yield value


def _scan_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: str,
    where: str,
    params: list[str],
    top: tuple[Any, ...] | None,
    step: int = READ_ROWS,
) -> Iterator[tuple[Any, ...]]:
    """_scan's rows, for several columns, `step` rowids a statement."""
    if top is None:
        return
    (low,) = conn.execute(f"SELECT min(rowid) FROM {table}").fetchone()
    sql = f"SELECT {columns} FROM {table} WHERE rowid >= ? AND rowid < ? AND ({where})"
    for start in range(low if low is not None else top[0] + 1, top[0] + 1, step):
        yield from conn.execute(sql, [start, min(start + step, top[0] + 1), *params]).fetchall()


def _find(conn: sqlite3.Connection, user_id: str | None, devices: set[str]) -> _Found:
    """Find what an erasure removes, up to each table's last row now (rows are never changed, and a
    later row has a larger rowid: see _unmoved)."""
    tops = {t: conn.execute(f"{sql} ORDER BY rowid DESC LIMIT 1").fetchone() for t, sql in _TOPS.items()}
    last = {k: tuple(v) if v else None for k, v in tops.items()}
    devices = set(devices)
    if user_id is not None:
        # the devices they were identified on: by their events, and by the device state that still
        # names them once retention has taken those events
        devices.update(_scan(conn, "events", "network_userid", "user_id = ?", [user_id], last["events"]))
        devices.update(
            d for (d,) in conn.execute("SELECT device_id FROM device_state WHERE user_id = ?", (user_id,))
        )
        devices.discard(None)
    where, params = _events_of(user_id, devices)
    events: list[int] = []
    ids: set[str] = set()
    for rowid, *values in _scan_rows(conn, "events", _ID_COLUMNS, where, params, last["events"]):
        events.append(rowid)
        ids |= identifiers.row_tracker_ids(values)
    payloads = _scan_rows(
        conn, "bad_rows", "id, payload", "payload IS NOT NULL", [], last["bad_rows"], READ_PAYLOADS
    )
    bad = _bad_rows_holding(payloads, user_id, devices)
    return _Found(devices, events, bad, last, ids, _still_retired(conn, devices))


def _still_retired(conn: sqlite3.Connection, devices: set[str]) -> set[str]:
    """What the retired (closed) devices that stay remember: retired by their own rotation, so retired
    still, whatever the erased devices sent too (a shared fingerprint). Read beside the writer: a
    device that retires one of them between this read and the turn is not seen."""
    kept: set[str] = set()
    for row in conn.execute(f"SELECT {_STATE_COLUMNS} FROM device_state WHERE closed = 1"):
        if row[0] not in devices:
            kept.update(remembered(state_of(row)[1]))
    return kept


_ID_COLUMNS = ", ".join(("rowid", *identifiers.ID_COLUMNS))
_STATE_COLUMNS = ", ".join(STATE_COLUMNS)


def _retired_of_erased(conn: sqlite3.Connection, found: _Found, where: str, params: list[str]) -> None:
    """Take out of the retired ids every tracker id of the erased events and devices: the events found,
    those appended since the read, and what the devices' states remember (retire retired those). A
    retired id is a value the person's device sent (a MAC, an IDFA, the duid), kept so that it is never
    stored again after a rotation; once the events that sent it are gone, it is theirs alone."""
    ids = set(found.ids)
    since = f"SELECT {_ID_COLUMNS} FROM events WHERE rowid > ? AND ({where})"
    for _, *values in conn.execute(since, [_since(found, "events"), *params]):
        ids |= identifiers.row_tracker_ids(values)
    devices = sorted(found.devices)
    for i in range(0, len(devices), IN_CHUNK):
        part = devices[i : i + IN_CHUNK]
        sql = f"SELECT {_STATE_COLUMNS} FROM device_state WHERE device_id IN ({','.join('?' * len(part))})"
        for row in conn.execute(sql, part):
            ids.update(remembered(state_of(row)[1]))
    values = sorted(ids - found.still)
    for i in range(0, len(values), IN_CHUNK):
        part = values[i : i + IN_CHUNK]
        conn.execute(f"DELETE FROM retired_ids WHERE value IN ({','.join('?' * len(part))})", part)


def _unmoved(conn: sqlite3.Connection, found: _Found) -> bool:
    """Whether each table's last row at the read is still there: then every row since has a larger
    rowid. SQLite gives a new row the largest rowid plus one, so a rowid at or below the read's last
    row is reused only once the rows above it have gone (another erasure's, say); the read's rowids
    then no longer say which rows it saw, and the erasure finds them again inside the turn."""
    for table, top in found.tops.items():
        if top is not None and conn.execute(f"{_TOPS[table]} WHERE rowid = ?", (top[0],)).fetchone() != top:
            return False
    return True


def _since(found: _Found, table: str) -> int:
    top = found.tops[table]
    return int(top[0]) if top is not None else 0


def _delete(
    conn: sqlite3.Connection,
    table: str,
    rowids: list[int],
    since: int | None = None,
    where: str = "1",
    params: Iterable[str] = (),
) -> int:
    """Delete the rows found (each checked again against `where`) and, with `since`, the matching rows
    appended after the read."""
    params = list(params)
    n = 0
    for i in range(0, len(rowids), IN_CHUNK):
        part = rowids[i : i + IN_CHUNK]
        sql = f"DELETE FROM {table} WHERE rowid IN ({','.join('?' * len(part))}) AND ({where})"
        n += conn.execute(sql, [*part, *params]).rowcount
    if since is None:
        return n
    return n + conn.execute(f"DELETE FROM {table} WHERE rowid > ? AND ({where})", [since, *params]).rowcount


def sqlite_erase(
    conn: sqlite3.Connection,
    now_ms: int,
    user_id: str | None,
    device_id: str | None,
    turn: Turn = nullcontext,
) -> Erased:
    """Erase a person (their events, and every event of each device they were identified on, so the
    stitched sessions before their login too) or one device, in one recorded transaction.

    The rows are found by reads beside the writer (no index on the device or user id: each would
    cost every event a random-order index write, so finding them scans the tables: 0.6 s for one
    device on 2 million events, all of it inside the write lock as first built, every commit waiting).
    Inside the writers' turn the transaction deletes what the reads found, checking each row again,
    and looks only at the rows appended since (2.3 ms in the turn for that device). A device first
    tied to the person by one of those rows has older rows the reads did not look for: the erasure
    reads again with it, and after ERASE_READS reads scans inside the turn.
    """
    selector = "user_id" if user_id is not None else "device_id"
    conn.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left holding the rows
    known = {device_id} if device_id is not None else set()
    for attempt in range(ERASE_READS):
        found = _find(conn, user_id, known)
        with turn():  # the writers' turn: the collector's writer waits on a flock, not in sleeps
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not _unmoved(conn, found):
                    found = _find(conn, user_id, found.devices)
                elif user_id is not None:
                    # a device the person was identified on since the read: a device's state names a user
                    # only from a stored event of theirs (storage.group), so these rows are all there is
                    late = {
                        d
                        for (d,) in conn.execute(
                            "SELECT network_userid FROM events WHERE rowid > ? AND user_id = ?",
                            (_since(found, "events"), user_id),
                        )
                        if d is not None
                    }
                    if not late <= found.devices:
                        if attempt + 1 < ERASE_READS:
                            conn.execute("ROLLBACK")
                            known = found.devices | late
                            continue
                        found = _find(conn, user_id, found.devices | late)
                erased = _erase_found(conn, now_ms, selector, user_id, found)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        break
    reclaim(conn, turn)
    if not _truncate_wal(conn, turn):
        log.warning(
            "erasure: readers kept the WAL from being truncated; it holds the erased pages until "
            "it is overwritten (run `collector erase` again with the same selector to truncate it)"
        )
    return erased


def _truncate_wal(conn: sqlite3.Connection, turn: Turn) -> bool:
    """Leave the erased pages in no frame of the WAL: copied into the file beside the writer, then the
    rest and the truncation inside the turn. A TRUNCATE checkpoint waits for every reader of an older
    snapshot and holds off every writer meanwhile (outside the turn the collector's writer would wait
    in SQLite's busy handler, which sleeps): so it waits TRUNCATE_WAIT_MS a turn, between turns in
    which the writer goes on, TRUNCATE_TRIES times."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}")
    try:
        for _ in range(TRUNCATE_TRIES):
            with turn():
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(TRUNCATE_WAIT_MS / 1000)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    return False


def _erase_found(
    conn: sqlite3.Connection, now_ms: int, selector: str, user_id: str | None, found: _Found
) -> Erased:
    """The erasure's transaction: open the ledger entry, delete, close it with the counts."""
    # an id drawn at random from 2^32 up: the delete guards (sqlite migration 0015) let the erasure's
    # DELETEs through on the connection whose last insert it is, which no unrelated insert matches
    entry = conn.execute(
        "INSERT INTO erasures (id, at, selector) VALUES (?, ?, ?)",
        (secrets.randbelow(2**63 - 2**32) + 2**32, format_ms(now_ms), selector),
    ).lastrowid
    where, params = _events_of(user_id, found.devices)
    _retired_of_erased(conn, found, where, params)  # read before the rows and the states go
    events = _delete(conn, "events", found.events, _since(found, "events"), where, params)
    # bad rows: those the read found (never changed, and _unmoved showed their ids still theirs), and
    # those since that hold an erased id
    since = conn.execute(
        "SELECT id, payload FROM bad_rows WHERE id > ? AND payload IS NOT NULL", (_since(found, "bad_rows"),)
    )
    bad = _delete(conn, "bad_rows", [*found.bad_rows, *_bad_rows_holding(since, user_id, found.devices)])
    marks = ",".join("?" * len(found.devices))
    gone = conn.execute(f"DELETE FROM device_state WHERE device_id IN ({marks})", [*found.devices]).rowcount
    conn.execute(
        "UPDATE erasures SET events = ?, bad_rows = ?, devices = ?, open = 0 WHERE id = ?",
        (events, bad, gone, entry),
    )
    return Erased(events, bad, gone)


async def pg_run(conn: Any, now_ms: int, retention_days: int, cookie_max_age_s: int) -> Removed:
    """One lifecycle run on PostgreSQL: the published function does it with the owner's rights.

    It takes no horizon later than the retention the store records: the owner records it (here, when
    this connection may; the writer role may not, and is warned when its setting differs), so that
    the writer's own settings cannot remove what the published rule keeps."""
    await record_retention(conn, retention_days)
    horizon = horizon_ms(now_ms, retention_days)
    at = datetime.fromtimestamp(horizon / 1000, UTC) if horizon is not None else None
    r = await conn.fetchrow(
        "SELECT * FROM collector_lifecycle($1, $2, $3)",
        at,
        cull_before_ms(now_ms, cookie_max_age_s),
        month_of(now_ms),
    )
    return Removed(r["events"], r["bad_rows"], r["devices"], r["retired"])


async def record_retention(conn: Any, retention_days: int) -> None:
    """Record the retention period in the store, as the owner; as a role that may not, warn when the
    recorded one is not this collector's COLLECTOR_RETENTION_DAYS (the recorded one holds)."""
    try:
        async with conn.transaction():
            # the row locked first: another owner's change meanwhile is read, not logged as this one's
            before = await conn.fetchval("SELECT retention_days FROM lifecycle WHERE id = 1 FOR UPDATE")
            if before != retention_days:
                await conn.execute("UPDATE lifecycle SET retention_days = $1 WHERE id = 1", retention_days)
        if before != retention_days:  # every collector connected as the owner records its own: give them one
            log.warning("retention: recorded %d days (it was %d)", retention_days, before)
        return
    except asyncpg.InsufficientPrivilegeError:
        pass
    recorded = await conn.fetchval("SELECT retention_days FROM lifecycle WHERE id = 1")
    if recorded != retention_days:
        log.warning(
            "retention: the store records %d days, COLLECTOR_RETENTION_DAYS is %d; the recorded one holds "
            "(run `python -m collector retain` as the owner to record another)",
            recorded,
            retention_days,
        )


async def _pg_devices(conn: Any, user_id: str | None, device_id: str | None) -> set[str]:
    """The erased devices: the one named, or those the person was identified on (by their events, or
    by a state that still names them)."""
    if user_id is None:
        return {device_id} if device_id is not None else set()
    found = await conn.fetch(
        "SELECT network_userid FROM events WHERE user_id = $1 AND network_userid IS NOT NULL "
        "UNION SELECT device_id FROM device_state WHERE user_id = $1",
        user_id,
    )
    return {r[0] for r in found}


_PG_ERASED_EVENTS = (
    "DELETE FROM events WHERE network_userid = ANY($1::text[]) OR user_id = $2 RETURNING event_id, "
    "COALESCE(to_char(dvce_created_tstamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), ''), "
    + ", ".join(identifiers.ID_COLUMNS)
)


async def _pg_delete_events(
    conn: Any, devices: set[str], user_id: str | None, ids: set[str], keys: list[tuple[str, str]]
) -> int:
    """Delete the erased events; add their tracker ids to `ids` and their dedupe keys to `keys`."""
    n = 0
    for r in await conn.fetch(_PG_ERASED_EVENTS, sorted(devices), user_id):
        keys.append((r[1], r[0]))
        ids |= identifiers.row_tracker_ids(tuple(r)[2:])
        n += 1
    return n


async def _pg_delete_bad_rows(
    conn: Any, user_id: str | None, devices: set[str], seen: set[int], again: bool = False
) -> int:
    """Delete the bad rows that hold an erased id (decoded here, as on SQLite: _bad_rows_holding),
    adding the ids looked at to `seen`: those not in it, or (`again`, when a device joined the
    erasure) every one. Not by an id range: ids are drawn before their rows commit, so a row with a
    smaller id may commit after a larger one was read (two replicas)."""
    ids = _erased_ids(user_id, devices)
    held: list[int] = []
    if again or not seen:
        rows: Any = conn.cursor("SELECT id, payload FROM bad_rows WHERE payload IS NOT NULL")
    else:
        every = await conn.fetch("SELECT id FROM bad_rows WHERE payload IS NOT NULL")
        unseen = [r[0] for r in every if r[0] not in seen]
        rows = conn.cursor("SELECT id, payload FROM bad_rows WHERE id = ANY($1::bigint[])", unseen)
    async for r in rows:
        seen.add(r["id"])
        if identifiers.payload_holds(r["payload"], ids, devices):
            held.append(r["id"])
    status = await conn.execute("DELETE FROM bad_rows WHERE id = ANY($1::bigint[])", held)
    return int(status.split()[-1])


async def _pg_retired_states(conn: Any) -> dict[str, list[str]]:
    """What each retired (closed) device remembers: retired by its own rotation, so retired still,
    whatever an erased device sent too (a shared fingerprint), unless that device is erased too."""
    return {
        r[0]: remembered(state_of(tuple(r))[1])
        async for r in conn.cursor(f"SELECT {_STATE_COLUMNS} FROM device_state WHERE closed = 1")
    }


async def pg_erase(conn: Any, now_ms: int, user_id: str | None, device_id: str | None) -> Erased:
    """sqlite_erase for PostgreSQL (run as the owner: the writer may not delete), in one transaction.

    First beside the writers, which go on: what is there now goes, and the bad rows' payloads are
    decoded (the slow part: 250,000 of them took 14 s, every writer waiting when it all ran under the
    locks below, and answering 503 past its statement timeout). Then with the writers waiting, as
    they wait for SQLite's turn: at READ COMMITTED a login committed after the devices were read, or
    an event after the DELETE, stays, so the devices are read again and what the writers committed
    meanwhile goes too. The locks in the order a writer's transaction first takes the tables
    (device_state, event_ids, events, bad_rows, retired_ids), so none holds one the erasure waits on
    while it waits for one the erasure holds; device_state EXCLUSIVE, since a writer may lock its
    rows (FOR UPDATE) before it writes any table; nothing a writer may wait on (a device's state, a
    dedupe claim, a retired id) is touched before them. The lifecycle's lock first: a run deletes
    from these tables in another order."""
    selector = "user_id" if user_id is not None else "device_id"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('collector_lifecycle'))")
        entry = await conn.fetchval(
            "INSERT INTO erasures (at, selector) VALUES ($1, $2) RETURNING id",
            datetime.fromtimestamp(now_ms / 1000, UTC),
            selector,
        )
        ids: set[str] = set()  # the erased events' and devices' tracker ids: they leave the retired ids
        keys: list[tuple[str, str]] = []  # the erased events' dedupe claims, which go with them
        devices = await _pg_devices(conn, user_id, device_id)
        events = await _pg_delete_events(conn, devices, user_id, ids, keys)
        seen: set[int] = set()
        bad = await _pg_delete_bad_rows(conn, user_id, devices, seen)
        retired_states = await _pg_retired_states(conn)
        await conn.execute("LOCK TABLE device_state IN EXCLUSIVE MODE")
        await conn.execute("LOCK TABLE event_ids, events, bad_rows, retired_ids IN SHARE ROW EXCLUSIVE MODE")
        joined = await _pg_devices(conn, user_id, device_id) - devices
        devices |= joined
        events += await _pg_delete_events(conn, devices, user_id, ids, keys)
        # what committed since the first look; every bad row again for a device that joined since
        bad += await _pg_delete_bad_rows(conn, user_id, devices, seen, again=bool(joined))
        still = {v for d, values in retired_states.items() if d not in devices for v in values}
        await conn.execute(
            "DELETE FROM event_ids WHERE (created, event_id) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        states = await conn.fetch(
            f"SELECT {_STATE_COLUMNS} FROM device_state WHERE device_id = ANY($1::text[])", sorted(devices)
        )
        ids.update(v for r in states for v in remembered(state_of(tuple(r))[1]))
        await conn.execute("DELETE FROM retired_ids WHERE value = ANY($1::text[])", sorted(ids - still))
        status = await conn.execute(
            "DELETE FROM device_state WHERE device_id = ANY($1::text[])", sorted(devices)
        )
        gone = int(status.split()[-1])
        await conn.execute(
            "UPDATE erasures SET events = $1, bad_rows = $2, devices = $3, open = false WHERE id = $4",
            events,
            bad,
            gone,
            entry,
        )
    return Erased(events, bad, gone)
