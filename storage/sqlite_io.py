"""SQLite's half of a group commit: the lookups the group logic wants, and the writes it decided."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from storage.base import COLUMNS, Submission
from storage.group import DedupeKey, Found, Wanted, Writes
from storage.sessions import STATE_COLUMNS, state_of, state_row

INSERT_EVENT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INSERT_BAD = (
    "INSERT INTO bad_rows (received_at, reason, detail, payload, size, anonymous) VALUES (?, ?, ?, ?, ?, ?)"
)
SELECT_STATE = f"SELECT {', '.join(STATE_COLUMNS)} FROM device_state WHERE device_id IN ({{}})"
UPSERT_STATE = (
    f"INSERT INTO device_state ({', '.join(STATE_COLUMNS)}) VALUES ({', '.join('?' * len(STATE_COLUMNS))}) "
    "ON CONFLICT (device_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in STATE_COLUMNS[1:])
)
INSERT_RETIRED = (
    "INSERT INTO retired_ids (value, expires) VALUES (?, ?) "
    "ON CONFLICT (value) DO UPDATE SET expires = excluded.expires WHERE excluded.expires > expires"
)
# Errors of the data a request carried (text that is not UTF-8, a number SQLite cannot hold, a value
# over its length limit): that request's fault, answered 400. Anything else is the store's: 503.
DATA_ERRORS = (UnicodeEncodeError, OverflowError, sqlite3.DataError)


def select_in(conn: sqlite3.Connection, sql: str, values: Iterable[Any], chunk: int = 500) -> list[Any]:
    """The rows of `sql` with its `IN ({})` filled by the values, chunked under the variable limit."""
    values = list(values)
    out: list[Any] = []
    for i in range(0, len(values), chunk):
        part = values[i : i + chunk]
        out.extend(conn.execute(sql.format(",".join("?" * len(part))), part))
    return out


# The keys' list drives the join (CROSS JOIN keeps it outside), each key one probe of events_dedupe,
# whose expression the ON clause repeats exactly (SQLite uses an expression index only then).
SELECT_SEEN = (
    "WITH k(created, id) AS (VALUES {}) SELECT k.created, k.id FROM k CROSS JOIN events e "
    "ON coalesce(e.dvce_created_tstamp, '') = k.created AND e.event_id = k.id"
)


def seen_keys(conn: sqlite3.Connection, keys: Iterable[DedupeKey], chunk: int = 250) -> set[DedupeKey]:
    """The dedupe keys already stored."""
    keys = list(keys)
    out: set[DedupeKey] = set()
    for i in range(0, len(keys), chunk):
        part = keys[i : i + chunk]
        sql = SELECT_SEEN.format(",".join(["(?,?)"] * len(part)))
        out.update(conn.execute(sql, [v for k in part for v in k]))
    return out


def look_up(conn: sqlite3.Connection, want: Wanted) -> Found:
    """Answer the group's lookups inside its transaction, so that every process agrees."""
    seen = seen_keys(conn, want.events)
    expires = dict(
        select_in(conn, "SELECT value, expires FROM retired_ids WHERE value IN ({})", want.tracker_ids)
    )
    states = dict(state_of(r) for r in select_in(conn, SELECT_STATE, want.devices))
    return Found(seen, expires, states)


# INSERTs naming only the columns a row fills, by the row's shape (which columns are not NULL).
_SHAPED: dict[tuple[int, ...], str] = {}
_SHAPED_MAX = 256  # a client can vary which params it sends: bounded, like sqlite3's statement cache


def _insert_for(shape: tuple[int, ...]) -> str:
    sql = _SHAPED.get(shape)
    if sql is None:
        if len(_SHAPED) >= _SHAPED_MAX:
            _SHAPED.clear()
        names = ", ".join(COLUMNS[i] for i in shape)
        sql = _SHAPED[shape] = f"INSERT INTO events ({names}) VALUES ({', '.join('?' * len(shape))})"
    return sql


def insert_events(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows in order, each naming only the columns it fills; an omitted column is NULL all the
    same. A row fills some 30 of the 110 columns, and sqlite3 binds a NULL at about the cost of a
    value: binding only the filled ones cut the insert from about 60 to 13 us a row (measured, in
    memory). Consecutive rows of one shape (a batch of page pings) share one executemany."""
    run: list[list[Any]] = []
    shape: tuple[int, ...] = ()
    for row in rows:
        this = tuple([i for i, v in enumerate(row) if v is not None])
        if this != shape and run:
            conn.executemany(_insert_for(shape), run)
            run = []
        shape = this
        run.append([row[i] for i in this])
    if run:
        conn.executemany(_insert_for(shape), run)


def write(conn: sqlite3.Connection, w: Writes) -> None:
    """Apply a group's writes."""
    if w.events:
        insert_events(conn, w.events)
    if w.bad_rows:
        conn.executemany(
            INSERT_BAD,
            [(b.received_at, b.reason, b.detail, b.payload, b.size, int(b.anonymous)) for b in w.bad_rows],
        )
    if w.states:
        conn.executemany(UPSERT_STATE, [state_row(d, st) for d, st in w.states.items()])
    if w.retired:
        conn.executemany(INSERT_RETIRED, [(v, w.retired_until) for v in w.retired])


def unstorable(conn: sqlite3.Connection, subs: Sequence[Submission]) -> set[int]:
    """Which submissions carry data SQLite refuses: each tried under a savepoint, then all rolled back.

    Run after a group failed with a data error, so that only the offending requests are refused and
    the rest still commit together (one transaction, one fsync), rather than one by one.
    """
    bad: set[int] = set()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, sub in enumerate(subs):
            conn.execute("SAVEPOINT probe")
            try:
                conn.executemany(INSERT_EVENT.replace("INSERT", "INSERT OR IGNORE", 1), sub.rows)
                write(conn, Writes(bad_rows=sub.bad_rows))
            except DATA_ERRORS:
                bad.add(i)
            conn.execute("ROLLBACK TO probe")
            conn.execute("RELEASE probe")
    finally:
        conn.execute("ROLLBACK")
    return bad
