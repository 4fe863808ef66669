"""deploy/compose.yaml's `postgres` profile in real containers: nginx, 2 replicas, PostgreSQL 15."""

from __future__ import annotations

import uuid

import pytest

from tests.docker import stack
from tests.docker.stack import GATEWAY, Compose, inspect
from tests.lb.harness import Client, event

pytestmark = pytest.mark.docker


def test_postgres_profile_stores_through_nginx_one_session_across_replicas(compose_pg: Compose) -> None:
    c = compose_pg
    assert inspect(c.containers("postgres")[0])["State"]["Health"]["Status"] == "healthy"
    replicas = c.replicas
    assert len(replicas) == 2
    before = {r: stack.events_stored(r) for r in replicas}
    eids = [str(uuid.uuid4()) for _ in range(20)]
    anon = str(uuid.uuid4())
    client = Client(c.port, host="127.0.0.1", source="127.0.0.1")
    try:
        first = client.post([event(eids[0], aid="docker-pg")], headers={"X-Forwarded-For": "6.6.6.6"})
        assert first.status == 200
        cookie = first.cookie()
        assert cookie
        for eid in eids[1:]:
            assert (
                client.post([event(eid, aid="docker-pg")], headers={"Cookie": f"sp={cookie}"}).status == 200
            )
        assert client.post([event(anon, aid="docker-pg")], headers={"SP-Anonymous": "*"}).status == 200
    finally:
        client.close()
    # Both replicas committed some of them, into the one PostgreSQL database...
    gained = {r: stack.events_stored(r) - before[r] for r in replicas}
    assert all(n > 0 for n in gained.values()), gained
    stored = c.by_eid(*eids, anon)
    assert set(stored) == {*eids, anon}
    device = cookie.split(".")[0]
    # ...as one device, one session, the address nginx saw (not the forged one).
    assert {stored[e]["network_userid"] for e in eids} == {device}
    assert len({stored[e]["session_id"] for e in eids}) == 1
    assert {stored[e]["user_ipaddress"] for e in eids} == {GATEWAY}
    sessions = c.sql("SELECT * FROM sessions WHERE device_id = ?", [device])
    assert len(sessions) == 1 and sessions[0]["event_count"] == len(eids)
    # SP-Anonymous: nothing of the address or the device.
    row = stored[anon]
    assert row["user_ipaddress"] is None and row["network_userid"] is None
    assert [k for k, v in row.items() if GATEWAY in str(v) or device in str(v)] == []
