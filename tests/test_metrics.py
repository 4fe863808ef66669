"""Metrics move as each kind of traffic says, parse with Prometheus's own parser, and carry no identifiers."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import socket
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector import logs
from collector.config import Config, Secret
from tests.conftest import TP2, batch, ev
from tests.procs import Collector

ANON_UE = orjson.dumps(
    {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.acme/anonymize/jsonschema/1-0-0", "data": {}},
    }
).decode()


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    out = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(m: dict[Any, float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_each_kind_of_traffic(client: Any) -> None:
    before = await scrape(client)
    await client.post(TP2, json=batch(ev(eid="m1"), ev(eid="m2")))
    await client.post(TP2, json=batch(ev(eid="m1"), ev(eid="m3")))  # one duplicate
    await client.get("/i", params=ev(eid="a1"), headers={"SP-Anonymous": "*", "Cookie": "sp=whatever"})
    await client.post(TP2, data=b"{", headers={"Content-Type": "application/json"})
    await client.get("/i", params=ev(eid="f1"), headers={"Cookie": "sp=forged.value"})
    await client.post(TP2, json=batch(ev("ue", eid="r1", ue_pr=ANON_UE)))
    m = await scrape(client)
    assert (
        val(m, "collector_events_stored_total", anonymous="false")
        - val(before, "collector_events_stored_total", anonymous="false")
        == 5
    )
    assert val(m, "collector_events_stored_total", anonymous="true") == 1
    assert val(m, "collector_events_duplicate_total") == 1
    assert val(m, "collector_bad_rows_total", reason="bad_json") == 1
    assert val(m, "collector_rotations_total", outcome="rotated") == 1
    assert val(m, "collector_device_cookies_total", outcome="invalid") == 1
    assert val(m, "collector_device_cookies_total", outcome="expired") == 1
    assert val(m, "collector_requests_total", route="tp2", status="2xx") == 3
    assert val(m, "collector_requests_total", route="tp2", status="4xx") == 1
    assert val(m, "collector_commit_group_events_count") >= 5
    assert val(m, "collector_request_seconds_count", route="i") == 2


async def test_backpressure_is_counted(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(queue_max=2, busy_timeout=20000))
    blocker = sqlite3.connect(cfg.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    first = asyncio.ensure_future(client.post(TP2, json=batch(ev(eid="b1"), ev(eid="b2"))))
    await asyncio.sleep(0.3)
    assert (await client.post(TP2, json=batch(ev(eid="b3")))).status == 503
    m = await scrape(client)
    assert val(m, "collector_overloaded_total") == 1
    assert val(m, "collector_write_queue_depth") == 2
    blocker.execute("ROLLBACK")
    assert (await first).status == 200


async def test_metrics_token(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(metrics_token=Secret("s3cret")))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})).status == 200


async def test_metrics_can_be_turned_off(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(metrics=False))
    assert (await client.get("/metrics")).status == 404


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_access_log_line_has_only_allowed_fields(
    client: Any, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    caplog.set_level(logging.INFO, logger="collector.access")
    await client.get(
        "/i",
        params=ev(eid="log-1", uid="log-user", url="https://x.test/?email=a@b"),
        headers={"Cookie": "sp=cookie-value", "X-Forwarded-For": "203.0.113.9"},
    )
    [record] = [r for r in caplog.records if r.name == "collector.access"]
    line = (logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()).format(record)
    for secret in ("log-user", "x.test", "cookie-value", "203.0.113.9", "127.0.0.1", "log-1"):
        assert secret not in line
    assert "GET" in line and "200" in line
    if fmt == "json":
        assert set(orjson.loads(line)) == {
            "ts",
            "level",
            "logger",
            "msg",
            "method",
            "route",
            "status",
            "ms",
            "events",
        }


def test_library_records_are_redacted() -> None:
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("198.51.100.7",),
        None,
    )
    logs.RedactLibraries().filter(record)
    assert "198.51.100.7" not in logs.TextFormatter().format(record)
    own = logging.LogRecord("collector.x", logging.INFO, __file__, 1, "kept %s", ("as is",), None)
    logs.RedactLibraries().filter(own)
    assert own.getMessage() == "kept as is"  # the filter can pass a record: it is not a blanket mute


def _record(created: float, level: int = logging.INFO, name: str = "collector.access") -> logging.LogRecord:
    """A record as logging makes it at `created` (LogRecord sets msecs from its own clock: redone here
    with LogRecord's own formula, which logging's formatTime reads)."""
    record = logging.LogRecord(
        name, level, __file__, 1, "%s %s %d %.1fms events=%d", ("GET", "i", 200, 1.5, 1), None
    )
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return record


EDGES = [0.0, 1764657601.25, 1764657601.999, 1764657602.0005, 1764657601.9999996, 1798761599.9999995]


def test_log_times_are_those_logging_and_datetime_write() -> None:
    """The formatters format a second once, and write the same text as before: the text one
    logging's formatTime, the JSON one datetime's isoformat (which rounds to the microsecond)."""
    rng = random.Random(14)
    times = EDGES + [rng.uniform(1.6e9, 1.9e9) for _ in range(50_000)]
    text, json_fmt, plain = logs.TextFormatter(), logs.JsonFormatter(), logging.Formatter()
    for created in times:
        record = _record(created)
        assert text.formatTime(record) == plain.formatTime(record), created
        want = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json_fmt._ts(created) == want, created


class Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, text: str) -> int:
        self.sizes.append(len(text.encode()))
        return super().write(text)


def test_buffered_lines_reach_the_stream_in_a_few_whole_line_writes() -> None:
    stream = Counting()
    target = logs.BatchWriter(stream)
    target.setFormatter(logs.TextFormatter())
    buffered = logs.Buffered(capacity=1024, flushLevel=logging.WARNING, target=target)
    for i in range(100):
        buffered.handle(_record(1764657601.0 + i / 1000))
    assert stream.sizes == []  # held until the flush
    buffered.flush()
    total = len(stream.getvalue().encode())
    # writes of whole lines, none over PIPE_BUF (a pipe keeps those whole between --workers)
    assert len(stream.sizes) <= total // (logs.PIPE_BUF // 2) + 1 and max(stream.sizes) <= logs.PIPE_BUF
    assert stream.getvalue().count("collector.access") == 100
    assert all(line.endswith("events=1") for line in stream.getvalue().splitlines())
    # a warning is written at once, after the lines logged before it
    writes = len(stream.sizes)
    buffered.handle(_record(1764657602.0))
    buffered.handle(_record(1764657602.5, logging.WARNING, "collector.store"))
    assert len(stream.sizes) == writes + 1
    assert stream.getvalue().splitlines()[-1].split()[2:4] == ["WARNING", "collector.store"]


def test_a_failing_stderr_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    reported: list[logging.LogRecord] = []
    target = logs.BatchWriter(Broken())
    monkeypatch.setattr(target, "handleError", reported.append)
    target.setFormatter(logs.TextFormatter())
    buffered = logs.Buffered(capacity=1024, flushLevel=logging.WARNING, target=target)
    buffered.handle(_record(1764657602.5, logging.WARNING, "collector.store"))  # flushes at once: no raise
    assert [r.name for r in reported] == ["collector.store"]

    class Failing(logging.Handler):
        def flush(self) -> None:
            raise OSError("stderr is gone")

    logs.flush_quietly(Failing())  # the flush thread's step: reported, never raised


def test_chunks_keep_lines_whole_and_count_bytes() -> None:
    lines = ["a" * 10 + "\n", "é" * 10 + "\n", "b" * 50 + "\n", "c" * 3 + "\n"]
    assert logs.chunks(lines, 32) == [lines[0] + lines[1], lines[2], lines[3]]  # é is 2 bytes
    assert "".join(logs.chunks(lines * 50, 100)) == "".join(lines * 50)


def test_a_method_the_client_made_up_never_reaches_the_log(tmp_path: Path) -> None:
    # With aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1, or a platform its C parser is not
    # built for) any token is a method, up to the 64 KiB request line: it was logged as sent.
    made_up = "ALICE.SMITH-7F3E9A1C-DEVICE-42"
    c = Collector(tmp_path / "events.db", env={"AIOHTTP_NO_EXTENSIONS": "1", "COLLECTOR_LOG_FORMAT": "json"})
    with c:
        for method in (made_up, "GET"):
            head = "Host: x\r\nSP-Anonymous: *\r\nConnection: close\r\n"
            request = f"{method} /i?e=pv&p=web&tv=t HTTP/1.1\r\n{head}\r\n"
            with socket.create_connection((c.host, c.port), timeout=5) as s:
                s.sendall(request.encode())
                answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 405" if method == made_up else b"HTTP/1.1 200"), answer
        time.sleep(3 * logs.FLUSH_SECONDS)  # the buffered lines written
    lines = [orjson.loads(line) for line in c.log.read_text().splitlines() if '"collector.access"' in line]
    assert made_up.lower() not in c.log.read_text().lower()
    assert [line["method"] for line in lines][-2:] == ["OTHER", "GET"]  # the control: a known one is logged
