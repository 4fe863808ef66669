"""Real processes: the collector writes while `python -m collector browse` (real Datasette) is read
over HTTP; and browse's refusals and its login, from the command line."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from datasette_auth_passwords.utils import hash_password

from tests.browse_support import Browse
from tests.conftest import ev
from tests.procs import ROOT, Collector, cli, free_port
from tests.wal_growth import Writer


def get_json(url: str, opener: urllib.request.OpenerDirector | None = None) -> Any:
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=30) as resp:
            assert resp.status == 200
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            raise AssertionError(f"{url}: {exc.code} {exc.read()[:500]!r}") from None


def test_browse_reads_while_the_collector_writes(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    env = {"COLLECTOR_COOKIE_SECRET": "live", "COLLECTOR_ACCESS_LOG": "0"}
    with Collector(db, env=env) as collector, Browse(db) as browse:
        writer = Writer(collector.port, batch=100)
        writer.start()
        seen: list[int] = []
        try:
            while len(seen) < 40 or seen[-1] == seen[0]:
                assert not writer.errors, writer.errors
                [overview] = get_json(browse.url + "/events/overview.json?_shape=array")
                seen.append(overview["events"])
                latest = get_json(browse.url + "/events/latest_events.json?_shape=array")
                assert len(latest) == min(100, overview["events"]) or len(latest) == 100
                per_day = get_json(browse.url + "/events/sessions_per_day.json?_shape=array")
                assert all(r["sessions"] >= 1 for r in per_day)
                assert len(seen) < 2000, "the counts never rose"
        finally:
            writer.stop.set()
            writer.join(30)
        assert not writer.errors, writer.errors
        assert seen == sorted(seen) and seen[-1] > seen[0]  # counts only rise, and they did
        [final] = get_json(browse.url + "/events/overview.json?_shape=array")
        assert final["events"] == writer.acked  # every acknowledged event, nothing else
        assert browse.stop() == 0
    assert collector.proc is not None and collector.proc.returncode == 0
    assert "Traceback" not in browse.log.read_text() and "ERROR" not in browse.log.read_text()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli("browse", *args, env=env)


def test_browse_refuses_postgres_a_missing_file_and_an_open_bind(tmp_path: Path) -> None:
    pg = run_cli("--db", "postgresql://reader@db.example/events")
    assert pg.returncode == 2 and "Datasette does not read PostgreSQL" in pg.stderr
    missing = run_cli("--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no database" in missing.stderr
    db = tmp_path / "events.db"
    with Collector(db, env={"COLLECTOR_COOKIE_SECRET": "x"}):
        pass
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_BROWSE_PASSWORD_HASH"}
    opened = subprocess.run(
        [sys.executable, "-m", "collector", "browse", "--db", str(db), "--host", "0.0.0.0", "--port", port],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert opened.returncode == 2 and "COLLECTOR_BROWSE_PASSWORD_HASH" in opened.stderr
    bad = run_cli("--db", str(db), env={"COLLECTOR_BROWSE_PASSWORD_HASH": "plain-password"})
    assert bad.returncode == 2 and "COLLECTOR_BROWSE_PASSWORD_HASH is not a hash" in bad.stderr
    assert "plain-password" not in bad.stderr + bad.stdout


def test_with_a_password_hash_only_the_logged_in_analyst_reads(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Collector(db, env={"COLLECTOR_COOKIE_SECRET": "x"}) as collector:
        urllib.request.urlopen(collector.url + "/i?e=pv&p=web&tv=t&eid=one", timeout=10).close()
    env = {"COLLECTOR_BROWSE_PASSWORD_HASH": hash_password("s3cret-analyst")}
    with Browse(db, env=env) as browse:
        url = browse.url + "/events/overview.json?_shape=array"
        try:
            urllib.request.urlopen(url, timeout=10).close()
            raise AssertionError("read without logging in")
        except urllib.error.HTTPError as exc:
            exc.close()
            assert exc.code == 403
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def login(password: str) -> None:
            with opener.open(browse.url + "/-/login", timeout=10) as page:
                token = re.search(r'name="csrftoken" value="([^"]+)"', page.read().decode())
            assert token
            form = {"username": "analyst", "password": password, "csrftoken": token.group(1)}
            opener.open(browse.url + "/-/login", urllib.parse.urlencode(form).encode(), timeout=10).close()

        login("wrong")
        try:
            opener.open(url, timeout=10).close()
            raise AssertionError("read with a wrong password")
        except urllib.error.HTTPError as exc:
            exc.close()
            assert exc.code == 403
        login("s3cret-analyst")
        assert get_json(url, opener)[0]["events"] == 1


UID = "alice-7f3e9a1c@example.com"


def _one_event_of(tmp_path: Path, uid: str) -> Path:
    """A store the collector wrote one event of `uid` to."""
    db = tmp_path / "events.db"
    with Collector(db) as c:
        urllib.request.urlopen(c.url + "/i?" + urllib.parse.urlencode({**ev(eid="x"), "uid": uid})).read()
    return db


def test_browse_logs_no_url_an_analyst_opens(tmp_path: Path) -> None:
    # `datasette serve` left uvicorn's access log on: every URL an analyst opened (a table filtered by
    # a user id), and the analyst's address, went to the log, where they outlive an erasure.
    db = _one_event_of(tmp_path, UID)
    with Browse(db) as b:
        query = urllib.parse.urlencode({"user_id": UID})
        with urllib.request.urlopen(f"{b.url}/events/events.json?{query}") as resp:
            found = json.loads(resp.read())
    assert UID in json.dumps(found)  # the control: the analyst did find the value
    text = urllib.parse.unquote(b.log.read_text(errors="replace"))
    assert UID not in text and "user_id" not in text, text[-2000:]
    assert "browse: http://" in text  # the log itself was read: browse's own start line is there


def test_a_failed_query_logs_no_value_an_analyst_typed(tmp_path: Path) -> None:
    # Datasette reports a failed query on stderr with its SQL and params: a user id typed in the SQL
    # box, or a table filtered by one, went to browse's log, past an erasure.
    db = _one_event_of(tmp_path, UID)
    with Browse(db) as b:
        sql = f"select * from events where user_id = '{UID}' and nosuch = 1"
        for path in (
            "/events.json?" + urllib.parse.urlencode({"sql": sql}),
            "/events/events.json?" + urllib.parse.urlencode({"user_id": UID, "_where": "nosuch = 1"}),
            "/events.csv?" + urllib.parse.urlencode({"sql": sql}),
        ):
            try:
                urllib.request.urlopen(b.url + path, timeout=30).close()
            except urllib.error.HTTPError as exc:
                exc.close()
    text = urllib.parse.unquote(b.log.read_text(errors="replace"))
    assert UID not in text, text[-2000:]
    assert "a query failed" in text  # the control: the failures were reported, without their text
