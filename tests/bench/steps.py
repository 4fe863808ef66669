"""Where an event's time goes, step by step: `python -m tests.bench.steps [--prefill N]`.

The collector's own functions, called in the order a 10-event POST calls them, on the bodies the
load generator sends (unique event ids, one returning device cookie per request), each step timed
on its own over many requests: CPU time per event (thread CPU, so another process's load does not
count) and, for the commit, wall time too (the fsync waits on the disk, not the CPU). The store
steps run on a real SQLite file with the collector's schema and durability (WAL, synchronous=FULL),
empty or prefilled; the group logic and the writes are storage.group and storage.sqlite_io, as the
writer thread runs them. What this leaves out is HTTP itself (aiohttp's parser, the response, the
event loop): `make bench` measures it as the bare baseline's server CPU per request.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector import identity, logs, policy, protocol
from collector.config import Config, Secret
from collector.events import base_row, build_row, format_ms
from collector.metrics import Metrics
from storage import group, sqlite_io
from storage.base import NETWORK_USERID, Submission
from storage.ids import UuidPool
from storage.migrate import migrate
from storage.sessions import SessionRules
from storage.sqlite import connect
from tests.bench.payloads import EventIds, post_body

EVENTS = 10
HEADERS = {"Content-Type": "application/json", "Origin": "https://shop.example.com"}


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(thread CPU seconds, wall seconds, result) of one call."""
    c0, w0 = time.thread_time(), time.perf_counter()
    out = fn()
    return time.thread_time() - c0, time.perf_counter() - w0, out


def run(db: Path, requests: int, group_requests: int) -> dict[str, tuple[float, float]]:
    """Each step over every request at once (one timing per step: no per-call timer cost), the
    steps in the handler's order, each on the previous step's output."""
    cfg = Config(db=db, cookie_secret=(Secret("bench-steps"),))
    signer = identity.Signer(identity.load_keys(cfg.cookie_secret, cfg.db))
    jar = identity.CookieJar(cfg.cookie_name, cfg.cookie_max_age, cfg.cookie_secure, signer)
    metrics = Metrics()
    logs.setup("text", "INFO")
    access = logging.getLogger("collector.access")
    access.handlers, access.propagate = [logging.NullHandler()], False  # formatting, no I/O
    ids = EventIds("57e95000")
    devices = [identity.new_device_id() for _ in range(requests)]
    cookies = [signer.sign(d) for d in devices]
    bodies = [post_body(ids, EVENTS) for _ in range(requests)]
    conn = connect(db)
    migrate(conn)
    rules = SessionRules(cfg.session_timeout * 1000, cfg.retired_days)
    pool = UuidPool()
    cost: dict[str, tuple[float, float]] = {}
    now = time.time()
    now_ms = int(now * 1000)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        cpu, wall, out = timed(fn)
        old = cost.get(name, (0.0, 0.0))
        cost[name] = (old[0] + cpu, old[1] + wall)
        return out

    n = range(requests)
    decisions = step(
        "policy (decide)",
        lambda: [policy.decide(cfg, "127.0.0.1", HEADERS, {cfg.cookie_name: cookies[i]}) for i in n],
    )
    raws = step("parse body (orjson)", lambda: [protocol.parse_body(b, "application/json") for b in bodies])
    cookie_devices = step("cookie verify (HMAC)", lambda: [signer.verify(c) for c in cookies])
    bases = [base_row(format_ms(now_ms), d.ip, HEADERS.get("User-Agent"), d.anonymous) for d in decisions]
    evs = step("check event", lambda: [[protocol.check_event(r) for r in raw] for raw in raws])
    evs = step(
        "scrub (policy)",
        lambda: [[policy.scrub_event(e, decisions[i]) for e in evs[i]] for i in n],
    )
    built = step(
        "build row (+ contexts, tracker ids)",
        lambda: [[build_row(e, bases[i], cfg.anonymize_events) for e in evs[i]] for i in n],
    )
    resolved = step(
        "device per event (resolve)",
        lambda: [
            [
                identity.resolve(cookie_devices[i], e.get("nuid"), e.get("tnuid"), signer.verify)
                for e in evs[i]
            ]
            for i in n
        ],
    )
    subs = []
    for i in n:
        rows = [b[0] for b in built[i]]
        for row, (dev, _) in zip(rows, resolved[i], strict=True):
            row[NETWORK_USERID] = dev
        subs.append(Submission(now_ms, cookie_devices[i], rows, (), [b[2] for b in built[i]], nbytes=1))
    step("cookie issue (HMAC, header)", lambda: [jar.issue(d, now, "") for d in devices])

    def account() -> None:
        for _ in n:
            metrics.stored(False, EVENTS)
            metrics.request_done("tp2", 200, 0.01)
            logs.access("POST", "tp2", 200, 10.0, EVENTS)

    step("metrics + access log", account)
    for g in range(0, requests, group_requests):
        part = subs[g : g + group_requests]
        step("store: begin", lambda: conn.execute("BEGIN IMMEDIATE"))
        found = step(
            "store: look up (dedupe keys, retired ids, devices)",
            lambda part=part: sqlite_io.look_up(conn, group.wanted(part)),  # type: ignore[misc]
        )
        writes, _ = step(
            "store: group logic (dedupe, sessions)",
            lambda part=part, found=found: group.decide(part, found, rules, pool),  # type: ignore[misc]
        )
        step(
            "store: insert events (+ dedupe index)",
            lambda writes=writes: sqlite_io.insert_events(conn, writes.events),  # type: ignore[misc]
        )
        writes.events.clear()
        step("store: upsert device state", lambda writes=writes: sqlite_io.write(conn, writes))  # type: ignore[misc]
        step("store: commit (WAL write + fsync)", lambda: conn.execute("COMMIT"))
    conn.close()
    total = requests * EVENTS
    return {k: (c / total, w / total) for k, (c, w) in cost.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.steps", description=__doc__)
    ap.add_argument("--requests", type=int, default=2000, help="10-event POSTs (default 2000)")
    ap.add_argument("--group", type=int, default=20, help="requests per commit (default 20)")
    ap.add_argument("--prefill", type=int, default=0, help="grow the store to N events first")
    ns = ap.parse_args(argv)
    db = Path(tempfile.mkdtemp(prefix="collector-steps-")) / "steps.db"
    if ns.prefill:
        from tests.bench.prefill import prefill

        print(prefill(db, ns.prefill), flush=True)
    costs = run(db, ns.requests, ns.group)
    print(f"{ns.requests} POSTs of {EVENTS} events, {ns.group} requests per commit, store {db}")
    print("| step | CPU µs/event | wall µs/event |\n|---|---:|---:|")
    for step, (cpu, wall) in costs.items():
        print(f"| {step} | {cpu * 1e6:.1f} | {wall * 1e6:.1f} |")
    cpu = sum(c for c, _ in costs.values())
    wall = sum(w for _, w in costs.values())
    print(f"| **all of the above** | **{cpu * 1e6:.1f}** | **{wall * 1e6:.1f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
