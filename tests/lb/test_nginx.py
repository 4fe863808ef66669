"""Real nginx (deploy/nginx-proxy.conf, deploy's upstream block) in front of two collector processes:
client addresses, SP-Anonymous, sessions across replicas, rolling restarts. Every test runs on two
topologies: one host (two processes on one SQLite file, on loopback), and several hosts (each
collector in a network namespace of its own, PostgreSQL in a third, nginx on the host in front)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import pg
from tests.conftest import rows as store_rows
from tests.lb import hosts
from tests.lb.harness import CLIENT_ADDR, PROXY_ADDR, TP2, Answer, Client, Nginx, event, nginx_available
from tests.lb.hosts import Host
from tests.pg import PgServer
from tests.procs import Collector, wait_http

pytestmark = [
    pytest.mark.lb,
    pytest.mark.skipif(not nginx_available(), reason="nginx not installed (apt-get install nginx-light)"),
]

COOKIE_SECRET = "lb-test-one-secret-for-all-replicas"
DRAIN_SECONDS = "1.5"
# Every address header a client could forge; none of these values may end up stored.
FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Real-IP": "6.6.6.7",
    "Forwarded": "for=6.6.6.8",
    "CF-Connecting-IP": "6.6.6.9",
    "True-Client-IP": "6.6.6.10",
    "Fastly-Client-IP": "6.6.6.11",
    "X-Client-IP": "6.6.6.12",
}


@dataclass
class Stack:
    db: Path | str
    replicas: list[Collector]
    nginx: Nginx
    proxy: str  # the address nginx reaches the collectors from (the one they trust)
    outsider: str  # an address a client reaching a collector directly, past nginx, comes from

    def client(self) -> Client:
        return Client(self.nginx.port)

    def direct(self, replica: Collector, source: str) -> Client:
        """A connection straight to a replica, from source."""
        return Client(replica.port, host=replica.host, source=source)

    def diagnostics(self) -> str:
        parts = [f"--- nginx error.log (tail)\n{self.nginx.log_tail()}"]
        for r in self.replicas:
            text = r.log.read_text(errors="replace") if r.log.exists() else ""
            parts.append(f"--- collector :{r.port} log (tail)\n" + "\n".join(text.splitlines()[-40:]))
        return "\n".join(parts)


def rows(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [dict(zip(r.keys(), r, strict=True)) for r in store_rows(db, sql, params)]


def by_eid(db: Path | str, *eids: str) -> dict[str, dict[str, Any]]:
    marks = ",".join("?" * len(eids))
    found = rows(db, f"SELECT * FROM events WHERE event_id IN ({marks})", eids)
    return {r["event_id"]: r for r in found}


@pytest.fixture(scope="module")
def several_hosts() -> Iterator[dict[str, Host]]:
    """Two collector hosts and a database host, as network namespaces (made once for the module)."""
    if (why := hosts.why_not()) is not None:
        pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)
    with hosts.hosts(["a", "b", "db"]) as made:
        yield made


@pytest.fixture(scope="module")
def db_host(several_hosts: dict[str, Host]) -> Iterator[PgServer]:
    """PostgreSQL on the database host, listening on its bridge address only."""
    if (why := pg.available()) is not None:
        pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)
    db = several_hosts["db"]
    server = PgServer(
        Path(tempfile.mkdtemp(prefix="collector-pg-hosts-")), host=db.addr, port=5432, netns=db.netns
    )
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(params=["one-host-sqlite", "several-hosts-postgres"])
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    env = {
        "COLLECTOR_FORWARDED_HEADER": "x-forwarded-for",  # as deploy/compose.yaml
        "COLLECTOR_COOKIE_SECRET": COOKIE_SECRET,
        "COLLECTOR_DRAIN_SECONDS": DRAIN_SECONDS,
    }
    if request.param == "one-host-sqlite":
        db: Path | str = tmp_path / "events.db"
        bind = PROXY_ADDR
        replicas = [
            Collector(
                db,
                env={**env, "COLLECTOR_TRUSTED_PROXIES": f"{bind}/32"},
                log=tmp_path / f"collector-{i}.log",
            )
            for i in range(2)
        ]
    else:
        several: dict[str, Host] = request.getfixturevalue("several_hosts")
        server: PgServer = request.getfixturevalue("db_host")
        db = server.url(server.new_database())
        bind = hosts.BRIDGE_ADDR  # nginx reaches the collectors' hosts from its address on the bridge
        replicas = [
            Collector(
                db,
                host=several[name].addr,
                port=8080,
                env={**env, "COLLECTOR_TRUSTED_PROXIES": f"{bind}/32"},
                log=tmp_path / f"collector-{name}.log",
                prefix=several[name].prefix(),
            )
            for name in ("a", "b")
        ]
    nginx = Nginx(tmp_path / "nginx", [r.address for r in replicas], bind=bind)
    try:
        # Started together on an empty store, as `docker compose up --scale collector=2` does.
        for r in replicas:
            r.start(wait=False)
        for r in replicas:
            wait_http(r.url + "/ready")
        nginx.start()
        yield Stack(db, replicas, nginx, bind, CLIENT_ADDR if bind == PROXY_ADDR else hosts.OUTSIDER_ADDR)
    finally:
        if nginx.proc is not None:
            nginx.stop()
        running = [r for r in replicas if r.proc is not None and r.proc.poll() is None]
        for r in running:  # all drain at once
            r.send_signal(signal.SIGTERM)
        for r in running:
            r.stop()


def test_stored_address_is_the_one_nginx_saw_and_cannot_be_forged(stack: Stack) -> None:
    plain, forged = str(uuid.uuid4()), str(uuid.uuid4())
    c = stack.client()
    try:
        assert c.post([event(plain)]).status == 200
        assert c.post([event(forged)], headers=FORGED).status == 200
    finally:
        c.close()
    stored = by_eid(stack.db, plain, forged)
    # The collectors saw only nginx (127.0.0.1, trusted); the address comes from nginx's XFF entry.
    assert stored[plain]["user_ipaddress"] == CLIENT_ADDR
    assert stored[forged]["user_ipaddress"] == CLIENT_ADDR
    leaked = {k: v for k, v in stored[forged].items() if "6.6.6." in str(v)}
    assert leaked == {}

    # Control: the collector does believe a trusted hop's rightmost XFF entry. So the forged value was
    # kept out only because nginx appended the real peer after it, as deploy/nginx-proxy.conf says.
    direct_trusted, direct_untrusted = str(uuid.uuid4()), str(uuid.uuid4())
    replica = stack.replicas[0]
    for eid, source in ((direct_trusted, stack.proxy), (direct_untrusted, stack.outsider)):
        d = stack.direct(replica, source)
        try:
            assert d.post([event(eid)], headers={"X-Forwarded-For": "6.6.6.6"}).status == 200
        finally:
            d.close()
    stored = by_eid(stack.db, direct_trusted, direct_untrusted)
    assert stored[direct_trusted]["user_ipaddress"] == "6.6.6.6"
    assert stored[direct_untrusted]["user_ipaddress"] == stack.outsider


def test_sp_anonymous_passes_through_nginx(stack: Stack) -> None:
    anon, named, anon_with_cookie = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    c = stack.client()
    try:
        a_anon = c.post([event(anon)], headers={"SP-Anonymous": "*", **FORGED})
        a_named = c.post([event(named)])
        cookie = a_named.cookie()
        assert cookie, a_named.set_cookies()
        # A browser that switched to anonymous tracking still sends its old cookie.
        a_back = c.post([event(anon_with_cookie)], headers={"SP-Anonymous": "*", "Cookie": f"sp={cookie}"})
    finally:
        c.close()
    assert (a_anon.status, a_named.status, a_back.status) == (200, 200, 200)
    assert a_anon.set_cookies() == []
    assert a_back.cookie() == ""  # the old cookie is expired, no new one is issued

    stored = by_eid(stack.db, anon, named, anon_with_cookie)
    device = cookie.split(".")[0]
    # The same client, the same path through nginx: the address and device id are stored when allowed...
    assert stored[named]["user_ipaddress"] == CLIENT_ADDR
    assert stored[named]["network_userid"] == device
    assert stored[named]["anonymous"] == 0
    # ...and nowhere when SP-Anonymous is sent.
    for eid in (anon, anon_with_cookie):
        row = stored[eid]
        assert row["anonymous"] == 1
        assert row["user_ipaddress"] is None
        assert row["network_userid"] is None
        assert [k for k, v in row.items() if CLIENT_ADDR in str(v) or "6.6.6." in str(v)] == []
        assert [k for k, v in row.items() if device in str(v)] == []


def test_one_device_over_both_replicas_is_one_session(stack: Stack) -> None:
    eids = [str(uuid.uuid4()) for _ in range(12)]
    answers: list[Answer] = []
    c = stack.client()
    try:
        answers.append(c.post([event(eids[0])]))
        cookie = answers[0].cookie()
        assert cookie
        for eid in eids[1:]:
            answers.append(c.post([event(eid)], headers={"Cookie": f"sp={cookie}"}))
    finally:
        c.close()
    assert [a.status for a in answers] == [200] * len(eids)
    served = Counter(a.upstream for a in answers)
    assert set(served) == {r.address for r in stack.replicas}, served
    # Both replicas sign with the one secret: each refreshes the very same cookie value.
    assert {a.cookie() for a in answers} == {cookie}

    device = cookie.split(".")[0]
    stored = by_eid(stack.db, *eids)
    assert len(stored) == len(eids)
    assert {r["network_userid"] for r in stored.values()} == {device}
    session_ids = {r["session_id"] for r in stored.values()}
    assert len(session_ids) == 1 and None not in session_ids
    assert {r["session_index"] for r in stored.values()} == {1}
    sessions = rows(stack.db, "SELECT * FROM sessions WHERE device_id = ?", (device,))
    assert len(sessions) == 1
    assert sessions[0]["session_id"] in session_ids
    assert sessions[0]["session_index"] == 1
    assert sessions[0]["event_count"] == len(eids)


def wait_until(check: Callable[[], bool], what: str, stack: Stack, bound: float = 60.0) -> None:
    """Poll a condition with a generous bound (a hang guard, not a performance assertion)."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{stack.diagnostics()}")
        time.sleep(0.05)


@dataclass
class Sent:
    eids: list[str]
    status: int | str  # an HTTP status, or the exception the client saw
    upstream: str


def test_rolling_restart_loses_nothing(stack: Stack) -> None:
    sent: list[Sent] = []
    lock = threading.Lock()
    stop = threading.Event()
    max_requests = 20_000  # per sender; a bound in case the orchestration hangs

    def sender() -> None:
        c = stack.client()
        try:
            for _ in range(max_requests):
                if stop.is_set():
                    break
                eids = [str(uuid.uuid4()), str(uuid.uuid4())]
                try:
                    a = c.post([event(e) for e in eids])
                    record = Sent(eids, a.status, a.header("X-Upstream") or "")
                except Exception as exc:  # noqa: BLE001 - any failure is what the test counts
                    record = Sent(eids, repr(exc), "")
                with lock:
                    sent.append(record)
        finally:
            c.close()

    def answers_from(replica: Collector, since: int) -> int:
        with lock:
            tail = sent[since:]
        me = replica.address
        return sum(1 for s in tail if s.status == 200 and s.upstream.split(",")[-1].strip() == me)

    def serving_again(replica: Collector, since: int) -> bool:
        return answers_from(replica, since) >= 50

    threads = [threading.Thread(target=sender, name=f"sender-{i}") for i in range(3)]
    for t in threads:
        t.start()
    exit_codes: list[int] = []
    try:
        wait_until(lambda: len(sent) >= 100, "traffic to start", stack)
        for replica in stack.replicas:
            exit_codes.append(replica.stop())  # SIGTERM: drain, finish, commit, exit
            restarted_at = len(sent)
            replica.start()  # same port, same database
            # Back in nginx's rotation (after fail_timeout) before the next replica goes down.
            wait_until(
                functools.partial(serving_again, replica, restarted_at),
                f"replica :{replica.port} to serve again",
                stack,
            )
        wait_until(lambda: len(sent) >= restarted_at + 200, "traffic after the restarts", stack)
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    failed = [s for s in sent if s.status != 200]
    failovers = sum(1 for s in sent if "," in s.upstream)
    print(f"rolling restart: {len(sent)} requests, {len(failed)} failed, {failovers} failed over")
    assert exit_codes == [0, 0], stack.diagnostics()
    assert failed == [], f"{len(failed)} failed, first: {failed[:5]}\n{stack.diagnostics()}"

    acknowledged = {e for s in sent for e in s.eids}
    counts = {
        r["event_id"]: r["n"]
        for r in rows(
            stack.db, "SELECT event_id, count(*) AS n FROM events WHERE app_id = 'lb-test' GROUP BY event_id"
        )
    }
    missing = acknowledged - counts.keys()
    assert missing == set(), f"{len(missing)} acknowledged events not stored\n{stack.diagnostics()}"
    # A batch resent by nginx after a lost answer must not be stored twice.
    assert [e for e, n in counts.items() if n > 1] == []
    # Both replicas took traffic before and after their restart.
    served = Counter(s.upstream.split(",")[-1].strip() for s in sent)
    assert set(served) == {r.address for r in stack.replicas}, served


def test_preflight_passes_and_metrics_stay_internal(stack: Stack) -> None:
    c = stack.client()
    try:
        pre = c.request(
            "OPTIONS",
            TP2,
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,sp-anonymous",
            },
        )
        via_nginx = c.request("GET", "/metrics")
    finally:
        c.close()
    assert pre.status == 200
    assert pre.header("Access-Control-Allow-Origin") == "https://shop.example"
    assert (pre.header("Access-Control-Allow-Credentials") or "").lower() == "true"
    assert "sp-anonymous" in (pre.header("Access-Control-Allow-Headers") or "").lower()
    # deploy/nginx-proxy.conf hides /metrics from the public side; the replica itself serves it.
    assert via_nginx.status == 404
    d = stack.direct(stack.replicas[0], stack.proxy)
    try:
        direct = d.request("GET", "/metrics")
    finally:
        d.close()
    assert direct.status == 200
    assert b"# TYPE" in direct.body
