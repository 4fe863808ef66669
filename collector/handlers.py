"""The HTTP edge: request facts in, through protocol, policy and identity, to the store; answer out."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from collector import cors, identifiers, identity, policy, protocol
from collector.config import Config
from collector.errors import BadInput, Unavailable
from collector.events import INT_MAX, base_row, build_row, format_ms
from collector.metrics import Metrics
from storage.base import COL, NETWORK_USERID, BadRow, Overloaded, RejectedData, Store, StoreFailed, Submission

MAX_BAD_PAYLOAD = 64 * 1024
EVENTS = web.RequestKey("events", int)  # events stored, for the access log
PIXEL_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
ROBOTS = "User-agent: *\nDisallow: /\n"


@dataclass
class State:
    """What handlers need, built once by create_app."""

    cfg: Config
    signer: identity.Signer
    jar: identity.CookieJar
    metrics: Metrics
    clock: Callable[[], float]
    store: Store | None = None
    draining: bool = False
    route_names: dict[str, str] = field(default_factory=dict)


STATE = web.AppKey("state", State)


def _json(obj: object) -> str | None:
    try:
        return orjson.dumps(obj, default=str).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: nothing of it is kept
        return None


def _bad_payload(raw: object, decision: policy.Decision) -> str | None:
    """What a bad row keeps of a refused event: its params as the policy lets a bad row keep them.

    Under SP-Anonymous that is the same scrub as for stored rows (ids dropped, entities scrubbed,
    undecodable self-describing fields left out), and nothing of what is not an object of params;
    without it, everything but the tracker's ids: what is not an object (an event encoded twice, a
    list) is read as a body refused whole is, since after a rotation those ids would link the rows.
    """
    if isinstance(raw, dict):
        text = _json(policy.scrub_bad_event(raw, decision))
    else:
        text = None if decision.anonymous else _json(raw)
        text = None if text is None else identifiers.raw_without_tracker_ids(text)
    return None if text is None else text[:MAX_BAD_PAYLOAD]


def refuse(st: State, exc: BadInput, decision: policy.Decision, payload: str | None, size: int) -> BadInput:
    """Record a refused request as a bad row (without waiting: it acknowledges nothing); return exc."""
    now = format_ms(int(st.clock() * 1000))
    st.metrics.bad_rows.labels(exc.reason).inc()
    if st.store is not None and decision.store:
        # The size is what the client sent or declared (a 413 answers a declared length unread): held
        # in a 32-bit column, and not what the row weighs in the write queue, which is its payload.
        kept = None if decision.anonymous else payload
        row = BadRow(now, exc.reason, exc.message, kept, min(size, INT_MAX), decision.anonymous)
        st.store.append_nowait(Submission(0, None, bad_rows=[row], nbytes=len(kept or "")))
    return exc


def useragent(headers: Any) -> str | None:
    """The User-Agent as text that can be stored: bytes that are not UTF-8 become U+FFFD.

    aiohttp keeps such bytes as lone surrogates, which SQLite (and PostgreSQL) cannot encode.
    """
    ua: str | None = headers.get("User-Agent")
    if ua is None or ua.isascii():
        return ua
    return ua.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# What aiohttp undoes itself (br and zstd only with a decoder installed, refused before this
# otherwise): any other coding, a stacked one (`gzip, gzip`) or an alias (`x-gzip`) it would read as
# no coding at all, and parse or refuse bytes the client said were something else.
READABLE_CODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 before reading when its declared length is over the limit, and
    with 415 when its Content-Encoding is not one the server undoes."""
    # two header lines are one list (RFC 9110), a stacked coding: aiohttp would undo the last one only
    coding = ", ".join(request.headers.getall("Content-Encoding", ()))
    if coding.strip().lower() not in READABLE_CODINGS:
        raise BadInput("unsupported_encoding", "the Content-Encoding is not one of gzip, deflate", status=415)
    if request.content_length is not None and request.content_length > limit:
        raise BadInput(
            "body_too_large",
            f"body of {request.content_length} bytes is over the {limit}-byte limit",
            status=413,
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadInput("body_too_large", f"body is over the {limit}-byte limit", status=413) from None
    except web.RequestPayloadError:  # a body that is not its Content-Encoding, or bad chunking
        # the rest of it cannot be read past: on the same connection, the next request would fail
        raise BadInput(
            "bad_encoding", "the body could not be decoded (Content-Encoding)", close=True
        ) from None
    except ConnectionError:  # the client went away mid-upload: its mistake, never ours (nor a 500)
        raise BadInput(
            "incomplete_body", "the connection closed before the body was complete", close=True
        ) from None


def decide(st: State, request: web.Request) -> policy.Decision:
    """The policy's decision for a request, counted when a privacy signal made it."""
    decision = policy.decide(st.cfg, request.remote, request.headers, request.cookies)
    if decision.signal is not None:
        st.metrics.consent(decision.signal, "drop" if not decision.store else "anonymous")
    return decision


def check_query(st: State, request: web.Request, decision: policy.Decision) -> None:
    """Refuse (414, and a bad row) a query string over COLLECTOR_MAX_QUERY, on every tracking path."""
    if len(request.query_string) > st.cfg.max_query:
        raise refuse(
            st,
            BadInput("query_too_long", f"query string is over {st.cfg.max_query} bytes", status=414),
            decision,
            None,
            len(request.query_string),
        )


async def track(request: web.Request) -> web.StreamResponse:
    """GET pixel or POST batch on any tracking path."""
    st = request.app[STATE]
    cfg = st.cfg
    cookie = request.cookies.get(cfg.cookie_name)
    decision = decide(st, request)
    check_query(st, request, decision)
    query: dict[str, str] = dict(request.query)
    if request.method == "POST":
        body = b""
        try:
            body = await read_body(request, cfg.max_body)
            raw_events = protocol.parse_body(body, request.content_type)
            if len(raw_events) > cfg.max_events:
                raise BadInput(
                    "too_many_events",
                    f"batch of {len(raw_events)} events is over {cfg.max_events}",
                    status=413,
                )
        except BadInput as exc:
            # as text either store keeps: PostgreSQL refuses a NUL, and would refuse the record with it.
            # NULs are dropped, not replaced: between characters they are UTF-16's (or UTF-32's) ASCII,
            # which then reads as sent, so the tracker's ids in it are found and cut like any others.
            # As the policy lets a bad row keep it (a named request's without the tracker's ids).
            text = body[:MAX_BAD_PAYLOAD].decode("utf-8", "replace").replace("\x00", "")
            payload = policy.scrub_bad_body(text, decision) if body and decision.store else None
            raise refuse(st, exc, decision, payload, len(body) or (request.content_length or 0)) from None
        if query:
            raw_events = [{**ev, **query} if isinstance(ev, dict) else ev for ev in raw_events]
        return await ingest(request, st, decision, cookie, raw_events, body, redirect_to=None)
    if request.method == "HEAD" and not query:
        return web.Response(body=protocol.PIXEL, content_type="image/gif", headers=PIXEL_HEADERS)
    return await ingest(request, st, decision, cookie, [query], None, redirect_to=None)


def redirect_target(cfg: Config, target: str | None) -> str | None:
    """The normalised URL /r/tp2 redirects to, if target is http(s) to a host on COLLECTOR_REDIRECT_DOMAINS.

    The answer's Location is this same normalised URL, so what was checked is what is sent; a target with
    control characters or spaces is refused outright (yarl would quietly strip some of them).
    """
    if not target or not cfg.redirect_domains or any(c <= " " or c == "\x7f" for c in target):
        return None
    try:
        url = URL(target)
        host = (url.host or "").lower()
        location = str(url)
    except (ValueError, UnicodeError):  # not a URL, or a host that is not valid IDNA
        return None
    if url.scheme not in ("http", "https") or not host:
        return None
    if not any(host == d or (d.startswith("*.") and host.endswith(d[1:])) for d in cfg.redirect_domains):
        return None
    return location


async def redirect(request: web.Request) -> web.StreamResponse:
    """GET /r/tp2?u=<target>: store the event, answer 302 to an allowed target; never an open redirect."""
    st = request.app[STATE]
    cookie = request.cookies.get(st.cfg.cookie_name)
    decision = decide(st, request)
    check_query(st, request, decision)
    params = dict(request.query)
    target = redirect_target(st.cfg, params.pop("u", None))
    if target is None:
        why = (
            "redirects are off (COLLECTOR_REDIRECT_DOMAINS is empty)"
            if not st.cfg.redirect_domains
            else "the target is not an http(s) URL on COLLECTOR_REDIRECT_DOMAINS"
        )
        if request.method == "HEAD" and not request.query_string:  # a link checker's probe, no event
            raise BadInput("redirect_refused", why)
        raise refuse(
            st,
            BadInput("redirect_refused", why),
            decision,
            _bad_payload(params, decision),
            len(request.query_string),
        )
    events = [protocol.redirect_event(params, target)]
    return await ingest(request, st, decision, cookie, events, None, redirect_to=target)


async def ingest(
    request: web.Request,
    st: State,
    decision: policy.Decision,
    cookie: str | None,
    raw_events: list[Any],
    body: bytes | None,
    redirect_to: str | None,
) -> web.StreamResponse:
    """Check, scrub and build every event, commit them, answer (pixel, ok or redirect) with the cookie.

    The events come from the body (a POST, with the query's params merged in) or from the query alone.
    """
    cfg = st.cfg
    nbytes = len(request.query_string) if body is None else len(body)
    if protocol.may_hold_nul(request.query_string) or (body is not None and protocol.may_hold_nul(body)):
        raw_events = [protocol.without_nul(raw) for raw in raw_events]
    now = st.clock()
    now_ms = int(now * 1000)
    base = base_row(format_ms(now_ms), decision.ip, useragent(request.headers), decision.anonymous)
    verify = st.signer.verify
    cookie_device = verify(cookie) if decision.use_cookie else None
    forged = cookie is not None and decision.use_cookie and cookie_device is None
    request_device = cookie_device  # the request's own device: the cookie the answer sets
    minted = False
    rows: list[list[Any]] = []
    ids: list[identifiers.TrackerIds] = []
    anonymize_at: list[int] = []
    bad: list[BadRow] = []
    for raw in raw_events:
        try:
            ev = protocol.check_event(raw)
            row, anonymize, tracker_ids = build_row(
                policy.scrub_event(ev, decision), base, cfg.anonymize_events
            )
        except BadInput as exc:
            st.metrics.bad_rows.labels(exc.reason).inc()
            payload = _bad_payload(raw, decision)
            bad.append(
                BadRow(
                    base[COL["collector_tstamp"]],
                    exc.reason,
                    exc.message,
                    payload,
                    len(payload or ""),
                    decision.anonymous,
                )
            )
            continue
        if not decision.anonymous:
            if decision.ip_param and "ip" in ev:
                row[COL["user_ipaddress"]] = policy.event_ip(cfg, decision, ev["ip"])
            # Each event's own device: a server-side tracker may forward several browsers' events.
            device, bad_mac = identity.resolve(cookie_device, ev.get("nuid"), ev.get("tnuid"), verify)
            forged = forged or bad_mac
            if device is None:
                if request_device is None:
                    request_device, minted = identity.new_device_id(), True
                device = request_device
            row[NETWORK_USERID] = device
        if anonymize:
            anonymize_at.append(len(rows))
        rows.append(row)
        ids.append(tracker_ids)
    if not rows:
        if st.store is not None and decision.store:
            st.store.append_nowait(Submission(now_ms, None, bad_rows=bad, nbytes=nbytes))
        first = bad[0]
        raise BadInput(
            first.reason,
            f"no valid event: {first.detail}"
            if len(bad) == 1
            else f"none of the {len(bad)} events is valid; first: {first.detail}",
        )
    if request_device is None and not decision.anonymous:
        devices = {r[NETWORK_USERID] for r in rows}
        request_device = devices.pop() if len(devices) == 1 else None  # one forwarded browser: its cookie
    if forged:
        st.metrics.cookie("invalid")
    if not decision.store:  # a do-not-track signal: answered as if stored, so trackers do not retry
        return answer(request, st, redirect_to, len(rows), bad)
    assert st.store is not None
    try:
        if decision.expire_cookie:
            st.metrics.cookie("expired")
            opted_out = verify(cookie)
            if opted_out is not None:
                # The device opted out: it is retired (session ended, tracker ids retired) so that when
                # the browser opts back in, as a new device, nothing ties the two. In a transaction of
                # its own: the device's update never commits with the anonymous rows.
                await st.store.append(Submission(now_ms, None, opted_out=opted_out))
        result = await st.store.append(
            Submission(
                now_ms,
                request_device,
                rows,
                tuple(anonymize_at),
                ids,
                bad_rows=bad,
                nbytes=nbytes,
            )
        )
    except Overloaded:
        st.metrics.overloaded.inc()
        raise Unavailable(
            "overloaded", "the write queue is full; retry later", headers={"Retry-After": "1"}
        ) from None
    except RejectedData as exc:
        # The events are refused; an opt-out committed before them stands (the header asked for it,
        # whatever the events held), so the answer still expires the retired device's cookie.
        expire = (
            {"Set-Cookie": st.jar.expired(cookie_domain(cfg, request))} if decision.expire_cookie else None
        )
        raise BadInput("unstorable", str(exc), headers=expire) from None
    except StoreFailed:
        st.metrics.store_failures.inc()
        raise Unavailable(
            "store_unavailable",
            "the events could not be committed; retry later",
            headers={"Retry-After": "1"},
        ) from None
    request[EVENTS] = result.stored
    st.metrics.stored(decision.anonymous, result.stored)
    if result.duplicates:
        st.metrics.duplicates.inc(result.duplicates)
    if result.rotated:
        st.metrics.rotations.labels("rotated").inc(result.rotated)
    if result.ignored:
        st.metrics.rotations.labels("ignored").inc(result.ignored)
    if result.deviceless:
        st.metrics.deviceless.inc(result.deviceless)
    resp = answer(request, st, redirect_to, len(rows), bad)
    domain = cookie_domain(cfg, request)
    if decision.use_cookie and result.device_id is not None:
        if minted or result.rotated:
            st.metrics.cookie("minted")
        resp.headers.add("Set-Cookie", st.jar.issue(result.device_id, now, domain))
    elif decision.expire_cookie or result.retired_device:
        # an opted-out or rotated-away device's cookie is never refreshed: the browser drops it
        resp.headers.add("Set-Cookie", st.jar.expired(domain))
    return resp


def cookie_domain(cfg: Config, request: web.Request) -> str:
    """The device cookie's Domain for this request (by its Origin when COLLECTOR_COOKIE_DOMAINS is set)."""
    return identity.cookie_domain(
        cfg.cookie_domains, cfg.cookie_fallback_domain, cfg.cookie_domain, request.headers.get("Origin")
    )


def answer(
    request: web.Request, st: State, redirect_to: str | None, stored: int, bad: list[BadRow]
) -> web.Response:
    """The success answer a tracker expects: a redirect, `ok` (or the partial-batch JSON), or the pixel."""
    if redirect_to is not None:
        return web.Response(status=302, headers={"Location": redirect_to})
    if request.method == "POST":
        if not bad:
            return web.Response(text="ok")
        body = {
            "ok": True,
            "stored": stored,
            "rejected": len(bad),
            "reasons": sorted({b.reason for b in bad}),
        }
        return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())
    return web.Response(body=protocol.PIXEL, content_type="image/gif", headers=PIXEL_HEADERS)


async def expect(request: web.Request) -> None:
    """`Expect: 100-continue` is answered; any other expectation is ignored (RFC 9110 allows it).

    aiohttp's own handler answers an unknown one with a plain-text 417 that echoes it, outside the
    middleware (no error shape, no CORS, no log line).
    """
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not the answer: the real one may still be sent


async def unmatched(request: web.Request) -> web.StreamResponse:
    """What no other route takes: 405 naming the methods a route of this path allows, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def preflight(request: web.Request) -> web.StreamResponse:
    """OPTIONS on a tracking path: allow the origin with credentials, or refuse without CORS headers."""
    origin = cors.allowed_origin(request.app[STATE].cfg, request.headers)
    if origin is None:
        raise BadInput("origin_not_allowed", "this Origin may not send events here", status=403)
    return web.Response(headers=cors.preflight_headers(origin))


async def health(request: web.Request) -> web.StreamResponse:
    """The process is up."""
    return web.json_response({"status": "up"})


async def ready(request: web.Request) -> web.StreamResponse:
    """Ready for traffic: the store is open and committing, and the process is not draining."""
    st = request.app[STATE]
    if st.draining or st.store is None:
        raise Unavailable("draining" if st.draining else "starting", "not ready for traffic")
    if not st.store.healthy:  # disk full, I/O errors or a stopped writer: send the traffic elsewhere
        raise Unavailable("store_failing", "commits are failing")
    return web.json_response({"status": "ready"})


async def robots(request: web.Request) -> web.StreamResponse:
    """Crawlers have no business here."""
    return web.Response(text=ROBOTS)


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text exposition, optionally behind a bearer token."""
    st = request.app[STATE]
    token = st.cfg.metrics_token
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if token and not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise BadInput("unauthorized", "metrics need the bearer token", status=401)
    depth = st.store.queue_depth if st.store is not None else 0
    return web.Response(
        body=st.metrics.exposition(depth), headers={"Content-Type": "text/plain; version=0.0.4"}
    )
