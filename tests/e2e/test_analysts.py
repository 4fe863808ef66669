"""The analysts' view in a real browser: Debian's Chromium (playwright-core) on `python -m collector
browse` over a live store of three weeks' traffic: the dashboard's charts draw, a canned query lists
rows, a write typed into the SQL box is refused, and a screenshot is kept (tests/artifacts/)."""

from __future__ import annotations

import calendar
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from collector.config import Config
from tests.browse_support import Browse, fill
from tests.conftest import Clock, rows
from tests.e2e.support import run_node

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("browser_tools")]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
START = calendar.timegm(dt.datetime(2026, 11, 9).timetuple())  # a Monday; three weeks follow


async def test_dashboard_canned_query_and_refused_write(make_client: Any, cfg: Config, clock: Clock) -> None:
    client = await make_client(cfg)  # the collector stays open: browse reads a live WAL file
    sent = await fill(client, clock, START, days=21)
    assert isinstance(cfg.db, Path)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browse-dashboard.png"
    shot.unlink(missing_ok=True)
    with Browse(cfg.db) as browse:
        got = run_node("analysts.mjs", {"browse": browse.url, "db": cfg.db.stem, "screenshot": str(shot)})
    report = {k: v for k, v in got.items() if k != "afterDelete"}
    assert got["ok"], f"{got['error']}\n{report}"
    assert got["pageErrors"] == [] and got["requestsFailed"] == [], report
    assert got["external"] == [], report  # vega and the plugin's assets come from browse itself
    # the one console error allowed: the browser's note that the refused DELETE answered 400
    assert all("400" in e for e in got["consoleErrors"]), report
    assert got["charts"] >= 4, report
    titles = set(got["chartTitles"])
    assert {
        "Events per day",
        "Sessions per day",
        "Top pages",
        "Share of anonymous traffic (events)",
    } <= titles
    assert str(sent) in got["metric"].replace(",", ""), report  # the Events metric shows every event
    expected = rows(
        cfg.db,
        "select page_url, count(*) from events where event = 'pv' group by 1 order by 2 desc, 1 limit 100",
    )
    assert [(r[0], int(r[1].replace(",", ""))) for r in got["topPages"]] == [tuple(e) for e in expected]
    assert len(expected) >= 5
    assert got["sqlBox"].strip() == "delete from events"
    assert "Statement must be a SELECT" in got["afterDelete"]["message"]
    assert rows(cfg.db, "select count(*) from events")[0][0] == sent  # nothing was deleted
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")
