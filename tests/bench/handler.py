"""The handler's own Python a GET, without HTTP or the store: `python -m tests.bench.handler [--requests N]`.

Both apps' `_handle` (routing, the collector's edge middleware, track and ingest) run in-process on
aiohttp's mocked requests carrying the load generator's GET query and headers (a returning device's
cookie in four requests of five, as in wrk's traffic); CPU thread time per request.
The collector's store is replaced by one that answers at once: this measures the work between the
parsed request and the answer, which `threads` cannot separate from aiohttp's parser and writer
and from the writer thread. It is a measuring tool, not a test: `make bench` runs the real store.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from collector import identity, logs
from collector.app import create_app
from collector.config import Config, Secret
from collector.handlers import STATE
from storage.base import NETWORK_USERID, AppendResult, Submission
from tests.bench import baseline
from tests.bench.payloads import EventIds, get_path

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


class AtOnce:
    """A store that stores nothing and answers every append at once, as if committed."""

    healthy = True
    queue_depth = 0

    async def append(self, sub: Submission) -> AppendResult:
        device = sub.device_id or next((r[NETWORK_USERID] for r in sub.rows), None)
        return AppendResult(stored=len(sub.rows), device_id=device)

    def append_nowait(self, sub: Submission) -> bool:
        return True


def requests(app: web.Application, n: int, cookies: list[str]) -> list[web.Request]:
    ids = EventIds("4a0d1e00")
    out = []
    for i in range(n):
        headers = {"Host": "127.0.0.1:8080", "User-Agent": UA, "Accept": "image/avif,image/webp,*/*"}
        if i % 5:
            headers["Cookie"] = f"sp={cookies[i % len(cookies)]}"
        out.append(make_mocked_request("GET", get_path(ids), headers=headers, app=app))
    return out


async def cpu_per_request(app: web.Application, reqs: list[web.Request]) -> tuple[float, int]:
    handle: Any = app._handle
    for r in reqs[:200]:  # warm: the row's caches (URL parts, typed params), the signed cookies, the routes
        await handle(r)
    timed = reqs[200:]
    started = time.thread_time()
    status = 0
    for r in timed:
        status = (await handle(r)).status
    return (time.thread_time() - started) / len(timed) * 1e6, status


async def run(n: int, rounds: int) -> dict[str, float]:
    cfg = Config(db=Path(tempfile.mkdtemp()) / "events.db", cookie_secret=(Secret("bench-handler"),))
    app = create_app(cfg)
    state = app[STATE]
    state.store = AtOnce()  # type: ignore[assignment]
    logs.setup("text", "INFO")
    logging.getLogger().handlers[0].target = logging.NullHandler()  # type: ignore[attr-defined]
    app.freeze()
    bare = baseline.make_app()
    bare.freeze()
    cookies = [state.signer.sign(identity.new_device_id()) for _ in range(256)]
    ours, theirs = [], []
    for _ in range(rounds):
        us, status = await cpu_per_request(app, requests(app, n, cookies))
        assert status == 200, status
        ours.append(us)
        us, status = await cpu_per_request(bare, requests(bare, n, cookies))
        assert status == 200, status
        theirs.append(us)
    return {"collector": statistics.median(ours), "baseline": statistics.median(theirs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.handler", description=__doc__)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ns = ap.parse_args(argv)
    got = asyncio.run(run(ns.requests, ns.rounds))
    print(
        f"CPU µs a GET in app._handle (medians of {ns.rounds} rounds): collector {got['collector']:.1f}, "
        f"baseline {got['baseline']:.1f}, difference {got['collector'] - got['baseline']:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
