"""A rotation against the ids a device keeps whatever its tracker does: the same linkage check as
tests/test_linkage.py on a tracker that clears its own ids at the anonymize event (clearUserData: a new
duid, session and first event), but whose events also carry what outlives that: the mobile vendor and
ad ids, the GA client id, the `mac` and `ad_uid` params, and a cross-domain `_sp` link in a
single-page app's landing URL. Each check has its control: the same flow with the event not
configured to rotate finds those values on both sides.

Person ids the app itself sends (`uid`, an ecommerce user, a custom entity's user id) are the app's
choice: sending the same one after a rotation links the two on purpose (README, "Devices, sessions
and rotation"), so they are not part of this check.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from collector.config import Config
from tests import test_linkage as L
from tests.conftest import Clock, rows

STORES = ("sqlite", "postgres")
MOBILE = "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-2"
GA = "iglu:com.google.analytics/cookies/jsonschema/1-0-0"
OPTIMIZELY_X = "iglu:com.optimizely.optimizelyx/summary/jsonschema/1-0-0"
LANDING = "iglu:com.acme/landing/jsonschema/1-0-0"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Device(L.Browser):
    """A tracker that clears its ids at the anonymize event, on a device whose other ids stay."""

    device_ids: bool = False  # the mobile, GA, mac and ad_uid ids in every event
    idfv: str = field(default_factory=new_id)
    idfa: str = field(default_factory=new_id)
    ga: str = field(default_factory=lambda: f"GA1.1.{uuid.uuid4().int % 10**10}.1799999999")
    optimizely: str = field(
        default_factory=lambda: f"oeu{uuid.uuid4().int % 10**13}r0.{uuid.uuid4().int % 10**16}"
    )
    mac: str = field(default_factory=new_id)
    ad_uid: str = field(default_factory=new_id)
    linker: str | None = None  # a cross-domain link's duid in every event's page URL and referrer
    # the link only in the landing page's URL: after the rotation the next page's referrer still holds
    # the landing URL (document.referrer), with the link, while its own URL is clean
    landing_only: bool = False
    in_fragment: bool = False  # the link after the URL's `#` (a hash-routed app), where trackers read it too
    # after the rotation the landing URL, with its link, only in an entity the app adds (its own record
    # of where the visit came in), the page URL and referrer clean
    in_entity: bool = False
    # how the landing URL is spelled after the rotation, in the referrer or the entity: as sent, its
    # name percent-encoded (`%5Fsp=`), the URL passed twice encoded in another's param (`_sp%253D`), or
    # (in an entity) `_sp` as a JSON escape (`\u005fsp`)
    spelling: str = "plain"

    def spelled(self, landing: str) -> str:
        if self.spelling == "percent":
            return landing.replace("_sp=", "%5Fsp=")
        if self.spelling == "nested":
            return f"{L.SHOP}/go?next=" + quote(quote(landing, safe=""), safe="")
        return landing

    def event(self, e: str, path: str, **params: str) -> dict[str, str]:
        out = super().event(e, path, **params)
        if self.linker:
            sep = "#/landing?" if self.in_fragment else "?"
            out["url"] = out["refr"] = f"{L.SHOP}/{sep}utm_source=x&_sp={self.linker}.1799999999000"
            if self.landing_only and self.phase != "old":
                out["url"], out["refr"] = f"{L.SHOP}{path}", self.spelled(out["refr"])
            if self.in_entity and self.phase != "old":
                landing, out["url"], out["refr"] = out["url"], f"{L.SHOP}{path}", f"{L.SHOP}/"
                text = out.pop("co", None)
                co = orjson.loads(
                    text if text is not None else base64.urlsafe_b64decode(out.pop("cx") + "==")
                )
                co["data"].append({"schema": LANDING, "data": {"visit": {"entered": self.spelled(landing)}}})
                out["co"] = orjson.dumps(co).decode()
                if self.spelling == "json_escape":
                    out["co"] = out["co"].replace("_sp=", "\\u005fsp=")
        if self.device_ids:
            text = out.pop("co", None)
            co = orjson.loads(text if text is not None else base64.urlsafe_b64decode(out.pop("cx") + "=="))
            mobile = {"osType": "ios", "osVersion": "17", "deviceModel": "iPhone", "appleIdfv": self.idfv}
            co["data"] += [
                {"schema": MOBILE, "data": {**mobile, "appleIdfa": self.idfa}},
                {"schema": GA, "data": {"_ga": self.ga}},
                {
                    "schema": OPTIMIZELY_X,
                    "data": {"experimentId": 7, "variation": 2, "visitorId": self.optimizely},
                },
            ]
            out["co"] = orjson.dumps(co).decode()
            out["mac"], out["ad_uid"] = self.mac, self.ad_uid
        return out


async def clear_after_anonymize(b: L.Browser) -> None:
    await L.a_anonymize(b)
    # clearUserData(): a new duid and session, no previous session, a new first event
    b.duid, b.sid, b.previous_sid = new_id(), new_id(), new_id()
    b.vid, b.event_index, b.first_eid, b.first_timestamp = b.vid + 1000, 0, None, None


FLOW = [L.a_login, L.a_browse, clear_after_anonymize, L.a_other_user, L.a_other_user_browses]


async def run(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool, **kind: Any
) -> tuple[Device, set[str], set[str], dict[str, L.Shared]]:
    client = await make_client(cfg if rotate else cfg.replace(anonymize_events=("something_else",)))
    b = Device(client, clock, ("alice", "bob"), vid=23, **kind)
    third = Device(
        client, clock, ("carol", "dave"), vid=41, **{**kind, "linker": kind.get("linker") and new_id()}
    )
    await L.run_flow(clock, [b, third], FLOW)
    got = {r["event_id"]: r["network_userid"] for r in rows(cfg.db, "select * from events")}
    old, new = ({got[e] for e in b.sent[side]} for side in ("old", "new"))
    return b, old, new, L.linkage(cfg.db, b, third, [("old", "new")])


async def test_a_cleared_tracker_alone_leaves_no_link(make_client: Any, cfg: Config, clock: Clock) -> None:
    _, old, new, found = await run(make_client, cfg, clock, rotate=True)
    assert old != new
    assert found == {}, L.report(found)


async def test_device_ids_that_outlive_the_tracker_leave_no_link(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    b, old, new, found = await run(make_client, cfg, clock, rotate=True, device_ids=True)
    assert old != new
    assert found == {}, L.report(found)
    # the old side keeps them: they were stored, then retired
    [first] = rows(
        cfg.db, "select contexts, other_params from events where event_id = ?", (b.sent["old"][0],)
    )
    assert b.idfv in first["contexts"] and b.ga in first["contexts"] and b.mac in first["other_params"]
    assert b.optimizely in first["contexts"]
    # and the new side keeps the tracker's new ids: only the device's own ids were retired from it
    after = rows(
        cfg.db, "select domain_userid, contexts from events where event_id = ?", (b.sent["new"][-1],)
    )
    assert after[0]["domain_userid"] == b.duid and b.sid in after[0]["contexts"]


async def test_device_ids_are_found_when_the_event_does_not_rotate(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    b, old, new, found = await run(make_client, cfg, clock, rotate=False, device_ids=True)
    assert old == new
    shared = found["old/new"]
    assert {b.idfv, b.idfa, b.ga, b.optimizely, b.mac, b.ad_uid} <= shared.keys(), L.report(found)


async def test_a_cross_domain_link_in_the_landing_url_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    linker = new_id()
    b, old, new, found = await run(make_client, cfg, clock, rotate=True, linker=linker)
    assert old != new
    assert found == {}, L.report(found)
    [first] = rows(
        cfg.db, "select refr_domain_userid, page_url from events where event_id = ?", (b.sent["old"][0],)
    )
    assert first["refr_domain_userid"] == linker and linker in first["page_url"]  # kept before the rotation


async def test_a_cross_domain_link_is_found_when_the_event_does_not_rotate(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    linker = new_id()
    _, old, new, found = await run(make_client, cfg, clock, rotate=False, linker=linker)
    assert old == new
    assert linker in found["old/new"], L.report(found)


def holding(db: Any, eids: list[str], linker: str) -> dict[str, list[str]]:
    """The events rows among eids holding the linker anywhere in their text, and the columns that do."""
    marks = ",".join("?" * len(eids))
    found = {
        # a sqlite3.Row iterates its values, not its keys
        r["event_id"]: [k for k in r.keys() if isinstance(r[k], str) and linker in r[k]]  # noqa: SIM118
        for r in rows(db, f"select * from events where event_id in ({marks})", tuple(eids))
    }
    return {k: v for k, v in found.items() if v}


REFERRER_SPELLINGS = [
    (False, "plain"),
    (True, "plain"),
    (False, "percent"),
    (True, "percent"),
    (False, "nested"),
]


@pytest.mark.parametrize("rotate", [True, False])
@pytest.mark.parametrize(("in_fragment", "spelling"), REFERRER_SPELLINGS)
async def test_a_cross_domain_link_left_in_the_referrer_after_the_rotation_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, in_fragment: bool, spelling: str, rotate: bool
) -> None:
    # rotate=False is the control: the same search finds the link when the event does not rotate
    linker = new_id()
    b, old, new, found = await run(
        make_client,
        cfg,
        clock,
        rotate=rotate,
        linker=linker,
        landing_only=True,
        in_fragment=in_fragment,
        spelling=spelling,
    )
    if not rotate:
        assert old == new
        assert any(linker in value for value in found["old/new"]), L.report(found)
        assert holding(cfg.db, b.sent["new"], linker)
        return
    assert old != new
    assert found == {}, L.report(found)
    assert holding(cfg.db, b.sent["new"], linker) == {}  # as it is, or spelled otherwise
    [last] = rows(cfg.db, "select page_referrer from events where event_id = ?", (b.sent["new"][-1],))
    assert last["page_referrer"].startswith(L.SHOP)


SPELLINGS = ["plain", "json_escape", "percent", "nested"]


@pytest.mark.parametrize("rotate", [True, False])
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_cross_domain_link_left_in_an_entity_after_the_rotation_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, spelling: str, rotate: bool
) -> None:
    # rotate=False is the control: the same search finds the link when the event does not rotate
    linker = new_id()
    b, old, new, found = await run(
        make_client, cfg, clock, rotate=rotate, linker=linker, in_entity=True, spelling=spelling
    )
    if not rotate:
        assert old == new
        assert any(linker in value for value in found["old/new"]), L.report(found)
        assert {"contexts"} <= {c for cs in holding(cfg.db, b.sent["new"], linker).values() for c in cs}
        return
    assert old != new
    assert found == {}, L.report(found)
    assert holding(cfg.db, b.sent["new"], linker) == {}
    [last] = rows(cfg.db, "select contexts from events where event_id = ?", (b.sent["new"][-1],))
    assert "com.acme/landing" in last["contexts"]  # the entity kept, without the link


async def rotated_keeping_its_ids(make_client: Any, cfg: Config, clock: Clock, later: float) -> L.Browser:
    """A browser whose tracker does not clear its ids: logged in, rotated, `later` seconds on."""
    b = L.Browser(await make_client(cfg), clock, ("alice", "bob"), vid=23)
    await L.a_login(b)
    clock.t += 5
    await L.a_anonymize(b)
    clock.t += later
    b.phase = "new"
    return b


async def test_a_bad_row_after_a_rotation_keeps_no_retired_id(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # A tracker that does not clear its ids: after the rotation its rows are forgotten, and a refused
    # event sent beside one (the same request, the same collector_tstamp) must not keep them either.
    b = await rotated_keeping_its_ids(make_client, cfg, clock, later=3600)
    good, bad = b.event("pv", "/x"), {**b.event("pv", "/refused"), "p": "BAD"}
    await b.send(good, bad)
    retired = {r["value"] for r in rows(cfg.db, "select value from retired_ids")}
    assert {b.duid, b.sid} <= retired
    [br] = rows(cfg.db, "select payload from bad_rows")
    payload = orjson.loads(br["payload"])
    assert (payload["page"], payload["p"]) == ("refused", "BAD")  # the refused shape is kept
    assert b.duid not in br["payload"] and b.sid not in br["payload"] and b.previous_sid not in br["payload"]
    # the same check finds them where they are kept: the rows before the rotation
    [first] = rows(
        cfg.db, "select domain_userid, contexts from events where event_id = ?", (b.sent["old"][0],)
    )
    assert first["domain_userid"] == b.duid and b.previous_sid in first["contexts"]


@pytest.mark.parametrize("shape", ["string", "list"])
async def test_an_event_not_an_object_after_a_rotation_keeps_no_retired_id(
    make_client: Any, cfg: Config, clock: Clock, shape: str
) -> None:
    # An event that is not an object (double-encoded as a JSON string, or wrapped in a list: tracker
    # bugs) was kept whole in its bad row, the old ids in it, beside the forgotten row of the request.
    b = await rotated_keeping_its_ids(make_client, cfg, clock, later=60)
    refused = b.event("pv", "/refused")
    odd: Any = orjson.dumps(refused).decode() if shape == "string" else [refused]
    good = b.event("pv", "/x")
    envelope = {
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [good, odd],
    }
    headers = {"User-Agent": L.UA, "Cookie": f"sp={b.cookie}", "Content-Type": "application/json"}
    resp = await b.client.post(
        "/com.snowplowanalytics.snowplow/tp2", data=orjson.dumps(envelope), headers=headers
    )
    assert resp.status == 200, await resp.text()
    [stored] = rows(cfg.db, "select domain_userid from events where event_id = ?", (good["eid"],))
    assert stored["domain_userid"] is None  # the good row forgotten
    [br] = rows(cfg.db, "select payload from bad_rows")
    assert "refused" in br["payload"]  # the refused shape is kept
    for value in (b.duid, b.sid, b.previous_sid):
        assert value not in br["payload"], (value, br["payload"])
    # the same check finds them where they are: the event as sent, the rows before the rotation
    assert b.duid in orjson.dumps(odd).decode() and b.sid in orjson.dumps(odd).decode()
    [first] = rows(cfg.db, "select domain_userid from events where event_id = ?", (b.sent["old"][0],))
    assert first["domain_userid"] == b.duid


@pytest.mark.parametrize("kind", ["cut", "too_many", "bad_schema", "bad_type"])
async def test_a_body_refused_whole_after_a_rotation_keeps_no_retired_id(
    make_client: Any, cfg: Config, clock: Clock, kind: str
) -> None:
    # A request refused as a whole (its body cut short, too many events, a wrong envelope, not JSON)
    # keeps its body as sent; from a tracker that kept its ids it must not keep them either.
    b = await rotated_keeping_its_ids(make_client, cfg.replace(max_events=3), clock, later=60)
    events = [{**b.event("pv", "/refused"), "vid": 7} for _ in range(2 if kind != "too_many" else 4)]
    envelope = {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": events}
    if kind == "bad_schema":
        envelope["schema"] = "iglu:com.acme/payload/jsonschema/1-0-0"
    body = orjson.dumps(envelope).decode()
    if kind == "cut":
        body = body[: body.rindex(b.duid) + 10]  # cut inside the last duid: the rest of it is kept too
    headers = {"User-Agent": L.UA, "Cookie": f"sp={b.cookie}"}
    headers["Content-Type"] = (
        "application/x-www-form-urlencoded" if kind == "bad_type" else "application/json"
    )
    resp = await b.client.post("/com.snowplowanalytics.snowplow/tp2", data=body, headers=headers)
    assert resp.status in (400, 413, 415), await resp.text()
    await b.send(b.event("pv", "/after"))  # the store's queue flushed
    db = cfg.db
    [br] = rows(db, "select payload from bad_rows")
    assert "refused" in br["payload"] and "pv" in br["payload"]  # the refused shape is kept
    for value in (b.duid, b.sid, b.previous_sid, b.duid[:10]):
        assert value not in br["payload"], (value, br["payload"])
    # the same check finds them where they are: the body as sent, the rows before the rotation
    assert b.duid in body and b.sid in body
    [first] = rows(db, "select domain_userid, contexts from events where event_id = ?", (b.sent["old"][0],))
    assert first["domain_userid"] == b.duid and b.previous_sid in first["contexts"]


LINK_CLICK = "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1"


async def test_a_tracker_that_keeps_its_ids_loses_them_everywhere_after_a_rotation(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # The tracker keeps its duid after the rotation and decorates a link with it (`_sp`), sends a vid
    # too large for its column, and a refused event beside: none of them may keep the retired duid.
    b = await rotated_keeping_its_ids(make_client, cfg, clock, later=60)
    ue = orjson.dumps(
        {
            "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
            "data": {
                "schema": LINK_CLICK,
                "data": {"targetUrl": f"https://other.test/?_sp={b.duid}.1799999999000"},
            },
        }
    ).decode()
    click = {**b.event("ue", "/x", ue_pr=ue), "vid": "98765432109"}
    refused = {**b.event("ue", "/y", ue_pr=ue), "p": "BAD"}
    await b.send(click, refused)
    [row] = rows(cfg.db, "select * from events where event_id = ?", (click["eid"],))
    assert row["domain_userid"] is None and "other.test" in row["unstruct_event"]  # forgotten, still a click
    assert not [k for k, v in dict(row).items() if isinstance(v, str) and b.duid in v], dict(row)
    assert "98765432109" not in str(row["other_params"])
    [bad] = rows(cfg.db, "select payload from bad_rows")
    assert "other.test" in bad["payload"] and b.duid not in bad["payload"]
    # the same search finds the duid where it is kept: the rows before the rotation
    [first] = rows(cfg.db, "select domain_userid from events where event_id = ?", (b.sent["old"][0],))
    assert first["domain_userid"] == b.duid


VISITOR = "iglu:com.acme/visitor/jsonschema/1-0-0"


def with_copies(b: L.Browser, path: str, escaped: bool = False) -> dict[str, str]:
    """An event whose app repeats the tracker's duid and sid under names of its own: in a custom
    entity (a field, nested, a list item, a map's key), the page URL's query and the title; with
    `escaped`, the entity's duid spelled in JSON escapes."""
    ev = b.event("pv", path)
    text = ev.pop("co", None)
    co = orjson.loads(text if text is not None else base64.urlsafe_b64decode(ev.pop("cx") + "=="))
    data = {"visitorRef": b.duid, "plan": "gold", "visit": {"ref": f"s:{b.sid}"}, "seen": [b.duid], b.sid: 1}
    co["data"].append({"schema": VISITOR, "data": data})
    ev["co"] = orjson.dumps(co).decode()
    if escaped:
        ev["co"] = ev["co"].replace(f'"{b.duid}"', '"' + "".join(f"\\u{ord(c):04x}" for c in b.duid) + '"')
    ev["url"] = f"{L.SHOP}{path}?visitor={b.duid}"
    ev["page"] = f"Account {b.sid}"
    return ev


@pytest.mark.parametrize("escaped", [False, True])
async def test_copies_of_a_kept_duid_leave_no_link_after_a_rotation(
    make_client: Any, cfg: Config, clock: Clock, escaped: bool
) -> None:
    # A tracker that keeps its ids, on a site that copies them into its own entity, URL and title: the
    # row after the rotation loses the copies too, wherever it holds them, and keeps the rest.
    b = L.Browser(await make_client(cfg), clock, ("alice", "bob"), vid=23)
    before = with_copies(b, "/before", escaped)
    await b.send(before)
    await L.a_login(b)
    clock.t += 5
    await L.a_anonymize(b)
    clock.t += 60
    b.phase = "new"
    after = with_copies(b, "/after", escaped)
    await b.send(after)
    for value in (b.duid, b.sid):
        assert holding(cfg.db, [after["eid"]], value) == {}, value
    [row] = rows(cfg.db, "select contexts, page_url from events where event_id = ?", (after["eid"],))
    [visitor] = [e["data"] for e in orjson.loads(row["contexts"])["data"] if e["schema"] == VISITOR]
    assert visitor["plan"] == "gold" and row["page_url"] == f"{L.SHOP}/after?visitor="
    # the same search finds them where they are kept: the event before the rotation
    found = holding(cfg.db, [before["eid"]], b.duid)[before["eid"]]
    assert {"page_url", "domain_userid"} <= set(found) and (escaped or "contexts" in found)
    assert {"page_title", "contexts"} <= set(holding(cfg.db, [before["eid"]], b.sid)[before["eid"]])


@pytest.mark.parametrize("kind", ["beside", "cut", "bad_schema", "utf16"])
async def test_copies_of_a_kept_duid_stay_out_of_bad_rows_after_a_rotation(
    make_client: Any, cfg: Config, clock: Clock, kind: str
) -> None:
    # The same copies in a refused event: beside a stored one, or in a body refused whole (cut short,
    # a wrong envelope). The bad row keeps its shape, not the ids.
    b = await rotated_keeping_its_ids(make_client, cfg, clock, later=60)
    refused = {**with_copies(b, "/refused"), "p": "BAD", "tv": f"js-3.0 {b.duid}"}
    if kind == "beside":
        await b.send(b.event("pv", "/x"), refused)
        body = orjson.dumps(refused).decode()
    else:
        envelope = {"schema": PAYLOAD, "data": [refused, refused]}
        if kind == "bad_schema":
            envelope["schema"] = "iglu:com.acme/payload/jsonschema/1-0-0"
        body = orjson.dumps(envelope).decode()
        if kind == "cut":
            body = body[:-20]
        headers = {"User-Agent": L.UA, "Cookie": f"sp={b.cookie}", "Content-Type": "application/json"}
        # UTF-16 (a mis-encoding client): each ASCII character followed by a NUL, not JSON to orjson
        data = body.encode("utf-16") if kind == "utf16" else body  # with its byte-order mark
        resp = await b.client.post("/com.snowplowanalytics.snowplow/tp2", data=data, headers=headers)
        assert resp.status == 400, await resp.text()
        await b.send(b.event("pv", "/after"))  # the store's queue flushed
    [br] = rows(cfg.db, "select payload from bad_rows")
    kept = br["payload"].replace("\ufffd", "")  # as someone reading it would
    assert "visitorRef" in kept and "gold" in kept and "refused" in kept
    for value in (b.duid, b.sid):
        assert value not in kept, (value, br["payload"])
    # the same check finds them in what was sent
    assert b.duid in body and b.sid in body


PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


@pytest.mark.parametrize("rotate", [True, False])
async def test_a_link_in_a_campaign_param_after_a_rotation_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool
) -> None:
    # A tracker that clears its ids, landing on a page whose campaign param (utm_content) carries the
    # old device's cross-domain link, percent-encoded: the campaign columns read it decoded.
    b = L.Browser(
        await make_client(cfg if rotate else cfg.replace(anonymize_events=("x",))), clock, ("a", "b")
    )
    await L.a_login(b)
    clock.t += 5
    old = b.duid
    await clear_after_anonymize(b)
    clock.t += 60
    b.phase = "new"
    after = b.event("pv", "/after")
    after["url"] = f"{L.SHOP}/after?utm_source=mail&utm_content=" + quote(
        f"{L.SHOP}/?_sp={old}.1799999999000", safe=""
    )
    await b.send(after)
    found = holding(cfg.db, [after["eid"]], old)
    if rotate:
        assert found == {}
        [row] = rows(cfg.db, "select mkt_source from events where event_id = ?", (after["eid"],))
        assert row["mkt_source"] == "mail"
    else:  # the control: the same check finds the link in the campaign column
        assert "mkt_content" in found[after["eid"]], found


@pytest.mark.parametrize("which", ["idfv", "mac", "ga"])
@pytest.mark.parametrize("rotate", [True, False])
async def test_a_duid_that_is_a_device_id_leaves_no_link_after_a_rotation(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool, which: str
) -> None:
    # An app that uses one of the device's own ids as the tracker's duid: it outlives the rotation
    # (clearUserData() clears the rest), so the row after it carries the retired id as its duid too.
    client = await make_client(cfg if rotate else cfg.replace(anonymize_events=("x",)))
    b, third = (
        Device(client, clock, users, vid=vid, device_ids=True)
        for users, vid in ((("a", "b"), 23), (("c", "d"), 41))
    )
    for d in (b, third):
        d.duid = getattr(d, which)

    async def clear_keeping_the_duid(d: L.Browser) -> None:
        duid = d.duid
        await clear_after_anonymize(d)
        d.duid = duid

    await L.run_flow(clock, [b, third], [L.a_login, L.a_browse, clear_keeping_the_duid, L.a_other_user])
    found = L.linkage(cfg.db, b, third, [("old", "new")])
    if rotate:
        assert found == {}, L.report(found)
        assert holding(cfg.db, b.sent["new"], b.duid) == {}
    else:  # the control: the same check finds it on both sides
        assert b.duid in found["old/new"], L.report(found)


async def rotated_browser(
    make_client: Any, cfg: Config, clock: Clock, previous: bool = False
) -> tuple[L.Browser, str, str]:
    """A browser logged in, then rotated by a tracker that clears its ids, a minute on in its new
    phase; with the old session's id and duid. `previous`: its new session names the old one."""
    b = L.Browser(await make_client(cfg), clock, ("a", "b"), vid=23)
    await L.a_login(b)
    clock.t += 5
    old_sid, old_duid = b.sid, b.duid
    await clear_after_anonymize(b)
    if previous:
        b.previous_sid = old_sid
    clock.t += 60
    b.phase = "new"
    return b, old_sid, old_duid


@pytest.mark.parametrize("field", ["co", "ue_pr"])
async def test_a_retired_id_under_a_duplicate_key_leaves_no_link_after_a_rotation(
    make_client: Any, cfg: Config, clock: Clock, field: str
) -> None:
    # JSON that names a key twice: the collector (and PostgreSQL's jsonb) reads the last, SQLite's
    # json_extract the first. An old id first (the old session's id, a link to the old device),
    # something new after, must not pass as new while the row keeps the old.
    b, old_sid, old_duid = await rotated_browser(make_client, cfg, clock)
    after = b.event("pv", "/after")
    text = after.pop("co", None)
    co = orjson.loads(text if text is not None else base64.urlsafe_b64decode(after.pop("cx") + "=="))
    after["co"] = orjson.dumps(co).decode()
    if field == "co":
        new_sid = f'"sessionId":"{b.sid}"'
        after["co"] = after["co"].replace(new_sid, f'"sessionId":"{old_sid}",{new_sid}')
        old = old_sid
    else:
        click = {"targetUrl": "https://other.test/"}
        ue = {"schema": UNSTRUCT, "data": {"schema": LINK_CLICK, "data": click}}
        link = f'"targetUrl":"https://other.test/?_sp={old_duid}.1799999999000",'
        after["e"], after["ue_pr"] = (
            "ue",
            orjson.dumps(ue).decode().replace('"targetUrl"', link + '"targetUrl"'),
        )
        old = old_duid
    assert after[field].count(old) == 1
    await b.send(after)
    [row] = rows(cfg.db, "select * from events where event_id = ?", (after["eid"],))
    assert row["domain_sessionid"] == b.sid  # stored, under the new ids
    assert [k for k, v in dict(row).items() if isinstance(v, str) and old in v] == []
    # the same search finds it before the rotation
    assert holding(cfg.db, b.sent["old"], old)


@pytest.mark.parametrize("links", [30, 100])
async def test_links_stuffed_before_a_retired_id_leave_no_link_after_a_rotation(
    make_client: Any, cfg: Config, clock: Clock, links: int
) -> None:
    # A page URL crafted with many cross-domain links (each a new duid) ahead of the old session's id
    # in the client_session entity: the links must not push it out of the check against retired ids.
    # the new session's previousSessionId is the old one's id
    b, old_sid, _ = await rotated_browser(make_client, cfg, clock, previous=True)
    after = b.event("pv", "/after")
    after["url"] = f"{L.SHOP}/after?" + "&".join(f"_sp={new_id()}.{i}" for i in range(links))
    good = b.event("pv", "/other")
    await b.send(after, good)
    assert rows(cfg.db, "select event_id from events where event_id = ?", (good["eid"],))
    stored = rows(cfg.db, "select * from events where event_id = ?", (after["eid"],))
    assert [k for r in stored for k, v in dict(r).items() if isinstance(v, str) and old_sid in v] == []
    bad = rows(cfg.db, "select payload from bad_rows")
    assert [r for r in bad if old_sid in r["payload"]] == []
    assert len(stored) + len(bad) == 1  # stored without it, or refused
    # the same search finds it before the rotation
    assert holding(cfg.db, b.sent["old"], old_sid)
