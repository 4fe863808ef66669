"""The canary test: anonymous requests through every route leave no IP, id or cookie in any byte kept.

A real collector process is configured as permissively as it gets (every proxy trusted, the `ip` param
trusted, redirects on), so that the only thing keeping the canaries out is the SP-Anonymous policy. The
same requests without the header then find the canaries where they belong: the search can fail.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import orjson
import pytest

from collector.identity import sign
from tests.conftest import TP2, batch, ev
from tests.procs import Collector

pytestmark = pytest.mark.slow
SECRET = "canary-secret"
SOURCE = "127.77.0.1"  # the client binds here: the socket peer the collector sees
HEADER_IPS = {
    "X-Forwarded-For": "198.51.100.11",
    "X-Real-IP": "198.51.100.12",
    "Forwarded": "for=198.51.100.13",
    "CF-Connecting-IP": "198.51.100.14",
    "True-Client-IP": "198.51.100.15",
    "Fastly-Client-IP": "198.51.100.16",
    "X-Client-IP": "198.51.100.17",
}
PARAM_IP = "198.51.100.18"
COOKIE_DEVICE = "c0ffee00-dead-4bee-8f00-00000000c001"
NUID_DEVICE = "c0ffee00-dead-4bee-8f00-00000000c002"
TNUID_DEVICE = "c0ffee00-dead-4bee-8f00-00000000c003"
UID, DUID = "canary-uid-7c1e", "canary-duid-41fa"
IPS = [SOURCE, PARAM_IP, *[v.removeprefix("for=") for v in HEADER_IPS.values()]]
IDS = [COOKIE_DEVICE, NUID_DEVICE, TNUID_DEVICE, UID, DUID]
ENV = {
    "COLLECTOR_COOKIE_SECRET": SECRET,
    "COLLECTOR_TRUSTED_PROXIES": "127.0.0.0/8",
    "COLLECTOR_TRUST_IP_PARAM": "true",
    "COLLECTOR_REDIRECT_DOMAINS": "shop.test",
    "COLLECTOR_MAX_BODY": "4096",
}


def canary_event(eid: str) -> dict[str, str]:
    return ev(
        "pv",
        eid=eid,
        uid=UID,
        duid=DUID,
        ip=PARAM_IP,
        nuid=sign(NUID_DEVICE, SECRET.encode()),
        tnuid=sign(TNUID_DEVICE, SECRET.encode()),
    )


async def send_everything(url: str, anonymous: bool, tag: str) -> None:
    """Every route, good and bad, carrying every canary."""
    headers = {
        **HEADER_IPS,
        "Cookie": f"sp={sign(COOKIE_DEVICE, SECRET.encode())}",
        "Origin": "http://site.test",
    }
    if anonymous:
        headers["SP-Anonymous"] = "*"
    connector = aiohttp.TCPConnector(local_addr=(SOURCE, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def go(method: str, path: str, expect: int, **kw: object) -> None:
            async with s.request(
                method,
                url + path,
                headers={**headers, **kw.pop("headers", {})},  # type: ignore[arg-type]
                allow_redirects=False,
                **kw,
            ) as r:  # type: ignore[arg-type]
                await r.read()
                assert r.status == expect, (method, path, r.status)

        for path in ("/i", "/ice.png", TP2):
            await go("GET", path, 200, params=canary_event(f"{tag}-get{path}"))
        await go("POST", TP2, 200, json=batch(canary_event(f"{tag}-post-1"), canary_event(f"{tag}-post-2")))
        await go(
            "POST",
            TP2,
            200,
            json=batch(canary_event(f"{tag}-partial"), {"e": "pv", "uid": UID, "ip": PARAM_IP}),
        )
        await go("GET", "/r/tp2", 302, params={**canary_event(f"{tag}-redirect"), "u": "https://shop.test/x"})
        await go(
            "GET", "/r/tp2", 400, params={**canary_event(f"{tag}-badredirect"), "u": "https://evil.test/"}
        )
        await go("OPTIONS", TP2, 200, headers={"Access-Control-Request-Method": "POST"})
        await go(
            "POST",
            TP2,
            400,
            data=f'{{"bad json {UID} {PARAM_IP} {DUID}',
            headers={"Content-Type": "application/json"},
        )
        await go(
            "POST",
            TP2,
            413,
            data=orjson.dumps(batch(*[canary_event(f"{tag}-big-{i}") for i in range(20)])),
            headers={"Content-Type": "application/json"},
        )
        await go(
            "POST", TP2, 400, json={"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": [canary_event("s")]}
        )
        await go("GET", "/i", 400, params={"uid": UID, "duid": DUID, "ip": PARAM_IP})
        await go("GET", f"/nope/{UID}", 404)
        await go("GET", "/i", 414, params={**canary_event(f"{tag}-long"), "url": "x" * 20000})
        # a flush: bad rows are queued without waiting, a committed request behind them commits them too
        await go("GET", "/i", 200, params=ev("pv", eid=f"{tag}-flush"))


def occurrences(blobs: dict[str, bytes], values: list[str], ips: list[str]) -> dict[str, list[str]]:
    """Where each canary occurs: as text (also UTF-16, as SQLite may store text) and, for IPs, packed."""
    found: dict[str, list[str]] = {}
    for value in values + ips:
        needles = [value.encode(), value.encode("utf-16-le")]
        if value in ips:
            needles.append(socket.inet_aton(value))
        hits = [name for name, blob in blobs.items() if any(n in blob for n in needles)]
        if hits:
            found[value] = hits
    return found


def read_all(db: Path, log: Path, metrics: bytes) -> dict[str, bytes]:
    blobs = {p.name: p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file()}
    blobs["log"] = log.read_bytes()
    blobs["metrics"] = metrics
    return blobs


async def run(
    tmp_path: Path, anonymous: bool, log_format: str
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    db = tmp_path / "canary.db"
    proc = Collector(db, env={**ENV, "COLLECTOR_LOG_FORMAT": log_format}).start()
    try:
        await send_everything(proc.url, anonymous, "run")
        async with aiohttp.ClientSession() as s, s.get(proc.url + "/metrics") as r:
            metrics = await r.read()
        assert b"collector_events_stored_total" in metrics
        await asyncio.sleep(1.0)  # log lines are flushed every half second
        while_running = occurrences(read_all(db, proc.log, metrics), IDS, IPS)
    finally:
        assert proc.stop() == 0
    log = proc.log.read_bytes()
    # the logs were written, one line per request: searching them is not searching an empty file
    assert log.count(b"collector.access") >= 15 and (b" i 200 " in log or b'"route":"i","status":200' in log)
    after_stop = occurrences(read_all(db, proc.log, metrics), IDS, IPS)
    return while_running, after_stop


def test_search_finds_packed_ips(tmp_path: Path) -> None:
    blob = b"xx" + socket.inet_aton("198.51.100.14") + b"yy"
    assert occurrences({"f": blob}, [], ["198.51.100.14"]) == {"198.51.100.14": ["f"]}


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_anonymous_requests_leave_no_canary_anywhere(tmp_path: Path, log_format: str) -> None:
    while_running, after_stop = await run(tmp_path, anonymous=True, log_format=log_format)
    assert while_running == {}
    assert after_stop == {}


async def test_without_the_header_the_canaries_are_where_they_belong(tmp_path: Path) -> None:
    while_running, after_stop = await run(tmp_path, anonymous=False, log_format="json")
    for found in (while_running, after_stop):
        # the stored values: the device from the cookie, the user ids, and the trusted `ip` param
        for value in (COOKIE_DEVICE, UID, DUID, PARAM_IP):
            assert "canary.db" in found.get(value, []) or "canary.db-wal" in found.get(value, []), value
    # still never in logs or metrics, with or without the header
    assert not any(name in ("log", "metrics") for hits in after_stop.values() for name in hits), after_stop
