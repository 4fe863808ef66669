"""`--prefill N`: grow a collector's SQLite store to N events before it is measured.

The rows are the collector's own: a real collector process stores a seed of realistic tracker
traffic (the same bodies the load generator sends, named and SP-Anonymous), then SQL copies those
rows until the table holds N, each copy with a fresh random event id, its device creation time a
minute further in the past per copy (so the dedupe index, keyed by creation time then event id, has
the shape of a real store's: weeks of history behind the live traffic's end, random ids within each
time), and its own device and session ids (so the device table grows with the events, about one
device per 20 events). Building it without the index and creating the index once at the end is what
makes 8 million rows take minutes instead of hours; the result is the same index a live store has.

The store check skips the prefilled rows: it reads only rows above `Prefilled.max_rowid`.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from storage.base import COLUMNS
from storage.sessions import STATE_COLUMNS
from tests.bench.payloads import EventIds, post_body
from tests.procs import Collector

SEED_REQUESTS = 200  # 10-event POSTs: 2,000 seed rows, a tenth of them SP-Anonymous
CHUNK = 250_000  # rows per transaction while copying
TP2 = "/com.snowplowanalytics.snowplow/tp2"

# A random, UUID-shaped id (version 4 layout) in SQL.
_UUID = (
    "lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-a' "
    "|| substr(h, 18, 3) || '-' || substr(h, 21, 12))"
)
# The copy's own id for an id column: its first 28 characters and the copy's number, so that one
# device's rows stay one device (and one session one session) within a copy.
_OWN = "CASE WHEN {c} IS NULL THEN NULL ELSE substr({c}, 1, 27) || printf('-%08x', k) END"
_RENAMED = {
    "event_id": _UUID,
    # the same text format as the collector's (format_ms): %f is SS.SSS
    "dvce_created_tstamp": "strftime('%Y-%m-%d %H:%M:%f', dvce_created_tstamp, printf('-%d minutes', k))",
    "network_userid": _OWN.format(c="network_userid"),
    "session_id": _OWN.format(c="session_id"),
}


@dataclass(frozen=True)
class Prefilled:
    rows: int
    max_rowid: int
    seconds: float
    file_mib: float


def _seed(db: Path, requests: int) -> None:
    """A real collector stores realistic traffic; every tenth request is SP-Anonymous."""
    ids = EventIds("5eed0000")
    with Collector(db) as c:
        for i in range(requests):
            headers = {"Content-Type": "application/json"}
            if i % 10 == 9:
                headers["SP-Anonymous"] = "*"
            req = urllib.request.Request(c.url + TP2, data=post_body(ids, 10), headers=headers)
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()


def _copy_sql(seed_rows: int) -> str:
    cols = ", ".join(COLUMNS)
    values = ", ".join(_RENAMED.get(c, c) for c in COLUMNS)
    return (
        f"INSERT INTO events ({cols}) SELECT {values} FROM "
        f"(SELECT *, hex(randomblob(16)) AS h FROM events, n WHERE events.rowid <= {seed_rows})"
    )


def _state_sql() -> str:
    cols = ", ".join(STATE_COLUMNS)
    values = ", ".join(_OWN.format(c=c) if c in ("device_id", "session_id") else c for c in STATE_COLUMNS)
    return f"INSERT OR IGNORE INTO device_state ({cols}) SELECT {values} FROM temp.seed_state, n"


def prefill(db: Path, rows: int) -> Prefilled:
    """Grow the store at `db` (no collector may run on it) to at least `rows` events."""
    started = time.monotonic()
    _seed(db, SEED_REQUESTS)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a benchmark fixture: rebuilt if the machine dies
        conn.execute("PRAGMA cache_size = -262144")
        seed = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        index = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'events_dedupe'"
        ).fetchone()[0]
        conn.execute("DROP INDEX events_dedupe")
        conn.execute("CREATE TEMP TABLE seed_state AS SELECT * FROM device_state")
        copies = max(0, -(-(rows - seed) // seed))
        per_chunk = max(1, CHUNK // seed)
        copy, state = _copy_sql(seed), _state_sql()
        for first in range(1, copies + 1, per_chunk):
            last = min(copies, first + per_chunk - 1)
            conn.execute("BEGIN")
            conn.execute("DROP TABLE IF EXISTS temp.n")
            conn.execute("CREATE TEMP TABLE n (k INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO n VALUES (?)", [(k,) for k in range(first, last + 1)])
            conn.execute(copy)
            conn.execute(state)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute(index)  # the same index the migration made, built once, in key order
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total, max_rowid = conn.execute("SELECT count(*), max(rowid) FROM events").fetchone()
    finally:
        conn.close()
    return Prefilled(int(total), int(max_rowid), time.monotonic() - started, db.stat().st_size / 2**20)
