"""Server-side sessions, identity stitching and unlinkable rotation, with real cookie round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from collector.config import Config
from collector.identifiers import BRIEF_IDS_KEPT, LASTING_IDS_KEPT, LINK_IDS_KEPT, TrackerIds
from storage.sessions import (
    STATE_COLUMNS,
    DeviceState,
    SessionRules,
    assign,
    remember,
    retire,
    state_of,
    state_row,
)
from tests.conftest import TP2, Clock, batch, ev, rows, tables

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

ANON_UE = orjson.dumps(
    {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.acme/anonymize/jsonschema/1-0-0", "data": {}},
    }
).decode()
RULES = SessionRules(timeout_ms=1_800_000)


class Browser:
    """Keeps the device cookie like a browser would (the test client's jar ignores Secure cookies on http)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cookie: str | None = None
        self.set_cookies: list[str] = []

    async def send(self, *events: dict[str, str]) -> Any:
        headers = {"Cookie": f"sp={self.cookie}"} if self.cookie else {}
        resp = await self.client.post(TP2, json=batch(*events), headers=headers)
        assert resp.status == 200, await resp.text()
        if "sp" in resp.cookies:
            self.set_cookies.append(resp.cookies["sp"].value)
            self.cookie = resp.cookies["sp"].value or None
        return resp

    @property
    def device(self) -> str:
        assert self.cookie
        return self.cookie.split(".")[0]


def test_session_rules_pure() -> None:
    s = assign(None, 0, "sid-1", None, RULES)
    assert s.session_index == 1
    assert (
        assign(s, 1000, "sid-1", "alice", RULES) is s and s.user_id == "alice"
    )  # login continues the session
    assert assign(s, 2000, None, None, RULES) is s  # events without sid/uid continue it too
    after_gap = assign(s, 2000 + 1_800_001, "sid-1", "alice", RULES)
    assert after_gap.session_index == 2 and after_gap.session_id != s.session_id
    assert assign(after_gap, after_gap.last_ms + 1, "sid-2", "alice", RULES).session_index == 3
    other_user = assign(DeviceState("x", 7, 0, None, "alice"), 1, None, "bob", RULES)
    assert other_user.session_index == 8 and other_user.user_id == "bob"
    closed = DeviceState("x", 1, 0, None, None, closed=True)
    assert assign(closed, 1, None, None, RULES).session_index == 2


async def test_timeout_splits_with_a_controllable_clock(client: Any, cfg: Config, clock: Clock) -> None:
    b = Browser(client)
    await b.send(ev(eid="t1"))
    clock.t += 29 * 60
    await b.send(ev(eid="t2"))
    clock.t += 30 * 60 + 1
    await b.send(ev(eid="t3"))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert got["t1"]["session_id"] == got["t2"]["session_id"] != got["t3"]["session_id"]
    assert [got[e]["session_index"] for e in ("t1", "t2", "t3")] == [1, 1, 2]


async def test_sid_change_and_user_change_split(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(
        ev(eid="a", sid="s1"),
        ev(eid="b", sid="s1", uid="alice"),
        ev(eid="c", sid="s2", uid="alice"),
        ev(eid="d", sid="s2", uid="bob"),
        ev(eid="e", sid="s2", uid="bob"),
    )
    idx = {r[0]: r[1] for r in rows(cfg.db, "select event_id, session_index from events")}
    assert idx == {"a": 1, "b": 1, "c": 2, "d": 3, "e": 3}


async def test_logout_scenario_rotates_and_stitches(client: Any, cfg: Config, clock: Clock) -> None:
    b = Browser(client)
    await b.send(ev(eid="anon-1", duid="duid-A", sid="sid-1"))  # browse anonymously
    old = b.device
    clock.t += 3600
    await b.send(ev(eid="login-a", duid="duid-A", sid="sid-2", uid="alice"))  # log in as alice
    await b.send(ev(eid="browse-a", duid="duid-A", sid="sid-2", uid="alice"))
    resp = await b.send(
        ev("se", eid="logged-out", duid="duid-A", sid="sid-2", uid="alice", se_ca="auth", se_ac="logout"),
        ev("ue", eid="anonymize", duid="duid-A", sid="sid-2", uid="alice", ue_pr=ANON_UE),
    )
    assert "sp" in resp.cookies and b.device != old  # the anonymize answer sets a new cookie
    new = b.device
    await b.send(ev(eid="after-1", duid="duid-B", sid="sid-3"))  # clearUserData(): new tracker ids
    await b.send(ev(eid="login-b", duid="duid-B", sid="sid-3", uid="bob"))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert {r["network_userid"] for r in got.values()} == {old, new}
    assert {e for e, r in got.items() if r["network_userid"] == old} == {
        "anon-1",
        "login-a",
        "browse-a",
        "logged-out",
        "anonymize",
    }
    assert got["anonymize"]["session_id"] == got["login-a"]["session_id"]  # in alice's last session
    sessions = {r["session_id"]: r for r in rows(cfg.db, "select * from sessions")}
    assert sessions[got["anon-1"]["session_id"]]["user_id"] == "alice"  # pre-login session stitched to alice
    new_sessions = [s for s in sessions.values() if s["device_id"] == new]
    assert {s["user_id"] for s in new_sessions} == {"bob"}  # nothing after the rotation is alice's
    assert all(s["device_id"] == new for s in sessions.values() if s["user_id"] == "bob")
    devices = {r["device_id"]: r for r in rows(cfg.db, "select * from devices")}
    assert (devices[old]["user_id"], devices[new]["user_id"]) == ("alice", "bob")
    assert_unlinkable(cfg.db, old, new, retired="duid-A")


async def test_forgotten_clear_user_data_does_not_carry_tracker_ids(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(
        ev(eid="x1", duid="duid-OLD", sid="sid-OLD", uid="alice"),
        ev("ue", eid="x2", duid="duid-OLD", sid="sid-OLD", ue_pr=ANON_UE),
        ev(eid="x3", duid="duid-OLD", sid="sid-OLD"),
    )  # the app forgot clearUserData()
    await b.send(ev(eid="x4", duid="duid-OLD", sid="sid-OLD"))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert got["x1"]["domain_userid"] == "duid-OLD" and got["x2"]["domain_sessionid"] == "sid-OLD"
    for e in ("x3", "x4"):
        assert got[e]["domain_userid"] is None and got[e]["domain_sessionid"] is None
        assert got[e]["user_id"] is None
    old, new = got["x1"]["network_userid"], got["x3"]["network_userid"]
    assert got["x4"]["network_userid"] == new != old
    assert_unlinkable(cfg.db, old, new, retired="duid-OLD")


async def test_one_batch_splits_at_the_anonymize_event(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev(eid="pre"))
    old = b.device
    await b.send(
        ev(eid="b1", uid="alice"), ev("ue", eid="b2", ue_pr=ANON_UE, uid="alice"), ev(eid="b3"), ev(eid="b4")
    )
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert got["b1"]["network_userid"] == got["b2"]["network_userid"] == old
    assert got["b3"]["network_userid"] == got["b4"]["network_userid"] == b.device != old
    assert got["b3"]["session_index"] == 1 and got["b3"]["session_id"] != got["b2"]["session_id"]


async def test_a_replayed_cookie_rotates_once_and_never_continues(client: Any, cfg: Config) -> None:
    """A device rotates once: its replayed cookie neither rotates again nor gets its events."""
    b = Browser(client)
    await b.send(ev(eid="first"))
    replayed, old = b.cookie, b.device
    answers = []
    for i in range(12):
        resp = await client.post(
            TP2, json=batch(ev("ue", eid=f"anon-{i}", ue_pr=ANON_UE)), headers={"Cookie": f"sp={replayed}"}
        )
        answers.append(resp.headers["Set-Cookie"])
    assert not answers[0].startswith("sp=;") and replayed not in answers[0]  # rotated: a new cookie
    assert all(a.startswith("sp=; Max-Age=0") for a in answers[1:])  # then the dead cookie is expired
    assert rows(cfg.db, "select count(*) from events where event_name = 'anonymize'")[0][0] == 12
    devices = {r[0]: r[1] for r in rows(cfg.db, "select event_id, network_userid from events")}
    assert devices["first"] == devices["anon-0"] == old
    assert [devices[f"anon-{i}"] for i in range(1, 12)] == [None] * 11  # kept, but with no device
    assert rows(cfg.db, "select count(*) from device_state")[0][0] == 1  # the rotated-to id was never used
    metrics = await (await client.get("/metrics")).text()
    assert 'collector_rotations_total{outcome="rotated"} 1.0' in metrics


async def test_anonymous_anonymize_event_is_stored_scrubbed(client: Any, cfg: Config) -> None:
    resp = await client.post(
        TP2, json=batch(ev("ue", eid="aa", ue_pr=ANON_UE, uid="alice")), headers={"SP-Anonymous": "*"}
    )
    assert "Set-Cookie" not in resp.headers
    [row] = rows(cfg.db, "select * from events")
    assert row["event_name"] == "anonymize" and row["network_userid"] is None and row["user_id"] is None


def assert_unlinkable(db: Path | str, old: str, new: str, retired: str) -> None:
    """Over every table and view: no row holds both ids; the retired duid is in no row of the new device."""
    seen_old = seen_new = 0
    for name in tables(db):
        for row in rows(db, f'select * from "{name}"'):
            text = "\x1f".join(map(str, row))
            has_old, has_new = old in text, new in text
            seen_old += has_old
            seen_new += has_new
            assert not (has_old and has_new), f"{name} links the ids: {row}"
            if has_new:
                assert retired not in text, f"{name} carries the retired tracker id: {row}"
    assert seen_old and seen_new  # the search finds each id where it belongs


async def test_opting_out_and_back_in_does_not_link_the_devices(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev(eid="on-1", duid="duid-T", sid="sid-T"))
    old = b.device
    # anonymous tracking toggled on: the browser still sends its cookie; the tracker keeps its own ids
    anon = await client.post(
        TP2,
        json=batch(ev(eid="anon-1", sid="sid-T")),
        headers={"Cookie": f"sp={b.cookie}", "SP-Anonymous": "*"},
    )
    assert anon.headers["Set-Cookie"].startswith("sp=; Max-Age=0")
    b.cookie = None
    await b.send(ev(eid="on-2", duid="duid-T", sid="sid-T"))  # toggled off again: a new device
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert got["on-1"]["domain_userid"] == "duid-T"  # where it belongs
    assert got["on-2"]["network_userid"] == b.device != old
    assert got["on-2"]["domain_userid"] is None and got["on-2"]["domain_sessionid"] is None
    # the anonymous event's sid was the opted-out device's: kept, it would tie the anonymous events to it
    assert got["anon-1"]["network_userid"] is None and got["anon-1"]["domain_sessionid"] is None
    assert_unlinkable(cfg.db, old, b.device, retired="duid-T")


def test_views_never_push_a_lasting_id_out() -> None:
    state = DeviceState("s", 1, 0)
    remember(state, TrackerIds(("idle-tab",), ("page-0",)))
    for i in range(1, 100):
        remember(state, TrackerIds(("busy-tab",), (f"page-{i}",)))
    assert len(state.brief_ids) == BRIEF_IDS_KEPT and "page-0" not in state.brief_ids
    assert "page-99" in state.brief_ids and "idle-tab" in state.tracker_ids
    # lasting ids are bounded too: the oldest goes once LASTING_IDS_KEPT newer ones came
    for i in range(LASTING_IDS_KEPT):
        remember(state, TrackerIds((f"tab-{i}",)))
    assert len(state.tracker_ids) == LASTING_IDS_KEPT and "idle-tab" not in state.tracker_ids
    assert {"tab-0", "page-99"} <= set(retire(state))


def test_links_never_push_a_lasting_id_out() -> None:
    # a URL may carry any number of `_sp` links (a crafted one): they are kept apart, newest first
    state = DeviceState("s", 1, 0)
    remember(state, TrackerIds(("idle-tab",), (), ("landed-link",)))
    remember(state, TrackerIds(("busy-tab",), (), tuple(f"link-{i}" for i in range(100))))
    assert "idle-tab" in state.tracker_ids and "landed-link" not in state.link_ids
    assert len(state.link_ids) == LINK_IDS_KEPT and "link-0" in state.link_ids
    assert {"idle-tab", "link-0"} <= set(retire(state))


def test_an_older_replicas_tracker_ids_are_all_kept_as_lasting() -> None:
    # A replica of a version that kept one list wrote tracker_ids last (it no longer ends with the link
    # and brief ids): which of its ids are lasting cannot be told, so all are, even one that is a link
    # too (a landing link's duid is the next page's refr_domain_userid): none may be dropped. (While
    # its list still ends with the link and brief ids, what comes before them is lasting.)
    mine = DeviceState("s", 1, 0, tracker_ids=("tab",), brief_ids=("view",), link_ids=("landed",))
    row = list(state_row("dev", mine))
    assert state_of(row)[1] == mine  # as this version wrote it
    row[STATE_COLUMNS.index("tracker_ids")] = orjson.dumps(
        ["landed", "new-view", "tab", "view"]  # its newest first, then what it read, each once
    ).decode()
    _, read = state_of(row)
    assert read.tracker_ids == ("landed", "new-view", "tab", "view")
    assert read.link_ids == ("landed",) and read.brief_ids == ("view",)


async def test_a_refused_opt_out_leaves_the_device_for_the_next_accepted_one(
    client: Any, cfg: Config
) -> None:
    # A refused request changes nothing of the device (promise 4): no retirement, and no expired
    # cookie either, since the tracker's ids would then go on, unretired, under the next device.
    b = Browser(client)
    await b.send(ev(eid="named", duid="duid-R", sid="sid-R"))
    headers = {"Cookie": f"sp={b.cookie}", "SP-Anonymous": "*", "Content-Type": "application/json"}
    refused = await client.post(TP2, data=b'{"schema": "x", "data": [', headers=headers)
    assert refused.status == 400 and "Set-Cookie" not in refused.headers
    assert rows(cfg.db, "select closed from device_state")[0][0] == 0
    assert rows(cfg.db, "select count(*) from retired_ids")[0][0] == 0
    accepted = await client.post(TP2, json=batch(ev(eid="anon", sid="sid-R")), headers=headers)
    assert accepted.status == 200 and accepted.headers["Set-Cookie"].startswith("sp=; Max-Age=0")
    assert rows(cfg.db, "select closed from device_state")[0][0] == 1
    assert {"duid-R", "sid-R"} <= {r[0] for r in rows(cfg.db, "select value from retired_ids")}
