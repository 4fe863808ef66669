"""What the dedupe index costs SQLite per row: `python -m tests.bench.dedupe_index [--rows N]`.

The same rows (a random UUID event id, about 1 KB of text, a creation time of now) are written in
200-row transactions under WAL and synchronous=FULL, with the collector's page cache and checkpoint
settings, three ways: no index; a unique index on the event id alone (the key before migration 0009);
and the unique index on (creation time, event id) that replaced it. Each group first looks up its
keys as the writer does. Reported for the second half of the rows (the index is grown by then): the
process CPU per row and the commit's wall time per row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

GROUP = 200
SCHEMAS = {
    "none": "",
    "event_id": "CREATE UNIQUE INDEX i ON e (event_id)",
    "created, event_id": "CREATE UNIQUE INDEX i ON e (coalesce(created, ''), event_id)",
}
LOOKUPS = {
    "none": None,
    "event_id": "SELECT event_id FROM e WHERE event_id IN ({})",
    "created, event_id": "WITH k(c, i) AS (VALUES {}) SELECT k.i FROM k CROSS JOIN e "
    "ON coalesce(e.created, '') = k.c AND e.event_id = k.i",
}


def run(kind: str, rows: int, directory: Path) -> tuple[float, float]:
    """(CPU µs per row, commit wall µs per row) over the second half of the rows."""
    conn = sqlite3.connect(directory / f"{kind.replace(', ', '-')}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA cache_size = -32768")
    conn.execute("CREATE TABLE e (event_id TEXT NOT NULL, created TEXT, a TEXT, b TEXT, c TEXT, n INTEGER)")
    if SCHEMAS[kind]:
        conn.execute(SCHEMAS[kind])
    pad = os.urandom(500).hex()
    lookup = LOOKUPS[kind]
    cpu = commit = 0.0
    groups = rows // GROUP
    for g in range(groups):
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
        batch = [(str(uuid.uuid4()), now, pad[:300], pad[300:700], pad[:400], g) for _ in range(GROUP)]
        c0 = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        if lookup is not None and kind == "event_id":
            list(conn.execute(lookup.format(",".join("?" * GROUP)), [r[0] for r in batch]))
        elif lookup is not None:
            list(
                conn.execute(
                    lookup.format(",".join(["(?,?)"] * GROUP)), [v for r in batch for v in (r[1], r[0])]
                )
            )
        conn.executemany("INSERT INTO e VALUES (?, ?, ?, ?, ?, ?)", batch)
        w0 = time.perf_counter()
        conn.execute("COMMIT")
        if g >= groups // 2:
            commit += time.perf_counter() - w0
            cpu += time.process_time() - c0
    conn.close()
    half = (groups - groups // 2) * GROUP
    return cpu / half * 1e6, commit / half * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.dedupe_index", description=__doc__)
    ap.add_argument("--rows", type=int, default=600_000)
    ns = ap.parse_args(argv)
    print(f"{ns.rows:,} rows of about 1 KB, {GROUP} a transaction, WAL, synchronous=FULL")
    print("| unique index | CPU µs/row | commit wall µs/row |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="dedupe-index-", dir="/var/tmp") as tmp:
        for kind in SCHEMAS:
            cpu, commit = run(kind, ns.rows, Path(tmp))
            print(f"| {kind} | {cpu:.1f} | {commit:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
