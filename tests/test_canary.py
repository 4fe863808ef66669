"""The canary test: anonymous requests through every route leave no IP, id or cookie in any byte kept.

A real collector process is configured as permissively as it gets (every proxy trusted, the `ip` param
trusted, redirects on), so that the only thing keeping the canaries out is the SP-Anonymous policy. The
same requests without the header then find the canaries where they belong: the search can fail.

Canaries also sit inside entities (client_session, mobile_context, the GA cookie entities,
geolocation), sent as `co` JSON and as `cx` base64url across the routes, and on refused events of a
partially valid batch, so that they would land in bad_rows if the policy missed them there. The search
looks for each canary as text and as its base64 forms, since a refused event's `cx` is kept as it came.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from collector.identity import sign
from tests import pg
from tests.conftest import SCHEMA, TP2, batch, ev, rows, tables
from tests.pg import PgServer
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
UID, DUID, FP = "canary-uid-7c1e", "canary-duid-41fa", "canary-fp-93d2"
LINK_DUID = "canary-link-duid-5b07"  # the linking site's duid, in the page URL's cross-domain `_sp`
PAGE_URL = f"https://site.test/landing?utm_source=x&_sp={LINK_DUID}.1732270000123"
# Identifying fields of entities, each distinct from the others all along (the base64 search matches
# the inner part of a value, so two canaries may not differ in their last characters only).
ENTITY_IDS = {
    "client_session.userId": "266ce4e0-5074-4292-9e42-d75ec437c23e",
    "client_session.previousSessionId": "47204807-e663-4bac-85b2-695f6c1fbfa5",
    "client_session.firstEventId": "f6b2c934-8625-4a71-a2e2-a30749a0a406",
    "mobile_context.appleIdfa": "083C7884-8525-4E24-A5FB-9A34694E2FDE",
    "mobile_context.appleIdfv": "9E65DBF6-7066-4C53-9B11-1E2CB258D55D",
    "mobile_context.androidIdfa": "fa00f293-8c35-40a4-901b-9ed3ba3736ff",
    "mobile_context.openIdfa": "2755d286-e7d2-4b98-9775-08e60d289f1a",
    "mobile_context.appSetId": "4b74d75f-6dc3-4078-a8a5-e0f3f2e18cfc",
    "ga_cookies._ga": "GA1.2.1357913579.1732270001",
    "ga_cookies.__utma": "135791357.246802468.1732270000.1732270011.1732270022.3",
    "ga_cookies.__utmb": "864213579.4.10.1732270033",
    "ga_cookies.__utmz": "975319753.1732270044.2.2.utmcsr=canary-news|utmccn=(referral)|utmcmd=referral",
    "ga4_cookies._ga": "GA1.1.246813579.1732270002",
    "ga4_cookies.session_cookie": "GS1.1.1732270055.7.1.1732270099.0.0.975313579",
    # a precise location identifies a person: the numbers are searched in the text form JSON gives them
    "geolocation_context.latitude": "48.85837412963",
    "geolocation_context.longitude": "2.29448196637",
}
# The tracker's anonymous session: kept under SP-Anonymous by design, so deliberately not a canary.
SESSION_ID = "871b3619-c779-4727-9bd0-af286e32e4ab"
IPS = [SOURCE, PARAM_IP, *[v.removeprefix("for=") for v in HEADER_IPS.values()]]
IDS = [COOKIE_DEVICE, NUID_DEVICE, TNUID_DEVICE, UID, DUID, FP, LINK_DUID, *ENTITY_IDS.values()]
LABELS = {
    **{v: k for k, v in ENTITY_IDS.items()},
    COOKIE_DEVICE: "cookie device",
    NUID_DEVICE: "nuid device",
    TNUID_DEVICE: "tnuid device",
    UID: "uid",
    DUID: "duid",
    FP: "fingerprint",
    LINK_DUID: "cross-domain duid",
    **{ip: f"ip {ip}" for ip in IPS},
}
MAX_BODY = 32768  # room for a batch of three events that each carry both `co` and `cx`
ENV = {
    "COLLECTOR_COOKIE_SECRET": SECRET,
    "COLLECTOR_TRUSTED_PROXIES": "127.0.0.0/8",
    "COLLECTOR_TRUST_IP_PARAM": "true",
    "COLLECTOR_REDIRECT_DOMAINS": "shop.test",
    "COLLECTOR_MAX_BODY": str(MAX_BODY),
}


def contexts() -> dict[str, Any]:
    """A contexts envelope whose identifying entity fields all hold canaries."""
    e = ENTITY_IDS
    return {
        "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
        "data": [
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2",
                "data": {
                    "userId": e["client_session.userId"],
                    "sessionId": SESSION_ID,
                    "sessionIndex": 3,
                    "eventIndex": 5,
                    "previousSessionId": e["client_session.previousSessionId"],
                    "storageMechanism": "LOCAL_STORAGE",
                    "firstEventId": e["client_session.firstEventId"],
                    "firstEventTimestamp": "2026-01-15T08:00:00.000Z",
                },
            },
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3",
                "data": {
                    "osType": "ios",
                    "osVersion": "17.4",
                    "deviceManufacturer": "Apple Inc.",
                    "deviceModel": "iPhone15,2",
                    "carrier": "Vodafone",
                    "networkType": "wifi",
                    "appleIdfa": e["mobile_context.appleIdfa"],
                    "appleIdfv": e["mobile_context.appleIdfv"],
                    "androidIdfa": e["mobile_context.androidIdfa"],
                    "openIdfa": e["mobile_context.openIdfa"],
                    "appSetId": e["mobile_context.appSetId"],
                    "appSetIdScope": "app",
                },
            },
            {
                "schema": "iglu:com.google.analytics/cookies/jsonschema/1-0-0",
                "data": {
                    "_ga": e["ga_cookies._ga"],
                    "__utma": e["ga_cookies.__utma"],
                    "__utmb": e["ga_cookies.__utmb"],
                    "__utmz": e["ga_cookies.__utmz"],
                },
            },
            {
                "schema": "iglu:com.google.ga4/cookies/jsonschema/1-0-0",
                "data": {
                    "_ga": e["ga4_cookies._ga"],
                    "session_cookies": [
                        {"measurement_id": "G-SHOP12345", "session_cookie": e["ga4_cookies.session_cookie"]}
                    ],
                },
            },
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/geolocation_context/jsonschema/1-1-0",
                "data": {
                    "latitude": float(e["geolocation_context.latitude"]),
                    "longitude": float(e["geolocation_context.longitude"]),
                    "latitudeLongitudeAccuracy": 5.0,
                    "timestamp": 1732270000000,
                },
            },
        ],
    }


CO = orjson.dumps(contexts()).decode()
CX = base64.urlsafe_b64encode(orjson.dumps(contexts())).rstrip(b"=").decode()  # base64url, no padding
assert all(v in CO for v in ENTITY_IDS.values())  # the text form searched is the one sent


def entities(form: str) -> dict[str, str]:
    """The contexts param in the form asked: `co`, `cx`, or both (only a refused event carries both)."""
    return {k: v for k, v in (("co", CO), ("cx", CX)) if k in form}


def canary_event(eid: str, form: str = "co") -> dict[str, str]:
    return ev(
        "pv",
        eid=eid,
        uid=UID,
        duid=DUID,
        fp=FP,
        url=PAGE_URL,
        ip=PARAM_IP,
        nuid=sign(NUID_DEVICE, SECRET.encode()),
        tnuid=sign(TNUID_DEVICE, SECRET.encode()),
        **entities(form),
    )


def refused_events(tag: str) -> list[dict[str, Any]]:
    """Events a valid batch refuses one by one (they go to bad_rows), each with every canary."""
    bad_platform = {**canary_event(f"{tag}-bad-platform", "co+cx"), "p": "BAD"}
    non_string: dict[str, Any] = {
        **canary_event(f"{tag}-non-string", "co+cx"),
        "e": "se",
        "se_ca": "shop",
        "se_ac": "add",
        "se_va": {"x": 1},
    }
    return [bad_platform, non_string]


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

        for path, form in (("/i", "cx"), ("/ice.png", "co"), (TP2, "cx")):
            await go("GET", path, 200, params=canary_event(f"{tag}-get{path}", form))
        await go(
            "POST", TP2, 200, json=batch(canary_event(f"{tag}-post-1"), canary_event(f"{tag}-post-2", "cx"))
        )
        await go(
            "POST",
            TP2,
            200,
            json=batch(canary_event(f"{tag}-partial"), {"e": "pv", "uid": UID, "ip": PARAM_IP, "cx": CX}),
        )
        # one valid event, two refused ones: the refused ones are bad rows, with their contexts
        await go(
            "POST",
            TP2,
            200,
            json={"schema": SCHEMA, "data": [canary_event(f"{tag}-partial-2", "cx"), *refused_events(tag)]},
        )
        await go("GET", "/r/tp2", 302, params={**canary_event(f"{tag}-redirect"), "u": "https://shop.test/x"})
        await go(
            "GET",
            "/r/tp2",
            400,
            params={**canary_event(f"{tag}-badredirect", "cx"), "u": "https://evil.test/"},
        )
        await go("OPTIONS", TP2, 200, headers={"Access-Control-Request-Method": "POST"})
        await go(
            "POST",
            TP2,
            400,
            data=f'{{"bad json {UID} {PARAM_IP} {DUID}',
            headers={"Content-Type": "application/json"},
        )
        big = orjson.dumps(batch(*[canary_event(f"{tag}-big-{i}", ("co", "cx")[i % 2]) for i in range(30)]))
        assert len(big) > MAX_BODY
        await go("POST", TP2, 413, data=big, headers={"Content-Type": "application/json"})
        await go(
            "POST",
            TP2,
            400,
            json={"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": [canary_event("s", "co+cx")]},
        )
        await go("GET", "/i", 400, params={"uid": UID, "duid": DUID, "ip": PARAM_IP, "co": CO, "cx": CX})
        await go("GET", f"/nope/{UID}", 404)
        await go("GET", "/i", 414, params={**canary_event(f"{tag}-long", "cx"), "url": "x" * 20000})
        # a flush: bad rows are queued without waiting, a committed request behind them commits them too
        await go("GET", "/i", 200, params=ev("pv", eid=f"{tag}-flush"))


def base64_forms(value: str) -> list[bytes]:
    """What any base64 text containing value holds whatever its alignment: standard and url alphabets.

    For each of the 3 offsets the value may start at inside a 3-byte group, the characters that encode
    only the value's own bytes (the first group is shared with what precedes, the last with what follows).
    """
    raw = value.encode()
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        inner = encoded[4 if shift else 0 : 4 * ((shift + len(raw)) // 3)]
        forms += [inner, inner.replace(b"+", b"-").replace(b"/", b"_")]
    return forms


def occurrences(blobs: dict[str, bytes], values: list[str], ips: list[str]) -> dict[str, list[str]]:
    """Where each canary occurs: as text (also UTF-16, as SQLite may store text), as base64, IPs packed."""
    found: dict[str, list[str]] = {}
    for value in values + ips:
        needles = [value.encode(), value.encode("utf-16-le"), *base64_forms(value)]
        if value in ips:
            needles.append(socket.inet_aton(value))
        hits = [name for name, blob in blobs.items() if any(n in blob for n in needles)]
        if hits:
            found[value] = hits
    return found


def read_all(db: Path | str, log: Path, metrics: bytes, server: PgServer | None) -> dict[str, bytes]:
    """Every byte kept: the SQLite file, WAL and SHM; or every file of the PostgreSQL cluster (heap,
    indexes, WAL, after a CHECKPOINT) and its server log; the collector's log; the metrics."""
    if server is None:
        assert isinstance(db, Path)
        blobs = {p.name: p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file()}
    else:
        server.execute("CHECKPOINT")
        files = [p for p in server.data.rglob("*") if p.is_file()]
        blobs = {f"pg:{p.relative_to(server.data)}": p.read_bytes() for p in files}
        blobs["pg:server.log"] = server.log.read_bytes()
        assert any(name.startswith("pg:pg_wal/") for name in blobs) and any("base/" in n for n in blobs)
    blobs["log"] = log.read_bytes()
    blobs["metrics"] = metrics
    return blobs


def in_store(hits: list[str]) -> bool:
    """Whether a canary was found in the store's own files (SQLite's, or PostgreSQL's heap and WAL)."""
    return any(h in ("canary.db", "canary.db-wal") or h.startswith(("pg:base/", "pg:pg_wal/")) for h in hits)


def by_column(db: Path | str) -> dict[str, bytes]:
    """Every column of every table as one blob (bad rows' payloads by reason): where in the store a hit is."""
    blobs: dict[str, bytes] = {}
    for table in tables(db):
        if table.startswith(("events_", "bad_rows_")):  # PostgreSQL's partitions: their parent shows them
            continue
        for row in rows(db, f'select * from "{table}"'):
            for name in row.keys():  # noqa: SIM118 - a row is not a mapping
                key = f"{table}.{name}"
                if table == "bad_rows" and name == "payload":
                    key += f"[{row['reason']}]"
                blobs[key] = blobs.get(key, b"") + b"\x1f" + str(row[name]).encode()
    return blobs


Found = dict[str, list[str]]


@contextlib.contextmanager
def a_store(tmp_path: Path, store: str) -> Iterator[tuple[Path | str, PgServer | None]]:
    """A new store; on PostgreSQL a cluster of its own, so that no other test's rows are in its files."""
    if store == "sqlite":
        yield tmp_path / "canary.db", None
        return
    if (why := pg.available()) is not None:
        pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)
    server = PgServer(Path(tempfile.mkdtemp(prefix="collector-pg-canary-"))).start()
    try:
        yield server.url(server.new_database()), server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


async def run(tmp_path: Path, anonymous: bool, log_format: str, store: str) -> tuple[Found, Found, Found]:
    """The canaries found in every file while running and after stop, and in which columns after stop."""
    with a_store(tmp_path, store) as (db, server):
        proc = Collector(db, env={**ENV, "COLLECTOR_LOG_FORMAT": log_format}, log=tmp_path / "collector.log")
        proc.start()
        try:
            await send_everything(proc.url, anonymous, "run")
            async with aiohttp.ClientSession() as s, s.get(proc.url + "/metrics") as r:
                metrics = await r.read()
            assert b"collector_events_stored_total" in metrics
            await asyncio.sleep(1.0)  # log lines are flushed every half second
            while_running = occurrences(read_all(db, proc.log, metrics, server), IDS, IPS)
        finally:
            assert proc.stop() == 0
        log = proc.log.read_bytes()
        # the logs were written, one line per request: searching them is not searching an empty file
        assert log.count(b"collector.access") >= 15 and (
            b" i 200 " in log or b'"route":"i","status":200' in log
        )
        after_stop = occurrences(read_all(db, proc.log, metrics, server), IDS, IPS)
        return while_running, after_stop, occurrences(by_column(db), IDS, IPS)


def labelled(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """The canaries found, by what they are (for a readable failure)."""
    return {LABELS.get(value, value): hits for value, hits in found.items()}


def report(found: Found) -> str:
    """One line per canary found, by what it is, and where."""
    return "found:\n" + "\n".join(f"  {label}: {hits}" for label, hits in sorted(labelled(found).items()))


def test_search_finds_packed_ips(tmp_path: Path) -> None:
    blob = b"xx" + socket.inet_aton("198.51.100.14") + b"yy"
    assert occurrences({"f": blob}, [], ["198.51.100.14"]) == {"198.51.100.14": ["f"]}


def test_search_finds_base64_forms_at_every_alignment() -> None:
    value = ENTITY_IDS["client_session.userId"]
    for prefix in ("", "x", "xy", '{"userId":"'):
        text = f"{prefix}{value}tail".encode()
        blobs = {"std": base64.b64encode(text), "url": base64.urlsafe_b64encode(text).rstrip(b"=")}
        assert occurrences(blobs, [value], []) == {value: ["std", "url"]}, prefix
    # a refused event's cx, kept as it came, is found; the other canaries do not match it
    assert set(occurrences({"cx": CX.encode()}, IDS, [])) == set(ENTITY_IDS.values())


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_anonymous_requests_leave_no_canary_anywhere(
    tmp_path: Path, log_format: str, store: str
) -> None:
    while_running, after_stop, columns = await run(tmp_path, True, log_format, store)
    assert labelled(while_running) == {}, report(columns)
    assert labelled(after_stop) == {}, report(columns)
    # and through SQL: PostgreSQL compresses a large value (TOAST), which a search of raw bytes misses
    assert labelled(columns) == {}, report(columns)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_without_the_header_the_canaries_are_where_they_belong(tmp_path: Path, store: str) -> None:
    while_running, after_stop, columns = await run(tmp_path, False, "json", store)
    for found in (while_running, after_stop):
        # the stored values: the device from the cookie, the user ids, and the trusted `ip` param
        # (on PostgreSQL the entity ids ride only in the rows' contexts, compressed: the SQL check below)
        entity_ids = list(ENTITY_IDS.values()) if store == "sqlite" else []
        for value in (COOKIE_DEVICE, UID, DUID, FP, LINK_DUID, PARAM_IP, *entity_ids):
            assert in_store(found.get(value, [])), (value, found.get(value))
    # the entities are stored as sent; the refused events' bad rows keep their contexts but never the
    # tracker's ids (identifiers.without_tracker_ids): the session, mobile and GA ids go, a location stays
    refused = {"bad_rows.payload[bad_platform]", "bad_rows.payload[non_string_value]"}
    for label, value in ENTITY_IDS.items():
        got = set(columns.get(value, []))
        assert "events.contexts" in got, (label, got)
        if label.startswith("geolocation_context"):
            assert refused <= got, (label, got)
        else:
            assert not got & refused, (label, got)
    # still never in logs or metrics, with or without the header
    assert not any(name in ("log", "metrics") for hits in after_stop.values() for name in hits), after_stop
