"""How big the WAL gets while an analyst's long read runs beside a writing collector, and after.

    python -m tests.wal_growth [--limit BYTES] [--hold-mib N]

A real collector process takes batches over HTTP as fast as one client sends them; a reader opens a
read transaction (one long query, as Datasette runs one) and holds it until the WAL has grown by
--hold-mib; then it ends, the writes go on, and the WAL's size is sampled until it is back under the
bound or a byte budget of further writes is spent. Sizes only, no timings: the machine is shared.
"""

from __future__ import annotations

import argparse
import http.client
import sqlite3
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.procs import Collector

MIB = 1024 * 1024
TP2 = "/com.snowplowanalytics.snowplow/tp2"
SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


@dataclass
class Run:
    """Samples of (events acknowledged, WAL bytes) in each phase."""

    limit: int
    before: list[tuple[int, int]] = field(default_factory=list)
    holding: list[tuple[int, int]] = field(default_factory=list)
    after: list[tuple[int, int]] = field(default_factory=list)
    reader_counts: tuple[int, int] = (0, 0)  # what the long read saw at its start and at its end

    def report(self) -> str:
        def mib(samples: list[tuple[int, int]]) -> str:
            step = max(1, len(samples) // 8)
            return ", ".join(f"{n}ev:{w / MIB:.1f}" for n, w in samples[::step] + samples[-1:])

        return (
            f"journal_size_limit {self.limit} B\n"
            f"  before the read (events:WAL MiB): {mib(self.before)}\n"
            f"  while one read is held:           {mib(self.holding)}\n"
            f"  after it ended:                   {mib(self.after)}\n"
            f"  peak {max(w for _, w in self.holding) / MIB:.1f} MiB, "
            f"last {self.after[-1][1] / MIB:.1f} MiB"
        )


class Writer(threading.Thread):
    """Posts batches of events to the collector until stopped; counts what was acknowledged."""

    def __init__(self, port: int, batch: int = 200) -> None:
        super().__init__(daemon=True)
        self.port, self.batch = port, batch
        self.acked = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self._post_until_stopped(conn)
        finally:
            conn.close()

    def _post_until_stopped(self, conn: http.client.HTTPConnection) -> None:
        pad = "x" * 400  # rows about the size of a real page view's
        while not self.stop.is_set():
            events = [
                {"e": "pv", "p": "web", "tv": "wal", "eid": str(uuid.uuid4()), "url": f"https://w.test/{pad}"}
                for _ in range(self.batch)
            ]
            body = orjson.dumps({"schema": SCHEMA, "data": events})
            try:
                conn.request("POST", TP2, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                return
            if resp.status != 200:
                self.errors.append(f"HTTP {resp.status}")
                return
            self.acked += self.batch


def wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def sample_until(writer: Writer, db: Path, out: list[tuple[int, int]], done: object, budget: int) -> None:
    """Sample (acked, WAL size) until done(size) or budget more events were acknowledged."""
    start = writer.acked
    assert callable(done)
    while writer.acked - start < budget:
        assert not writer.errors, writer.errors
        if not writer.is_alive():
            raise AssertionError("the writer stopped")
        size = wal_size(db)
        out.append((writer.acked, size))
        if done(size):
            return
        writer.stop.wait(0.05)
    # and the state at the budget's end: a sample every 50 ms alone ends short of it by what the
    # collector acknowledged in the last 50 ms (1,400 events once the checkpoint left the commit)
    out.append((writer.acked, wal_size(db)))


def measure(db: Path, limit: int, hold_bytes: int, bound: int, settle_events: int = 40_000) -> Run:
    """One run; `bound` is the size the WAL must get back under after the read (checked by callers)."""
    run = Run(limit)
    env = {
        "COLLECTOR_WAL_SIZE_LIMIT": str(limit),
        "COLLECTOR_SYNCHRONOUS": "NORMAL",
        "COLLECTOR_ACCESS_LOG": "0",
    }
    env["COLLECTOR_COOKIE_SECRET"] = "wal"
    with Collector(db, env=env) as proc:
        writer = Writer(proc.port)
        writer.start()
        try:
            sample_until(writer, db, run.before, lambda _s: False, 5_000)
            reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
            reader.execute("BEGIN")
            first = reader.execute("SELECT count(*) FROM events").fetchone()[0]
            grown = wal_size(db) + hold_bytes
            sample_until(writer, db, run.holding, lambda s: s >= grown, 10**9)
            last = reader.execute("SELECT count(*) FROM events").fetchone()[0]
            reader.execute("COMMIT")
            reader.close()
            run.reader_counts = (first, last)
            sample_until(writer, db, run.after, lambda s: s <= bound, settle_events)
            # and it stays there while the writes go on
            sample_until(writer, db, run.after, lambda _s: False, 10_000)
        finally:
            writer.stop.set()
            writer.join(30)
        assert not writer.errors, writer.errors
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=MIB)
    parser.add_argument("--hold-mib", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = measure(Path(tmp) / "events.db", args.limit, args.hold_mib * MIB, 8 * MIB)
    print(run.report())


if __name__ == "__main__":
    main()
