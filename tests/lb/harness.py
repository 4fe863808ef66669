"""Real nginx on loopback in front of collector processes, configured from the shipped deploy/ files.

The test configuration is generated, but only its frame (an `upstream collectors` block over loopback
ports); the whole server body is deploy/nginx-proxy.conf, included by path. What the lb tests exercise
is what the image ships; deploy/nginx.conf itself runs verbatim in tests/docker.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.procs import ROOT, free_port

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# nginx connects to the collectors from this address (proxy_bind); only it is a trusted proxy.
PROXY_ADDR = "127.0.0.1"
# The "browser": a loopback address of its own, so its address and nginx's can be told apart.
CLIENT_ADDR = "127.0.0.55"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


def nginx_available() -> bool:
    return Path(NGINX).exists()


def upstream_block(upstreams: Sequence[str]) -> str:
    """The test's `upstream collectors {...}` over loopback `host:port`s (nginx-proxy.conf proxies to it).

    deploy/nginx.conf has no upstream block (it resolves the compose service by name while running,
    see tests/docker); the failover parameters here are the ones a static upstream would ship with.
    """
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    pool = "        keepalive 32;\n        keepalive_timeout 30s;"
    return f"    upstream collectors {{\n{servers}\n{pool}\n    }}"


def render_test_conf(prefix: Path, port: int, upstreams: Sequence[str], bind: str = PROXY_ADDR) -> Path:
    """A complete nginx.conf for loopback: foreground, every path in prefix, deploy's proxy settings."""
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    # Running as root, nginx would start its workers as `nobody`, who cannot enter pytest's 0700
    # tmp dirs; the workers only need the temp paths, so they may keep the test's own user.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = f"""
daemon off;
{user}
worker_processes 1;
error_log {prefix}/error.log info;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr '
                        'upstream_status=$upstream_status';
    access_log {prefix}/access.log upstream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

{upstream_block(upstreams)}

    server {{
        listen {PROXY_ADDR}:{port};
        # Test only: which replica answered (all of them if nginx failed over).
        add_header X-Upstream $upstream_addr always;
        # Test only: make the collectors see nginx at exactly the trusted address.
        proxy_bind {bind};
        set $collectors collectors;
        include {DEPLOY / "nginx-proxy.conf"};
    }}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


class Nginx:
    """A foreground nginx master (`daemon off`) with its own prefix, config, logs and pid."""

    def __init__(
        self, prefix: Path, upstreams: Sequence[str], port: int | None = None, bind: str = PROXY_ADDR
    ) -> None:
        self.prefix = prefix
        self.port = port or free_port()
        self.conf = render_test_conf(prefix, self.port, upstreams, bind)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def start(self) -> Nginx:
        test = subprocess.run(
            [NGINX, "-t", "-p", str(self.prefix), "-c", str(self.conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert test.returncode == 0, test.stderr
        with open(self.prefix / "stderr.log", "ab") as out:
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.prefix), "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.prefix / "stderr.log").read_text()
            try:
                socket.create_connection((PROXY_ADDR, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx not listening on {self.port}")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
        return self.proc.wait(15)

    def log_tail(self, lines: int = 60) -> str:
        text = self.error_log.read_text() if self.error_log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def cookie(self, name: str = "sp") -> str | None:
        """The value this answer sets for cookie `name` (empty string when it expires it)."""
        for sc in self.set_cookies():
            key, _, rest = sc.partition("=")
            if key.strip() == name:
                return rest.split(";", 1)[0]
        return None

    @property
    def upstream(self) -> str:
        """The replica that produced the answer (the last one nginx tried)."""
        return (self.header("X-Upstream") or "").split(",")[-1].strip()


def event(eid: str | None = None, **params: str) -> dict[str, str]:
    """One browser-tracker-like page view (all values strings, as trackers send them)."""
    now = str(int(time.time() * 1000))
    ev = {
        "e": "pv",
        "eid": eid or str(uuid.uuid4()),
        "tv": "js-4.10.1",
        "p": "web",
        "aid": "lb-test",
        "dtm": now,
        "stm": now,
        "url": "https://shop.example/lb",
    }
    ev.update(params)
    return ev


@dataclass
class Client:
    """A keep-alive HTTP/1.1 connection from CLIENT_ADDR, like one browser tab."""

    port: int
    host: str = PROXY_ADDR
    source: str = CLIENT_ADDR
    conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(
                self.host, self.port, timeout=30, source_address=(self.source, 0)
            )
        return self.conn

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.getheaders(), resp.read())
        except Exception:
            self.close()
            raise
        if (answer.header("Connection") or "").lower() == "close":
            self.close()
        return answer

    def post(self, events: Sequence[Mapping[str, str]], headers: Mapping[str, str] | None = None) -> Answer:
        body = json.dumps({"schema": PAYLOAD_SCHEMA, "data": list(events)}).encode()
        hdrs = {"Content-Type": "application/json; charset=UTF-8", "Origin": "https://shop.example"}
        hdrs.update(headers or {})
        return self.request("POST", TP2, body, hdrs)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
