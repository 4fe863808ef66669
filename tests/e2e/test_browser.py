"""The unmodified @snowplow/browser-tracker in headless Chromium against the real collector.

browser.mjs serves the page from another origin (127.0.0.1, another port) than the collector, so
every request is a credentialed CORS request; it prints what the browser saw, and the rows are
checked with SQL. Each "nothing stored" check has a twin that finds the same value where it belongs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import E2E_DIR, Row, Store, run_node
from tests.procs import Collector, free_port, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("browser_tools")]

METHODS = ["post", "get"]
LOOPBACK = "127.0.0.1"


def browse(collector_url: str, scenario: str, method: str, tag: str = "", **extra: Any) -> dict[str, Any]:
    """Run a scenario of browser.mjs; tag tells apart runs of one scenario on one store."""
    app_id = f"br-{scenario}-{tag}-{method}" if tag else f"br-{scenario}-{method}"
    result = run_node(
        "browser.mjs",
        {
            "collector": collector_url,
            "scenario": scenario,
            "method": method,
            "appId": app_id,
            **extra,
        },
    )
    result["appId"] = app_id
    return result


def assert_clean(result: dict[str, Any]) -> None:
    """The scenario ran to the end and neither the browser nor the tracker saw any failure."""
    report = json.dumps({k: v for k, v in result.items() if k != "requests"}, indent=1)[:6000]
    assert result["ok"], f"scenario failed: {result['error']}\n{report}"
    assert [e for e in result["consoleErrors"] if "CORS" in e] == [], report
    assert result["consoleErrors"] == [], report
    assert result["pageErrors"] == [], report
    assert result["trackerFailures"] == [], report
    assert result["requestsFailed"] == [], report
    requests = result["requests"]
    # bufferSize 1 and one ack awaited per event: one request per event, so no retries happened.
    assert len(requests) == result["expected"], requests
    for r in requests:
        assert r["status"] == 200, r
        assert r["allowOrigin"] == result["pageOrigin"], r


def sp_sent(request: dict[str, Any]) -> str | None:
    """The value of the collector's sp cookie the browser sent with a request, if any."""
    for part in (request["cookie"] or "").split("; "):
        name, _, value = part.partition("=")
        if name == "sp":
            return value
    return None


def sp_set(request: dict[str, Any]) -> str | None:
    """The sp value the collector's answer set ("" when it expired the cookie), None if untouched."""
    for header in request["setCookie"]:
        for line in header.split("\n"):  # Chromium joins several Set-Cookie lines with newlines
            first = line.split(";", 1)[0].strip()
            name, _, value = first.partition("=")
            if name == "sp":
                low = line.lower()
                expired = "max-age=0" in low or "1970" in low
                return "" if expired else value.strip('"')
    return None


def device(cookie_value: str) -> str:
    """The network_userid a `<uuid>.<mac>` cookie carries."""
    return cookie_value.split(".", 1)[0]


def jar_sp(result: dict[str, Any], mark: str) -> dict[str, Any] | None:
    sp: dict[str, Any] | None = result["marks"][mark]["sp"]
    return sp


def web_page_ids(row: Row) -> set[str]:
    contexts = json.loads(row["contexts"] or "null") or {}
    return {c["data"]["id"] for c in contexts.get("data", []) if "/web_page/" in c.get("schema", "")}


def column(rows: list[Row], name: str) -> list[Any]:
    return [r[name] for r in rows]


# The page is served from the same loopback address the browser connects from, so the page URL's
# own host column holds that address too: it is the page's, not the client's.
PAGE_HOST_COLUMNS = ("page_urlhost", "refr_urlhost")


def client_text(rows: list[Row]) -> str:
    """The rows as JSON, for searching for the client's address: without the page URL's host columns,
    which (checked here) hold only the page's own host."""
    for r in rows:
        for name in PAGE_HOST_COLUMNS:
            assert r[name] in (None, LOOPBACK), (name, r[name])
    return json.dumps([{k: v for k, v in r.items() if k not in PAGE_HOST_COLUMNS} for r in rows])


@pytest.mark.parametrize("method", METHODS)
def test_identified_browsing_keeps_one_device_cookie(collector: Collector, store: Store, method: str) -> None:
    result = browse(collector.url, "normal", method)
    assert_clean(result)
    assert result["pageOrigin"] != collector.url and result["pageOrigin"].startswith(f"http://{LOOPBACK}:")

    # The browser stored the collector's cookie (Secure on http://127.0.0.1: loopback is trustworthy).
    assert jar_sp(result, "start") is None
    cookie = jar_sp(result, "after_first")
    assert cookie is not None, result["marks"]
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (
        True,
        True,
        "None",
        "/",
    )
    assert cookie["expires"] > time.time() + 300 * 86400
    end = jar_sp(result, "end")
    assert end is not None and end["value"] == cookie["value"]  # the same device (expiry is refreshed)

    # It was set by the first answer and sent back with every later request.
    requests = result["requests"]
    assert sp_sent(requests[0]) is None and sp_set(requests[0]) == cookie["value"]
    assert [sp_sent(r) for r in requests[1:]] == [cookie["value"]] * (len(requests) - 1)
    assert all(r["spAnonymous"] is None for r in requests)
    if method == "get":
        assert {r["method"] for r in requests} == {"GET"}
    else:
        assert {(r["method"], r["path"]) for r in requests} == {
            ("POST", "/com.snowplowanalytics.snowplow/tp2")
        }

    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "event") == ["pv", "se", "ue", "pv"]
    assert set(column(rows, "network_userid")) == {device(cookie["value"])}
    assert len(set(column(rows, "domain_userid"))) == 1 and rows[0]["domain_userid"]
    assert len(set(column(rows, "domain_sessionid"))) == 1 and rows[0]["domain_sessionid"]
    assert len(set(column(rows, "session_id"))) == 1 and rows[0]["session_id"]
    assert column(rows, "user_ipaddress") == [LOOPBACK] * 4
    assert column(rows, "user_id") == [None, "user-normal", "user-normal", "user-normal"]
    assert column(rows, "anonymous") == [0] * 4
    se, ue = rows[1], rows[2]
    assert (se["se_category"], se["se_action"], se["se_label"], se["se_property"], float(se["se_value"])) == (
        "shop",
        "add-to-basket",
        "sku-1",
        "red",
        2.0,
    )
    assert (ue["event_vendor"], ue["event_name"], ue["event_version"]) == (
        "com.acme",
        "button_click",
        "1-0-0",
    )
    assert json.loads(ue["unstruct_event"])["data"]["data"] == {"id": "buy"}
    assert all(web_page_ids(r) for r in rows)  # contexts arrive decoded (base64 cx on GET)
    assert rows[0]["page_url"] == result["pageOrigin"] + "/page.html"
    assert rows[3]["page_url"] == result["pageOrigin"] + "/page2.html"
    # The twin of the anonymous test's leak check: here the IP and the user id are in the rows.
    text = client_text(rows)
    assert f'"{LOOPBACK}"' in text and "user-normal" in text


@pytest.mark.parametrize("method", METHODS)
def test_server_anonymisation_stores_no_identifier(collector: Collector, store: Store, method: str) -> None:
    result = browse(collector.url, "anonymous", method)
    assert_clean(result)
    requests = result["requests"]
    assert [r["spAnonymous"] for r in requests] == ["*"] * 3
    assert [sp_sent(r) for r in requests] == [None] * 3
    assert [sp_set(r) for r in requests] == [None] * 3
    assert jar_sp(result, "end") is None

    rows = store.events(result["appId"], result["eids"])
    for name in (
        "user_ipaddress",
        "network_userid",
        "domain_userid",
        "domain_sessionid",
        "user_id",
        "session_id",
    ):
        assert column(rows, name) == [None] * 3, name
    assert column(rows, "anonymous") == [1] * 3
    # The events themselves are kept: only identifiers go.
    assert rows[1]["se_label"] == "sku-2" and rows[2]["event_name"] == "button_click"
    assert rows[0]["page_url"] == result["pageOrigin"] + "/page.html"
    text = client_text(rows)
    assert f'"{LOOPBACK}"' not in text and "user-anon" not in text


@pytest.mark.parametrize("method", METHODS)
def test_toggling_anonymous_tracking_ignores_and_expires_the_old_cookie(
    collector: Collector,
    store: Store,
    method: str,
) -> None:
    result = browse(collector.url, "toggle", method)
    assert_clean(result)
    first, anon1, anon2, again = result["requests"]
    old = jar_sp(result, "identified")
    assert old is not None and sp_set(first) == old["value"]
    # The browser really sent the old cookie along with SP-Anonymous: the case under test happened.
    assert (anon1["spAnonymous"], sp_sent(anon1)) == ("*", old["value"])
    assert sp_set(anon1) == "", anon1["setCookie"]  # ...and the collector expired it
    assert (anon2["spAnonymous"], sp_sent(anon2), sp_set(anon2)) == ("*", None, None)
    assert jar_sp(result, "anonymous") is None
    new = jar_sp(result, "end")
    assert new is not None and sp_set(again) == new["value"] and again["spAnonymous"] is None
    assert device(new["value"]) != device(old["value"])

    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "anonymous") == [0, 1, 1, 0]
    assert column(rows, "network_userid") == [device(old["value"]), None, None, device(new["value"])]
    assert column(rows, "user_ipaddress") == [LOOPBACK, None, None, LOOPBACK]
    assert column(rows[1:3], "domain_userid") == [None, None]
    assert device(old["value"]) not in json.dumps(rows[1:3])
    assert device(old["value"]) in json.dumps(rows[:1])
    # Opting out retired the tracker's own ids: the tracker still sends the old duid/sid after opting
    # back in, but they are not stored, so nothing ties the new device (or the anonymous rows) to the old.
    first_row, last_row = rows[0], rows[-1]
    assert first_row["domain_userid"] and first_row["domain_sessionid"]  # where they belong
    tracker_ids = {first_row["domain_userid"], first_row["domain_sessionid"]}
    assert not tracker_ids & set(json.dumps(r) for r in rows[1:])
    for row in rows[1:]:
        assert not any(t in json.dumps(row) for t in tracker_ids), row
    assert last_row["domain_userid"] is None and last_row["domain_sessionid"] is None


@pytest.mark.parametrize("method", METHODS)
def test_logout_rotates_the_device_and_never_links_alice_to_bob(
    collector: Collector,
    store: Store,
    method: str,
) -> None:
    result = browse(collector.url, "logout", method)
    assert_clean(result)
    requests = result["requests"]
    old, new = jar_sp(result, "alice"), jar_sp(result, "after_anonymize")
    assert old is not None and new is not None
    assert device(old["value"]) != device(new["value"])
    end = jar_sp(result, "end")
    assert end is not None and end["value"] == new["value"]  # the browser ends with the NEW cookie
    anonymize = requests[2]
    assert (sp_sent(anonymize), sp_set(anonymize)) == (old["value"], new["value"])
    assert [sp_sent(r) for r in requests[3:]] == [new["value"]] * (len(requests) - 3)

    rows = store.events(result["appId"], result["eids"])
    a, b = device(old["value"]), device(new["value"])
    assert column(rows, "network_userid") == [a, a, a, b, b, b, b]
    assert column(rows, "user_id") == ["alice", "alice", "alice", None, None, "bob", "bob"]
    assert (rows[1]["se_action"], rows[2]["event_name"]) == ("logged out", "anonymize")
    before, after = rows[:3], rows[3:]
    assert "alice" in json.dumps(before) and "alice" not in json.dumps(after)
    assert "bob" in json.dumps(after) and "bob" not in json.dumps(before)
    # Nothing in a row ties the two devices together: no id of one appears with the other.
    for name in ("network_userid", "domain_userid", "domain_sessionid", "session_id"):
        assert not set(column(before, name)) & set(column(after, name)), name
    assert not set().union(*map(web_page_ids, before)) & set().union(*map(web_page_ids, after))
    assert not any(a in json.dumps(r) and b in json.dumps(r) for r in rows)
    sessions = store.query("SELECT device_id, user_id FROM sessions WHERE device_id IN (?, ?)", (a, b))
    assert {s["device_id"] for s in sessions} == {a, b}
    assert {s["user_id"] for s in sessions if s["device_id"] == b} <= {None, "bob"}
    assert {s["user_id"] for s in sessions if s["device_id"] == a} <= {None, "alice"}


@contextmanager
def cors_proxy(collector: Collector, mode: str, record: Path | None = None) -> Iterator[str]:
    """cors_proxy.py in front of the real collector (mode: see there); yields the proxy's URL."""
    port = free_port()
    log = open(Path(collector.db).parent / f"cors-proxy-{port}.log", "wb")  # noqa: SIM115 - closed below
    args = ["--port", str(port), "--upstream", collector.url, "--mode", mode]
    if record is not None:
        args += ["--record", str(record)]
    proc = subprocess.Popen(
        [sys.executable, str(E2E_DIR / "cors_proxy.py"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://{LOOPBACK}:{port}"
        wait_http(url + "/health")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def broken_cors(collector: Collector, request: pytest.FixtureRequest) -> Iterator[str]:
    """A reverse proxy in front of the real collector that rewrites its CORS answers (param: mode)."""
    with cors_proxy(collector, request.param) as url:
        yield url


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("broken_cors", ["star", "no-credentials"], indirect=True)
def test_browser_scenario_fails_when_cors_is_misconfigured(
    broken_cors: str,
    store: Store,
    method: str,
    request: pytest.FixtureRequest,
) -> None:
    """The same scenario through a proxy that breaks CORS: the suite must see the failure."""
    app_id = f"br-cors-{request.node.callspec.id}"
    result = run_node(
        "browser.mjs",
        {
            "collector": broken_cors,
            "scenario": "normal",
            "method": method,
            "appId": app_id,
            "ackTimeoutMs": 5000,
        },
    )
    assert not result["ok"]
    assert result["trackerFailures"], result
    assert any("CORS" in e for e in result["consoleErrors"]), result["consoleErrors"]
    assert jar_sp(result, "start") is None and "after_first" not in result["marks"]
    if method == "post":
        assert store.count(app_id) == 0  # the preflight fails: the batch never leaves the browser
    else:
        # A GET needs no preflight: the event is stored, yet the tracker sees a failure and will
        # resend it (duplicates follow), which is why the collector must echo the Origin.
        assert store.count(app_id, at_least=1) == 1


@pytest.mark.parametrize("listed", [True, False], ids=["page-listed", "page-not-listed"])
def test_cors_allow_list_with_a_real_browser(tmp_path: Path, listed: bool) -> None:
    """COLLECTOR_CORS_ORIGINS: the listed page tracks cleanly, any other page is refused by the browser."""
    page_port = free_port()
    page_origin = f"http://{LOOPBACK}:{page_port}"
    other = f"http://{LOOPBACK}:{free_port()}"
    origins = f"https://shop.example,{page_origin if listed else other}"
    with Collector(tmp_path / "events.db", env={"COLLECTOR_CORS_ORIGINS": origins}) as collector:
        app_id = f"br-allow-list-{listed}"
        result = run_node(
            "browser.mjs",
            {
                "collector": collector.url,
                "scenario": "normal",
                "method": "post",
                "appId": app_id,
                "pagePort": page_port,
                "ackTimeoutMs": 5000,
            },
        )
        assert result["pageOrigin"] == page_origin
        store = Store(collector.db)
        if listed:
            assert_clean(result)
            assert len(store.events(app_id, result["eids"])) == 4
        else:
            assert not result["ok"] and result["trackerFailures"], result
            assert any("CORS" in e for e in result["consoleErrors"]), result["consoleErrors"]
            assert store.count(app_id) == 0


@pytest.mark.parametrize("method", METHODS)
def test_logout_without_clear_user_data_keeps_no_old_tracker_id(
    collector: Collector, store: Store, method: str
) -> None:
    """The app forgets clearUserData: the old duid and sid keep arriving on the new device."""
    result = browse(collector.url, "logout_without_clear", method)
    assert_clean(result)
    rows = store.events(result["appId"], result["eids"])
    old, new = rows[:2], rows[2:]
    assert [r["event_name"] for r in old] == [None, "anonymize"]
    assert len({r["network_userid"] for r in old}) == 1 and len({r["network_userid"] for r in new}) == 1
    assert old[0]["network_userid"] != new[0]["network_userid"]
    # Before the rotation the tracker's ids are kept; after it the same values are dropped.
    assert old[0]["domain_userid"] and old[0]["domain_sessionid"]
    assert [(r["domain_userid"], r["domain_sessionid"]) for r in new] == [(None, None)] * 2
    # ...although the tracker did send them: the case under test happened.
    sent = [e for r in result["requests"][2:] for e in r["sent"]]
    assert [(e["duid"], e["sid"]) for e in sent] == [
        (old[0]["domain_userid"], old[0]["domain_sessionid"])
    ] * 2
    assert [r["user_id"] for r in rows] == ["carol", "carol", None, None]
    for name in ("network_userid", "domain_userid", "domain_sessionid", "session_id"):
        assert not {r[name] for r in old} & {r[name] for r in new}, name


CLIENT_SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/"
# The client_session values that name the device, one of its sessions or its first event. The others
# are counters (sessionIndex is checked with domain_sessionidx) and the constant storageMechanism.
CLIENT_SESSION_IDS = ("userId", "sessionId", "previousSessionId", "firstEventId", "firstEventTimestamp")
# One hit: (index of the row among the scenario's rows, column, value found, the identifiers it is).
Hit = tuple[int, str, str | int, tuple[str, ...]]


def client_sessions(row: Row) -> list[dict[str, Any]]:
    contexts = json.loads(row["contexts"] or "null") or {}
    return [c["data"] for c in contexts.get("data", []) if c.get("schema", "").startswith(CLIENT_SESSION)]


def device_identifiers(rows: list[Row]) -> dict[str, set[str]]:
    """Every identifier in a device's rows, by the column or client_session field it was read from."""
    ids = {
        name: {r[name] for r in rows if r[name]}
        for name in ("network_userid", "domain_userid", "domain_sessionid")
    }
    for key in CLIENT_SESSION_IDS:
        ids[f"client_session.{key}"] = {s[key] for r in rows for s in client_sessions(r) if s.get(key)}
    return ids


def continued_counts(rows: list[Row]) -> set[int]:
    """The session counts past the first that a device reached (vid, client_session.sessionIndex).

    A new device starts counting at 1 again, so a later row carrying one of these continues the old
    device's history.
    """
    counts = {r["domain_sessionidx"] for r in rows}
    counts |= {s.get("sessionIndex") for r in rows for s in client_sessions(r)}
    return {c for c in counts if isinstance(c, int) and c > 1}


def find_identifiers(
    ids: dict[str, set[str]], counts: set[int], rows: list[Row], first: int = 0
) -> list[Hit]:
    """Where the ids occur in rows: as a substring of any text column (the JSON columns contexts,
    unstruct_event and other_params in full), and the counts as domain_sessionidx or sessionIndex."""
    names: dict[tuple[int, str, str | int], list[str]] = {}
    for i, row in enumerate(rows, first):
        for column_name, text in row.items():
            if isinstance(text, str):
                for name, values in ids.items():
                    for value in values:
                        if value in text:
                            names.setdefault((i, column_name, value), []).append(name)
        if row["domain_sessionidx"] in counts:
            names.setdefault((i, "domain_sessionidx", row["domain_sessionidx"]), []).append(
                "domain_sessionidx"
            )
        for s in client_sessions(row):
            if s.get("sessionIndex") in counts:
                names.setdefault((i, "contexts", s["sessionIndex"]), []).append("client_session.sessionIndex")
    return [(i, col, value, tuple(found)) for (i, col, value), found in names.items()]


def describe(hits: list[Hit], rows: list[Row]) -> str:
    """One line per hit, naming the row by its event and title (or label, or event name)."""
    lines = []
    for i, col, value, names in hits:
        row = rows[i]
        what = row["page_title"] or row["se_label"] or row["event_name"]
        lines.append(f"row {i} ({row['event']} {what}): {col} holds {'/'.join(names)} {value!r}")
    return "\n".join(lines)


def assert_found_where_they_belong(ids: dict[str, set[str]], counts: set[int], old: list[Row]) -> None:
    """The twin of every "found nowhere" check: each identifier and count is found in the old rows."""
    for name, values in ids.items():
        assert values, f"the old device's rows carry no {name}: the scenario did not produce it"
    assert counts, "the old device never reached a second session: domain_sessionidx is not tested"
    hits = find_identifiers(ids, counts, old)
    found = {(name, value) for _, _, value, names in hits for name in names}
    assert {(n, v) for n, values in ids.items() for v in values} <= found, describe(hits, old)
    assert {("domain_sessionidx", c) for c in counts} <= found, describe(hits, old)
    assert {("client_session.sessionIndex", c) for c in counts} <= found, describe(hits, old)
    # ...in the column or the entity they were read from.
    for name, values in ids.items():
        column_name = "contexts" if name.startswith("client_session.") else name
        assert {(column_name, v) for v in values} <= {(c, v) for _, c, v, ns in hits if name in ns}, name
    # firstEventId names one of the old device's own events.
    assert ids["client_session.firstEventId"] <= set(column(old, "event_id"))


def assert_tracker_resent_old_ids(requests: list[dict[str, Any]], ids: dict[str, set[str]]) -> None:
    """The case under test happened: the tracker sent the old device's ids, in its client_session too."""
    sent = [e for r in requests for e in r["sent"]]
    assert sent and all(e["session"] for e in sent), sent
    assert {(e["duid"], e["sid"]) for e in sent} <= {
        (duid, sid) for duid in ids["domain_userid"] for sid in ids["domain_sessionid"]
    }, sent
    assert {(e["session"]["userId"], e["session"]["sessionId"]) for e in sent} == {
        (e["duid"], e["sid"]) for e in sent
    }, sent


@pytest.mark.parametrize("method", METHODS)
def test_opting_out_and_in_with_the_session_entity_keeps_no_old_identifier(
    collector: Collector, store: Store, method: str
) -> None:
    """toggle with client_session on: neither the anonymous rows nor the new device hold the old ids."""
    result = browse(collector.url, "toggle_session", method)
    assert_clean(result)
    requests = result["requests"]
    old_cookie, new_cookie = jar_sp(result, "identified"), jar_sp(result, "end")
    assert old_cookie is not None and new_cookie is not None and jar_sp(result, "anonymous") is None
    assert device(old_cookie["value"]) != device(new_cookie["value"])
    assert [r["spAnonymous"] for r in requests] == [None] * 3 + ["*"] * 2 + [None] * 2
    assert sp_sent(requests[3]) == old_cookie["value"] and sp_set(requests[3]) == ""

    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "anonymous") == [0, 0, 0, 1, 1, 0, 0]
    old, anonymous, new = rows[:3], rows[3:5], rows[5:]
    assert set(column(old, "network_userid")) == {device(old_cookie["value"])}
    assert set(column(new, "network_userid")) == {device(new_cookie["value"])}
    assert column(anonymous, "network_userid") == [None, None]
    assert column(rows, "domain_sessionidx")[:3] == [1, 2, 2]

    ids, counts = device_identifiers(old), continued_counts(old)
    assert_found_where_they_belong(ids, counts, old)
    # The anonymous tracker sends no session entity (nor duid, sid, vid): only the old cookie goes out.
    assert [e["session"] for r in requests[3:5] for e in r["sent"]] == [None, None]
    assert_tracker_resent_old_ids(requests[5:], ids)
    # The promise: not one of the old device's identifiers in the anonymous rows or the new device's.
    leaks = find_identifiers(ids, counts, rows[3:], first=3)
    assert leaks == [], "the old device's identifiers in later rows:\n" + describe(leaks, rows)


@pytest.mark.parametrize("method", METHODS)
def test_logout_with_the_session_entity_never_links_alice_to_bob(
    collector: Collector, store: Store, method: str
) -> None:
    """The app forgets clearUserData with client_session on: Bob's rows must hold none of the old ids."""
    result = browse(collector.url, "logout_session", method)
    assert_clean(result)
    requests = result["requests"]
    old_cookie, new_cookie = jar_sp(result, "alice"), jar_sp(result, "after_anonymize")
    assert old_cookie is not None and new_cookie is not None
    assert device(old_cookie["value"]) != device(new_cookie["value"])
    end = jar_sp(result, "end")
    assert end is not None and end["value"] == new_cookie["value"]
    anonymize = requests[3]
    assert (sp_sent(anonymize), sp_set(anonymize)) == (old_cookie["value"], new_cookie["value"])
    assert [sp_sent(r) for r in requests[4:]] == [new_cookie["value"]] * 3

    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "event_name")[3] == "anonymize"
    assert column(rows, "user_id") == ["alice"] * 4 + [None, "bob", "bob"]
    old, logged_out, bob = rows[:4], rows[4:5], rows[5:]
    assert set(column(old, "network_userid")) == {device(old_cookie["value"])}
    assert set(column(logged_out + bob, "network_userid")) == {device(new_cookie["value"])}
    assert column(rows, "domain_sessionidx")[:4] == [1, 2, 2, 2]
    assert "alice" in json.dumps(old) and "alice" not in json.dumps(logged_out + bob)

    ids, counts = device_identifiers(old), continued_counts(old)
    assert_found_where_they_belong(ids, counts, old)
    assert_tracker_resent_old_ids(requests[4:], ids)
    # The promise: the new device's rows, logged out and Bob's, hold none of the old device's ids.
    leaks = find_identifiers(ids, counts, rows[4:], first=4)
    assert leaks == [], "the old device's identifiers in later rows:\n" + describe(leaks, rows)


# Global Privacy Control. The tracker is an ordinary identified one (setUserId, no anonymous tracking
# of its own) in a browser whose requests carry `Sec-GPC: 1`; what COLLECTOR_GPC says is up to the
# collector alone: `anonymous` (the default) stores the events under the SP-Anonymous policy, `drop`
# answers as usual and stores nothing, `ignore` treats the request as if the header were absent.

GPC_EVENTS = ["pv", "se", "pv"]  # the gpc scenario: page view, struct event, page view on a second page
# What SP-Anonymous keeps out of a row; the tracker sends uid and duid all the same.
ANONYMOUS_NONE = ("user_ipaddress", "network_userid", "user_id", "domain_userid", "session_id")


@pytest.fixture
def gpc_collector(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Collector]:
    """A collector of its own on a fresh store, with COLLECTOR_GPC set to the param (None: unset)."""
    monkeypatch.delenv("COLLECTOR_GPC", raising=False)
    env = {} if request.param is None else {"COLLECTOR_GPC": request.param}
    proc = Collector(tmp_path / "events.db", env=env).start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            stop_cleanly(proc)


def stop_cleanly(collector: Collector) -> None:
    """Stop the collector (SIGTERM drains its write queue) and insist it exits 0."""
    code = collector.stop()
    tail = collector.log.read_text(errors="replace")[-4000:] if collector.log.exists() else ""
    assert code == 0, f"collector exited {code}; log tail:\n{tail}"


def sent_ids(result: dict[str, Any], key: str) -> list[Any]:
    """The values of one tracker-side id (duid, sid, uid) the events of a run carried, in order."""
    return [e[key] for r in result["requests"] for e in r["sent"]]


def assert_gpc_went_out(result: dict[str, Any], expected: list[str | None]) -> None:
    """What the browser really sent: Sec-GPC per request, and never the tracker's own SP-Anonymous."""
    requests = result["requests"]
    assert [r["gpc"] for r in requests] == expected, [(r["method"], r["gpc"]) for r in requests]
    assert [r["spAnonymous"] for r in requests] == [None] * len(requests)


def assert_tracker_identified(result: dict[str, Any], user: str) -> None:
    """The tracker sent its ids with every event: whatever the rows lack, the collector dropped."""
    duids, sids = sent_ids(result, "duid"), sent_ids(result, "sid")
    assert all(duids) and len(set(duids)) == 1 and all(sids), result["requests"]
    assert sent_ids(result, "uid") == [user] * len(duids)


def assert_identified_rows(store: Store, result: dict[str, Any], user: str) -> list[Row]:
    """A run of the gpc scenario stored as identified: the IP, the collector's device, the user id."""
    assert_clean(result)
    requests = result["requests"]
    cookie = jar_sp(result, "end")
    assert cookie is not None, result["marks"]
    assert jar_sp(result, "start") is None and sp_set(requests[0]) == cookie["value"]
    assert [sp_sent(r) for r in requests[1:]] == [cookie["value"]] * (len(requests) - 1)
    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "event") == GPC_EVENTS
    assert column(rows, "anonymous") == [0] * 3
    assert column(rows, "user_ipaddress") == [LOOPBACK] * 3
    assert column(rows, "network_userid") == [device(cookie["value"])] * 3
    assert column(rows, "user_id") == [user] * 3
    assert column(rows, "domain_userid") == sent_ids(result, "duid")
    assert all(column(rows, "session_id"))
    assert rows[1]["se_label"] == "sku-gpc"
    return rows


def store_dump(store: Store) -> str:
    """Every row of every table and view of the store, as one text to search."""
    names = [r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    return json.dumps({name: store.query(f'SELECT * FROM "{name}"') for name in names}, default=str)


@pytest.mark.parametrize("method", METHODS)
def test_sec_gpc_reaches_the_collector(collector: Collector, tmp_path: Path, method: str) -> None:
    """The scenario's premise, independent of what the collector does with the header: every tracker
    request reaches the collector with Sec-GPC: 1, on the wire, and needs no CORS allowance."""
    record = tmp_path / "requests.jsonl"
    with cors_proxy(collector, "record", record) as url:
        result = browse(url, "gpc", method, tag="wire", gpc=True)
    assert_clean(result)
    assert_gpc_went_out(result, ["1"] * 3)
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    seen = [r for r in seen if r["path"] != "/health"]  # the readiness probe of cors_proxy()
    tracked = [r for r in seen if r["method"] != "OPTIONS"]
    sent = [(r["method"], r["path"]) for r in result["requests"]]
    assert [(r["method"], r["path"]) for r in tracked] == sent, seen
    assert [r["headers"].get("sec-gpc") for r in tracked] == ["1"] * 3, tracked
    # A browser with GPC on adds the header itself: it is not in a preflight's requested headers,
    # so the collector needs no Access-Control-Allow-Headers for it (POST has one preflight, GET none).
    preflights = [r for r in seen if r["method"] == "OPTIONS"]
    assert len(preflights) == (1 if method == "post" else 0), seen
    for p in preflights:
        assert "sec-gpc" not in p["headers"].get("access-control-request-headers", "").lower(), p


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gpc_collector", [None], indirect=True, ids=["default"])
def test_gpc_by_default_stores_the_events_without_any_identifier(
    gpc_collector: Collector, method: str
) -> None:
    store = Store(Path(gpc_collector.db))
    result = browse(gpc_collector.url, "gpc", method, gpc=True)
    assert_clean(result)
    assert_gpc_went_out(result, ["1"] * 3)
    assert_tracker_identified(result, "user-gpc")
    requests = result["requests"]
    # No device cookie issued: the answers set none and the browser ends without one.
    assert [sp_set(r) for r in requests] == [None] * 3, [r["setCookie"] for r in requests]
    assert [sp_sent(r) for r in requests] == [None] * 3
    assert jar_sp(result, "end") is None

    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "event") == GPC_EVENTS
    assert column(rows, "anonymous") == [1] * 3
    for name in ANONYMOUS_NONE:
        assert column(rows, name) == [None] * 3, name
    # The events themselves are kept: only identifiers go.
    assert rows[1]["se_label"] == "sku-gpc"
    assert rows[2]["page_url"] == result["pageOrigin"] + "/page2.html"
    text = client_text(rows)
    assert f'"{LOOPBACK}"' not in text and "user-gpc" not in text
    assert sent_ids(result, "duid")[0] not in text

    # The twin: the same scenario without the header, on the same collector, is stored identified.
    control = browse(gpc_collector.url, "gpc", method, tag="control", userId="user-control")
    assert_gpc_went_out(control, [None] * 3)
    assert_identified_rows(store, control, "user-control")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gpc_collector", [None], indirect=True, ids=["default"])
def test_gpc_by_default_is_exactly_the_sp_anonymous_policy(gpc_collector: Collector, method: str) -> None:
    """The same identified tracker once with Sec-GPC: 1, once with SP-Anonymous: the same columns kept."""
    store = Store(Path(gpc_collector.db))
    gpc = browse(gpc_collector.url, "gpc", method, gpc=True)
    anon = browse(gpc_collector.url, "gpc", method, tag="sp-anonymous", headers={"SP-Anonymous": "*"})
    assert_clean(gpc)
    assert_clean(anon)
    assert [r["spAnonymous"] for r in anon["requests"]] == ["*"] * 3  # the twin's premise
    assert_tracker_identified(anon, "user-gpc")
    assert [sp_set(r) for r in gpc["requests"]] == [sp_set(r) for r in anon["requests"]] == [None] * 3
    gpc_rows = store.events(gpc["appId"], gpc["eids"])
    anon_rows = store.events(anon["appId"], anon["eids"])
    assert column(anon_rows, "anonymous") == [1] * 3  # SP-Anonymous did what it does
    for g, a in zip(gpc_rows, anon_rows, strict=True):
        kept = {k for k, v in a.items() if v is not None}
        assert {k for k, v in g.items() if v is not None} == kept, (g, a)
        assert g["anonymous"] == a["anonymous"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gpc_collector", [None], indirect=True, ids=["default"])
def test_gpc_turned_on_later_expires_the_device_cookie(gpc_collector: Collector, method: str) -> None:
    """One identified event, then GPC on: the old cookie goes out with Sec-GPC, the answer expires it."""
    store = Store(Path(gpc_collector.db))
    result = browse(gpc_collector.url, "gpc_later", method)
    assert_clean(result)
    assert_gpc_went_out(result, [None, "1", "1"])
    first, gpc1, gpc2 = result["requests"]
    old = jar_sp(result, "identified")
    assert old is not None and sp_set(first) == old["value"]
    assert sp_sent(gpc1) == old["value"]  # the case under test happened
    assert sp_set(gpc1) == "", gpc1["setCookie"]  # ...and the collector expired the cookie
    assert (sp_sent(gpc2), sp_set(gpc2)) == (None, None)
    assert jar_sp(result, "end") is None
    duids = sent_ids(result, "duid")
    assert len(set(duids)) == 1  # the tracker kept sending its own device id

    rows = store.events(result["appId"], result["eids"])
    assert column(rows, "anonymous") == [0, 1, 1]
    assert column(rows, "user_ipaddress") == [LOOPBACK, None, None]
    assert column(rows, "network_userid") == [device(old["value"]), None, None]
    assert column(rows, "user_id") == ["user-gpc", None, None]
    assert column(rows, "domain_userid") == [duids[0], None, None]
    later = client_text(rows[1:])
    for value in (device(old["value"]), duids[0], "user-gpc", f'"{LOOPBACK}"'):
        assert value not in later, value


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gpc_collector", ["drop"], indirect=True)
def test_gpc_drop_answers_as_usual_and_stores_nothing(gpc_collector: Collector, method: str) -> None:
    store = Store(Path(gpc_collector.db))
    result = browse(gpc_collector.url, "gpc", method, gpc=True, userId="user-dropped")
    # Answered 200 with CORS, acknowledged by the tracker, one request per event: no failure, no retry.
    assert_clean(result)
    assert_gpc_went_out(result, ["1"] * 3)
    assert_tracker_identified(result, "user-dropped")
    requests = result["requests"]
    assert [sp_set(r) for r in requests] == [None] * 3, [r["setCookie"] for r in requests]
    assert jar_sp(result, "end") is None

    # The twin: without the header the same collector stores the events, identified.
    control = browse(gpc_collector.url, "gpc", method, tag="control", userId="user-control")
    assert_gpc_went_out(control, [None] * 3)
    assert_identified_rows(store, control, "user-control")
    # ...and the dropped requests got the answer a stored event gets (the pixel on GET, ok on POST).
    assert [r["contentType"] for r in requests] == [r["contentType"] for r in control["requests"]]

    stop_cleanly(gpc_collector)  # the write queue is drained: nothing of the GPC run can still arrive
    assert store.count(result["appId"]) == 0
    assert store.query("SELECT count(*) AS n FROM bad_rows")[0]["n"] == 0
    dump = store_dump(store)
    assert "user-control" in dump and sent_ids(control, "duid")[0] in dump  # where the twin's ids are
    for value in (result["appId"], "user-dropped", sent_ids(result, "duid")[0], *result["eids"]):
        assert value not in dump, value


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gpc_collector", ["ignore"], indirect=True)
def test_gpc_ignore_stores_identified_rows(gpc_collector: Collector, method: str) -> None:
    store = Store(Path(gpc_collector.db))
    result = browse(gpc_collector.url, "gpc", method, gpc=True)
    assert_gpc_went_out(result, ["1"] * 3)
    assert_tracker_identified(result, "user-gpc")
    assert_identified_rows(store, result, "user-gpc")
