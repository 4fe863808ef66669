"""PostgreSQL's half of a group commit: lock and look up what the group logic wants, write what it decided.

Every statement takes whole columns as arrays (`unnest`), so one prepared statement serves any group
size, under the 65,535-parameter limit. Devices are locked in device-id order (placeholder rows first,
since `FOR UPDATE` cannot lock a row that does not exist yet), so replicas on several hosts serialise
per device and never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from storage.base import COLUMNS, Submission
from storage.group import Found, Wanted, Writes
from storage.sessions import STATE_COLUMNS, DeviceState, state_of, state_row

# PostgreSQL types of the event columns; the rest are text. Timestamps and JSON arrive as text and are
# cast by the server (the session's TimeZone is UTC).
TYPES = {
    "collector_tstamp": "timestamptz",
    "dvce_created_tstamp": "timestamptz",
    "dvce_sent_tstamp": "timestamptz",
    "true_tstamp": "timestamptz",
    "domain_sessionidx": "bigint",
    "session_index": "bigint",
    "anonymous": "smallint",
    "se_value": "double precision",
    "unstruct_event": "jsonb",
    "contexts": "jsonb",
    "other_params": "jsonb",
    "br_cookies": "boolean",
    "refr_dvce_tstamp": "timestamptz",
    "derived_tstamp": "timestamptz",
    **dict.fromkeys(("tr_total", "tr_tax", "tr_shipping", "ti_price"), "double precision"),
    **dict.fromkeys(
        (
            "pp_xoffset_min",
            "pp_xoffset_max",
            "pp_yoffset_min",
            "pp_yoffset_max",
            "br_viewwidth",
            "br_viewheight",
            "dvce_screenwidth",
            "dvce_screenheight",
            "doc_width",
            "doc_height",
            "ti_quantity",
            "txn_id",
            "page_urlport",
            "refr_urlport",
        ),
        "integer",
    ),
}
_ARRAY = {
    "bigint": "bigint[]",
    "integer": "integer[]",
    "smallint": "smallint[]",
    "double precision": "float8[]",
    "boolean": "boolean[]",
}


def _insert_from_arrays(table: str, columns: Sequence[str], types: dict[str, str]) -> str:
    params = ", ".join(
        f"${i + 1}::{_ARRAY.get(types.get(c, 'text'), 'text[]')}" for i, c in enumerate(columns)
    )
    casts = ", ".join(
        f"u.{c}::{types[c]}" if types.get(c) in ("timestamptz", "jsonb") else f"u.{c}" for c in columns
    )
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {casts} "
        f"FROM unnest({params}) AS u({', '.join(columns)})"
    )


INSERT_EVENTS = _insert_from_arrays("events", COLUMNS, TYPES)
BAD_COLUMNS = ("received_at", "reason", "detail", "payload", "size", "anonymous")
INSERT_BAD = _insert_from_arrays(
    "bad_rows", BAD_COLUMNS, {"received_at": "timestamptz", "size": "bigint", "anonymous": "smallint"}
)
STATE_TYPES = {"session_index": "bigint", "last_ms": "bigint", "closed": "smallint"}
UPSERT_STATE = (
    _insert_from_arrays("device_state", STATE_COLUMNS, STATE_TYPES)
    + " ON CONFLICT (device_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in STATE_COLUMNS[1:])
)
PLACEHOLDERS = (
    "INSERT INTO device_state (device_id, session_id, session_index, last_ms) "
    "SELECT d, '', 0, 0 FROM unnest($1::text[]) AS d ORDER BY d ON CONFLICT DO NOTHING"
)
LOCK_STATES = (
    f"SELECT {', '.join(STATE_COLUMNS)} FROM device_state WHERE device_id = ANY($1::text[]) "
    "ORDER BY device_id FOR UPDATE"
)
# first_seen is the collector's time (as collector_tstamp), so retention forgets the ids with the events
CLAIM_IDS = (
    "INSERT INTO event_ids (created, event_id, first_seen) "
    "SELECT c, i, to_timestamp($3::float8 / 1000) FROM unnest($1::text[], $2::text[]) AS k (c, i) "
    "ON CONFLICT DO NOTHING RETURNING created, event_id"
)
RETIRED = "SELECT value, expires FROM retired_ids WHERE value = ANY($1::text[])"
INSERT_RETIRED = (
    "INSERT INTO retired_ids (value, expires) SELECT unnest($1::text[]), $2 "
    "ON CONFLICT (value) DO UPDATE SET expires = excluded.expires "
    "WHERE excluded.expires > retired_ids.expires"
)
DROP_PLACEHOLDERS = "DELETE FROM device_state WHERE device_id = ANY($1::text[]) AND session_index = 0"
# Data PostgreSQL refuses (SQLSTATE class 22: a NUL byte in text or jsonb, a number out of range):
# the request's fault, answered 400 for that request alone.
DATA_ERRORS = (asyncpg.DataError,)
Conn = asyncpg.Connection | PoolConnectionProxy  # the stubs' generics; at run time plain classes


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def look_up(conn: Conn, want: Wanted, opted_out: set[str], now_ms: int) -> tuple[Found, set[str]]:
    """Lock the group's devices and answer its lookups; also the placeholder rows it inserted."""
    # An opted-out device is only looked up, never given a placeholder: a device the store has not
    # seen must leave no trace of an anonymous request.
    with_rows = sorted(want.devices - opted_out)
    if with_rows:
        await conn.execute(PLACEHOLDERS, with_rows)
    states: dict[str, DeviceState] = {}
    placeholders: set[str] = set()
    if want.devices:
        for r in await conn.fetch(LOCK_STATES, sorted(want.devices)):
            if r["session_index"] == 0:
                placeholders.add(r["device_id"])
                continue
            device, state = state_of(tuple(r))
            states[device] = state
    # Claiming the ids here is the dedupe across replicas: a concurrent claim of the same id waits for
    # this transaction, then finds it taken.
    keys = sorted(want.events)
    claimed = await conn.fetch(CLAIM_IDS, [k[0] for k in keys], [k[1] for k in keys], now_ms) if keys else []
    fresh = {(r[0], r[1]) for r in claimed}
    expires = (
        {r[0]: r[1] for r in await conn.fetch(RETIRED, list(want.tracker_ids))} if want.tracker_ids else {}
    )
    return Found(want.events - fresh, expires, states), placeholders


async def write(conn: Conn, w: Writes, placeholders: set[str]) -> None:
    """Apply a group's writes; drop the placeholders nothing was written to."""
    if w.events:
        await conn.execute(INSERT_EVENTS, *_columns(w.events, len(COLUMNS)))
    if w.bad_rows:
        await insert_bad(conn, w)
    if w.states:
        rows = [state_row(d, st) for d, st in sorted(w.states.items())]
        await conn.execute(UPSERT_STATE, *_columns(rows, len(STATE_COLUMNS)))
    if w.retired:  # in one order, as the claims: replicas retiring shared ids wait, never deadlock
        await conn.execute(INSERT_RETIRED, sorted(w.retired), w.retired_until)
    unused = sorted(placeholders - w.states.keys())
    if unused:
        await conn.execute(DROP_PLACEHOLDERS, unused)


async def insert_bad(conn: Conn, w: Writes) -> None:
    """Insert a group's bad rows."""
    rows = [(b.received_at, b.reason, b.detail, b.payload, b.size, int(b.anonymous)) for b in w.bad_rows]
    await conn.execute(INSERT_BAD, *_columns(rows, len(BAD_COLUMNS)))


async def unstorable(conn: Conn, subs: Sequence[Submission]) -> set[int]:
    """Which submissions carry data PostgreSQL refuses: each tried under a savepoint, all rolled back."""
    bad: set[int] = set()
    tr = conn.transaction()
    await tr.start()
    try:
        for i, sub in enumerate(subs):
            try:
                async with conn.transaction():  # a savepoint, rolled back by the exception below
                    if sub.rows:
                        await conn.execute(INSERT_EVENTS, *_columns(sub.rows, len(COLUMNS)))
                    if sub.bad_rows:
                        await insert_bad(conn, Writes(bad_rows=sub.bad_rows))
                    raise _Probed
            except DATA_ERRORS:
                bad.add(i)
            except _Probed:
                pass
    finally:
        await tr.rollback()
    return bad


class _Probed(Exception):
    """Rolls a probe's savepoint back."""
