"""The image alone: `docker run anon-collector:local` with only COLLECTOR_* variables."""

from __future__ import annotations

import urllib.parse
import urllib.request
import uuid

import pytest

from tests.docker import stack
from tests.docker.stack import container_sql, docker, inspect, wait_until

pytestmark = pytest.mark.docker


def test_docker_run_serves_stores_and_stops_with_exit_0_on_sigterm(image: str) -> None:
    name = f"anon-test-run-{uuid.uuid4().hex[:8]}"
    volume = f"anon-test-data-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", "--label", stack.LABEL, volume)
    try:
        # As hardened as compose runs it, but without compose and without init: python is PID 1.
        docker(
            "run",
            "-d",
            "--name",
            name,
            "--label",
            stack.LABEL,
            "-v",
            f"{volume}:/data",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            "-e",
            "COLLECTOR_DRAIN_SECONDS=1",
            "-e",
            "COLLECTOR_LOG_FORMAT=json",
            image,
        )
        wait_until(lambda: inspect(name)["State"]["Health"]["Status"] == "healthy", "healthcheck healthy")
        ip = inspect(name)["NetworkSettings"]["IPAddress"]
        eid = str(uuid.uuid4())
        qs = urllib.parse.urlencode({"e": "pv", "eid": eid, "aid": "docker-run", "p": "web", "tv": "raw"})
        with urllib.request.urlopen(f"http://{ip}:8080/i?{qs}", timeout=10) as resp:
            assert resp.status == 200
        rows = container_sql(name, "SELECT event_id, user_ipaddress FROM events WHERE event_id = ?", [eid])
        assert [r["event_id"] for r in rows] == [eid]
        # The host reached the container on the default bridge: it came from that bridge's gateway.
        assert rows[0]["user_ipaddress"] == inspect(name)["NetworkSettings"]["Gateway"]
        assert docker("exec", name, "cat", "/proc/1/cmdline").split("\0")[:3] == ["python", "-m", "collector"]
        docker("kill", "-s", "TERM", name)
        wait_until(lambda: not inspect(name)["State"]["Running"], "exit after SIGTERM", bound=60)
        state = inspect(name)["State"]
        logs = stack.container_logs(name)
        assert state["ExitCode"] == 0, logs
        assert "draining" in logs and "stopped; everything acknowledged is committed" in logs
    finally:
        docker("rm", "-fv", name, check=False)
        docker("volume", "rm", "-f", volume, check=False)
