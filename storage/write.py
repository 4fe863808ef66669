"""The body of one write transaction: dedupe, session assignment and rotation, inserts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from storage.base import (
    COLUMNS,
    DOMAIN_SESSIONID,
    DOMAIN_USERID,
    EVENT_ID,
    NETWORK_USERID,
    SESSION_ID,
    SESSION_INDEX,
    USER_ID,
    AppendResult,
    Submission,
)
from storage.ids import UuidPool
from storage.sessions import DeviceState, SessionRules, assign, may_rotate, retire

# Rotated device ids are minted on the writer thread: its own pool.
new_device_id = UuidPool()
INSERT_EVENT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INSERT_BAD = (
    "INSERT INTO bad_rows (received_at, reason, detail, payload, size, anonymous) VALUES (?, ?, ?, ?, ?, ?)"
)
UPSERT_STATE = (
    "INSERT INTO device_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
    "session_id = excluded.session_id, session_index = excluded.session_index, last_ms = excluded.last_ms, "
    "tracker_sid = excluded.tracker_sid, user_id = excluded.user_id, closed = excluded.closed, "
    "rotations = excluded.rotations, tracker_duid = excluded.tracker_duid"
)


def select_in(conn: sqlite3.Connection, sql: str, values: Iterable[Any], chunk: int = 500) -> list[Any]:
    """First column of `sql` with its `IN ({})` filled by the values, chunked under the variable limit."""
    values = list(values)
    out: list[Any] = []
    for i in range(0, len(values), chunk):
        part = values[i : i + chunk]
        out.extend(r[0] for r in conn.execute(sql.format(",".join("?" * len(part))), part))
    return out


def load_states(conn: sqlite3.Connection, devices: Iterable[str]) -> dict[str, DeviceState]:
    """The latest state of each device, read inside the transaction so all processes agree."""
    devices = list(devices)
    states: dict[str, DeviceState] = {}
    for i in range(0, len(devices), 500):
        part = devices[i : i + 500]
        sql = f"SELECT * FROM device_state WHERE device_id IN ({','.join('?' * len(part))})"
        for dev, sess, idx, last, sid, uid, closed, rot, duid in conn.execute(sql, part):
            states[dev] = DeviceState(sess, idx, last, sid, uid, bool(closed), orjson.loads(rot), duid)
    return states


def write_group(
    conn: sqlite3.Connection, subs: Sequence[Submission], rules: SessionRules
) -> list[AppendResult]:
    """Write a group of requests inside an open transaction; one result per request, in order."""
    rows = [row for s in subs for row in s.rows]
    seen = set(
        select_in(conn, "SELECT event_id FROM events WHERE event_id IN ({})", {r[EVENT_ID] for r in rows})
    )
    tracker_ids = {v for r in rows for v in (r[DOMAIN_USERID], r[DOMAIN_SESSIONID]) if v}
    retired = set(select_in(conn, "SELECT value FROM retired_ids WHERE value IN ({})", tracker_ids))
    states = load_states(conn, {d for s in subs for d in (s.device_id, s.opted_out) if d})
    touched: set[str] = set()
    new_retired: list[tuple[str]] = []
    inserts: list[list[Any]] = []
    results = []

    def retire_ids(values: Iterable[str | None]) -> None:
        for value in values:
            if value and value not in retired:
                retired.add(value)
                new_retired.append((value,))

    for sub in subs:
        res = AppendResult()
        if sub.opted_out is not None and sub.opted_out in states:
            retire_ids(retire(states[sub.opted_out]))
            touched.add(sub.opted_out)
        device = sub.device_id
        for i, row in enumerate(sub.rows):
            # Tracker ids in use when a device rotated are never kept again (the app forgot clearUserData).
            if retired:
                if row[DOMAIN_USERID] in retired:
                    row[DOMAIN_USERID] = None
                if row[DOMAIN_SESSIONID] in retired:
                    row[DOMAIN_SESSIONID] = None
            duplicate = row[EVENT_ID] in seen
            if device is not None:
                row[NETWORK_USERID] = device
                if not duplicate:
                    state = assign(
                        states.get(device),
                        sub.now_ms,
                        row[DOMAIN_SESSIONID],
                        row[USER_ID],
                        rules,
                        row[DOMAIN_USERID],
                    )
                    states[device] = state
                    touched.add(device)
                    row[SESSION_ID], row[SESSION_INDEX] = state.session_id, state.session_index
            if duplicate:
                res.duplicates += 1
            else:
                seen.add(row[EVENT_ID])
                inserts.append(row)
                res.stored += 1
            if device is not None and i in sub.anonymize_at:
                state = states.get(device) or assign(None, sub.now_ms, None, None, rules)
                states[device] = state
                touched.add(device)
                if may_rotate(state, sub.now_ms, rules):
                    retire_ids([row[DOMAIN_USERID], row[DOMAIN_SESSIONID], *retire(state)])
                    device = new_device_id()  # a new random id: nothing derives it from the old
                    res.rotated += 1
                else:
                    res.rate_limited += 1
        res.device_id = device
        results.append(res)
    if inserts:
        conn.executemany(INSERT_EVENT, inserts)
    bad = [
        (b.received_at, b.reason, b.detail, b.payload, b.size, int(b.anonymous))
        for s in subs
        for b in s.bad_rows
    ]
    if bad:
        conn.executemany(INSERT_BAD, bad)
    if touched:
        conn.executemany(
            UPSERT_STATE,
            [
                (
                    d,
                    st.session_id,
                    st.session_index,
                    st.last_ms,
                    st.tracker_sid,
                    st.user_id,
                    int(st.closed),
                    orjson.dumps(st.rotations).decode(),
                    st.tracker_duid,
                )
                for d in touched
                for st in (states[d],)
            ],
        )
    if new_retired:
        conn.executemany("INSERT OR IGNORE INTO retired_ids VALUES (?)", new_retired)
    return results
