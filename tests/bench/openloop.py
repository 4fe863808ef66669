"""Open-loop load at a fixed request rate, latency measured from each request's *scheduled* start.

wrk is closed-loop: a slow answer delays the next request on that connection, so a server stall
is measured once instead of for every request that should have been sent during it ("coordinated
omission"). wrk2 fixes that but is not packaged in Debian (`apt-cache search wrk2` finds nothing),
so this client schedules request i at t0 + i/rate whatever happened before, takes an idle keep-alive
connection or opens a new one, and reports latency = answer time - scheduled time (the wrk2
definition) next to the plain service time (answer time - send time).

It is asyncio on uvloop with a minimal HTTP/1.1 parser (Content-Length answers only, which is what
the collector, the baseline and nginx send). Its own overhead is checked in the benchmark by running
it at the same rate against nginx, whose latency is near zero.

    python -m tests.bench.openloop --url http://127.0.0.1:8080 --rate 1000 --seconds 5 --runtag 0a0b0c0d
prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import uvloop

from tests.bench.payloads import EventIds, get_path, post_body

POST_PATH = "/com.snowplowanalytics.snowplow/tp2"
clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                self.closed = True
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        status = int(head[0].split()[1])
        if not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("closed"))

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


@dataclass
class Stats:
    sent: int = 0
    ok2xx: int = 0
    non2xx: int = 0
    errors: int = 0
    events_sent: int = 0
    connections: int = 0
    corrected: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


async def run(
    url: str, rate: float, seconds: float, *, workload: str, runtag: str, max_conns: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    ids = EventIds(runtag)
    idle: list[Conn] = []
    stats = Stats()
    nevents = {"get": 1, "post1": 1, "post10": 10}[workload]
    head = f"Host: {host}:{port}\r\nUser-Agent: Mozilla/5.0 (bench openloop)\r\n"

    def build() -> bytes:
        if workload == "get":
            return f"GET {get_path(ids)} HTTP/1.1\r\n{head}\r\n".encode()
        body = post_body(ids, nevents)
        return (
            f"POST {POST_PATH} HTTP/1.1\r\n{head}Content-Type: application/json; charset=UTF-8\r\n"
            f"Origin: https://shop.example.com\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def one(scheduled: float) -> None:
        request = build()
        stats.sent += 1
        stats.events_sent += nevents
        try:
            if idle:
                conn = idle.pop()
            else:
                stats.connections += 1
                _, conn = await loop.create_connection(Conn, host, port)
            sent_at = clock()
            status = await conn.exchange(request)
        except (OSError, ConnectionError):
            stats.errors += 1
            return
        done = clock()
        stats.corrected.append(done - scheduled)
        stats.service.append(done - sent_at)
        if 200 <= status < 300:
            stats.ok2xx += 1
        else:
            stats.non2xx += 1
        if not conn.closed and len(idle) < max_conns:
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    total = int(rate * seconds)
    t0 = clock() + 0.05
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while i < total:
        now = clock()
        # issue everything that is due: a late wake-up sends a burst, as an open-loop source must
        while i < total and t0 + i / rate <= now:
            task = loop.create_task(one(t0 + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            # uvloop timers have 1 ms resolution: sleep through long gaps, yield (spin) through short
            # ones so requests leave on time; the client has its own core, spinning costs nothing there
            gap = t0 + i / rate - clock()
            await asyncio.sleep(gap - 0.001 if gap > 0.002 else 0)
    issued_for = clock() - t0
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    inflight = len(tasks)
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    us = 1e6
    return {
        "target_rate": rate,
        "achieved_rate": stats.sent / issued_for if issued_for > 0 else 0.0,
        "seconds": seconds,
        "sent": stats.sent,
        "ok2xx": stats.ok2xx,
        "non2xx": stats.non2xx,
        "errors": stats.errors,
        "inflight": inflight,
        "events_sent": stats.events_sent,
        "connections": stats.connections,
        "latency_us": {
            f"p{p}".replace(".", ""): round(percentile(stats.corrected, p) * us) for p in (50, 90, 99, 99.9)
        },
        "service_us": {
            f"p{p}".replace(".", ""): round(percentile(stats.service, p) * us) for p in (50, 90, 99, 99.9)
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="open-loop fixed-rate Snowplow load")
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workload", choices=("get", "post1", "post10"), default="post10")
    ap.add_argument("--runtag", required=True, help="8 hex digits that start every event id")
    ap.add_argument("--max-conns", type=int, default=512)
    ns = ap.parse_args(argv)
    result = uvloop.run(
        run(ns.url, ns.rate, ns.seconds, workload=ns.workload, runtag=ns.runtag, max_conns=ns.max_conns)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
