"""The app factory: routes, the edge middleware, and the store's lifecycle through cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from collector import cors, handlers, identity, logs, server
from collector.config import CANONICAL_PATHS, Config, is_postgres
from collector.errors import CollectorError, error_response, from_exception
from collector.handlers import EVENTS, STATE, State
from collector.metrics import Metrics
from storage.postgres import PostgresStore, describe
from storage.sessions import SessionRules
from storage.sqlite import SqliteStore

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TP2, PIXEL_I, PIXEL_ICE, REDIRECT = CANONICAL_PATHS
# Bounded route names for logs and metrics (a raw path is client-chosen text).
ROUTE_NAMES = {
    TP2: "tp2",
    PIXEL_I: "i",
    PIXEL_ICE: "ice.png",
    REDIRECT: "redirect",
    "/health": "health",
    "/ready": "ready",
    "/robots.txt": "robots",
    "/metrics": "metrics",
}


def _snake(text: str) -> str:
    return text.lower().replace(" ", "_")


def _route(request: web.Request, st: State) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else st.route_names.get(resource.canonical, "unmatched")


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One error shape for every failure, CORS on every answer, one access line and metric per request."""
    started = time.perf_counter()
    st = request.app[STATE]
    try:
        resp = await handler(request)
    except CollectorError as exc:
        resp = from_exception(exc)
        if exc.close:
            resp.force_close()
    except web.HTTPException as exc:  # routing (404, 405) and aiohttp's own limits
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # a 405 names them
        resp = error_response(exc.status, _snake(exc.reason), exc.reason, allow)
    except Exception as exc:  # a bug: logged by type and traceback only, never with request data
        log.error(
            "internal error on %s %s: %s",
            logs.method_of(request.method),
            _route(request, st),
            type(exc).__name__,
            exc_info=st.cfg.log_level == "debug",
        )
        resp = error_response(500, "internal", "internal error")
    if st.draining:  # `Connection: close`: a balancer must not reuse a connection this process will close
        resp.force_close()
    if request.method != "OPTIONS":
        cors.apply(resp.headers, cors.allowed_origin(st.cfg, request.headers))
    route = _route(request, st)
    ms = (time.perf_counter() - started) * 1000
    st.metrics.request_done(route, resp.status, ms / 1000)
    if st.cfg.access_log:
        logs.access(request.method, route, resp.status, ms, request.get(EVENTS, 0))
    return resp


async def lifecycle_loop(state: State) -> None:
    """The lifecycle's published rules, run every COLLECTOR_LIFECYCLE_INTERVAL seconds (the first a
    minute after start); each store lets one replica at a time do the work."""
    cfg = state.cfg
    await asyncio.sleep(min(60, cfg.lifecycle_interval))
    while True:
        assert state.store is not None
        try:
            removed = await state.store.lifecycle(
                int(state.clock() * 1000), cfg.retention_days, cfg.cookie_max_age
            )
            state.metrics.lifecycle(removed)
        except Exception as exc:  # noqa: BLE001 - a failed run is retried at the next interval
            log.error("lifecycle run failed: %s", describe(exc))
        await asyncio.sleep(cfg.lifecycle_interval)


def open_store(cfg: Config, on_commit: Callable[[int, float], None]) -> SqliteStore | PostgresStore:
    """The store COLLECTOR_DB names, not yet started."""
    rules = SessionRules(cfg.session_timeout * 1000, cfg.retired_days)
    bounds = {"queue_max": cfg.queue_max, "queue_max_bytes": cfg.queue_max_bytes, "group_max": cfg.group_max}
    if is_postgres(cfg.db):
        return PostgresStore(
            str(cfg.db),
            rules,
            pool_size=cfg.pg_pool_size,
            statement_timeout_ms=cfg.pg_statement_timeout,
            on_commit=on_commit,
            **bounds,
        )
    assert isinstance(cfg.db, Path)
    return SqliteStore(
        cfg.db,
        rules,
        synchronous=cfg.synchronous,
        busy_timeout=cfg.busy_timeout,
        on_commit=on_commit,
        wal_limit=cfg.wal_size_limit,
        **bounds,
    )


def create_app(cfg: Config, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The collector as an aiohttp application; nothing touches the disk until startup."""
    # aiohttp's default request-line limit (8190) would refuse a long tracker GET in the parser; above
    # our own max_query the handler answers 414 instead (collector.server has the parser's limits).
    app = web.Application(middlewares=[edge], client_max_size=cfg.max_body, handler_args=server.HANDLER_ARGS)
    signer = identity.Signer(identity.load_keys(cfg.cookie_secret, cfg.db))
    jar = identity.CookieJar(cfg.cookie_name, cfg.cookie_max_age, cfg.cookie_secure, signer)
    metrics = Metrics()
    state = State(cfg, signer, jar, metrics, clock)
    app[STATE] = state

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = open_store(cfg, metrics.observe_commit)
        await store.start()
        state.store = store
        task = asyncio.create_task(lifecycle_loop(state))
        yield
        state.draining = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()  # commits whatever is still queued before the process exits

    app.cleanup_ctx.append(store_ctx)
    paths: list[tuple[str, str]] = [(p, p) for p in CANONICAL_PATHS] + list(cfg.paths)
    state.route_names = {**ROUTE_NAMES, **{alias: ROUTE_NAMES[canonical] for alias, canonical in cfg.paths}}
    for path, canonical in paths:
        handler = handlers.redirect if canonical == REDIRECT else handlers.track
        app.router.add_get(path, handler, expect_handler=handlers.expect)
        if canonical == TP2:
            app.router.add_post(path, handler, expect_handler=handlers.expect)
        app.router.add_route("OPTIONS", path, handlers.preflight, expect_handler=handlers.expect)
    app.router.add_get("/health", handlers.health, expect_handler=handlers.expect)
    app.router.add_get("/ready", handlers.ready, expect_handler=handlers.expect)
    app.router.add_get("/robots.txt", handlers.robots, expect_handler=handlers.expect)
    if cfg.metrics:
        app.router.add_get("/metrics", handlers.metrics, expect_handler=handlers.expect)
    # Last, so that it takes only what no route above does, with the collector's Expect handler: for a
    # path or method no route takes, aiohttp ran its own before any middleware (a plain-text 417 that
    # echoed the header, a 500 for a value not UTF-8).
    catch_all = app.router.add_route(
        "*", "/{unmatched:(?s:.*)}", handlers.unmatched, expect_handler=handlers.expect
    )  # (?s): a path may hold a newline (%0A)
    _resolve_all_to(app.router, catch_all)
    return app


def _resolve_all_to(router: web.UrlDispatcher, catch_all: web.AbstractRoute) -> None:
    """What no route matches, a target without a leading `/` too (`OPTIONS *`), goes to the catch-all
    route: aiohttp would answer it with its own Expect handler, outside the middleware."""
    resolve = router.resolve

    async def resolve_all(request: web.Request) -> web.UrlMappingMatchInfo:
        match = await resolve(request)
        if isinstance(match, MatchInfoError):
            return web.UrlMappingMatchInfo({}, catch_all)
        return match

    router.resolve = resolve_all  # type: ignore[method-assign]
