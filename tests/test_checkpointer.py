"""The SQLite store's checkpointer: the WAL is copied back beside the writer, and still starts over.

A real store on a real file, written by concurrent requests as fast as it commits; sizes only, no
timings. Each test has its twin showing what the same measure finds when the mechanism is missing:
a checkpointer without the pass inside the writers' turn (its first version), and none at all.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import storage.sqlite as sq
from storage.base import BadRow, Submission
from storage.sessions import SessionRules

MIB = 1024 * 1024
PAYLOAD = "x" * 3000  # a bad row of about 3 KB: the WAL grows by about a page a row
WRITTEN = 64 * MIB
# With the writer's backstop out of the way (BACKSTOP_PAGES raised to 10,000 pages, 40 MiB: twice in
# WRITTEN, the rows taking more pages than their bytes), the checkpointer started the WAL over 6 to
# 10 times here in-process (faster writes than a collector's: its WAL reached 13-20 MiB; 6 MiB at the
# bench's half load). Restarts, not sizes, tell the two apart: sizes follow the disk's speed.
RESTARTS = 4


@pytest.fixture
def far_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sq, "BACKSTOP_PAGES", 10_000)


def _submission() -> Submission:
    rows = [BadRow("2026-12-03 00:00:00.000", "bench", "a refused event", PAYLOAD, 3000, False)] * 10
    return Submission(0, None, bad_rows=rows)


class Wal:
    """What was seen of the WAL after each commit: its largest size, and how often it started over
    (the checkpoint sequence number in its header, bytes 12-16, counts the restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.largest = 0
        self.sequences: set[bytes] = set()

    def look(self) -> None:
        self.largest = max(self.largest, self.path.stat().st_size)
        with self.path.open("rb") as f:
            self.sequences.add(f.read(16)[12:16])

    @property
    def restarts(self) -> int:
        return len(self.sequences) - 1


async def _write(path: Path, synchronous: str = "FULL") -> tuple[Wal, sq.SqliteStore]:
    """Requests from 8 concurrent clients, each waiting for its commit, until WRITTEN bytes of rows
    are committed, and the WAL seen after each. The store is returned closed."""
    store = sq.SqliteStore(path, SessionRules(1_800_000), synchronous=synchronous)
    await store.start()
    wal = Wal(Path(f"{path}-wal"))
    per_client = WRITTEN // (len(PAYLOAD) * 10) // 8

    async def client() -> None:
        for _ in range(per_client):
            result = await store.append(_submission())
            assert result.stored == 0  # bad rows only: the store's answer for a refused request
            wal.look()

    try:
        await asyncio.gather(*(client() for _ in range(8)))
        assert store.checkpointer is not None
        held = store.checkpointer._fd  # the descriptor its own connection opened, if it runs
        if synchronous == "FULL" and store.checkpointer.passes:
            assert held is not None and sq._same_file(os.fstat(held), os.stat(path))
    finally:
        checkpointer = store.checkpointer
        await store.close()
        store.checkpointer = checkpointer  # for the test to read its counters
    return wal, store


def _bad_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM bad_rows").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def first_version(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The checkpointer as first written: a PASSIVE pass outside the turn, and nothing after it."""

    def outside_only(self: sq.Checkpointer, conn: sqlite3.Connection, turns: int) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.passes += 1

    monkeypatch.setattr(sq.Checkpointer, "_pass", outside_only)
    yield


async def test_the_wal_starts_over_while_commits_keep_coming(tmp_path: Path, far_backstop: None) -> None:
    wal, store = await _write(tmp_path / "events.db")
    print(f"WAL: largest {wal.largest / MIB:.1f} MiB, {wal.restarts} restarts")
    assert store.checkpointer is not None
    assert store.checkpointer.passes > 0 and store.checkpointer.tails > 0
    assert wal.restarts >= RESTARTS
    expected = WRITTEN // (len(PAYLOAD) * 10) // 8 * 8 * 10
    assert _bad_rows(tmp_path / "events.db") == expected  # every acknowledged row is in the file


async def test_a_pass_outside_the_turn_alone_lets_the_wal_grow(
    tmp_path: Path, far_backstop: None, first_version: None
) -> None:
    # the same measure on the first version: its passes copy every frame they see, and yet a commit
    # is nearly always writing as one ends, so the WAL starts over only at the writer's backstop (in
    # the collector, with no backstop then, it reached 150 MiB in 5 seconds)
    wal, store = await _write(tmp_path / "events.db")
    print(f"WAL: largest {wal.largest / MIB:.1f} MiB, {wal.restarts} restarts")
    assert store.checkpointer is not None and store.checkpointer.passes > 0
    assert wal.restarts < RESTARTS


async def test_without_the_checkpointer_the_writers_backstop_bounds_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # should the checkpointer stop, the writer's own autocheckpoint (BACKSTOP_PAGES) still bounds it
    monkeypatch.setattr(sq.Checkpointer, "start", lambda self: None)
    monkeypatch.setattr(sq.Checkpointer, "stop", lambda self: None)
    wal, store = await _write(tmp_path / "events.db")
    print(f"WAL: largest {wal.largest / MIB:.1f} MiB, {wal.restarts} restarts")
    assert store.checkpointer is not None and store.checkpointer.passes == 0
    backstop = sq.BACKSTOP_PAGES * (4096 + 24) + 32  # frames of a 4 KiB page and the WAL header
    assert wal.restarts >= 1 and wal.largest <= backstop + 4 * MIB
    assert os.path.getsize(tmp_path / "events.db") > WRITTEN // 2  # the rows were copied back


def test_the_descriptor_found_is_one_sqlite_holds_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    fd = sq._descriptor_of(os.stat(path))
    assert fd is not None and sq._same_file(os.fstat(fd), os.stat(path))
    conn.close()
    # the same search once no connection holds the file finds nothing (it opens none of its own)
    assert sq._descriptor_of(os.stat(path)) is None


@pytest.mark.parametrize("synchronous", ["FULL", "OFF"])
async def test_the_file_is_flushed_before_each_tail(
    tmp_path: Path, far_backstop: None, monkeypatch: pytest.MonkeyPatch, synchronous: str
) -> None:
    path = tmp_path / "events.db"
    flushes = 0  # fdatasync calls from Python on the database file (SQLite's own are in C)
    fdatasync = os.fdatasync

    def counted(fd: int) -> None:
        nonlocal flushes
        flushes += path.exists() and sq._same_file(os.fstat(fd), os.stat(path))
        fdatasync(fd)

    monkeypatch.setattr(sq.os, "fdatasync", counted)
    _wal, store = await _write(path, synchronous)
    assert store.checkpointer is not None and store.checkpointer.tails > 0
    # with synchronous=OFF SQLite never syncs the file, and the checkpointer adds no sync of its own
    assert flushes == (store.checkpointer.tails if synchronous == "FULL" else 0)
