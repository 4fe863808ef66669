"""Real collector processes: SIGKILL mid-stream, SIGTERM drain, several processes on one store."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TP2, batch, ev, rows
from tests.procs import Collector

pytestmark = pytest.mark.slow
STORES = ("sqlite", "postgres")  # the tests that take a store_db run on both
SECRET = {"COLLECTOR_COOKIE_SECRET": "process-test-secret"}


async def _stream(
    url: str,
    acked: list[str],
    stop_at: float,
    workers: int = 8,
    size: int = 10,
    failures: list[str] | None = None,
) -> None:
    """Send batches with unique eids until stop_at; record every eid answered 2xx."""

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            eids = [str(uuid.uuid4()) for _ in range(size)]
            try:
                async with session.post(url + TP2, json=batch(*[ev(eid=e) for e in eids])) as resp:
                    await resp.read()
                    if resp.status == 200:
                        acked.extend(eids)
                    elif failures is not None:
                        failures.append(str(resp.status))
            except aiohttp.ClientError as exc:
                if failures is not None:
                    failures.append(type(exc).__name__)
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))


def _stored(db: Path | str) -> set[str]:
    if isinstance(db, str):
        return {r[0] for r in rows(db, "select event_id from events")}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r[0] for r in conn.execute("select event_id from events")}
    finally:
        conn.close()


async def test_sigkill_loses_nothing_acknowledged(store_db: Path | str) -> None:
    db = store_db
    proc = Collector(db, env=SECRET).start()
    acked: list[str] = []
    loop = asyncio.get_running_loop()
    loop.call_later(1.5, proc.kill)  # SIGKILL mid-stream: no handler, no flush, no goodbye
    await _stream(proc.url, acked, time.monotonic() + 2.5)
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL
    assert len(acked) > 100  # the stream really was mid-flight
    restarted = Collector(db, port=proc.port, env=SECRET).start()
    try:
        missing = set(acked) - _stored(db)
        assert not missing, f"{len(missing)} acknowledged events lost"
    finally:
        assert restarted.stop() == 0
    assert _stored(db) >= set(acked)


async def test_sigterm_drains_then_exits_zero(store_db: Path | str) -> None:
    db = store_db
    proc = Collector(db, env={**SECRET, "COLLECTOR_DRAIN_SECONDS": "1.5"}).start()
    acked: list[str] = []
    failures: list[str] = []
    stream = asyncio.ensure_future(_stream(proc.url, acked, time.monotonic() + 1.2, failures=failures))
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as s:
        async with s.get(proc.url + "/ready") as r:
            assert r.status == 503  # the balancer is told at once
        async with s.get(proc.url + "/health") as r:
            assert r.status == 200  # still serving during the drain
    await stream
    assert failures == []  # nothing refused while draining
    assert proc.proc is not None and proc.proc.wait(30) == 0
    assert set(acked) <= _stored(db) and acked


async def test_two_processes_share_one_session_and_restart_continues(store_db: Path | str) -> None:
    db = store_db
    a, b = Collector(db, env=SECRET).start(), Collector(db, env=SECRET).start()
    try:
        cookie = ""
        # no keep-alive: the restarted process listens on the same port as the one that stopped
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for i in range(10):
                target = (a, b)[i % 2]
                headers = {"Cookie": f"sp={cookie}"} if cookie else {}
                async with s.post(
                    target.url + TP2, json=batch(ev(eid=f"alt-{i}", sid="sid-1")), headers=headers
                ) as r:
                    assert r.status == 200
                    cookie = r.cookies["sp"].value
            assert b.stop() == 0
            b = Collector(db, port=b.port, env=SECRET).start()  # a restart between two events
            async with s.post(
                b.url + TP2,
                json=batch(ev(eid="after-restart", sid="sid-1")),
                headers={"Cookie": f"sp={cookie}"},
            ) as r:
                assert r.status == 200
            async with s.post(
                a.url + TP2, json=batch(ev(eid="new-sid", sid="sid-2")), headers={"Cookie": f"sp={cookie}"}
            ) as r:
                assert r.status == 200
    finally:
        a.stop()
        b.stop()
    got = {r[0]: r[1] for r in rows(db, "select event_id, session_id || ':' || session_index from events")}
    sessions = {v for k, v in got.items() if k != "new-sid"}
    assert len(sessions) == 1 and sessions.pop().endswith(":1")
    assert got["new-sid"].endswith(":2")  # the next session, index consecutive across processes


async def test_workers_share_the_port_the_store_and_the_metrics(tmp_path: Path) -> None:
    db = tmp_path / "workers.db"
    proc = Collector(db, env=SECRET, args=["--workers", "2"]).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for i in range(40):
                async with s.get(proc.url + "/i", params=ev(eid=f"w-{i}")) as r:
                    assert r.status == 200
            async with s.get(proc.url + "/metrics") as r:
                text = await r.text()
        assert 'collector_events_stored_total{anonymous="false"} 40.0' in text  # summed over both workers
    finally:
        assert proc.stop() == 0
    assert len(_stored(db)) == 40


def test_a_started_collector_used_as_a_context_is_stopped_at_its_end(tmp_path: Path) -> None:
    # `with Collector(db).start() as c` spawned a second process on entry and left the first running
    # (the bench's prefill seed collector ran on through the whole benchmark)
    with Collector(tmp_path / "events.db").start() as c:
        url = c.url
    with pytest.raises(OSError):  # nobody serves the port any more
        urllib.request.urlopen(url + "/health", timeout=5)
