"""A real `python -m collector browse` process, and a store of several weeks' traffic filled through
the collector's real ingest path (the app factory with a hand-moved clock)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import TP2, Clock, batch, ev
from tests.procs import ROOT, free_port, wait_http

PATHS = ("/", "/pricing", "/docs", "/blog/launch", "/signup", "/docs/install", "/about")
REFERRERS = (
    "",
    "",
    "https://www.google.com/search?q=x",
    "https://news.ycombinator.com/",
    "https://duck.com/",
)


class Browse:
    """One `python -m collector browse` process: the command the README gives analysts."""

    def __init__(self, db: Path, *, host: str = "127.0.0.1", env: Mapping[str, str] | None = None) -> None:
        self.db, self.host, self.port = db, host, free_port()
        self.env = {**os.environ, **(env or {})}
        self.log = db.with_suffix(f".browse.{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "collector", "browse", "--db", str(self.db), "--host", self.host]

    def start(self) -> Browse:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.command(), "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # with a password, everything but /-/login answers 403 until the analyst logs in
            protected = bool(self.env.get("COLLECTOR_BROWSE_PASSWORD_HASH"))
            wait_http(self.url + "/-/versions.json", timeout=30, status=403 if protected else 200)
        except TimeoutError:
            self.stop()
            raise AssertionError(
                f"browse did not start:\n{self.log.read_text(errors='replace')[-3000:]}"
            ) from None
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def __enter__(self) -> Browse:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


async def fill(
    client: TestClient[web.Request, web.Application], clock: Clock, start: float, days: int
) -> int:
    """Weeks of plausible traffic: returning and new devices, anonymous visitors, page pings, a signup
    funnel. Returns how many events were acknowledged."""
    rnd = random.Random(16)
    cookies: list[str] = []
    sent = 0
    for day in range(days):
        visitors = 6 + rnd.randrange(8) + (4 if day % 7 < 5 else 0)
        for v in range(visitors):
            anonymous = rnd.random() < 0.25
            returning = cookies and not anonymous and rnd.random() < 0.4
            cookie = rnd.choice(cookies) if returning else None
            clock.t = start + day * 86400 + 8 * 3600 + v * 1800 + rnd.randrange(600)
            sid = str(uuid.uuid4())
            path_count = 1 + rnd.randrange(4)
            refr = rnd.choice(REFERRERS)
            events = []
            for i in range(path_count):
                funnel = ("/", "/pricing", "/signup", "/docs")
                path = funnel[i] if rnd.random() < 0.5 else rnd.choice(PATHS)
                common = {"url": f"https://shop.test{path}", "page": path.strip("/") or "home", "sid": sid}
                pv = ev("pv", eid=str(uuid.uuid4()), **common)
                if i == 0 and refr:
                    pv["refr"] = refr
                events.append(pv)
                for _ in range(rnd.randrange(4)):
                    events.append(ev("pp", eid=str(uuid.uuid4()), **common))
            headers = {"SP-Anonymous": "*"} if anonymous else {}
            if cookie:
                headers["Cookie"] = f"sp={cookie}"
            resp = await client.post(TP2, json=batch(*events), headers=headers)
            assert resp.status == 200, await resp.text()
            sent += len(events)
            if "sp" in resp.cookies and resp.cookies["sp"].value and not returning:
                cookies.append(resp.cookies["sp"].value)
    return sent
