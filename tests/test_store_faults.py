"""Store faults are ours (503, /ready 503), data faults are the request's (400, that request only)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from collector.config import Config
from collector.handlers import STATE
from storage.base import Overloaded, RejectedData, Submission
from storage.sessions import SessionRules
from storage.sqlite import SqliteStore
from tests.conftest import TP2, batch, ev, event_row, rows
from tests.procs import Collector, wait_http

RULES = SessionRules(timeout_ms=1_800_000)


row = event_row


async def test_one_unstorable_request_fails_alone_and_the_group_commits_once(tmp_path: Path) -> None:
    commits: list[int] = []
    store = SqliteStore(tmp_path / "s.db", RULES, on_commit=lambda n, _s: commits.append(n))
    await store.start()
    store._cv.acquire()  # hold the writer so that all requests land in one group
    try:
        futures = [
            asyncio.ensure_future(store.append(Submission(0, None, [row(f"e{i}")]))) for i in range(10)
        ]
        bad = asyncio.ensure_future(store.append(Submission(0, None, [row("bad", useragent="x\udcff")])))
        await asyncio.sleep(0.05)
    finally:
        store._cv.release()
    results = await asyncio.gather(*futures, bad, return_exceptions=True)
    await store.close()
    assert isinstance(results[-1], RejectedData)
    assert all(r.stored == 1 for r in results[:-1])  # type: ignore[union-attr]
    assert commits == [10]  # one transaction for the rest, not one per request


async def test_a_corrupt_database_is_a_503_not_a_400(tmp_path: Path, cfg: Config, make_client: Any) -> None:
    client = await make_client(cfg)
    for i in range(200):
        await client.get("/i", params=ev(eid=f"pre-{i}", url="https://x.test/" + "p" * 500))
    await client.close()
    # overwrite the dedupe index's pages with garbage, as a bad disk would: the schema still reads,
    # so the collector starts, but the next insert meets a malformed page
    conn = sqlite3.connect(cfg.db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'events_dedupe'")]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    assert pages
    with open(cfg.db, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * page_size)
            f.write(b"\xde\xad" * (page_size // 2))
    client = await make_client(cfg)
    resp = await client.post(TP2, json=batch(ev(eid="after-corruption")))
    assert resp.status == 503, await resp.text()
    assert "Retry-After" in resp.headers


async def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db", RULES, queue_max=1000, queue_max_bytes=10_000)
    await store.start()
    store._cv.acquire()
    try:
        first = asyncio.ensure_future(store.append(Submission(0, None, [row("a")], nbytes=9_000)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await store.append(Submission(0, None, [row("b")], nbytes=2_000))
    finally:
        store._cv.release()
    assert (await first).stored == 1
    await store.close()


async def test_a_dead_writer_is_noticed(cfg: Config, make_client: Any) -> None:
    client = await make_client(cfg)
    store = client.app[STATE].store

    def boom(*_a: Any) -> Any:
        raise SystemExit("writer killed")

    store._commit = boom  # a fault inside the writer thread, as an unexpected bug would be
    resp = await asyncio.wait_for(client.get("/i", params=ev(eid="x")), 5)
    assert resp.status == 503
    assert (await client.get("/ready")).status == 503
    resp = await asyncio.wait_for(client.get("/i", params=ev(eid="y")), 5)
    assert resp.status == 503


async def test_an_older_replica_reads_a_newer_device_state(cfg: Config, make_client: Any) -> None:
    """A rolling upgrade: a later migration adds a device_state column; this version keeps working."""
    client = await make_client(cfg)
    resp = await client.get("/i", params=ev(eid="a"))
    cookie = resp.cookies["sp"].value
    await client.close()
    conn = sqlite3.connect(cfg.db)
    conn.execute("ALTER TABLE device_state ADD COLUMN added_later TEXT DEFAULT 'x'")
    conn.execute("CREATE TABLE IF NOT EXISTS _probe (x)")
    conn.commit()
    conn.close()
    client = await make_client(cfg)
    resp = await client.get("/i", params=ev(eid="b"), headers={"Cookie": f"sp={cookie}"})
    assert resp.status == 200
    got = rows(cfg.db, "select session_id, session_index from events order by event_id")
    assert got[0]["session_id"] == got[1]["session_id"]


def ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)


needs_mount = pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8)")


@pytest.mark.slow
@needs_mount
async def test_disk_full_turns_ready_503_and_recovers(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]
    done = subprocess.run(cmd, check=False, capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs (the test runs as root in CI): {done.stderr.decode()}")
    try:
        proc = Collector(mnt / "full.db", env={"COLLECTOR_COOKIE_SECRET": "x"}, log=tmp_path / "full.log")
        proc.start()
        try:
            filler = mnt / "filler"
            with open(filler, "wb") as f:  # fill the disk, leaving the database nowhere to grow
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            statuses = []
            for i in range(40):
                q = "&".join(
                    f"{k}={v}" for k, v in ev(eid=f"f{i}", url="https://x.test/" + "u" * 2000).items()
                )
                try:
                    with urllib.request.urlopen(f"{proc.url}/i?{q}", timeout=10) as r:
                        statuses.append(r.status)
                except urllib.error.HTTPError as e:
                    e.close()
                    statuses.append(e.code)
            assert 503 in statuses and not set(statuses) - {200, 503}, statuses
            assert ready(proc.url) == 503  # the balancer sends the traffic elsewhere
            filler.unlink()
            wait_http(proc.url + "/ready", status=200, timeout=10)  # healed by itself, no request needed
            q = "&".join(f"{k}={v}" for k, v in ev(eid="after").items())
            with urllib.request.urlopen(f"{proc.url}/i?{q}", timeout=10) as r:
                assert r.status == 200
        finally:
            assert proc.stop() == 0
        log = proc.log.read_text()
        assert "cannot rollback" not in log
        assert "full" in log  # the real cause: database or disk is full
        acked = [r for r in rows(mnt / "full.db", "select event_id from events")]
        assert any(r[0] == "after" for r in acked)
    finally:
        time.sleep(0.1)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
