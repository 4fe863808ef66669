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
from typing import Any

import pytest

from tests import rawhttp
from tests.lb.harness import CLIENT_ADDR, NGINX, PROXY_ADDR, TP2, Answer, Client, event, nginx_available
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
    its stderr, which is what `docker logs nginx` keeps. The param: (swaps, with a stopped replica:
    False, True, or "only" for the stopped one alone)."""
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
        upstreams = {False: [live.address], True: [dead, live.address], "only": [dead]}[stopped]
        conf = render(prefix, port, upstreams, swaps)
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


def error_of(answer: Answer) -> dict[str, Any]:
    """The collector's one error shape, `{"error": {"status", "reason", "message"}}`, read from an
    answer (whoever wrote it), or an assertion error that shows what came instead."""
    assert (answer.header("Content-Type") or "").startswith("application/json"), (answer.status, answer.body)
    doc = json.loads(answer.body)
    assert set(doc) == {"error"} and {"status", "reason", "message"} <= set(doc["error"]), doc
    assert doc["error"]["status"] == answer.status, doc
    return dict(doc["error"])


def _ask(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> Answer:
    c = Client(port)
    try:
        return c.request(method, path, body, headers)
    finally:
        c.close()


@pytest.mark.parametrize("edge", [((), False)], indirect=True)
def test_nginxs_own_refusals_answer_in_the_collectors_error_shape(edge: tuple[int, Path]) -> None:
    """What nginx refuses before any replica sees it comes in the shape, status and reason the
    collector gives the same mistake: a body over 1 MiB, a request line over nginx's 32k buffers,
    a header line (a cookie) over them."""
    port, _ = edge
    json_type = {"Content-Type": "application/json"}
    # the control: the collector's own refusal, through the same nginx, reads as the same shape
    assert error_of(_ask(port, "POST", TP2, b"{not json", **json_type))["reason"] == "bad_json"
    big = b'{"schema":"x","data":[' + b" " * (1 << 20) + b"]}"
    assert error_of(_ask(port, "POST", TP2, big, **json_type))["reason"] == "body_too_large"
    line = _ask(port, "GET", "/i?e=pv&p=web&page=" + "x" * 40_000)
    assert line.status == 414 and error_of(line)["reason"] == "request_line_too_long"
    header = _ask(port, "GET", "/i?e=pv&p=web", Cookie="a=" + "x" * 40_000)
    assert header.status == 431 and error_of(header)["reason"] == "header_too_large"


@pytest.mark.parametrize("edge", [((), "only")], indirect=True)
def test_no_replica_answering_is_a_503_to_retry_in_the_collectors_shape(edge: tuple[int, Path]) -> None:
    """With every replica down (a restart of the only one) nginx's own 502: trackers retry any 5xx,
    and a 503 with Retry-After says what the collector's own overload answer says."""
    port, _ = edge
    answer = _ask(port, "GET", "/i?e=pv&p=web")
    assert answer.status == 503 and answer.header("Retry-After") == "1", answer
    assert error_of(answer)["reason"] == "no_replica"


@pytest.mark.parametrize("edge", [((), False)], indirect=True)
def test_a_request_nginx_cannot_read_is_a_400_in_the_collectors_shape(edge: tuple[int, Path]) -> None:
    """A request line nginx cannot parse has no URI to route by: its answer must still be the 400
    in the error shape, not nginx's 500 for an error page it could not reach."""
    port, _ = edge
    for raw in (
        b"GET /i?e=pv HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"GET /i HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        got = rawhttp.send(PROXY_ADDR, port, raw)
        assert got.status == 400, got.raw
        assert (got.header("Content-Type") or b"").startswith(b"application/json"), got.raw
        assert json.loads(got.body)["error"]["reason"] == "bad_request", got.raw
    # and the error pages are for nginx alone (`internal`): a client asking for one is not answered a 503
    page = _ask(port, "GET", "/_nginx/503")
    assert page.status == 404, page
