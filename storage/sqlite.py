"""The SQLite store: one writer thread, group commit, answers only after the commit; read-only queries.

Requests queue their rows; the writer thread takes everything queued (up to group_max events), runs
one IMMEDIATE transaction (look up, let storage.group decide, write) and commits, then wakes the
waiting requests in one call into the event loop. A stdlib sqlite3 connection in a plain thread, rather than
one awaited call per statement, keeps the per-event cost to a row in an executemany.

Durability: WAL with synchronous=FULL (default) fsyncs the WAL on every commit, so an acknowledged
event survives a process kill and a power loss; NORMAL survives a process kill only, faster.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage import group, lifecycle, sqlite_io
from storage.base import AppendResult, Overloaded, StoreFailed, Submission
from storage.ids import UuidPool
from storage.migrate import migrate
from storage.queue import Outcome, Pending, WriteQueue, size_of, with_rejected
from storage.sessions import SessionRules

log = logging.getLogger(__name__)
Row = tuple[Any, ...]
CommitHook = Callable[[int, float], None]  # (events in the group, seconds the commit took)
PROBE_SECONDS = 1.0  # while commits fail, how often the idle writer tries a small write to see them heal


def connect(path: Path, synchronous: str = "FULL", busy_timeout: int = 10000) -> sqlite3.Connection:
    """A writing connection in WAL mode, checked, with the chosen durability."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # room in sqlite3's statement cache for the INSERT of each row shape (sqlite_io.insert_events)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=512)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout)}")
    # A new file frees the pages retention and erasure empty back to the file system (incremental
    # vacuum); this can only be chosen before the first table exists.
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "locked" at once rather
    # than through the busy handler: replicas starting together on a new volume retry here.
    deadline = time.monotonic() + busy_timeout / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if mode != "wal":
        raise RuntimeError(f"{path}: journal_mode is {mode!r}, WAL is required (is it on a network share?)")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # 32 MiB of page cache: device states take upserts in random order (device ids are random), and
    # their hot pages should stay put.
    conn.execute("PRAGMA cache_size = -32768")
    return conn


WAL_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, stated: the bound below depends on it
# While commits come, how often the checkpointer copies the WAL back. Measured against 0.2 s: the
# longer the first pass, the more the tail inside the writers' turn has to copy (p99 8.2 ms at 0.2 s
# against 8.8 without the checkpointer, 4.4 against 7.9 at 0.05 s).
CHECKPOINT_EVERY_S = 0.05
# The writer's own autocheckpoint stays as a backstop, should the checkpointer fall behind or stop.
BACKSTOP_PAGES = 4 * WAL_AUTOCHECKPOINT_PAGES


def bound_wal(conn: sqlite3.Connection, limit_bytes: int) -> None:
    """Keep the WAL file bounded although analysts' long reads run beside the writer.

    A reader pins the snapshot it started from: no checkpoint can copy frames past it back into the
    database, so while it reads the WAL only grows (by what is written meanwhile; Datasette's
    sql_time_limit_ms bounds how long one query pins it). Once it is done the next PASSIVE checkpoint
    (the Checkpointer's, or the writer's backstop autocheckpoint) copies everything back and the next
    write starts the WAL from the beginning; but
    SQLite reuses the file at its largest size, and journal_size_limit is what truncates it then, so
    the disk held returns to about the limit (or the WAL's size at a restart, whichever is larger).
    Nothing here runs a RESTART/TRUNCATE checkpoint: those wait for the readers, and every
    request would wait with them. -1: no limit (SQLite's default).
    """
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {int(limit_bytes)}")


class Checkpointer:
    """Copies the WAL back into the database on its own thread and connection, beside the writer.

    SQLite's autocheckpoint runs inside the COMMIT that crosses WAL_AUTOCHECKPOINT_PAGES: that commit
    copies some thousand pages into the file and fsyncs it, and every request in its group (and every
    one queued behind it) waits. With 2 million events stored, open-loop POST-10 windows at 640 req/s
    had a median p99 of 14.6 ms with it and 8.7 ms with no checkpoint at all in the window.

    A PASSIVE checkpoint on another connection runs while the writer goes on appending, but copies
    only the frames there were when it began, and the WAL starts over from its beginning (instead of
    growing) only when a write finds every frame copied: with commits coming, one is nearly always
    writing as the pass ends (a first version that stopped there let the WAL grow to 150 MiB in 5 s).
    So each pass copies the bulk outside the writers' turn, and once the WAL holds
    WAL_AUTOCHECKPOINT_PAGES frames a second pass inside the turn (the flock of
    SqliteStore._in_transaction, on a descriptor of its own, since flock does not exclude two holders
    of one descriptor) copies what was committed during the first: a few frames, and no writer can
    add more, so it completes and the next commit starts the WAL over. The WAL stays about as bounded
    as with autocheckpoint. The tail is short to copy but not to finish: SQLite fsyncs the file only
    in a pass that no commit overtook, so the tail's fsync would carry every page the first pass
    copied (on a 2-million-event store 9 ms at the median, 234 ms at most; passes chasing the writer
    outside the turn to fsync there were tried, README "tried and dropped"). So before taking the
    turn the checkpointer flushes those pages itself (_flush_file), and the fsync in the turn has only
    the tail's: the turn held 1.6 ms at the median against 3.3, 5.7 at p99 against 10.3 (2 million
    stored, 1000 POST-10 requests/s, 8 interleaved windows each). Commits wait for that short
    fsync, no longer for the copy. Measured before the flush (10 interleaved
    5-second windows each, 640 POST-10 requests/s): median p99 4.4 against 7.9 ms on an empty store,
    5.7 against 12.1 ms with 2 million events stored; at saturation, in two interleaved runs, 0-4%
    fewer events/s and 4-9% more CPU an event (not taken apart further).
    """

    def __init__(self, path: Path, synchronous: str, busy_timeout: int) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
        self.passes = 0  # checkpoints run, and of them inside the writers' turn (for tests)
        self.tails = 0
        self._failing = False
        self._file: os.stat_result | None = None  # the database file, and a descriptor SQLite holds on it
        self._fd: int | None = None

    def start(self) -> None:
        self._thread.start()

    def committed(self) -> None:
        """Called by the writer after a commit: there are frames to copy."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:  # the descriptor this connection opens on the file: it lives as long as the thread
            found = os.stat(self._path)
            file: os.stat_result | None = found
            held = _descriptors_of(found)
        except OSError:  # no /proc (not Linux): no flush, the tail's fsync carries it all
            file, held = None, set()
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        if file is not None and self._synchronous.upper() not in ("OFF", "0"):  # OFF: SQLite never syncs
            try:
                mine = _descriptors_of(file) - held
            except OSError:
                mine = set()
            self._file, self._fd = file, (min(mine) if len(mine) == 1 else None)
        turns = os.open(turns_path(self._path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout)}")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # the checkpoint's fsync follows it
            while not self._stopping:
                self._wake.wait()
                if self._stopping:
                    break
                time.sleep(CHECKPOINT_EVERY_S)  # let a pass's worth of commits gather
                self._wake.clear()
                try:
                    self._pass(conn, turns)
                    self._failing = False
                except sqlite3.Error as exc:  # the writer's commits report a failing store: say it once
                    if not self._failing:
                        log.warning("checkpoint failed: %s: %s", type(exc).__name__, exc)
                    self._failing = True
        finally:
            conn.close()
            os.close(turns)

    def _pass(self, conn: sqlite3.Connection, turns: int) -> None:
        _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.passes += 1
        # Even when this pass copied every frame it saw, a commit may have been writing frames as it
        # ran (the next write then finds them uncopied and the WAL does not start over): only a pass
        # inside the turn, with no writer mid-transaction, leaves the WAL whole copied.
        if frames < WAL_AUTOCHECKPOINT_PAGES:
            return
        self._flush_file()
        fcntl.flock(turns, fcntl.LOCK_EX)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.tails += 1
        finally:
            fcntl.flock(turns, fcntl.LOCK_UN)

    def _flush_file(self) -> None:
        """Write the pages the first pass copied to disk outside the turn, so the tail's fsync is short.

        Through the descriptor the checkpointer's own connection opened (found as the one that was
        new after it opened): a descriptor of our own would do, but closing it would drop every POSIX
        lock this process holds on the file, SQLite's included (SQLite keeps a closed connection's
        descriptor open while others hold locks, for that reason). Should that one not be found,
        any descriptor on the file; one closed and reused since it was found flushes some other
        file, which is harmless.
        """
        file = self._file
        if file is None:
            return
        try:
            fd = self._fd
            if fd is None or not _same_file(os.fstat(fd), file):
                fd = self._fd = _descriptor_of(file)
            if fd is not None:
                os.fdatasync(fd)
        except OSError:
            self._fd = None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _descriptors_of(file: os.stat_result) -> set[int]:
    """The descriptors this process has open on the file (Linux's /proc)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if _same_file(os.fstat(int(name)), file):
                found.add(int(name))
        except OSError:
            continue
    return found


def _descriptor_of(file: os.stat_result) -> int | None:
    """A descriptor this process has open on the file, or None."""
    return min(_descriptors_of(file), default=None)


def turns_path(path: Path) -> Path:
    """The lock file beside the database that orders this host's writers (`events.db.writer`)."""
    return path.with_name(path.name + ".writer")


@contextmanager
def writers_turn(path: Path) -> Iterator[None]:
    """A turn among this host's writers (SqliteStore._in_transaction), on a descriptor of its own
    (flock does not exclude two holders of one descriptor); closing it ends the turn."""
    turns = os.open(turns_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(turns, fcntl.LOCK_EX)
        yield
    finally:
        os.close(turns)


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: read-only file mode and query_only, whatever the SQL says."""
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute("PRAGMA query_only = ON")
    return conn


class SqliteStore:
    """The default store: an embedded SQLite file."""

    def __init__(
        self,
        path: Path,
        rules: SessionRules,
        *,
        synchronous: str = "FULL",
        busy_timeout: int = 10000,
        queue_max: int = 50000,
        queue_max_bytes: int = 64 * 1024 * 1024,
        group_max: int = 5000,
        on_commit: CommitHook | None = None,
        wal_limit: int = 64 * 1024 * 1024,
    ) -> None:
        self.path = path
        self._wal_limit = wal_limit
        self._rules = rules
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._on_commit = on_commit
        self._queue = WriteQueue(queue_max, queue_max_bytes, group_max)
        self._cv = threading.Condition()  # guards the queue's items between the loop and the writer
        self._closing = False
        self._failing = False  # the last commit failed for a cause of the store's (disk, I/O)
        self._dead: BaseException | None = None  # the writer thread stopped on an unexpected error
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._new_device_id = UuidPool()  # rotated device ids are minted on the writer thread
        self._turns: int | None = None  # the file whose lock orders this host's writers (see _in_transaction)
        self.checkpointer: Checkpointer | None = None

    async def start(self) -> None:
        """Open the file, apply migrations, start the writer thread."""
        self._loop = asyncio.get_running_loop()
        self._conn = await self._loop.run_in_executor(None, self._open)
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")  # the Checkpointer's work
        self.checkpointer = Checkpointer(self.path, self._synchronous, self._busy_timeout)
        self.checkpointer.start()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, self._synchronous, self._busy_timeout)
        bound_wal(conn, self._wal_limit)
        migrate(conn)
        self._turns = os.open(turns_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return conn

    @property
    def queue_depth(self) -> int:
        return self._queue.pending

    @property
    def healthy(self) -> bool:
        return self._dead is None and not self._failing

    def _enqueue(self, submission: Submission, future: asyncio.Future[AppendResult] | None) -> bool:
        item = None if self._closing else self._queue.admit(submission, future)
        if item is None:
            return False
        with self._cv:
            self._queue.items.append(item)
            self._cv.notify()
        return True

    async def append(self, submission: Submission) -> AppendResult:
        assert self._loop is not None, "store not started"
        if self._dead is not None:
            raise StoreFailed("the writer has stopped")
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        if not self._enqueue(submission, future):
            raise Overloaded("the write queue is full")
        return await future

    def append_nowait(self, submission: Submission) -> bool:
        return self._dead is None and self._enqueue(submission, None)

    def _run(self) -> None:
        group: list[Pending] = []
        try:
            while True:
                with self._cv:
                    while not self._queue.items and not self._closing:
                        if self._failing:  # idle while commits fail: see whether the store has healed
                            if not self._cv.wait(PROBE_SECONDS) and not self._queue.items:
                                self._probe()
                        else:
                            self._cv.wait()
                    if not self._queue.items:
                        break
                    group, size = self._queue.take()
                outcomes = self._commit([p.submission for p in group], size)
                if self.checkpointer is not None:
                    self.checkpointer.committed()
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._queue.settle, group, outcomes)
                group = []
        except BaseException as exc:
            log.critical("the SQLite writer stopped: %s", type(exc).__name__, exc_info=True)
            self._dead = exc
            with self._cv:
                group += list(self._queue.items)
                self._queue.items.clear()
            if self._loop is not None and not self._loop.is_closed():
                failed = [StoreFailed("the writer has stopped")] * len(group)
                self._loop.call_soon_threadsafe(self._queue.settle, group, failed)

    def _probe(self) -> None:
        try:
            self._in_transaction(
                lambda conn: conn.execute(
                    "INSERT INTO store_health (id, checked_ms) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET checked_ms = excluded.checked_ms",
                    (int(time.time() * 1000),),
                )
            )
        except sqlite3.Error:
            return
        log.warning("commits succeed again")
        self._failing = False

    def _in_transaction(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """One IMMEDIATE transaction, taken in turn with this host's other collector processes.

        SQLite's own wait for its write lock is a busy handler that sleeps and retries (1 to 25 ms
        steps), so with several `--workers` on one file a waiting writer slept through most of the
        other's release: p99 rose to 0.7 s. An exclusive flock on a file beside the database is
        handed over by the kernel the moment its holder lets go, and while a writer waits its queue
        grows, so each turn commits a bigger group for one fsync. SQLite's lock still decides (other
        tools, or a host whose flock is not shared, fall back to the busy handler).
        """
        assert self._conn is not None
        conn = self._conn
        if self._turns is not None:
            fcntl.flock(self._turns, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back by itself (disk full, I/O error): a second ROLLBACK would
                # fail and hide the cause.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if self._turns is not None:
                fcntl.flock(self._turns, fcntl.LOCK_UN)
        return result

    def _group(self, conn: sqlite3.Connection, subs: Sequence[Submission]) -> list[AppendResult]:
        found = sqlite_io.look_up(conn, group.wanted(subs))
        writes, results = group.decide(subs, found, self._rules, self._new_device_id)
        sqlite_io.write(conn, writes)
        return results

    def _commit(self, subs: list[Submission], size: int) -> Sequence[Outcome]:
        started = time.perf_counter()
        try:
            results: Sequence[Outcome] = self._in_transaction(lambda conn: self._group(conn, subs))
        except sqlite_io.DATA_ERRORS as exc:  # data SQLite refused: find the request(s) it came from
            # by type only: the message may quote the data
            log.warning("SQLite refused a request's data (%s)", type(exc).__name__)
            return self._without_unstorable(subs)
        except Exception as exc:  # noqa: BLE001 - disk full, I/O, corruption, memory: nothing committed
            log.error("commit of %d events failed: %s: %s", size, type(exc).__name__, exc)
            self._failing = True
            return [StoreFailed(str(exc))] * len(subs)
        self._failing = False
        if self._on_commit is not None:
            self._on_commit(size, time.perf_counter() - started)
        return results

    def _without_unstorable(self, subs: list[Submission]) -> Sequence[Outcome]:
        try:
            assert self._conn is not None
            bad = sqlite_io.unstorable(self._conn, subs)
        except Exception as exc:  # noqa: BLE001 - the probe itself failed: the store's fault
            log.error("finding the unstorable request failed: %s: %s", type(exc).__name__, exc)
            return [StoreFailed(str(exc))] * len(subs)
        if not bad:  # each request stores alone: the failure came from how they combined, so ours
            log.error("a group failed with a data error that no single request has")
            return [StoreFailed("the events could not be committed")] * len(subs)
        rest = [s for i, s in enumerate(subs) if i not in bad]
        return with_rejected(len(subs), bad, self._commit(rest, size_of(rest)) if rest else ())

    async def lifecycle(self, now_ms: int, retention_days: int, cookie_max_age_s: int) -> lifecycle.Removed:
        """One lifecycle run (retention, culling), on a connection of its own: reads beside the writer,
        deletes in short transactions in the writers' turn."""

        def run() -> lifecycle.Removed:
            conn = connect(self.path, self._synchronous, self._busy_timeout)
            try:
                return lifecycle.sqlite_run(
                    conn, now_ms, retention_days, cookie_max_age_s, lambda: writers_turn(self.path)
                )
            finally:
                conn.close()

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        async with aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            await db.execute("PRAGMA query_only = ON")
            async with db.execute(sql, params) as cursor:
                return [tuple(r) for r in await cursor.fetchall()]

    async def close(self) -> None:
        """Stop taking requests, commit everything queued, stop the writer and close the file."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            await asyncio.sleep(0)  # let the last settle callbacks run
        if self.checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.checkpointer.stop)
            self.checkpointer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._turns is not None:
            os.close(self._turns)
            self._turns = None
