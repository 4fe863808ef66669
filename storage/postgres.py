"""The PostgreSQL store: replicas on several hosts share one database; group commit on a pool.

Requests queue their rows; the writer task takes what is queued, runs one transaction (lock the
devices in order, claim the event ids, let storage.group decide, write) and commits; only then are
the requests answered. One writer per process, as with SQLite: groups commit in the order they were
queued (a request's bad rows before the next request's events), and replicas supply the concurrency.
`synchronous_commit` stays on, so a 2xx survives a crash of PostgreSQL and of its host. A connection
lost before COMMIT returned leaves the outcome
unknown: the requests get 503, and their retry is safe because event ids are claimed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from storage import group, lifecycle, pg_io, pg_schema
from storage.base import AppendResult, Overloaded, StoreFailed, Submission
from storage.ids import UuidPool
from storage.pg_io import Conn
from storage.queue import Outcome, WriteQueue, size_of, with_rejected
from storage.sessions import SessionRules

log = logging.getLogger(__name__)
CommitHook = Callable[[int, float], None]
PROBE_SECONDS = 1.0
CONNECT_SECONDS = 30.0  # how long start() waits for the server (replicas may start before it)


def describe(exc: BaseException) -> str:
    """An error for the log: a server error by its SQLSTATE only (its message may quote a row's
    values), a connection error (host, port, reason) as it is."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    return f"{type(exc).__name__}: {exc}"


COMMAND_MARGIN_S = 1.0  # past statement_timeout: the server's own cancel comes first when it can


class PostgresStore:
    """The store for replicas on several hosts."""

    def __init__(
        self,
        url: str,
        rules: SessionRules,
        *,
        pool_size: int = 4,
        statement_timeout_ms: int = 10000,
        queue_max: int = 50000,
        queue_max_bytes: int = 64 * 1024 * 1024,
        group_max: int = 5000,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.url = url
        self._rules = rules
        self._pool_size = pool_size
        self._timeout_ms = statement_timeout_ms
        self._on_commit = on_commit
        self._queue = WriteQueue(queue_max, queue_max_bytes, group_max)
        self._ready = asyncio.Event()
        self._closing = False
        self._failing = False
        self._pool: asyncpg.Pool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._new_device_id = UuidPool()

    async def start(self) -> None:
        """Connect (waiting for the server a while), migrate if this role may, start the writers."""
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    # the server enforces statement_timeout only while it runs; a server that stops
                    # answering (a partition that keeps the connection open) is bounded here: 503
                    command_timeout=self._timeout_ms / 1000 + COMMAND_MARGIN_S,
                    server_settings={
                        "statement_timeout": str(self._timeout_ms),
                        "synchronous_commit": "on",
                        "TimeZone": "UTC",
                        "application_name": "anon-collector",
                    },
                )
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if time.monotonic() > deadline or isinstance(
                    exc, asyncpg.InvalidAuthorizationSpecificationError
                ):
                    raise
                await asyncio.sleep(0.5)
        async with self._pool.acquire() as conn:
            await pg_schema.check_encoding(conn)
            if await pg_schema.pending(conn):
                try:
                    await pg_schema.migrate(conn)
                except asyncpg.InsufficientPrivilegeError:
                    raise RuntimeError(
                        "the database schema is not up to date and this role may not migrate it: "
                        "run `python -m collector migrate --db <the owner's URL>`"
                    ) from None
            # behind a busy table only this month is worth waiting for; the lifecycle makes the rest
            if not await pg_schema.ensure_partitions(conn, pg_schema.PARTITION_LOCK_WAIT_MS):
                if await pg_schema.this_month_made(conn):
                    log.warning("partitions: a table was busy; the months ahead are made at the next run")
                else:
                    await pg_schema.ensure_partitions(conn)
        self._tasks = [asyncio.create_task(self._writer())]

    @property
    def queue_depth(self) -> int:
        return self._queue.pending

    @property
    def healthy(self) -> bool:
        return not self._failing

    def _enqueue(self, submission: Submission, future: asyncio.Future[AppendResult] | None) -> bool:
        item = None if self._closing else self._queue.admit(submission, future)
        if item is None:
            return False
        self._queue.items.append(item)
        self._ready.set()
        return True

    async def append(self, submission: Submission) -> AppendResult:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        if not self._enqueue(submission, future):
            raise Overloaded("the write queue is full")
        return await future

    def append_nowait(self, submission: Submission) -> bool:
        return self._enqueue(submission, None)

    async def _writer(self) -> None:
        while True:
            if not self._queue.items:
                if self._closing:
                    return
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), PROBE_SECONDS if self._failing else None)
                except TimeoutError:
                    await self._probe()
                continue
            batch, size = self._queue.take()
            try:
                outcomes = await self._commit([p.submission for p in batch], size)
            except BaseException as exc:  # cancelled at close, or a bug: nobody is left waiting
                self._queue.settle(batch, [StoreFailed("the writer has stopped")] * len(batch))
                if not isinstance(exc, Exception):
                    raise
                log.critical("a PostgreSQL writer failed: %s", type(exc).__name__, exc_info=True)
                self._failing = True
                continue
            self._queue.settle(batch, outcomes)

    async def _probe(self) -> None:
        if not self._failing or self._pool is None:
            return
        try:
            async with self._pool.acquire(timeout=5) as conn:
                await conn.execute(
                    "INSERT INTO store_health (id, checked_ms) VALUES (1, $1) "
                    "ON CONFLICT (id) DO UPDATE SET checked_ms = excluded.checked_ms",
                    int(time.time() * 1000),
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return
        log.warning("commits succeed again")
        self._failing = False

    async def _group(self, conn: Conn, subs: Sequence[Submission]) -> list[AppendResult]:
        opted = {s.opted_out for s in subs if s.opted_out}
        now_ms = max(s.now_ms for s in subs)
        found, placeholders = await pg_io.look_up(conn, group.wanted(subs), opted, now_ms)
        writes, results = group.decide(subs, found, self._rules, self._new_device_id)
        await pg_io.write(conn, writes, placeholders)
        return results

    async def _commit(self, subs: list[Submission], size: int) -> Sequence[Outcome]:
        assert self._pool is not None
        started = time.perf_counter()
        try:
            async with self._pool.acquire(timeout=self._timeout_ms / 1000) as conn, conn.transaction():
                results: Sequence[Outcome] = await self._group(conn, subs)
        except pg_io.DATA_ERRORS as exc:
            log.warning("PostgreSQL refused a request's data (%s)", type(exc).__name__)
            return await self._without_unstorable(subs)
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # a connection lost mid-release (seen under pg_terminate_backend)
        ) as exc:
            # server down or restarting, connection lost (COMMIT's outcome unknown), timeout: 503
            log.error("commit of %d events failed: %s", size, describe(exc))
            self._failing = True
            return [StoreFailed(str(exc))] * len(subs)
        self._failing = False
        if self._on_commit is not None:
            self._on_commit(size, time.perf_counter() - started)
        return results

    async def _without_unstorable(self, subs: list[Submission]) -> Sequence[Outcome]:
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                bad = await pg_io.unstorable(conn, subs)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error("finding the unstorable request failed: %s", type(exc).__name__)
            return [StoreFailed(str(exc))] * len(subs)
        if not bad:
            log.error("a group failed with a data error that no single request has")
            return [StoreFailed("the events could not be committed")] * len(subs)
        rest = [s for i, s in enumerate(subs) if i not in bad]
        return with_rejected(len(subs), bad, await self._commit(rest, size_of(rest)) if rest else ())

    async def lifecycle(self, now_ms: int, retention_days: int, cookie_max_age_s: int) -> lifecycle.Removed:
        """One lifecycle run (retention, culling) through the schema's published function, and the
        partitions ahead (made at start only, they would run out under a replica up for longer)."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            if not await pg_schema.ensure_partitions(conn, pg_schema.PARTITION_LOCK_WAIT_MS):
                log.warning("partitions: a table was busy; the months ahead are made at the next run")
            return await lifecycle.pg_run(conn, now_ms, retention_days, cookie_max_age_s)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            return [tuple(r) for r in await conn.fetch(sql, *params)]

    async def close(self) -> None:
        """Stop taking requests, commit everything queued, stop the writers and close the pool."""
        self._closing = True
        self._ready.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)
            self._pool = None
