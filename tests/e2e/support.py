"""Helpers shared by the real-tracker end-to-end tests: tool checks, the store, the node scripts."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

E2E_DIR = Path(__file__).resolve().parent
NODE_MODULES = E2E_DIR / "node_modules"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
INSTALL_HINT = (
    "install them with `make e2e-deps` (apt-get install -y chromium nodejs npm; cd tests/e2e && npm ci)"
)
# How long the store may take to show rows the trackers already had acknowledged. Only reached
# when something is broken; a passing run never waits for it.
ROWS_TIMEOUT = 15.0

Row = dict[str, Any]


def require(missing: list[str]) -> None:
    """Skip (or, under CI=true, fail) when a tool the test drives is not installed."""
    if not missing:
        return
    message = f"e2e tools missing: {', '.join(missing)}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def missing_node() -> list[str]:
    missing = [] if shutil.which("node") else ["node (Debian package nodejs)"]
    for package in ("@snowplow/node-tracker", "@snowplow/browser-tracker", "playwright-core"):
        if not (NODE_MODULES / package / "package.json").is_file():
            missing.append(f"tests/e2e/node_modules/{package}")
    return missing


def missing_browser() -> list[str]:
    return [] if os.access(CHROMIUM, os.X_OK) else [f"{CHROMIUM} (Debian package chromium)"]


class Store:
    """Read-only SQL on the collector's SQLite file, as an analyst would query it."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, params)]
        finally:
            con.close()

    def events(self, app_id: str, event_ids: list[str]) -> list[Row]:
        """The app's rows, in the order the tracker sent event_ids, once all of them are stored.

        Polls instead of sleeping: the trackers had every event acknowledged already, but a test
        must not depend on when a GET's row becomes visible or on how fast this machine is. The
        table keeps no insertion order (WITHOUT ROWID, on purpose), so the tracker's order is used.
        """
        assert event_ids, "the tracker acknowledged no event"
        deadline = time.monotonic() + ROWS_TIMEOUT
        rows: dict[str, Row] = {}
        while time.monotonic() < deadline:
            if self.db.exists():
                found = self.query("SELECT * FROM events WHERE app_id = ?", (app_id,))
                rows = {r["event_id"]: r for r in found}
                if set(event_ids) <= rows.keys():
                    break
            time.sleep(0.05)
        wanted = set(event_ids)
        missing, unexpected = sorted(wanted - rows.keys()), sorted(rows.keys() - wanted)
        assert not missing and not unexpected, (
            f"app {app_id}: the tracker sent {len(wanted)} events, the store has {len(rows)}; "
            f"missing {missing}, unexpected {unexpected}"
        )
        assert len(event_ids) == len(set(event_ids)), f"the tracker acknowledged an event twice: {event_ids}"
        return [rows[e] for e in event_ids]

    def count(self, app_id: str, at_least: int = 0) -> int:
        """How many rows the app has; with at_least, wait (bounded) until there are that many."""
        deadline = time.monotonic() + ROWS_TIMEOUT
        while True:
            n = (
                int(self.query("SELECT count(*) AS n FROM events WHERE app_id = ?", (app_id,))[0]["n"])
                if self.db.exists()
                else 0
            )
            if n >= at_least or time.monotonic() > deadline:
                return n
            time.sleep(0.05)


def run_node(script: str, options: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    """Run one of the node scripts in tests/e2e with JSON options; return the JSON it prints."""
    proc = subprocess.run(
        ["node", str(E2E_DIR / script), json.dumps(options)],
        cwd=E2E_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"{script} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = proc.stderr[-4000:]
    return result


def device_cookie(collector_url: str) -> str:
    """A device id the collector issued: the value (`<uuid>.<mac>`) of the sp cookie it sets.

    A server-side app forwards this value as nuid (Node) or tnuid (Python) to track on behalf of
    the browser that holds the cookie.
    """
    query = urlencode({"e": "pv", "p": "srv", "tv": "e2e-probe", "aid": "e2e-probe"})
    with urllib.request.urlopen(f"{collector_url}/i?{query}", timeout=10) as answer:
        for header in answer.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name.strip() == "sp":
                return str(rest.split(";", 1)[0].strip('"'))
    raise AssertionError("the collector set no sp cookie")
