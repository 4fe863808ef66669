"""deploy/compose.yaml in real containers: nginx (the shipped nginx.conf, its error log at warn: see
stack.Compose) in front of the collector replicas built from deploy/Dockerfile, on the shared named
volume."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.docker import stack
from tests.docker.stack import GATEWAY, NGINX_ADDR, Compose, docker, inspect, wait_until
from tests.lb.harness import Answer, Client, event

pytestmark = pytest.mark.docker

FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Real-IP": "6.6.6.7",
    "Forwarded": "for=6.6.6.8",
    "CF-Connecting-IP": "6.6.6.9",
    "True-Client-IP": "6.6.6.10",
}


def host_client(c: Compose) -> Client:
    """A keep-alive connection from the host to nginx's published port."""
    return Client(c.port, host="127.0.0.1", source="127.0.0.1")


# Run inside a throw-away client container on the edge network: POSTs one event with forged address
# headers to host:port, prints the status and the container's own address on that connection.
CLIENT_SCRIPT = """
import http.client, json, sys
host, port, eid, forged = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
body = json.dumps({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
                   "data": [{"e": "pv", "eid": eid, "tv": "py-test", "p": "web", "aid": "docker-test",
                             "url": "https://shop.example/docker"}]}).encode()
conn = http.client.HTTPConnection(host, port, timeout=30)
headers = {"Content-Type": "application/json", **forged}
conn.request("POST", "/com.snowplowanalytics.snowplow/tp2", body=body, headers=headers)
resp = conn.getresponse()
print(resp.status, conn.sock.getsockname()[0])
"""


def from_client_container(c: Compose, host: str, port: int, eid: str) -> tuple[int, str]:
    """(status, the client container's address) for one forged POST from a container on `edge`."""
    name = f"anon-test-client-{uuid.uuid4().hex[:8]}"
    try:
        out = docker(
            "run",
            "--name",
            name,
            "--label",
            stack.LABEL,
            "--network",
            c.network,
            stack.IMAGE,
            "python",
            "-c",
            CLIENT_SCRIPT,
            host,
            str(port),
            eid,
            json.dumps(FORGED),
        )
        status, addr = out.split()
        return int(status), addr
    finally:
        docker("rm", "-fv", name, check=False)


def test_replicas_turn_healthy_run_hardened_and_write_the_volume(compose: Compose) -> None:
    replicas = compose.replicas
    assert len(replicas) == 3
    for r in replicas:
        info = inspect(r)
        assert info["State"]["Health"]["Status"] == "healthy", info["State"]["Health"]
        assert info["Config"]["User"] == "10001:10001"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"] == ["ALL"]
        # In the running process: uid 10001, an empty capability bounding set.
        status = docker("exec", r, "cat", "/proc/self/status")
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[0] == "10001"
        assert int(fields["CapBnd"], 16) == 0
        # The root filesystem refuses writes; /data (the named volume) takes them.
        denied = docker("exec", r, "sh", "-c", "touch /etc/x 2>&1; echo rc=$?", check=False)
        assert "Read-only file system" in denied and "rc=1" in denied
        docker("exec", r, "sh", "-c", "touch /data/probe-$HOSTNAME && rm /data/probe-$HOSTNAME")
    # The database the replicas share is on the volume, owned by the non-root user.
    owner = docker("exec", replicas[0], "stat", "-c", "%u %n", "/data/events.db").split()
    assert owner == ["10001", "/data/events.db"]
    # Control for the capability check: the same image without cap_drop keeps Docker's default set.
    plain = docker("run", "--rm", "--label", stack.LABEL, stack.IMAGE, "cat", "/proc/self/status")
    capbnd = next(line.split()[1] for line in plain.splitlines() if line.startswith("CapBnd"))
    assert int(capbnd, 16) != 0


def test_raw_http_from_the_host_stores_the_gateway_and_never_a_forged_address(compose: Compose) -> None:
    plain, forged, pixel = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    c = host_client(compose)
    try:
        assert c.post([event(plain, aid="docker-test")]).status == 200
        assert c.post([event(forged, aid="docker-test")], headers=FORGED).status == 200
        qs = urllib.parse.urlencode({"e": "pv", "eid": pixel, "aid": "docker-test", "p": "web", "tv": "raw"})
        gif = c.request("GET", f"/i?{qs}", headers=FORGED)
    finally:
        c.close()
    assert gif.status == 200 and gif.body.startswith(b"GIF")
    stored = compose.by_eid(plain, forged, pixel)
    # Host connections to the published port arrive at nginx from the bridge gateway (userland proxy):
    # that is the address nginx saw, so that is the one stored, also when the client forged others.
    for eid in (plain, forged, pixel):
        assert stored[eid]["user_ipaddress"] == GATEWAY
        assert [k for k, v in stored[eid].items() if "6.6.6." in str(v)] == []


def test_client_container_on_the_network_cannot_forge_its_address(compose: Compose) -> None:
    via_nginx, direct = str(uuid.uuid4()), str(uuid.uuid4())
    status, client_ip = from_client_container(compose, NGINX_ADDR, 80, via_nginx)
    assert status == 200
    # Straight to a replica by its service name, bypassing nginx: the peer is not the trusted proxy.
    status2, client_ip2 = from_client_container(compose, "collector", 8080, direct)
    assert status2 == 200
    stored = compose.by_eid(via_nginx, direct)
    # Through nginx the collector stored the client's own address: nginx's header was believed (the
    # control: it is neither nginx's address nor the gateway), the client's forged entries were not.
    assert client_ip not in (NGINX_ADDR, GATEWAY)
    assert stored[via_nginx]["user_ipaddress"] == client_ip
    assert stored[direct]["user_ipaddress"] == client_ip2
    for eid in (via_nginx, direct):
        assert [k for k, v in stored[eid].items() if "6.6.6." in str(v)] == []


def test_sp_anonymous_keeps_nothing(compose: Compose) -> None:
    anon, named, anon_with_cookie = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    c = host_client(compose)
    try:
        a_anon = c.post([event(anon, aid="docker-test")], headers={"SP-Anonymous": "*", **FORGED})
        a_named = c.post([event(named, aid="docker-test")])
        cookie = a_named.cookie()
        assert cookie, a_named.set_cookies()
        a_back = c.post(
            [event(anon_with_cookie, aid="docker-test")],
            headers={"SP-Anonymous": "*", "Cookie": f"sp={cookie}"},
        )
    finally:
        c.close()
    assert (a_anon.status, a_named.status, a_back.status) == (200, 200, 200)
    assert a_anon.set_cookies() == []
    assert a_back.cookie() == ""
    stored = compose.by_eid(anon, named, anon_with_cookie)
    device = cookie.split(".")[0]
    # The same path through nginx stores the address and the device when allowed (the control)...
    assert stored[named]["user_ipaddress"] == GATEWAY
    assert stored[named]["network_userid"] == device
    # ...and neither when SP-Anonymous is sent.
    for eid in (anon, anon_with_cookie):
        row = stored[eid]
        assert row["anonymous"] == 1
        assert row["user_ipaddress"] is None and row["network_userid"] is None
        assert [
            k for k, v in row.items() if GATEWAY in str(v) or "6.6.6." in str(v) or device in str(v)
        ] == []


def test_python_tracker_through_nginx(compose: Compose) -> None:
    from snowplow_tracker import Emitter, Tracker
    from snowplow_tracker.events.page_view import PageView

    sent: list[str] = []
    failed: list[Any] = []
    emitter = Emitter(
        "127.0.0.1",
        protocol="http",
        port=compose.port,
        method="post",
        batch_size=5,
        on_success=lambda events: sent.extend(e["eid"] for e in events),
        on_failure=lambda _ok, events: failed.extend(events),
    )
    tracker = Tracker("docker", emitter, app_id="docker-py-tracker")
    for i in range(7):
        tracker.track(PageView(page_url=f"https://shop.example/docker/{i}", page_title="docker test"))
    tracker.flush()
    assert failed == []
    assert len(sent) == 7
    stored = compose.by_eid(*sent)
    assert set(stored) == set(sent)
    assert {r["app_id"] for r in stored.values()} == {"docker-py-tracker"}
    assert all(r["v_tracker"].startswith("py-") for r in stored.values())
    assert {r["user_ipaddress"] for r in stored.values()} == {GATEWAY}


def test_one_device_across_replicas_is_one_session(compose: Compose) -> None:
    replicas = compose.replicas
    before = {r: stack.events_stored(r) for r in replicas}
    eids = [str(uuid.uuid4()) for _ in range(30)]
    answers: list[Answer] = []
    c = host_client(compose)
    try:
        answers.append(c.post([event(eids[0], aid="docker-test")]))
        cookie = answers[0].cookie()
        assert cookie
        for eid in eids[1:]:
            answers.append(c.post([event(eid, aid="docker-test")], headers={"Cookie": f"sp={cookie}"}))
    finally:
        c.close()
    assert [a.status for a in answers] == [200] * len(eids)
    # nginx spread the one device's events over every replica (each counts what it committed)...
    gained = {r: stack.events_stored(r) - before[r] for r in replicas}
    assert sum(gained.values()) == len(eids)
    assert all(n > 0 for n in gained.values()), gained
    assert {a.cookie() for a in answers} == {cookie}
    # ...and they form one session of one device.
    device = cookie.split(".")[0]
    stored = compose.by_eid(*eids)
    assert len(stored) == len(eids)
    assert {r["network_userid"] for r in stored.values()} == {device}
    assert len({r["session_id"] for r in stored.values()}) == 1
    sessions = compose.sql("SELECT * FROM sessions WHERE device_id = ?", [device])
    assert len(sessions) == 1 and sessions[0]["event_count"] == len(eids)


def test_restart_of_each_replica_under_load_loses_nothing(compose: Compose) -> None:
    acked: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        c = host_client(compose)
        try:
            while not stop.is_set():
                batch = [event(str(uuid.uuid4()), aid="docker-restart") for _ in range(3)]
                try:
                    a = c.post(batch)
                except OSError as e:
                    failures.append(repr(e))
                    continue
                if a.status == 200:
                    acked.extend(ev["eid"] for ev in batch)
                else:
                    failures.append(f"{a.status} {a.body[:200]!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for r in compose.replicas:
            started = inspect(r)["State"]["StartedAt"]
            since = f"{time.time():.3f}"
            # SIGTERM to the container (docker-init forwards it to python), drain, exit 0, start again.
            docker("restart", "-t", "30", r, timeout=120)
            wait_until(
                lambda r=r, s=started: (
                    inspect(r)["State"]["StartedAt"] != s
                    and inspect(r)["State"]["Health"]["Status"] == "healthy"
                ),
                f"{r} healthy again",
            )
            n = len(acked)
            wait_until(lambda n=n: len(acked) > n + 30, "traffic after the restart")
            # The stop before this start drained and committed (the log of the run that ended).
            assert "stopped; everything acknowledged is committed" in stack.container_logs(
                r, "--until", started_again(r)
            )
            # ...and exited 0 (docker-init, PID 1 under `init: true`, passes on python's exit status).
            exits = docker(
                "events",
                "--since",
                str(since),
                "--until",
                f"{time.time():.3f}",
                "--filter",
                f"container={r}",
                "--filter",
                "event=die",
                "--format",
                "{{.Actor.Attributes.exitCode}}",
            ).split()
            assert exits == ["0"]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert len(acked) > 100
    counts = {
        row["event_id"]: row["n"]
        for row in compose.sql(
            "SELECT event_id, count(*) AS n FROM events WHERE app_id = 'docker-restart' GROUP BY event_id"
        )
    }
    assert len(counts) == len(acked)
    assert set(counts) == set(acked)
    assert set(counts.values()) == {1}


def started_again(container: str) -> str:
    return str(inspect(container)["State"]["StartedAt"])


def address(c: Compose, container: str) -> str:
    return str(inspect(container)["NetworkSettings"]["Networks"][c.network]["IPAddress"])


def nginx_workers(c: Compose) -> list[str]:
    return sorted(line.split()[1] for line in docker("top", c.nginx).splitlines()[1:])


def test_scale_up_and_down_is_seen_by_nginx_without_reload(compose: Compose) -> None:
    nginx_before = inspect(compose.nginx)
    procs_before = nginx_workers(compose)
    try:
        compose.up(5)
        replicas = compose.replicas
        assert len(replicas) == 5
        before = {r: stack.events_stored(r) for r in replicas}

        def every_replica_served() -> bool:
            c = host_client(compose)
            try:
                for _ in range(10):
                    assert c.post([event(str(uuid.uuid4()), aid="docker-scale")]).status == 200
            finally:
                c.close()
            return all(stack.events_stored(r) > before[r] for r in replicas)

        wait_until(every_replica_served, "nginx to send traffic to all 5 replicas", bound=60)
        addresses = {r: address(compose, r) for r in replicas}
    finally:
        compose.up(2)
    remaining = compose.replicas
    assert len(remaining) == 2
    removed = {addresses[r] for r in set(addresses) - set(remaining)}
    assert len(removed) == 3

    def batch_avoids_removed() -> bool:
        """20 requests, all 200, and nginx tried none of the removed replicas' addresses for them."""
        since = f"{time.time():.3f}"
        c = host_client(compose)
        try:
            statuses = Counter(
                c.post([event(str(uuid.uuid4()), aid="docker-scale")]).status for _ in range(20)
            )
        finally:
            c.close()
        assert statuses == Counter({200: 20})
        log = stack.container_logs(compose.nginx, "--since", since)
        return not any(f"{ip}:8080" in log for ip in removed)

    # Scaled down: nginx stops sending to the removed replicas once its DNS answer expires (valid=2s);
    # a name resolved only at start would keep failing over from them on every request.
    wait_until(batch_avoids_removed, "nginx to drop the removed replicas", bound=60)
    assert batch_avoids_removed()
    # The same nginx processes throughout: no reload, no restart.
    nginx_after = inspect(compose.nginx)
    assert nginx_after["State"]["StartedAt"] == nginx_before["State"]["StartedAt"]
    assert nginx_after["RestartCount"] == 0
    assert nginx_workers(compose) == procs_before
