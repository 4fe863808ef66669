"""Fuzzing the HTTP edge: whatever a client sends, the answer is never a 5xx and the store stays sane.

Two layers:

* the app in-process through aiohttp's test client (params and bodies), and
* real `python -m collector serve` processes (two configurations) through a raw socket client
  (tests/rawhttp.py), which sends what aiohttp's client refuses to: control characters, raw non-UTF-8
  bytes and very long values in headers, compressed bodies that are invalid or truncated, redirect
  targets with CR/LF, bodies cut short by a client that gives up.

The properties every raw answer must keep (`check_exchange`):

1. never a 5xx, except a 503 that carries Retry-After;
2. every 4xx/5xx body is the JSON error shape `{"error": {"status", "reason", "message"}}`;
3. neither the body nor the headers echo a header value the client sent, except CORS's
   Access-Control-Allow-Origin echoing an allowed Origin (exactly as sent);
4. a redirect's Location is a plain URI (no raw space, control or non-ASCII byte) whose host, read the
   way a browser reads it, is on COLLECTOR_REDIRECT_DOMAINS;
5. the collector keeps answering after each case;
6. a request its client abandoned mid-body may go unanswered, but is not an internal error (500).

Each kind of violation raises its own exception class (`fail`), so Hypothesis shrinks and reports the
distinct kinds it finds, not just the first. The cases are derandomized (the same on every run);
FUZZ_EXAMPLES=<n> searches deeper, FUZZ_SURVEY=<file> lists every kind reached instead of failing.
`test_known_failure_classes` replays one request per kind found so far, so they are always tried.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import json
import os
import re
import string
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.app import create_app
from collector.config import Config, Secret
from tests import rawhttp
from tests.conftest import SCHEMA, TP2, rows
from tests.procs import Collector
from tests.rawhttp import Answer, Headers, NoAnswer

# ---------------------------------------------------------------------------------------------------
# In-process: generated params and bodies through aiohttp's test client.

KEYS = st.sampled_from(
    [
        "e",
        "p",
        "tv",
        "eid",
        "uid",
        "duid",
        "sid",
        "vid",
        "nuid",
        "tnuid",
        "ip",
        "dtm",
        "stm",
        "se_va",
        "ue_pr",
        "ue_px",
        "co",
        "cx",
        "url",
        "u",
        "aid",
    ]
) | st.text(max_size=8)
VALUES = (
    st.sampled_from(
        ["pv", "web", "ue", "se", "", "1", "-1", "nan", "{}", "[]", '{"data":{}}', "e30", "%%%", "\x00", "²"]
    )
    | st.text(max_size=40)
    | st.text(string.ascii_letters, max_size=30)
)
PARAMS = st.dictionaries(KEYS, VALUES, max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
BODIES = (
    st.builds(
        lambda evs: orjson.dumps({"schema": SCHEMA, "data": evs}), st.lists(PARAMS, min_size=0, max_size=4)
    )
    | st.builds(lambda evs: orjson.dumps({"schema": SCHEMA, "data": evs}), st.lists(JSON, max_size=4))
    | st.builds(orjson.dumps, JSON)
    | st.binary(max_size=200)
)


async def _check(db: Path, params: dict[str, str], body: bytes, anonymous: bool, ctype: str) -> None:
    cfg = Config(db=db, cookie_secret=(Secret("fuzz"),), redirect_domains=("shop.test",), access_log=False)
    headers = {"SP-Anonymous": "*"} if anonymous else {}
    async with TestClient(TestServer(create_app(cfg))) as client:
        for method, path, kw in (
            ("GET", "/i", {"params": params}),
            ("GET", "/r/tp2", {"params": params}),
            ("POST", TP2, {"data": body, "headers": {**headers, "Content-Type": ctype}}),
        ):
            resp = await client.request(method, path, allow_redirects=False, **{"headers": headers, **kw})  # type: ignore[arg-type]
            assert resp.status < 500, (method, path, resp.status, await resp.text())
            if resp.status >= 400:
                err: Any = (await resp.json())["error"]
                assert err["status"] == resp.status and err["reason"] and err["message"]


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    params=PARAMS,
    body=BODIES,
    anonymous=st.booleans(),
    ctype=st.sampled_from(["application/json", "application/json; charset=UTF-8", "text/plain", "image/png"]),
)
def test_no_input_gets_a_5xx(
    tmp_path: Path, params: dict[str, str], body: bytes, anonymous: bool, ctype: str
) -> None:
    asyncio.run(_check(tmp_path / "fuzz.db", params, body, anonymous, ctype))


# ---------------------------------------------------------------------------------------------------
# Real processes, raw sockets: the harness and the properties.

REDIRECT_DOMAINS = ("shop.test", "*.shop.test")
ALLOWED_ORIGIN = b"https://shop.test"
TP2B = TP2.encode()
COMMON_ENV = {
    "COLLECTOR_COOKIE_SECRET": "fuzz-secret",
    "COLLECTOR_REDIRECT_DOMAINS": ",".join(REDIRECT_DOMAINS),
    "COLLECTOR_TRUSTED_PROXIES": "127.0.0.0/8,::1/128",
    "COLLECTOR_ACCESS_LOG": "false",
    "COLLECTOR_SYNCHRONOUS": "NORMAL",  # the fuzz needs no power-loss durability, only speed
}
# Two configurations, so both forwarding headers, both CORS modes and the `ip` param path are reached.
CONFIGS: dict[str, tuple[dict[str, str], tuple[bytes, ...]]] = {
    # X-Forwarded-For believed from loopback, any Origin echoed, the tracker's `ip` param believed.
    "xff": ({"COLLECTOR_TRUST_IP_PARAM": "true"}, ()),
    # Forwarded (RFC 7239) believed from loopback, one allowed Origin, IPs truncated.
    "fwd": (
        {
            "COLLECTOR_FORWARDED_HEADER": "forwarded",
            "COLLECTOR_CORS_ORIGINS": ALLOWED_ORIGIN.decode(),
            "COLLECTOR_IP_MODE": "truncate",
        },
        (ALLOWED_ORIGIN,),
    ),
}
SERVER_NAMES = st.sampled_from(sorted(CONFIGS))
EIDS = itertools.count()
CONTROLS = "".join(map(chr, [*range(0x20), 0x7F]))


def new_eid() -> str:
    return f"fuzz-{next(EIDS)}"


@dataclass(frozen=True)
class Req:
    """One raw request: our Host, Connection and Content-Length are added by rawhttp."""

    method: str
    target: bytes
    headers: Headers = field(default_factory=list)
    body: bytes | None = None
    length: int | None = None  # a Content-Length other than the body's (a client that gives up)
    chunked: bool = False  # the body is already chunked: Transfer-Encoding instead of Content-Length
    half_close: bool = False  # shut our side after sending (mid-upload, with a short body)

    def wire(self) -> bytes:
        return rawhttp.request_bytes(
            self.method, self.target, self.headers, self.body, self.length, self.chunked
        )

    def __repr__(self) -> str:
        return repr(self.wire()[:600])


class Server:
    """A running collector process and what the checks need to know about its configuration."""

    def __init__(self, name: str, proc: Collector, cors_origins: tuple[bytes, ...]) -> None:
        self.name = name
        self.proc = proc
        self.cors_origins = cors_origins  # empty: every Origin is echoed
        self.cookie = b""  # a signed device cookie this server issued
        self.corpus = b""  # answers to ordinary requests: text found there is no echo
        self.log_at = 0

    def __repr__(self) -> str:
        return f"<collector {self.name!r} on port {self.proc.port}>"

    def send(self, req: Req, timeout: float = 5.0) -> Answer:
        return rawhttp.send(self.proc.host, self.proc.port, req.wire(), req.half_close, timeout)

    def errors(self) -> tuple[list[str], list[str]]:
        """Exception names the process logged since the last call (its log names the type only): those
        its edge answered as internal errors (500), and those aiohttp logged."""
        with open(self.proc.log, "rb") as f:
            f.seek(self.log_at)
            text = f.read().decode("utf-8", "replace")
            self.log_at = f.tell()
        internal = re.findall(r"internal error on \S+ \S+: (\w+)", text)
        library = re.findall(r"aiohttp\.\w+ (\w+) \(details redacted\)", text)
        return list(dict.fromkeys(internal)), list(dict.fromkeys(library))


class EdgeFailure(AssertionError):
    """A violated property; `fail` raises one subclass per kind, so Hypothesis reports each kind."""


_KINDS: dict[str, type[EdgeFailure]] = {}


def fail(kind: str, detail: str) -> NoReturn:
    name = "Edge_" + re.sub(r"\W+", "_", kind).strip("_")[:100]
    cls = _KINDS.setdefault(name, type(name, (EdgeFailure,), {}))
    raise cls(f"{kind}\n{detail}")


def _alive(server: Server) -> bool:
    try:
        return server.send(Req("GET", b"/health"), timeout=5.0).status == 200
    except (NoAnswer, OSError):
        return False


def _strip_ows(value: bytes) -> bytes:
    return value.strip(b" \t")


def _needles(value: bytes) -> set[bytes]:
    """The forms in which a header value could come back: raw, as bytes repr, decoded, as str repr."""
    value = _strip_ows(value)
    if len(value) < 6:  # too short to tell an echo from a coincidence
        return set()
    text = value.decode("utf-8", "surrogateescape")
    replaced = value.decode("utf-8", "replace")
    forms = {
        value,
        repr(value)[2:-1].encode(),
        repr(text)[1:-1].encode("utf-8", "backslashreplace"),
        replaced.encode(),
        repr(replaced)[1:-1].encode(),
    }
    return {f[:32] for f in forms if len(f) >= 6}


def _haystack(server: Server, answer: Answer) -> bytes:
    """The answer as bytes to search for echoes: without Date, the CORS echo and our own cookie."""
    kept = []
    for name, value in answer.headers:
        low = name.lower()
        if low in (b"date", b"access-control-allow-origin"):
            continue
        if low == b"set-cookie":
            if server.cookie and server.cookie in value:
                continue
            kept.append(name + b": " + re.sub(rb"Expires=[^;]*", b"", value))
            continue
        kept.append(name + b": " + value)
    parts = [*kept, answer.body]
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        parts += [str(v).encode("utf-8", "surrogatepass") for v in doc["error"].values()]
    return b"\n".join(parts)


def _is_error_shape(answer: Answer) -> bool:
    ctype = (answer.header("Content-Type") or b"").split(b";")[0].strip().lower()
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return (
        ctype == b"application/json"
        and isinstance(err, dict)
        and err.get("status") == answer.status
        and isinstance(err.get("reason"), str)
        and bool(err["reason"])
        and isinstance(err.get("message"), str)
        and bool(err["message"])
    )


def browser_host(location: bytes) -> str | None:
    """The host a browser navigates to for a Location (WHATWG: C0/space trimmed, tab/LF/CR removed, `\\`
    read as `/` in http(s) URLs), approximated with urllib."""
    text = location.decode("utf-8", "replace").strip("".join(map(chr, range(0x21))))
    text = re.sub(r"[\t\n\r]", "", text).replace("\\", "/")
    try:
        return urllib.parse.urlsplit(text).hostname
    except ValueError:
        return None


def host_allowed(host: str | None) -> bool:
    if not host:
        return False
    return any(host == d or (d.startswith("*.") and host.endswith(d[1:])) for d in REDIRECT_DOMAINS)


def _describe(req: Req, answer: Answer | None, errors: list[str]) -> str:
    got = "no answer" if answer is None else repr(answer.raw[:700])
    return f"request: {req!r}\nanswer: {got}\nlogged: {errors}"


# FUZZ_SURVEY=<file>: record every violation there (each kind with its shortest example) instead of
# failing, so that one run lists every kind the fuzz reaches: a failing test stops looking for other
# kinds soon after its first failure (Hypothesis's rule), which is right for CI but hides the rest.
SURVEY = os.environ.get("FUZZ_SURVEY")
SURVEYED: dict[tuple[str, str], tuple[int, str]] = {}


def exchange(server: Server, req: Req, label: str = "") -> Answer | None:
    """`check_exchange`, except that under FUZZ_SURVEY a violation is recorded and None returned."""
    try:
        return check_exchange(server, req, label)
    except EdgeFailure as exc:
        if not SURVEY:
            raise
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
        kind, _, detail = str(exc).partition("\n")
        count, shortest = SURVEYED.get((test, kind), (0, detail))
        SURVEYED[test, kind] = (count + 1, min(shortest, detail, key=len))
        return None


@pytest.fixture(scope="module", autouse=True)
def _survey() -> Iterator[None]:
    yield
    if SURVEY:
        with open(SURVEY, "w") as out:
            for (test, kind), (count, detail) in sorted(SURVEYED.items()):
                out.write(f"### {test} | {kind} | x{count}\n{detail[:2000]}\n\n")


def check_exchange(server: Server, req: Req, label: str = "") -> Answer | None:
    """Send req and check the properties of the module docstring; raise a kind of EdgeFailure.

    The kind names the violation and what the process logged, plus `label` when a test wants its input
    classes reported apart (each kind is shrunk and reported on its own). A request
    its client abandoned (`half_close`) may go unanswered, but must not count as an internal error.
    """
    server.errors()  # skip what earlier cases logged
    answer: Answer | None
    try:
        answer = server.send(req)
        missing = ""
    except NoAnswer as exc:
        answer, missing = None, str(exc)
    alive = _alive(server)
    internal, library = server.errors()
    errors = internal + library
    tag = f" ({label})" if label else ""  # kinds leave out the route: one cause often shows on several
    if not alive:
        fail(f"stopped answering{tag}", _describe(req, answer, errors))
    if answer is None and req.half_close:
        if internal:
            fail(
                f"an abandoned request counted as a 500: {'/'.join(internal)}{tag}",
                _describe(req, None, errors),
            )
        return None
    if answer is None:
        fail(
            f"no answer: {'/'.join(errors) or 'nothing logged'}{tag}",
            f"{missing}\n{_describe(req, None, errors)}",
        )
    detail = _describe(req, answer, errors)
    status = answer.status
    if status >= 500 and not (status == 503 and answer.header("Retry-After")):
        fail(f"{status} {'/'.join(errors) or 'nothing logged'}{tag}", detail)
    if status >= 400 and not _is_error_shape(answer):
        ctype = (answer.header("Content-Type") or b"?").split(b";")[0].decode("latin-1")
        head = re.sub(r"\d+", "N", re.split(r"[:'\"]", answer.body.decode("latin-1"))[0])[:40]
        fail(f"{status} {ctype} not the JSON error shape: {head}", detail)
    haystack = _haystack(server, answer)
    for name, value in req.headers:
        for needle in _needles(value):
            if needle in haystack and needle not in server.corpus:
                fail(f"answer echoes the {name.decode('latin-1').lower()} header", f"{needle!r}\n{detail}")
    acao = answer.header("Access-Control-Allow-Origin")
    if acao is not None:
        origins = [_strip_ows(v) for k, v in req.headers if k.lower() == b"origin"]
        if acao not in origins:
            fail("Access-Control-Allow-Origin is not the Origin sent", detail)
        if server.cors_origins and acao not in server.cors_origins:
            fail("Access-Control-Allow-Origin for an Origin not allowed", detail)
    if 300 <= status < 400:
        location = answer.header("Location") or b""
        bad = next((b for b in location if b <= 0x20 or b >= 0x7F), None)
        if bad is not None:
            what = "space" if bad == 0x20 else "non-ASCII" if bad >= 0x80 else "control"
            fail(f"Location carries a raw {what} byte", detail)
        if not host_allowed(browser_host(location)):
            fail("open redirect: a browser reads the Location's host as one not allowed", detail)
    return answer


def _start(base: Path, name: str) -> Server:
    env, origins = CONFIGS[name]
    proc = Collector(base / f"{name}.db", env={**COMMON_ENV, **env}).start()
    server = Server(name, proc, origins)
    first = server.send(Req("GET", b"/i?e=pv&p=web&tv=fuzz"))
    cookie = first.header("Set-Cookie") or b""
    server.cookie = cookie.split(b";")[0].partition(b"=")[2]
    ordinary = [
        Req("GET", b"/i?e=pv&p=web&tv=fuzz", [(b"Origin", ALLOWED_ORIGIN)]),
        Req("POST", TP2B, [(b"Content-Type", b"application/json")], batch_bytes(event())),
        Req("POST", TP2B, [(b"Content-Type", b"application/json")], b"{"),
        Req("POST", TP2B, [], b"{}"),
        Req("OPTIONS", TP2B, [(b"Origin", ALLOWED_ORIGIN), (b"Access-Control-Request-Method", b"POST")]),
        Req("GET", b"/r/tp2?u=https%3A%2F%2Fshop.test%2F&e=pv&p=web&tv=fuzz"),
        Req("GET", b"/r/tp2?u=https%3A%2F%2Fevil.test%2F"),
        Req("GET", b"/nowhere"),
    ]
    server.corpus = b"\n".join(server.send(r).raw for r in ordinary)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    base = tmp_path_factory.mktemp("fuzz-edge")
    started: dict[str, Server] = {}
    try:
        for name in CONFIGS:
            started[name] = _start(base, name)
        yield started
    finally:
        for server in started.values():
            server.proc.stop()


FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),  # a deeper search: FUZZ_EXAMPLES=5000
    deadline=None,
    derandomize=True,  # the same cases on every run: CI stays deterministic
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# ---------------------------------------------------------------------------------------------------
# Request pieces.


def event(**kw: Any) -> dict[str, Any]:
    return {"e": "pv", "p": "web", "tv": "js-4.10.1", "eid": new_eid(), **kw}


def batch_bytes(*events: Any) -> bytes:
    return orjson.dumps({"schema": SCHEMA, "data": list(events)})


def query(params: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote).encode()


def nested(depth: int, kind: str, leaf: str = "0") -> str:
    """JSON text nested depth levels deep (orjson refuses to build it: its limit is 254 levels)."""
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    if kind == "object":
        return '{"a":' * depth + leaf + "}" * depth
    half = depth // 2
    return '[{"a":' * half + leaf + "}]" * half


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def json_str(text: str) -> str:
    return orjson.dumps(text).decode()


# ---------------------------------------------------------------------------------------------------
# 1. Headers: arbitrary values on the headers the collector reads.

NO_CRLF = st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
CONTROL = st.sampled_from([bytes([c]) for c in [*range(0x20), 0x7F]])
# What aiohttp's parser lets through to the app: no ASCII control but tab; any byte >= 0x80.
PARSEABLE_BYTES = st.binary(max_size=64).map(lambda b: bytes(c for c in b if c == 0x09 or 0x20 <= c != 0x7F))
PARSEABLE_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=CONTROLS), max_size=40)
LONG = st.builds(
    lambda chunk, n: (chunk * (n // len(chunk) + 1))[:n],
    st.sampled_from([b"a", b"\xff", "é".encode(), b"1.2.3.4, "]),
    st.integers(1000, 8000),
)
PARSEABLE = st.one_of(
    PARSEABLE_BYTES,  # non-UTF-8 bytes
    PARSEABLE_TEXT.map(str.encode),  # non-ASCII UTF-8
    PARSEABLE_TEXT.filter(lambda t: all(ord(c) < 256 for c in t)).map(lambda t: t.encode("latin-1")),
    LONG,
)
RAW_VALUES = st.one_of(
    NO_CRLF,  # control and non-UTF-8 bytes
    st.builds(
        lambda a, c, b: a + c + b, st.text(string.ascii_letters, max_size=8).map(str.encode), CONTROL, NO_CRLF
    ),
    st.builds(  # very long: around aiohttp's 16384-byte limit on a header line
        lambda chunk, n: (chunk * (n // len(chunk) + 1))[:n],
        st.binary(min_size=1, max_size=8).filter(lambda b: b"\r" not in b and b"\n" not in b),
        st.sampled_from([16360, 16370, 16383, 16384, 16385, 40000, 70000]),
    ),
)
UUIDS = st.uuids().map(str)
MAC = st.text(string.ascii_letters + string.digits + "-_", min_size=22, max_size=22)
ANY_22 = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=CONTROLS), min_size=22, max_size=22
)
COOKIE_VALUES = st.one_of(
    st.just("{valid-cookie}"),  # replaced by a cookie the server signed
    st.builds(lambda u, m: f"{u}.{m}", UUIDS, MAC),  # the signed shape, a MAC that does not verify
    st.builds(lambda u, m: f"{u}.{m}", UUIDS, ANY_22),  # 59 characters, likely non-ASCII
    st.builds(lambda u, m: f"{u}.{m}", PARSEABLE_TEXT.map(lambda t: (t * 36)[:36] or "x" * 36), ANY_22),
    PARSEABLE_TEXT,
).map(str.encode)
COOKIES = st.one_of(
    COOKIE_VALUES.map(lambda v: b"sp=" + v),
    st.builds(lambda a, b: b"sp=" + a + b"; sp=" + b, COOKIE_VALUES, COOKIE_VALUES),
    st.builds(lambda v: b'other=1; sp="' + v + b'"; x', COOKIE_VALUES),
    st.builds(  # 22 UTF-8 continuation bytes where the MAC goes: 59 characters, none of them text
        lambda u, m: b"sp=" + u.encode() + b"." + bytes(0x80 | (c & 0x3F) for c in m),
        UUIDS,
        st.binary(min_size=22, max_size=22),
    ),
    PARSEABLE.map(lambda v: b"sp=" + v),
)
HOPS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"{a}:{8080}"),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.sampled_from(
        [
            "unknown",
            "_hidden",
            "",
            "127.0.0.1",
            "::ffff:10.0.0.1",
            "[::1",
            '"[::1]"',
            "\u0661.\u0662.\u0663.\u0664",
            "\u00b9.2.3.4",
        ]
    ),
    PARSEABLE_TEXT,
)
XFF = st.lists(HOPS, max_size=40).map(lambda hops: ", ".join(hops).encode())
FORWARDED = st.lists(
    st.builds(
        lambda hop, quoted, extra: f"for={json_str(hop) if quoted else hop}{extra}",
        HOPS,
        st.booleans(),
        st.sampled_from(["", ";proto=https", ";by=10.0.0.1;host=shop.test", ";;", ";for=9.9.9.9", ",,"]),
    ),
    max_size=20,
).map(lambda parts: ", ".join(parts).encode())
CONTENT_TYPES = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=UTF-8",
        b"application/json; charset=utf-8",
        b"application/JSON",
        b"text/plain;charset=UTF-8",
        b'application/json; charset="',
        b"application/json;;;",
        b"application/json; charset=utf-8; charset=latin-1",
        b"application/json, text/plain",
        b"image/png",
        b"text/html-fuzzing",
        "application/jsön".encode(),
        b"application/j\xffson",
        b"",
    ]
)
CONTENT_ENCODINGS = st.sampled_from(
    [b"identity", b"gzip", b"deflate", b"br", b"zstd", b"x-gzip", b"compress", b"gzip, deflate", b"fuzzip"]
)
HEADER_VALUES: dict[str, st.SearchStrategy[bytes]] = {
    "User-Agent": st.sampled_from([b"Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0", b"curl/8.0"]),
    "Origin": st.sampled_from([ALLOWED_ORIGIN, b"https://evil.test", b"null", "https://shöp.test".encode()]),
    "Cookie": COOKIES,
    "SP-Anonymous": st.sampled_from([b"*", b"", b"0", b"false"]),
    "X-Forwarded-For": XFF,
    "Forwarded": FORWARDED,
    "X-Real-IP": HOPS.map(str.encode),
    "Content-Type": CONTENT_TYPES,
    "Content-Encoding": CONTENT_ENCODINGS,
    "Access-Control-Request-Headers": st.sampled_from([b"content-type", b"content-type,sp-anonymous"]),
    "Expect": st.sampled_from([b"100-continue", b"100-Continue", b"200-ok", b"fuzzing-expectation"]),
}
NAMES = st.sampled_from(sorted(HEADER_VALUES))


def _named(name: str, values: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[bytes, bytes]]:
    return st.tuples(st.sampled_from([name, name.lower(), name.upper()]).map(str.encode), values)


# A header the app reads, with a value of its kind or any value aiohttp's parser lets through.
PARSED_HEADER = NAMES.flatmap(lambda name: _named(name, HEADER_VALUES[name] | PARSEABLE))
# A header with bytes aiohttp's parser itself refuses: control characters, CR or LF alone, too long.
RAW_HEADER = NAMES.flatmap(lambda name: _named(name, RAW_VALUES))
PATHS = st.sampled_from(["pixel", "post", "preflight", "redirect"])


def _with_cookie(server: Server, headers: Headers) -> Headers:
    return [(k, v.replace(b"{valid-cookie}", server.cookie)) for k, v in headers]


def _request(kind: str, headers: Headers) -> Req:
    if kind == "pixel":
        return Req("GET", b"/i?" + query(event()), headers)
    if kind == "redirect":
        return Req("GET", b"/r/tp2?" + query({"u": "https://shop.test/landing", **event()}), headers)
    if kind == "preflight":
        return Req("OPTIONS", TP2B, [(b"Access-Control-Request-Method", b"POST"), *headers])
    if not any(k.lower() == b"content-type" for k, _ in headers):
        headers = [(b"Content-Type", b"application/json"), *headers]
    return Req("POST", TP2B, headers, batch_bytes(event(), event(e="se", se_ca="c", se_ac="a")))


def _header_case(servers: dict[str, Server], server: str, kind: str, headers: Headers) -> None:
    srv = servers[server]
    exchange(srv, _request(kind, _with_cookie(srv, headers)))


# One test per header family, so that one family's failures do not end the search in another (Hypothesis
# stops generating soon after the last new failure it found); then all of them mixed.
@FUZZ
@given(
    server=SERVER_NAMES,
    kind=PATHS,
    cookies=st.lists(_named("Cookie", COOKIES | PARSEABLE), min_size=1, max_size=2),
    anonymous=st.booleans(),
)
def test_cookie_header(
    servers: dict[str, Server], server: str, kind: str, cookies: Headers, anonymous: bool
) -> None:
    _header_case(servers, server, kind, cookies + ([(b"SP-Anonymous", b"*")] if anonymous else []))


@FUZZ
@given(server=SERVER_NAMES, kind=PATHS, origin=_named("Origin", HEADER_VALUES["Origin"] | PARSEABLE))
def test_origin_header(
    servers: dict[str, Server], server: str, kind: str, origin: tuple[bytes, bytes]
) -> None:
    _header_case(servers, server, kind, [origin])


FORWARDING = st.sampled_from(["X-Forwarded-For", "Forwarded", "X-Real-IP"]).flatmap(
    lambda name: _named(name, HEADER_VALUES[name] | PARSEABLE)
)


@FUZZ
@given(
    server=SERVER_NAMES,
    kind=PATHS,
    hops=st.lists(FORWARDING, min_size=1, max_size=3),
    anonymous=st.sampled_from([None, b"*", b"", b"0"]),
)
def test_forwarding_headers(
    servers: dict[str, Server], server: str, kind: str, hops: Headers, anonymous: bytes | None
) -> None:
    _header_case(servers, server, kind, hops + ([] if anonymous is None else [(b"SP-Anonymous", anonymous)]))


@FUZZ
@given(
    server=SERVER_NAMES,
    ctypes=st.lists(_named("Content-Type", CONTENT_TYPES | PARSEABLE), max_size=2),
    encoding=st.none() | _named("Content-Encoding", CONTENT_ENCODINGS | PARSEABLE),
    expect=st.none() | _named("Expect", HEADER_VALUES["Expect"] | PARSEABLE),
)
def test_content_headers(
    servers: dict[str, Server],
    server: str,
    ctypes: Headers,
    encoding: tuple[bytes, bytes] | None,
    expect: tuple[bytes, bytes] | None,
) -> None:
    _header_case(servers, server, "post", ctypes + [h for h in (encoding, expect) if h is not None])


@FUZZ
@given(
    server=SERVER_NAMES,
    kind=PATHS,
    headers=st.lists(
        PARSED_HEADER,
        min_size=1,
        max_size=5,
        unique_by=lambda h: h[0].lower(),
    ),
)
def test_header_values(servers: dict[str, Server], server: str, kind: str, headers: Headers) -> None:
    _header_case(servers, server, kind, headers)


@FUZZ
@given(
    server=SERVER_NAMES,
    kind=PATHS,
    raw=RAW_HEADER,
    others=st.lists(PARSED_HEADER, max_size=2),
    at=st.integers(0, 2),
)
def test_header_bytes(
    servers: dict[str, Server], server: str, kind: str, raw: tuple[bytes, bytes], others: Headers, at: int
) -> None:
    srv = servers[server]
    headers = _with_cookie(srv, others)
    headers.insert(min(at, len(headers)), raw)
    exchange(srv, _request(kind, headers))


# ---------------------------------------------------------------------------------------------------
# 2. Encodings: compressed bodies, valid, invalid, truncated, under known and unknown codings.


def compress(how: str, data: bytes) -> bytes:
    if how == "gzip":
        return gzip.compress(data)
    if how == "gzip-members":  # two gzip members: one valid gzip stream (RFC 1952)
        return gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2 :])
    if how == "zlib":
        return zlib.compress(data)
    if how == "raw-deflate":
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    return data


def damage(how: str, data: bytes, at: float, byte: int, junk: bytes) -> bytes:
    cut = int(len(data) * at)
    if how == "truncate":
        return data[:cut]
    if how == "flip" and data:
        i = min(cut, len(data) - 1)
        return data[:i] + bytes([data[i] ^ byte]) + data[i + 1 :]
    if how == "trailing":
        return data + junk
    if how == "garbage":
        return junk
    return data


DECODES_AS = {"gzip": {"gzip", "gzip-members"}, "deflate": {"zlib", "raw-deflate"}}


@FUZZ
@given(
    server=SERVER_NAMES,
    coding=st.sampled_from(
        ["gzip", "GZIP", "deflate", "Deflate", "x-gzip", "identity", "br", "zstd", "fuzz"]
    ),
    how=st.sampled_from(["gzip", "gzip-members", "zlib", "raw-deflate", "none"]),
    doc=st.sampled_from(["batch", "json", "nested"]),
    harm=st.sampled_from(["none", "none", "truncate", "flip", "trailing", "garbage"]),
    at=st.floats(0, 1),
    byte=st.integers(1, 255),
    junk=st.binary(max_size=64),
    anonymous=st.booleans(),
)
def test_content_encodings(
    servers: dict[str, Server],
    server: str,
    coding: str,
    how: str,
    doc: str,
    harm: str,
    at: float,
    byte: int,
    junk: bytes,
    anonymous: bool,
) -> None:
    eid = new_eid()
    plain = {
        "batch": batch_bytes(event(eid=eid), event(e="se", se_ca="c")),
        "json": b'{"schema": 1, "data": [[], {}, null]}',
        "nested": f'{{"schema":"{SCHEMA}","data":[{nested(600, "mixed")}]}}'.encode(),
    }[doc]
    headers = [(b"Content-Type", b"application/json"), (b"Content-Encoding", coding.encode())]
    if anonymous:
        headers.append((b"SP-Anonymous", b"*"))
    body = damage(harm, compress(how, plain), at, byte, junk)
    answer = exchange(servers[server], Req("POST", TP2B, headers, body))
    if answer is not None and doc == "batch" and harm == "none" and how in DECODES_AS.get(coding.lower(), ()):
        assert answer.status == 200, answer
        stored = rows(servers[server].proc.db, "select count(*) from events where event_id = ?", (eid,))
        assert stored[0][0] == 1, f"the {coding} batch was answered 200 but not stored"


def test_valid_gzip_and_deflate_batches_are_stored(servers: dict[str, Server]) -> None:
    for coding, how in [("gzip", "gzip"), ("deflate", "zlib"), ("deflate", "raw-deflate")]:
        eid = new_eid()
        body = compress(how, batch_bytes(event(eid=eid, url="https://shop.test/gz")))
        headers = [
            (b"Content-Type", b"application/json; charset=UTF-8"),
            (b"Content-Encoding", coding.encode()),
        ]
        answer = exchange(servers["xff"], Req("POST", TP2B, headers, body))
        assert answer is not None and answer.status == 200 and answer.body == b"ok", answer
        [row] = rows(servers["xff"].proc.db, "select page_url from events where event_id = ?", (eid,))
        assert row["page_url"] == "https://shop.test/gz"


def chunk(data: bytes, size: int) -> bytes:
    """data as HTTP/1.1 chunks of `size` bytes, with the last, empty chunk."""
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@FUZZ
@given(
    server=SERVER_NAMES,
    framing=st.sampled_from(["length", "chunked"]),
    coding=st.sampled_from(["", "gzip", "deflate"]),
    size=st.integers(1, 300),
    at=st.floats(0, 0.99),
)
def test_aborted_uploads(
    servers: dict[str, Server], server: str, framing: str, coding: str, size: int, at: float
) -> None:
    """A client that gives up mid-body (its side shut): no answer is owed, but it is not a server error."""
    body = compress({"gzip": "gzip", "deflate": "zlib"}.get(coding, "none"), batch_bytes(event(), event()))
    headers = [(b"Content-Type", b"application/json")]
    if coding:
        headers.append((b"Content-Encoding", coding.encode()))
    if framing == "chunked":
        sent = chunk(body, size)
        req = Req("POST", TP2B, headers, sent[: int(len(sent) * at)], chunked=True, half_close=True)
    else:
        req = Req("POST", TP2B, headers, body[: int(len(body) * at)], length=len(body), half_close=True)
    exchange(servers[server], req, framing)


# ---------------------------------------------------------------------------------------------------
# 3. Nested JSON: deep arrays and objects as events, as values, in contexts and self-describing events.

CONTEXTS_SCHEMA = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
UE_SCHEMA = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
PLACES = [
    "event",
    "event-beside-valid",
    "value",
    "co",
    "cx",
    "co-entity-list",
    "ue_pr",
    "ue_px",
    "ue_pr-bad-schema",
    "data",
    "get-co",
    "get-cx",
    "get-ue_px",
]
DEPTHS = st.one_of(st.sampled_from([200, 253, 254, 255, 256, 300, 1000, 1023, 1024]), st.integers(200, 1000))


def nested_request(place: str, deep: str, anonymous: bool) -> Req:
    """A request whose JSON nests `deep` (a JSON text) at `place`."""
    entity = f'{{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{{"v":{deep}}}}}'
    contexts = f'{{"schema":"{CONTEXTS_SCHEMA}","data":[{entity}]}}'
    entity_list = f'{{"schema":"{CONTEXTS_SCHEMA}","data":{deep}}}'
    ue = f'{{"schema":"{UE_SCHEMA}","data":{{"schema":"iglu:com.acme/deep/jsonschema/1-0-0","data":{deep}}}}}'
    bad_ue = f'{{"schema":"{UE_SCHEMA}","data":{{"schema":"no-iglu","data":{deep}}}}}'
    base = orjson.dumps(event(e="ue" if "ue" in place else "pv")).decode()[:-1]
    headers: Headers = [(b"SP-Anonymous", b"*")] if anonymous else []
    if place.startswith("get-"):
        key = place[4:]
        value = {"co": contexts, "cx": b64url(contexts), "ue_px": b64url(ue)}[key]
        return Req("GET", b"/i?" + query({**event(e="ue" if key == "ue_px" else "pv"), key: value}), headers)
    events = {
        "event": [deep],
        "event-beside-valid": [base + "}", deep],
        "value": [base + f',"x":{deep}}}'],
        "co": [base + f',"co":{json_str(contexts)}}}'],
        "cx": [base + f',"cx":"{b64url(contexts)}"}}'],
        "co-entity-list": [base + f',"co":{json_str(entity_list)}}}'],
        "ue_pr": [base + f',"ue_pr":{json_str(ue)}}}'],
        "ue_px": [base + f',"ue_px":"{b64url(ue)}"}}'],
        "ue_pr-bad-schema": [base + f',"ue_pr":{json_str(bad_ue)}}}'],
    }
    data = deep if place == "data" else "[" + ",".join(events[place]) + "]"
    body = f'{{"schema":"{SCHEMA}","data":{data}}}'.encode()
    return Req("POST", TP2B, [(b"Content-Type", b"application/json"), *headers], body)


@FUZZ
@given(
    server=SERVER_NAMES,
    place=st.sampled_from(PLACES),
    depth=DEPTHS,
    kind=st.sampled_from(["array", "object", "mixed"]),
    anonymous=st.booleans(),
)
def test_nested_json(
    servers: dict[str, Server], server: str, place: str, depth: int, kind: str, anonymous: bool
) -> None:
    label = f"{place}{', anonymous' if anonymous else ''}"
    exchange(servers[server], nested_request(place, nested(depth, kind), anonymous), label)


# ---------------------------------------------------------------------------------------------------
# 4. Redirect targets: CR/LF, invalid punycode, spaces, userinfo tricks, against the allow-list.

TARGET_HOSTS = st.sampled_from(
    [
        "shop.test",
        "sub.shop.test",
        "SHOP.TEST",
        "xn--zz",
        "xn--",
        "xn--zz.shop.test",
        "xn--ls8h.shop.test",
        "shöp.test",
        "shop.test.",
        "shop.test:99999",
        "shop.test:8080",
        "[::1",
        "evil.test@shop.test",
        "shop.test@evil.test",
        "evil.test\\@shop.test",
        "evil.test%5C@shop.test",
        "evil.test\t@shop.test",
        "shop.test\t.evil.test",
        "evil.test#@shop.test",
        "evil.test?.shop.test",
        "shop.test%2eevil.test",
        "evil.test\r\n.shop.test",
        "evilshop.test",
        "",
    ]
)
HOSTILE = st.sampled_from(
    ["", "\r\n", "\r\nSet-Cookie: sp=x", "\n", "\r", "\x00", " ", "\t", "%0d%0a", "é", "\x7f"]
)
# Targets on the allow-list with something hostile after the host, then anything at all.
ALLOWED_TARGETS = st.builds(
    lambda scheme, host, path, hostile, tail: f"{scheme}{host}/{path}{hostile}{tail}",
    st.sampled_from(["http://", "https://", "HTTPS://"]),
    st.sampled_from(["shop.test", "sub.shop.test", "SHOP.TEST", "xn--ls8h.shop.test", "shop.test:8080"]),
    st.text(string.ascii_letters, max_size=6),
    HOSTILE,
    st.text(string.printable, max_size=8) | st.text(max_size=8),
)
HOSTILE_TARGETS = st.builds(
    lambda scheme, host, path, hostile, tail: f"{scheme}{host}/{path}{hostile}{tail}",
    st.sampled_from(
        ["http://", "https://", "//", "javascript://", "http:", "http:\\\\", " http://", "\thttp://"]
    ),
    TARGET_HOSTS,
    st.text(string.ascii_letters, max_size=6),
    HOSTILE,
    st.text(max_size=10),
)
TARGETS = st.one_of(ALLOWED_TARGETS, HOSTILE_TARGETS, st.text(max_size=40))


@settings(FUZZ, max_examples=FUZZ.max_examples * 2)
@given(server=SERVER_NAMES, target=TARGETS, with_event=st.booleans(), anonymous=st.booleans())
def test_redirect_targets(
    servers: dict[str, Server], server: str, target: str, with_event: bool, anonymous: bool
) -> None:
    params = {"u": target, **(event() if with_event else {})}
    headers: Headers = [(b"SP-Anonymous", b"*")] if anonymous else []
    exchange(servers[server], Req("GET", b"/r/tp2?" + query(params), headers))


# ---------------------------------------------------------------------------------------------------
# 5. Param values: Unicode digits in the integer params, non-string and non-ASCII ids.

DIGITISH = st.text(
    # superscript, circled, Arabic-Indic, Devanagari, Thai, fullwidth, mathematical...: all str.isdigit()
    st.sampled_from("0123456789\u00b2\u00b3\u00b9\u2070\u2079\u2460\u0663\u06f4\u07c2\u0967\u09e6")
    | st.sampled_from("\u0a69\u0beb\u0e55\u0f23\u1045\u1096\u17e4\u1813\uff11\U0001d7d7\u1369")
    | st.characters(categories=["Nd", "No"]).filter(str.isdigit),
    min_size=1,
    max_size=15,
)
SIGNED_LOOKING = st.builds(lambda u, m: f"{u}.{m}", UUIDS, ANY_22)  # 59 characters, MAC non-ASCII
STRINGS = st.one_of(DIGITISH, SIGNED_LOOKING, st.text(max_size=20), st.ip_addresses().map(str))
NON_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
INTEGER_KEYS = ["dtm", "stm", "ttm", "vid", "se_va"]
ID_KEYS = ["nuid", "tnuid", "ip"]
OTHERS = st.dictionaries(st.sampled_from(["eid", "uid", "sid", "duid", "aid", "url"]), STRINGS, max_size=2)
VIA = st.sampled_from(["get", "post", "post", "post-query"])


def _param_case(
    server: Server,
    via: str,
    key: str,
    value: Any,
    others: dict[str, Any],
    anonymous: bool,
    label: bool = True,
) -> None:
    """One event with `key` set to value, by GET, in a POST body or as a POST's query (which overrides
    the body); with `label`, failures are labelled with the key, so that keys are reported apart."""
    params = {**others, key: value}
    headers: Headers = [(b"Content-Type", b"application/json")]
    if anonymous:
        headers.append((b"SP-Anonymous", b"*"))
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    if via == "post":  # the stdlib encoder, for integers beyond 64 bits too
        req = Req("POST", TP2B, headers, json.dumps({"schema": SCHEMA, "data": [event(**params)]}).encode())
    elif via == "get":
        req = Req("GET", b"/i?" + query({**event(), **strings}), headers[1:])
    else:
        req = Req("POST", TP2B + b"?" + query(strings), headers, batch_bytes(event()))
    exchange(server, req, key if label else "")


@settings(FUZZ, max_examples=FUZZ.max_examples * 2)
@given(
    server=SERVER_NAMES,
    via=VIA,
    key=st.sampled_from(INTEGER_KEYS),
    value=DIGITISH | STRINGS | NON_STRINGS,
    others=OTHERS,
    anonymous=st.booleans(),
)
def test_integer_params(
    servers: dict[str, Server],
    server: str,
    via: str,
    key: str,
    value: Any,
    others: dict[str, Any],
    anonymous: bool,
) -> None:
    _param_case(servers[server], via, key, value, others, anonymous, label=False)


@settings(FUZZ, max_examples=FUZZ.max_examples * 2)
@given(
    server=SERVER_NAMES,
    via=VIA,
    key=st.sampled_from(ID_KEYS),
    value=NON_STRINGS | SIGNED_LOOKING | STRINGS,
    others=OTHERS,
    anonymous=st.booleans(),
)
def test_id_params(
    servers: dict[str, Server],
    server: str,
    via: str,
    key: str,
    value: Any,
    others: dict[str, Any],
    anonymous: bool,
) -> None:
    _param_case(servers[server], via, key, value, others, anonymous)


# ---------------------------------------------------------------------------------------------------
# Regression cases: one request per failure class found so far, always tried.

SIGNED_NON_ASCII = "00000000-0000-4000-8000-000000000000." + "é" * 22
assert len(SIGNED_NON_ASCII) == 59
CONTEXTS_300 = (
    f'{{"schema":"{CONTEXTS_SCHEMA}","data":[{{"schema":"iglu:com.acme/x/jsonschema/1-0-0",'
    f'"data":{{"v":{nested(300, "array")}}}}}]}}'
)
JSON_CT = (b"Content-Type", b"application/json")


def _post(body: bytes, *headers: tuple[bytes, bytes]) -> Req:
    return Req("POST", TP2B, [JSON_CT, *headers], body)


def _known() -> list[Any]:
    valid = batch_bytes(event())
    deep_value = (
        f'{{"schema":"{SCHEMA}","data":[{{"e":"pv","p":"web","tv":"x","v":{nested(300, "object")}}}]}}'
    )
    cases = {
        # aiohttp's RequestPayloadError / ContentEncodingError on a body that does not decompress
        "gzip-invalid": _post(b"not gzip at all", (b"Content-Encoding", b"gzip")),
        "gzip-trailing-garbage": _post(gzip.compress(valid) + b"junk", (b"Content-Encoding", b"gzip")),
        "deflate-invalid": _post(b"\x78\x9cnot deflate", (b"Content-Encoding", b"deflate")),
        "br-without-brotli": _post(valid, (b"Content-Encoding", b"br")),
        "zstd-without-zstandard": _post(valid, (b"Content-Encoding", b"zstd")),
        # str.isdigit() is true for superscripts, int() refuses them
        "dtm-superscript": Req("GET", b"/i?" + query({**event(), "dtm": "²"})),
        "stm-superscript-post": _post(batch_bytes(event(stm="³"))),
        "ttm-circled-digit": Req("GET", b"/i?" + query({**event(), "ttm": "①"})),
        "vid-superscript": Req("GET", b"/i?" + query({**event(), "vid": "³"})),
        # non-string ids in a POST event reach code that expects str
        "nuid-int-post": _post(batch_bytes(event(nuid=1))),
        "tnuid-list-post": _post(batch_bytes(event(tnuid=["x"]))),
        "ip-list-post-trusted": _post(batch_bytes(event(ip=[1]))),
        "ip-int-post-trusted": _post(batch_bytes(event(ip=12))),
        # hmac.compare_digest refuses non-ASCII str
        "cookie-59-non-ascii": Req(
            "GET", b"/i?" + query(event()), [(b"Cookie", b"sp=" + SIGNED_NON_ASCII.encode())]
        ),
        "cookie-59-non-utf8": Req(
            "GET", b"/i?" + query(event()), [(b"Cookie", b"sp=" + b"0" * 36 + b"." + b"\xff" * 22)]
        ),
        "nuid-59-non-ascii-get": Req("GET", b"/i?" + query({**event(), "nuid": SIGNED_NON_ASCII})),
        "tnuid-59-non-ascii-post": _post(batch_bytes(event(tnuid=SIGNED_NON_ASCII))),
        # orjson.dumps refuses more than 254 levels: the bad row of a deep event, or contexts re-encoded
        "bad-event-300-deep": _post(f'{{"schema":"{SCHEMA}","data":[{nested(300, "array")}]}}'.encode()),
        "value-300-deep": _post(deep_value.encode()),
        "co-300-deep-anonymous": _post(batch_bytes(event(co=CONTEXTS_300)), (b"SP-Anonymous", b"*")),
        "cx-300-deep-anonymous-get": Req(
            "GET", b"/i?" + query({**event(), "cx": b64url(CONTEXTS_300)}), [(b"SP-Anonymous", b"*")]
        ),
        # redirect targets: yarl decodes the host lazily (UnicodeError), aiohttp refuses CR/LF/NUL headers
        "redirect-invalid-punycode": Req("GET", b"/r/tp2?" + query({"u": "http://xn--zz/"})),
        "redirect-crlf": Req("GET", b"/r/tp2?" + query({"u": "http://shop.test/\r\nSet-Cookie: sp=x"})),
        "redirect-nul": Req("GET", b"/r/tp2?" + query({"u": "http://shop.test/\x00"})),
        "redirect-space": Req("GET", b"/r/tp2?" + query({"u": "http://shop.test/a b"})),
        "redirect-non-ascii": Req("GET", b"/r/tp2?" + query({"u": "http://shop.test/é"})),
        # aiohttp's own parse errors: plain text that quotes the request line or header line
        "header-control-char": Req("GET", b"/i?" + query(event()), [(b"User-Agent", b"fuzzing\x01agent")]),
        "header-bare-lf": Req("GET", b"/i?" + query(event()), [(b"User-Agent", b"fuzzing\nagent")]),
        "header-too-long": Req("GET", b"/i?" + query(event()), [(b"User-Agent", b"A" * 20000)]),
        "query-raw-non-ascii": Req("GET", "/i?e=pv&p=web&tv=x&dtm=²".encode()),
        "duplicate-content-type": Req("POST", TP2B, [JSON_CT, JSON_CT], valid),
        "request-line-too-long": Req("GET", b"/i?" + query({**event(), "x": "a" * 70000})),
        # aiohttp answers an Expect it does not know before the app's middleware: plain text, echoed
        "expect-unknown": Req("POST", TP2B, [JSON_CT, (b"Expect", b"fuzzing-expectation")], valid),
        # ... and one that is not UTF-8 fails encoding that answer: aiohttp's own plain-text 500
        "expect-non-utf8": Req("GET", b"/i?" + query(event()), [(b"Expect", b"\x80")]),
        # ... and on a path or a method no route takes, where aiohttp ran its own handler for it
        "expect-unknown-404": Req("GET", b"/nowhere", [(b"Expect", b"fuzzing-expectation")]),
        "expect-unknown-405": Req("PUT", TP2B, [JSON_CT, (b"Expect", b"fuzzing-expectation")], valid),
        "expect-non-utf8-404": Req("GET", b"/nowhere", [(b"Expect", b"\x80")]),
        "expect-non-utf8-405": Req("POST", b"/health", [(b"Expect", b"\x80")], b""),
        # ... and on a path holding a newline, which a `.*` route pattern does not match
        "expect-unknown-404-newline": Req("GET", b"/nowhere%0Ax", [(b"Expect", b"fuzzing-expectation")]),
        "expect-non-utf8-404-newline": Req("GET", b"/i%0A", [(b"Expect", b"\x80")]),
        # ... and on a target no route pattern can match: the asterisk form (`OPTIONS *`)
        "expect-unknown-asterisk": Req("OPTIONS", b"*", [(b"Expect", b"fuzzing-expectation")]),
        "expect-non-utf8-asterisk": Req("OPTIONS", b"*", [(b"Expect", b"\x80")]),
        # a client that gives up mid-upload is logged and counted as an internal error (500)
        "aborted-content-length": Req(
            "POST", TP2B, [JSON_CT], valid[:20], length=len(valid), half_close=True
        ),
        "aborted-chunked": Req("POST", TP2B, [JSON_CT], chunk(valid, 64)[:30], chunked=True, half_close=True),
        # the 415 message quotes the Content-Type the client sent
        "content-type-echoed": Req("POST", TP2B, [(b"Content-Type", b"text/html-fuzzing")], valid),
        # a non-UTF-8 Origin comes back mangled in Access-Control-Allow-Origin
        "origin-non-utf8": Req("GET", b"/i?" + query(event()), [(b"Origin", b"https://\xff\xfe.test")]),
        "origin-one-non-utf8-byte-preflight": Req(
            "OPTIONS", TP2B, [(b"Origin", b"\xe4"), (b"Access-Control-Request-Method", b"POST")]
        ),
    }
    return [pytest.param(req, id=name) for name, req in cases.items()]


@pytest.mark.parametrize("req", _known())
def test_known_failure_classes(servers: dict[str, Server], req: Req) -> None:
    exchange(servers["xff"], req)
