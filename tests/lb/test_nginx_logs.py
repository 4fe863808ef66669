"""What the shipped nginx (deploy/nginx.conf with nginx-proxy.conf) writes to its own log.

nginx's error-log lines name the client's address and the request line (a pixel's query holds the
uid, duid and sid), and no directive takes them out; what `docker logs` keeps outlives an erasure.
Each test runs the shipped config and a control that differs in one line, which must find the values
(so the check can fail). deploy/nginx.conf is used as it ships except for the listen address, the
proxy target (an upstream here, no Docker DNS) and the foreground, pid and temp paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lb.harness import CLIENT_ADDR, NGINX, PROXY_ADDR, TP2, Client, event, nginx_available
from tests.procs import Collector, free_port

pytestmark = [
    pytest.mark.lb,
    pytest.mark.skipif(not nginx_available(), reason="nginx not installed (apt-get install nginx-light)"),
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SHIPPED_LEVEL = "error_log stderr crit;"
SHIPPED_BUFFER = "client_body_buffer_size 1m;"
SHIPPED_HEADERS = "large_client_header_buffers 4 32k;"


Swaps = tuple[tuple[str, str], ...]  # (shipped line, the control's line)
WARN = (SHIPPED_LEVEL, "error_log stderr warn;")


def render(prefix: Path, port: int, upstreams: list[str], swaps: Swaps) -> Path:
    conf = (DEPLOY / "nginx.conf").read_text()
    proxy = (DEPLOY / "nginx-proxy.conf").read_text()
    assert (
        SHIPPED_LEVEL in conf and SHIPPED_BUFFER in proxy and SHIPPED_HEADERS in proxy
    )  # the lines a control swaps
    for old, new in swaps:
        conf, proxy = conf.replace(old, new), proxy.replace(old, new)
    conf = conf.replace("listen 80;", f"listen {PROXY_ADDR}:{port};")
    conf = conf.replace("set $collectors collector:8080;", "set $collectors collectors;")
    conf = conf.replace("resolver 127.0.0.11 valid=2s ipv6=off;", "")
    servers = "".join(f"server {u};" for u in upstreams)
    temps = "".join(f"{d}_temp_path {prefix}/{d};" for d in ("proxy", "fastcgi", "uwsgi", "scgi"))
    conf = conf.replace(
        "http {",
        f"http {{ upstream collectors {{ {servers} }} client_body_temp_path {prefix}/client_body; {temps}",
        1,
    )
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    (prefix / "nginx-proxy.conf").write_text(proxy)
    user = "user root;\n" if os.geteuid() == 0 else ""
    path = prefix / "nginx.conf"
    path.write_text(f"daemon off;\n{user}pid {prefix}/nginx.pid;\n" + conf)
    return path


@pytest.fixture
def edge(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path]]:
    """nginx in front of a live replica, after a stopped one (as during a rolling restart) if asked;
    its stderr, which is what `docker logs nginx` keeps. The param: (swaps, with a stopped replica)."""
    swaps, stopped = request.param
    live = Collector(
        tmp_path / "events.db",
        env={"COLLECTOR_TRUSTED_PROXIES": f"{PROXY_ADDR}/32", "COLLECTOR_COOKIE_SECRET": "s" * 32},
        log=tmp_path / "collector.log",
    ).start()
    try:  # from here on a failure stops the collector too
        dead = f"127.0.0.1:{free_port()}"  # a replica being restarted: its port refuses connections
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        port = free_port()
        conf = render(prefix, port, [dead, live.address] if stopped else [live.address], swaps)
        log = prefix / "stderr.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stdout=out, stderr=out)
        try:
            time.sleep(0.5)
            assert proc.poll() is None, log.read_text()
            yield port, log
        finally:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(10)
    finally:
        live.send_signal(signal.SIGTERM)
        live.stop()


def _logged(log: Path) -> str:
    time.sleep(0.3)
    return log.read_text()


@pytest.mark.parametrize(
    ("edge", "shipped"),
    [(((), True), True), (((WARN,), True), False)],
    indirect=["edge"],
    ids=["shipped", "control-warn"],
)
def test_an_anonymous_pixel_failed_over_leaves_no_address_or_id_in_nginxs_log(
    edge: tuple[int, Path], shipped: bool
) -> None:
    port, log = edge
    uid, duid = "alice-" + uuid.uuid4().hex[:8], str(uuid.uuid4())
    query = urllib.parse.urlencode({"e": "pv", "p": "web", "tv": "js-4", "uid": uid, "duid": duid})
    answers = []
    for _ in range(2):  # round robin: one of the two is sent to the stopped replica first
        c = Client(port)
        try:
            answers.append(c.request("GET", f"/i?{query}", headers={"SP-Anonymous": "*"}).status)
        finally:
            c.close()
    assert answers == [200, 200]  # nginx failed over
    text = _logged(log)
    found = [v for v in (CLIENT_ADDR, uid, duid) if v in text]
    assert found == ([] if shipped else [CLIENT_ADDR, uid, duid]), text


@pytest.mark.parametrize(
    ("edge", "shipped"),
    [
        # both at warn, the level of the line a body buffered to a file writes
        (((WARN,), False), True),
        (((WARN, (SHIPPED_BUFFER, "client_body_buffer_size 16k;")), False), False),
    ],
    indirect=["edge"],
    ids=["shipped-buffer", "control-16k-buffer"],
)
def test_an_anonymous_batch_of_30_kb_is_not_written_to_a_file_or_logged(
    edge: tuple[int, Path], shipped: bool
) -> None:
    port, log = edge
    events = [event(None, url=f"https://shop.example/p/{i}" + "x" * 250) for i in range(60)]
    body = json.dumps(
        {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": events}
    )
    assert 16384 < len(body) < 40000  # under the browser tracker's default maxPostBytes
    for _ in range(2):
        c = Client(port)
        try:
            answer = c.request(
                "POST", TP2, body.encode(), {"Content-Type": "application/json", "SP-Anonymous": "*"}
            )
            assert answer.status == 200, answer.body
        finally:
            c.close()
    text = _logged(log)
    assert ("temporary file" in text, CLIENT_ADDR in text) == ((False, False) if shipped else (True, True)), (
        text
    )


@pytest.mark.parametrize(
    ("edge", "shipped"),
    [(((), False), True), ((((SHIPPED_HEADERS, "large_client_header_buffers 4 8k;"),), False), False)],
    indirect=["edge"],
    ids=["shipped", "control-8k"],
)
def test_a_pixel_the_collector_takes_is_not_refused_by_nginx(edge: tuple[int, Path], shipped: bool) -> None:
    """A GET query up to COLLECTOR_MAX_QUERY (16 KiB) reaches the collector; nginx's default buffers
    (the control) answer it 414 themselves, without the collector's error shape or a bad row."""
    port, _ = edge
    query = urllib.parse.urlencode({"e": "pv", "p": "web", "tv": "js-4", "page": "x" * 12_000})
    assert 8192 < len(query) < 16384
    c = Client(port)
    try:
        answer = c.request("GET", f"/i?{query}")
    finally:
        c.close()
    assert answer.status == (200 if shipped else 414), answer.body
