"""Rotation and opt-out leave nothing kept that links a browser's devices: a generic check of every value.

The browser here is a tracker that does NOT clear its own state: after the anonymize event, and after
opting out and back in, it keeps sending the same duid, sid, vid and client_session entity (userId =
duid, sessionId = sid, previousSessionId, firstEventId, sessionIndex = vid, eventIndex counting on).

The check knows no list of id columns. For each side (the browser's events before the anonymize event
or opt-out, the anonymous events, the events after), it takes every scalar value kept: every column of
the side's events and of the sessions, devices and device_state rows of the devices and sessions those
events name, and every leaf of every JSON value among them (contexts, unstruct_event, other_params...,
recursively). Two sides must share no value beyond those everyone shares: a third, unrelated browser
(its own cookie, duid, sid, vid and users; the same app, pages, user agent and screen) goes through the
same flow at the same instants, and every value its rows hold is excluded. The positive controls run the
same flows with the rotation, or the opt-out, not happening: the same check then finds the shared ids.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from collector.config import Config
from tests.conftest import TP2, Clock, batch, rows

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
CLIENT_SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
ANON_UE = orjson.dumps(
    {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.acme/anonymize/jsonschema/1-0-0", "data": {"reason": "logout"}},
    }
).decode()
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
SHOP = "https://shop.test"
STEP_SECONDS = 5  # between two steps of a flow: well inside the session timeout

# value -> where it was seen: "table.column", then a JSON path ([name] for a self-describing entity)
Values = dict[str, set[str]]
Shared = dict[str, tuple[list[str], list[str]]]


@dataclass
class Browser:
    """A browser tracker that keeps its own ids whatever happens, with the collector's cookie in a jar."""

    client: Any
    clock: Clock
    users: tuple[str | None, str | None]  # the user logged in before and after
    duid: str = field(default_factory=lambda: str(uuid.uuid4()))
    sid: str = field(default_factory=lambda: str(uuid.uuid4()))
    previous_sid: str = field(default_factory=lambda: str(uuid.uuid4()))
    vid: int = 1
    uid: str | None = None
    cookie: str | None = None
    anonymous: bool = False  # SP-Anonymous on its requests
    phase: str = "old"  # the side the events being sent belong to
    event_index: int = 0
    first_eid: str | None = None
    first_timestamp: str | None = None
    sent: dict[str, list[str]] = field(default_factory=dict)  # phase -> event ids
    marks: dict[str, str | None] = field(default_factory=dict)  # what an answer did, for the flow's checks

    def event(self, e: str, path: str, **params: str) -> dict[str, str]:
        """One event as the tracker builds it: its own ids, a client_session entity, co or cx in turn."""
        now_ms = int(self.clock() * 1000)
        eid = str(uuid.uuid4())
        self.event_index += 1
        if self.first_eid is None:
            self.first_eid = eid
            first = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds")
            self.first_timestamp = first.replace("+00:00", "Z")
        session = {
            "userId": self.duid,
            "sessionId": self.sid,
            "sessionIndex": self.vid,
            "eventIndex": self.event_index,
            "previousSessionId": self.previous_sid,
            "storageMechanism": "LOCAL_STORAGE",
            "firstEventId": self.first_eid,
            "firstEventTimestamp": self.first_timestamp,
        }
        co = orjson.dumps({"schema": CONTEXTS, "data": [{"schema": CLIENT_SESSION, "data": session}]})
        out = {
            "e": e,
            "eid": eid,
            "aid": "shop",
            "p": "web",
            "tv": "js-4.10.1",
            "tna": "sp1",
            "url": SHOP + path,
            "page": path.strip("/") or "home",
            "duid": self.duid,
            "sid": self.sid,
            "vid": str(self.vid),
            "dtm": str(now_ms),
            "stm": str(now_ms),
            "res": "1920x1080",
            "vp": "1280x720",
            "lang": "en-GB",
            "tz": "Europe/London",
            "cs": "UTF-8",
            **params,
        }
        if self.event_index % 2:
            out["co"] = co.decode()
        else:
            out["cx"] = base64.urlsafe_b64encode(co).rstrip(b"=").decode()
        if self.uid:
            out["uid"] = self.uid
        return out

    async def send(self, *events: dict[str, str]) -> Any:
        headers = {"User-Agent": UA, "Origin": SHOP}
        if self.cookie:
            headers["Cookie"] = f"sp={self.cookie}"
        if self.anonymous:
            headers["SP-Anonymous"] = "*"
        resp = await self.client.post(TP2, json=batch(*events), headers=headers)
        assert resp.status == 200, await resp.text()
        self.sent.setdefault(self.phase, []).extend(e["eid"] for e in events)
        if "sp" in resp.cookies:  # the test client's jar ignores Secure cookies on http: keep it by hand
            self.cookie = resp.cookies["sp"].value or None
        return resp

    @property
    def device(self) -> str | None:
        return self.cookie.split(".")[0] if self.cookie else None


Step = Callable[[Browser], Awaitable[None]]


async def run_flow(clock: Clock, browsers: list[Browser], steps: list[Step]) -> None:
    """Each step for every browser at the same instant, then the clock moves on."""
    for step in steps:
        for b in browsers:
            await step(b)
        clock.t += STEP_SECONDS


# Flow (a): identified browsing as one user, an anonymize event, browsing as another user.
async def a_login(b: Browser) -> None:
    b.phase, b.uid = "old", b.users[0]
    await b.send(b.event("pv", "/"))


async def a_browse(b: Browser) -> None:
    await b.send(b.event("pv", "/product"), b.event("se", "/product", se_ca="shop", se_ac="add-to-basket"))


async def a_anonymize(b: Browser) -> None:
    b.marks["cookie before anonymize"] = b.cookie
    await b.send(
        b.event("se", "/account", se_ca="auth", se_ac="logout"), b.event("ue", "/account", ue_pr=ANON_UE)
    )
    b.marks["cookie after anonymize"] = b.cookie


async def a_other_user(b: Browser) -> None:
    b.phase, b.uid = "new", b.users[1]
    await b.send(b.event("pv", "/"))


async def a_other_user_browses(b: Browser) -> None:
    await b.send(b.event("pv", "/product"), b.event("se", "/product", se_ca="shop", se_ac="add-to-basket"))


ROTATION_FLOW: list[Step] = [a_login, a_browse, a_anonymize, a_other_user, a_other_user_browses]


# Flow (b): identified browsing, opt-out (SP-Anonymous with the cookie still sent), opt back in.
async def b_login(b: Browser) -> None:
    b.phase, b.uid = "old", b.users[0]
    await b.send(b.event("pv", "/"))
    b.marks["device before opt-out"] = b.device


async def b_browse(b: Browser) -> None:
    await b.send(b.event("pv", "/product"), b.event("se", "/product", se_ca="shop", se_ac="add-to-basket"))


def opt_out(honoured: bool) -> Step:
    """Consent withdrawn: the tracker sends SP-Anonymous (unless not honoured: the positive control)."""

    async def step(b: Browser) -> None:
        b.phase, b.anonymous = "anon", honoured
        resp = await b.send(b.event("pv", "/basket"))  # the browser still sends its cookie
        b.marks["opt-out answer"] = resp.headers.get("Set-Cookie")

    return step


async def b_anonymous_browse(b: Browser) -> None:
    await b.send(b.event("pv", "/checkout"), b.event("se", "/checkout", se_ca="shop", se_ac="order"))


async def b_opt_in(b: Browser) -> None:
    # The user logged out while opted out: the app's own user id, when sent, links by the app's choice,
    # not the collector's, so it is not sent after opting back in. The tracker's own state is kept.
    b.phase, b.anonymous, b.uid = "new", False, None
    await b.send(b.event("pv", "/"))
    b.marks["device after opt-in"] = b.device


async def b_browse_again(b: Browser) -> None:
    await b.send(b.event("pv", "/product"))


def opt_out_flow(honoured: bool) -> list[Step]:
    return [b_login, b_browse, opt_out(honoured), b_anonymous_browse, b_opt_in, b_browse_again]


def normal(value: object) -> str:
    """One spelling per value, so that "3" (a param), 3 (a column) and 3.0 (a JSON number) are equal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def leaves(value: object, where: str, out: Values) -> None:
    """Every scalar inside value (JSON text parsed, recursively) into out, with where it was seen."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        with contextlib.suppress(orjson.JSONDecodeError):  # text that only looks like JSON stays text
            value = orjson.loads(value)
    if isinstance(value, dict):
        schema = value.get("schema")
        if isinstance(schema, str) and schema.startswith("iglu:") and "data" in value:
            # self-describing: name what its data holds by the schema (contexts[client_session].userId)
            out.setdefault(schema, set()).add(f"{where}.schema")
            data = value["data"]
            nested = isinstance(data, dict) and "schema" in data
            inner = where if nested or isinstance(data, list) else f"{where}[{schema.split('/')[1]}]"
            if isinstance(data, list):
                for item in data:
                    leaves(item, inner, out)
            else:
                leaves(data, inner, out)
            for key, item in value.items():
                if key not in ("schema", "data"):
                    leaves(item, f"{where}.{key}", out)
        else:
            for key, item in value.items():
                leaves(item, f"{where}.{key}", out)
    elif isinstance(value, list):
        for item in value:
            leaves(item, f"{where}[]", out)
    elif value is not None and value != "":
        out.setdefault(normal(value), set()).add(where)


def side_values(db: Path | str, eids: list[str]) -> Values:
    """Every value kept about a side: its events, and the rows of the devices and sessions they name.

    (retired_ids holds values only, attributable to no device; bad_rows get none of these flows' events.)
    """
    out: Values = {}

    def add(table: str, where: str, params: list[str]) -> list[Any]:
        if not params:
            return []
        found = rows(db, f"select * from {table} where {where}", tuple(params))
        for row in found:
            for col in row.keys():  # noqa: SIM118 - a row is not a mapping
                leaves(row[col], f"{table}.{col}", out)
        return found

    events = add("events", f"event_id in ({','.join('?' * len(eids))})", eids)
    devices = sorted({r["network_userid"] for r in events if r["network_userid"]})
    sessions = sorted({s for r in events for s in (r["session_id"], r["domain_sessionid"]) if s})
    in_devices = f"device_id in ({','.join('?' * len(devices))})"
    in_sessions = f"session_id in ({','.join('?' * len(sessions))})"
    add("sessions", f"{in_devices} or {in_sessions}", devices + sessions)
    add("devices", in_devices, devices)
    add("device_state", in_devices, devices)
    return out


def everything(db: Path | str, b: Browser) -> Values:
    """Every value kept about all of a browser's events, whatever side."""
    return side_values(db, [eid for eids in b.sent.values() for eid in eids])


def shared(x: Values, y: Values, everyone: Values) -> Shared:
    """The values two sides share that the unrelated browser's rows do not also hold."""
    return {v: (sorted(x[v]), sorted(y[v])) for v in sorted((x.keys() & y.keys()) - everyone.keys())}


def report(found: dict[str, Shared]) -> str:
    """One line per shared value: the pair of sides, the value, where each side holds it."""
    lines = [f"{pair}: {v!r} in {a} and in {b}" for pair, s in found.items() for v, (a, b) in s.items()]
    return "shared values:\n  " + "\n  ".join(lines)


def own_ids(b: Browser) -> set[str]:
    """The ids this browser's tracker and app send (to check the exclusions do not hide them)."""
    return {b.duid, b.sid, b.previous_sid, str(b.vid), b.first_eid or b.duid} | {u for u in b.users if u}


def linkage(db: Path, b: Browser, third: Browser, pairs: list[tuple[str, str]]) -> dict[str, Shared]:
    """For each pair of b's sides, the values they share beyond what the third browser's rows hold."""
    # Excluded: every value of the third browser's rows. It shares with b what everyone's traffic holds:
    # app id, platform, tracker version, pages and titles, user agent, screen, language and timezone, the
    # schema URIs and storageMechanism, the collector's version, 127.0.0.1, flags such as anonymous = 0,
    # and, since it sends at the same instants, every timestamp (timing is a known limit, README). Small
    # counters (eventIndex, session_index, event_count, session_count) take the same values for both, as
    # the flows are the same: no further exclusion was needed.
    everyone = everything(db, third)
    assert not own_ids(b) & everyone.keys(), "the exclusions would hide the browser's own ids"
    sides = {phase: side_values(db, eids) for phase, eids in b.sent.items()}
    return {f"{x}/{y}": s for x, y in pairs if (s := shared(sides[x], sides[y], everyone))}


def browsers(client: Any, clock: Clock, flow: str) -> tuple[Browser, Browser]:
    """The browser under test and an unrelated one: other cookie, ids and users, the same pages and UA.

    Its users and vid differ from the tested browser's on purpose: the same "alice" on both would exclude
    a user id carried across a rotation, the same vid a tracker session index that continues.
    """
    users: dict[str, tuple[tuple[str | None, str | None], tuple[str | None, str | None]]] = {
        "rotation": (("alice", "bob"), ("carol", "dave")),
        "opt-out": (("alice", None), ("carol", None)),
    }
    mine, theirs = users[flow]
    return Browser(client, clock, mine, vid=23), Browser(client, clock, theirs, vid=41)


def test_leaves_walk_every_json_field() -> None:
    out: Values = {}
    co = orjson.dumps(
        {"schema": CONTEXTS, "data": [{"schema": CLIENT_SESSION, "data": {"userId": "u", "eventIndex": 3.0}}]}
    ).decode()
    leaves(co, "events.contexts", out)
    leaves(ANON_UE, "events.unstruct_event", out)
    leaves('{"a": [1, {"b": true}], "c": null, "d": ""}', "events.other_params", out)
    leaves(3, "events.domain_sessionidx", out)
    assert out == {
        CONTEXTS: {"events.contexts.schema"},
        CLIENT_SESSION: {"events.contexts.schema"},
        "u": {"events.contexts[client_session].userId"},
        "3": {"events.contexts[client_session].eventIndex", "events.domain_sessionidx"},
        "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0": {
            "events.unstruct_event.schema"
        },
        "iglu:com.acme/anonymize/jsonschema/1-0-0": {"events.unstruct_event.schema"},
        "logout": {"events.unstruct_event[anonymize].reason"},
        "1": {"events.other_params.a[]"},
        "true": {"events.other_params.a[].b"},
    }


async def test_rotation_leaves_nothing_linking_the_old_and_new_device(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg)
    b, third = browsers(client, clock, "rotation")
    await run_flow(clock, [b, third], ROTATION_FLOW)
    for x in (b, third):  # the anonymize answer set a new cookie: a new device
        assert x.marks["cookie after anonymize"] != x.marks["cookie before anonymize"]
    got = {r["event_id"]: r["network_userid"] for r in rows(cfg.db, "select * from events")}
    old, new = ({got[e] for e in b.sent[side]} for side in ("old", "new"))
    assert len(old) == len(new) == 1 and old != new
    found = linkage(cfg.db, b, third, [("old", "new")])
    assert found == {}, report(found)


async def test_rotation_check_finds_the_links_when_the_event_does_not_rotate(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # Positive control: the same flow, the anonymize event not configured as rotating; the rows split at
    # the would-be anonymize event. The same check must find the device and the tracker's ids.
    client = await make_client(cfg.replace(anonymize_events=("something_else",)))
    b, third = browsers(client, clock, "rotation")
    await run_flow(clock, [b, third], ROTATION_FLOW)
    assert b.marks["cookie after anonymize"] == b.marks["cookie before anonymize"]
    found = linkage(cfg.db, b, third, [("old", "new")])["old/new"]
    device = b.device
    assert device is not None
    assert {"events.network_userid", "device_state.device_id"} <= set(found[device][1]), report(
        {"old/new": found}
    )
    assert {"events.domain_userid", "events.contexts[client_session].userId"} <= set(found[b.duid][1])
    assert {"events.domain_sessionid", "events.contexts[client_session].sessionId"} <= set(found[b.sid][1])
    assert "events.contexts[client_session].previousSessionId" in found[b.previous_sid][1]
    assert b.first_eid is not None and "events.event_id" in found[b.first_eid][0]
    assert "events.contexts[client_session].firstEventId" in found[b.first_eid][1]
    assert "events.domain_sessionidx" in found["23"][1]


async def test_opt_out_and_back_in_leaves_nothing_linking_the_devices(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    client = await make_client(cfg)
    b, third = browsers(client, clock, "opt-out")
    await run_flow(clock, [b, third], opt_out_flow(honoured=True))
    for x in (b, third):
        assert (x.marks["opt-out answer"] or "").startswith("sp=;")  # the answer expired the cookie
        assert x.marks["device after opt-in"] not in (None, x.marks["device before opt-out"])
    anon = rows(cfg.db, "select network_userid, anonymous from events where anonymous = 1")
    assert len(anon) == 2 * 3 and all(r["network_userid"] is None for r in anon)
    found = linkage(cfg.db, b, third, [("old", "anon"), ("old", "new"), ("anon", "new")])
    assert found == {}, report(found)


async def test_opt_out_check_finds_the_links_when_the_header_is_not_sent(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # Positive control: the same flow, consent withdrawn without telling the collector (no SP-Anonymous):
    # the cookie stays, and the same check finds the device and the tracker's ids on every pair of sides.
    client = await make_client(cfg)
    b, third = browsers(client, clock, "opt-out")
    await run_flow(clock, [b, third], opt_out_flow(honoured=False))
    assert b.marks["device after opt-in"] == b.marks["device before opt-out"] is not None
    device = b.marks["device before opt-out"]
    found = linkage(cfg.db, b, third, [("old", "anon"), ("old", "new"), ("anon", "new")])
    assert set(found) == {"old/anon", "old/new", "anon/new"}, report(found)
    for pair in found.values():
        assert device in pair and "events.network_userid" in pair[device][1]
        assert "events.contexts[client_session].userId" in pair[b.duid][1]
        assert "events.contexts[client_session].sessionId" in pair[b.sid][1]


async def test_an_event_made_before_the_rotation_and_sent_after_it_links_nothing(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # Two tabs (or a mobile emitter sending in parallel) share the cookie. Tab 1 makes an event as
    # alice before the logout and cannot send it yet (offline, a 503, its queue in localStorage); tab 2
    # logs out (the anonymize event rotates the device, the tracker clears its ids) and bob logs in.
    # Tab 1's queue then goes out with the browser's cookie, the new device's: the event's tracker ids
    # were forgotten, but it was stored on the new device, alice's id with it.
    b = Browser(await make_client(cfg), clock, ("alice", "bob"), vid=23)
    await a_login(b)
    clock.t += 5
    queued = b.event("pv", "/queued")  # made as alice, with the old ids
    clock.t += 5
    old = b.device
    await a_anonymize(b)
    b.duid, b.sid, b.previous_sid = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())  # clearUserData
    b.vid, b.event_index, b.first_eid, b.first_timestamp = 1, 0, None, None
    clock.t += 5
    await a_other_user(b)
    new = b.device
    assert new not in (old, None)
    clock.t += 5
    await b.send(queued)
    by_device = {
        d: {r[0] for r in rows(cfg.db, "select user_id from events where network_userid = ?", (d,))}
        for d in (old, new)
    }
    assert by_device == {old: {"alice"}, new: {"bob"}}, by_device
    [late] = rows(
        cfg.db,
        "select network_userid, user_id, domain_userid from events where event_id = ?",
        (queued["eid"],),
    )
    assert tuple(late) == (None, "alice", None)  # the old identity's, kept without a device
    assert rows(cfg.db, "select devices from users where user_id = 'alice'")[0][0] == 1
