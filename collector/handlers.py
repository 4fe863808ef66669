"""The HTTP edge: request facts in, through protocol, policy and identity, to the store; answer out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from collector import cors, identity, policy, protocol
from collector.config import Config
from collector.errors import BadInput, Unavailable
from collector.events import base_row, build_row, format_ms
from collector.metrics import Metrics
from storage.base import COL, BadRow, Overloaded, RejectedData, Store, StoreFailed, Submission

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


def _bad_payload(raw: object, decision: policy.Decision) -> str | None:
    """What a bad row keeps of a refused event: scrubbed params; nothing unscrubbable if anonymous."""
    if isinstance(raw, dict):
        return orjson.dumps(policy.scrub_event(raw, decision)).decode()[:MAX_BAD_PAYLOAD]
    return None if decision.anonymous else orjson.dumps(raw, default=str).decode()[:MAX_BAD_PAYLOAD]


def refuse(st: State, exc: BadInput, decision: policy.Decision, payload: str | None, size: int) -> BadInput:
    """Record a refused request as a bad row (without waiting: it acknowledges nothing); return exc."""
    now = format_ms(int(st.clock() * 1000))
    st.metrics.bad_rows.labels(exc.reason).inc()
    if st.store is not None:
        st.store.append_nowait(
            Submission(
                0,
                None,
                bad_rows=[
                    BadRow(
                        now,
                        exc.reason,
                        exc.message,
                        None if decision.anonymous else payload,
                        size,
                        decision.anonymous,
                    )
                ],
            )
        )
    return exc


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 before reading when its declared length is over the limit."""
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


async def track(request: web.Request) -> web.StreamResponse:
    """GET pixel or POST batch on any tracking path."""
    st = request.app[STATE]
    cfg = st.cfg
    cookie = request.cookies.get(cfg.cookie_name)
    decision = policy.decide(cfg, request.remote, request.headers, cookie is not None)
    if len(request.query_string) > cfg.max_query:
        raise refuse(
            st,
            BadInput("query_too_long", f"query string is over {cfg.max_query} bytes", status=414),
            decision,
            None,
            len(request.query_string),
        )
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
            payload = body[:MAX_BAD_PAYLOAD].decode("utf-8", "replace") if body else None
            raise refuse(st, exc, decision, payload, len(body) or (request.content_length or 0)) from None
        if query:
            raw_events = [{**ev, **query} if isinstance(ev, dict) else ev for ev in raw_events]
        return await ingest(request, st, decision, cookie, raw_events, redirect_to=None)
    if request.method == "HEAD" and not query:
        return web.Response(body=protocol.PIXEL, content_type="image/gif", headers=PIXEL_HEADERS)
    return await ingest(request, st, decision, cookie, [query], redirect_to=None)


def redirect_allowed(cfg: Config, target: str | None) -> bool:
    """Whether /r/tp2 may redirect to target: http(s) to a host on COLLECTOR_REDIRECT_DOMAINS."""
    if not target or not cfg.redirect_domains:
        return False
    try:
        url = URL(target)
    except ValueError:
        return False
    host = (url.host or "").lower()
    if url.scheme not in ("http", "https") or not host:
        return False
    return any(host == d or (d.startswith("*.") and host.endswith(d[1:])) for d in cfg.redirect_domains)


async def redirect(request: web.Request) -> web.StreamResponse:
    """GET /r/tp2?u=<target>: store the event, answer 302 to an allowed target; never an open redirect."""
    st = request.app[STATE]
    cookie = request.cookies.get(st.cfg.cookie_name)
    decision = policy.decide(st.cfg, request.remote, request.headers, cookie is not None)
    params = dict(request.query)
    target = params.pop("u", None)
    if not redirect_allowed(st.cfg, target):
        why = (
            "redirects are off (COLLECTOR_REDIRECT_DOMAINS is empty)"
            if not st.cfg.redirect_domains
            else "the target is not on COLLECTOR_REDIRECT_DOMAINS"
        )
        raise refuse(
            st,
            BadInput("redirect_refused", why),
            decision,
            _bad_payload(params, decision),
            len(request.query_string),
        )
    assert target is not None
    return await ingest(
        request, st, decision, cookie, [protocol.redirect_event(params, target)], redirect_to=target
    )


async def ingest(
    request: web.Request,
    st: State,
    decision: policy.Decision,
    cookie: str | None,
    raw_events: list[Any],
    redirect_to: str | None,
) -> web.StreamResponse:
    """Check, scrub and build every event, commit them, answer (pixel, ok or redirect) with the cookie."""
    cfg = st.cfg
    now = st.clock()
    now_ms = int(now * 1000)
    base = base_row(format_ms(now_ms), decision.ip, request.headers.get("User-Agent"), decision.anonymous)
    rows: list[list[Any]] = []
    anonymize_at: list[int] = []
    bad: list[BadRow] = []
    nuid = tnuid = None
    for raw in raw_events:
        try:
            ev = protocol.check_event(raw)
            nuid, tnuid = nuid or ev.get("nuid"), tnuid or ev.get("tnuid")
            row, anonymize = build_row(
                policy.scrub_event(ev, decision), base, decision.anonymous, cfg.anonymize_events
            )
            if decision.ip_param and "ip" in ev:
                row[COL["user_ipaddress"]] = policy.event_ip(cfg, decision, ev["ip"])
        except BadInput as exc:
            st.metrics.bad_rows.labels(exc.reason).inc()
            bad.append(
                BadRow(
                    base[COL["collector_tstamp"]],
                    exc.reason,
                    exc.message,
                    _bad_payload(raw, decision),
                    len(orjson.dumps(raw, default=str)),
                    decision.anonymous,
                )
            )
            continue
        if anonymize:
            anonymize_at.append(len(rows))
        rows.append(row)
    if not rows:
        if st.store is not None:
            st.store.append_nowait(Submission(now_ms, None, bad_rows=bad))
        first = bad[0]
        raise BadInput(
            first.reason,
            f"no valid event: {first.detail}"
            if len(bad) == 1
            else f"none of the {len(bad)} events is valid; first: {first.detail}",
        )
    resolved = identity.resolve(
        cookie if decision.use_cookie else None, nuid, tnuid, st.signer.verify, decision.anonymous
    )
    if resolved.forged:
        st.metrics.cookie("invalid")
    opted_out = None
    if decision.expire_cookie:
        st.metrics.cookie("expired")
        # The device opted out: end its session and retire its tracker ids, so that when the browser
        # opts back in (a new device) the tracker's own duid/sid cannot tie it to the old one.
        opted_out = st.signer.verify(cookie)
    assert st.store is not None
    try:
        result = await st.store.append(
            Submission(
                now_ms, resolved.device_id, rows, tuple(anonymize_at), bad_rows=bad, opted_out=opted_out
            )
        )
    except Overloaded:
        st.metrics.overloaded.inc()
        raise Unavailable(
            "overloaded", "the write queue is full; retry later", headers={"Retry-After": "1"}
        ) from None
    except RejectedData as exc:
        raise BadInput("unstorable", str(exc)) from None
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
    if result.rate_limited:
        st.metrics.rotations.labels("rate_limited").inc(result.rate_limited)
    if redirect_to is not None:
        resp = web.Response(status=302, headers={"Location": redirect_to})
    elif request.method == "POST":
        resp = (
            web.Response(text="ok")
            if not bad
            else web.json_response(
                {
                    "ok": True,
                    "stored": len(rows),
                    "rejected": len(bad),
                    "reasons": sorted({b.reason for b in bad}),
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        )
    else:
        resp = web.Response(body=protocol.PIXEL, content_type="image/gif", headers=PIXEL_HEADERS)
    if decision.use_cookie and result.device_id is not None:
        if resolved.minted or result.rotated:
            st.metrics.cookie("minted")
        resp.headers.add("Set-Cookie", st.jar.issue(result.device_id, now))
    elif decision.expire_cookie:
        resp.headers.add("Set-Cookie", st.jar.expired)
    return resp


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
    """Ready for traffic: the store is open and the process is not draining."""
    st = request.app[STATE]
    if st.draining or st.store is None:
        raise Unavailable("draining" if st.draining else "starting", "not ready for traffic")
    return web.json_response({"status": "ready"})


async def robots(request: web.Request) -> web.StreamResponse:
    """Crawlers have no business here."""
    return web.Response(text=ROBOTS)


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text exposition, optionally behind a bearer token."""
    st = request.app[STATE]
    token = st.cfg.metrics_token
    if token and request.headers.get("Authorization") != f"Bearer {token}":
        raise BadInput("unauthorized", "metrics need the bearer token", status=401)
    depth = st.store.queue_depth if st.store is not None else 0
    return web.Response(
        body=st.metrics.exposition(depth), headers={"Content-Type": "text/plain; version=0.0.4"}
    )
