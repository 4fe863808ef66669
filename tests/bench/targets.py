"""The servers under test: the real collector, the bare aiohttp baseline, and nginx, all on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.bench.prefill import Prefilled, prefill
from tests.pg import PgServer
from tests.procs import ROOT, Collector, free_port, wait_http  # PROCS_IMPORT

BENCH = Path(__file__).resolve().parent


class Target(Protocol):
    name: str

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> int: ...

    def root_pid(self) -> int: ...


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (the collector's --workers children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the comm field may contain spaces and parentheses; ppid is the 2nd field after the last ')'
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_kib(pid: int, key: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/<pid>/status in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(pid: int, key: str) -> int:
    return sum(status_kib(p, key) for p in process_tree(pid))


@dataclass
class CollectorTarget:
    """`python -m collector serve` via tests.procs.Collector, default settings, its own store: a DB
    file, or (postgres=True) a PostgreSQL cluster of its own in that directory, on this machine."""

    name: str
    db: Path | str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: Collector | None = None
    postgres: bool = False
    server: PgServer | None = None
    prefill: int = 0  # grow the store to this many events before starting (tests/bench/prefill.py)
    prefilled: Prefilled | None = None
    module: str = "collector"  # tests.bench.nostore: the same server with a store that stores nothing

    @property
    def url(self) -> str:
        assert self.proc is not None
        return self.proc.url

    def start(self) -> None:
        env = dict(self.env)
        if self.postgres:
            root = Path(tempfile.mkdtemp(prefix="collector-pg-bench-"))  # readable by the postgres user
            self.server = PgServer(root).start()
            self.db = self.server.url(self.server.new_database())
            env.setdefault("COLLECTOR_COOKIE_SECRET", "bench-secret")
        if self.prefill:
            assert isinstance(self.db, Path), "only a SQLite store is prefilled"
            self.prefilled = prefill(self.db, self.prefill)
            p = self.prefilled
            print(
                f"prefilled {self.name}: {p.rows:,} events, {p.file_mib:,.0f} MiB, in {p.seconds:.0f} s",
                flush=True,
            )
        log = Path(tempfile.gettempdir()) / f"{self.name}.log" if self.postgres else None
        self.proc = Collector(self.db, args=self.args, env=env, log=log, module=self.module).start()

    deviceless: int = 0  # from /metrics just before the stop: events whose cookie was retired

    def stop(self) -> int:
        assert self.proc is not None
        try:
            with urllib.request.urlopen(self.proc.url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            line = next(
                (ln for ln in text.splitlines() if ln.startswith("collector_events_deviceless_total")), ""
            )
            self.deviceless = int(float(line.split()[-1])) if line else 0
        except OSError:
            self.deviceless = -1  # unknown: the check then reports every deviceless row
        return self.proc.stop(signal.SIGTERM, timeout=60)

    def stop_server(self) -> None:
        """After the store check: stop this target's PostgreSQL and remove its files."""
        if self.server is not None:
            self.server.stop("immediate")
            shutil.rmtree(self.server.root, ignore_errors=True)
            self.server = None

    def root_pid(self) -> int:
        assert self.proc is not None and self.proc.proc is not None
        return self.proc.proc.pid


@dataclass
class _ProcessTarget:
    """A server process of ours on a loopback port, stopped with its own graceful signal."""

    name: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    stop_signal = signal.SIGINT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, cmd: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_http(self.url + "/ready")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(self.stop_signal)
        return self.proc.wait(30)

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class BaselineTarget(_ProcessTarget):
    """tests/bench/baseline.py: one aiohttp + uvloop + orjson process, no storage, no access log."""

    log: Path = Path("baseline.log")
    stop_signal = signal.SIGINT  # aiohttp's run_app shuts down cleanly on SIGINT

    def start(self) -> None:
        self.port = free_port()
        self._spawn([sys.executable, str(BENCH / "baseline.py"), "--port", str(self.port)], self.log)


NGINX_CONF = """\
# Rendered by tests/bench/targets.py for one benchmark run.
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    client_max_body_size 1m;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port};
        location = /i {{
            empty_gif;
            add_header Cache-Control "no-cache, no-store, must-revalidate";
        }}
        # the same static answer a collector gives to a POST, body read and discarded
        location = /com.snowplowanalytics.snowplow/tp2 {{
            default_type text/plain;
            return 200 "ok";
        }}
        location = /ready {{ return 200 "ok"; }}
    }}
}}
"""


@dataclass
class NginxTarget(_ProcessTarget):
    """Debian's nginx serving the 43-byte pixel on /i with an access log to a file; one worker."""

    tmp: Path = Path("nginx")
    stop_signal = signal.SIGQUIT  # nginx's graceful shutdown

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.tmp.mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would otherwise be nobody
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.tmp, port=self.port, user=user))
        cmd = [
            nginx,
            "-e",
            str(self.tmp / "error.log"),
            "-p",
            str(self.tmp),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ]
        self._spawn(cmd, self.tmp / "stdout.log")

    def access_log_lines(self) -> int:
        with open(self.tmp / "access.log", "rb") as f:
            return sum(1 for _ in f)
