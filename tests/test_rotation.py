"""Rotation and opt-out under hostile use: bounded, per event, never undone by a late answer."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest

from collector import identifiers
from collector.config import Config
from collector.identity import sign
from tests.conftest import TP2, batch, columns, ev, rows
from tests.test_sessions import ANON_UE, Browser

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

SECRET = b"test-secret"
DEV_A = "aaaaaaaa-0000-4000-8000-00000000000a"
DEV_B = "bbbbbbbb-0000-4000-8000-00000000000b"


def count(cfg: Config, table: str) -> int:
    return int(rows(cfg.db, f"select count(*) from {table}")[0][0])


async def test_each_event_takes_its_own_validated_device(client: Any, cfg: Config) -> None:
    """A server-side tracker forwarding two browsers' events in one batch: two devices, not one."""
    body = batch(
        {**ev(eid="rejected", p="BAD"), "nuid": sign(DEV_B, SECRET)},  # refused: its nuid must not count
        ev(eid="a1", nuid=sign(DEV_A, SECRET)),
        ev(eid="b1", tnuid=sign(DEV_B, SECRET)),
        ev(eid="a2", nuid=sign(DEV_A, SECRET)),
    )
    resp = await client.post(TP2, json=body)
    assert resp.status == 200
    got = {r["event_id"]: r["network_userid"] for r in rows(cfg.db, "select * from events")}
    assert got == {"a1": DEV_A, "b1": DEV_B, "a2": DEV_A}


async def test_a_rejected_events_nuid_is_not_the_requests_device(client: Any, cfg: Config) -> None:
    body = batch({**ev(eid="rejected", p="BAD"), "nuid": sign(DEV_B, SECRET)}, ev(eid="plain"))
    resp = await client.post(TP2, json=body)
    assert resp.status == 200
    [row] = rows(cfg.db, "select network_userid from events")
    assert row[0] != DEV_B


async def test_one_batch_of_fifty_anonymize_events_rotates_once(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev(eid="first"))
    old = b.device
    await b.send(*[ev("ue", eid=f"anon-{i}", ue_pr=ANON_UE) for i in range(50)])
    assert b.device != old
    assert count(cfg, "device_state") == 2  # the old device and the one it rotated to
    metrics = await (await client.get("/metrics")).text()
    assert 'collector_rotations_total{outcome="rotated"} 1.0' in metrics


async def test_a_resent_anonymize_event_rotates_nothing(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev(eid="first", duid="duid-1", sid="sid-1"))
    replayed = b.cookie
    await b.send(ev("ue", eid="anon", duid="duid-1", sid="sid-1", ue_pr=ANON_UE))
    states, retired = count(cfg, "device_state"), count(cfg, "retired_ids")
    for _ in range(5):  # the tracker did not see the answer and retries the same event
        resp = await client.post(
            TP2,
            json=batch(ev("ue", eid="anon", duid="duid-1", sid="sid-1", ue_pr=ANON_UE)),
            headers={"Cookie": f"sp={replayed}"},
        )
        assert resp.status == 200
    assert (count(cfg, "device_state"), count(cfg, "retired_ids")) == (states, retired)
    assert count(cfg, "events") == 2


async def test_retired_values_are_length_capped(client: Any, cfg: Config) -> None:
    b = Browser(client)
    long_duid = "d" * 5000
    resp = await client.post(TP2, json=batch(ev(eid="long", duid=long_duid)))
    assert resp.status == 400  # a tracker id is at most 128 characters
    await b.send(ev(eid="ok", duid="duid-ok"))
    await b.send(ev("ue", eid="anon", duid="x" * 129, ue_pr=ANON_UE), ev("ue", eid="anon2", ue_pr=ANON_UE))
    assert max(len(v) for (v,) in rows(cfg.db, "select value from retired_ids")) <= 128


async def test_a_late_answer_with_the_old_cookie_does_not_undo_the_rotation(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev(eid="first", uid="alice"))
    old_cookie, old = b.cookie, b.device
    await b.send(ev("ue", eid="logout", ue_pr=ANON_UE))
    # a request the browser sent before it saw the rotation's answer, answered after it
    late = await client.post(TP2, json=batch(ev(eid="late")), headers={"Cookie": f"sp={old_cookie}"})
    assert late.status == 200
    set_cookie = late.headers.get("Set-Cookie", "")
    assert old_cookie not in set_cookie  # never refreshes the device that rotated away
    [row] = rows(cfg.db, "select network_userid from events where event_id = 'late'")
    assert row[0] != old  # nor continues it: the late event cannot tie the old device to what follows


async def test_opt_out_commits_apart_from_the_anonymous_rows(client: Any, cfg: Config) -> None:
    """The device's update and the anonymous events never share a transaction."""
    b = Browser(client)
    await b.send(ev(eid="on"))

    async def commits() -> float:
        text = await (await client.get("/metrics")).text()
        line = next(ln for ln in text.splitlines() if ln.startswith("collector_commit_group_events_count"))
        return float(line.split()[-1])

    before = await commits()
    resp = await client.post(
        TP2, json=batch(ev(eid="anon")), headers={"Cookie": f"sp={b.cookie}", "SP-Anonymous": "*"}
    )
    assert resp.status == 200
    assert await commits() - before == 2
    before = await commits()
    resp = await client.post(TP2, json=batch(ev(eid="anon-2")), headers={"SP-Anonymous": "*"})
    assert await commits() - before == 1  # without a cookie there is nothing to opt out


async def test_retired_ids_are_values_only(client: Any, cfg: Config) -> None:
    """retired_ids keeps values and nothing else: no device, no time (it must link nothing)."""
    b = Browser(client)
    await b.send(ev(eid="x", duid="duid-R", sid="sid-R"))
    await b.send(ev("ue", eid="y", duid="duid-R", sid="sid-R", ue_pr=ANON_UE))
    cols = columns(cfg.db, "retired_ids")
    assert cols == ["value", "expires"]  # and a month after which the value may go: no device, no time
    assert {len(e) for (e,) in rows(cfg.db, "select expires from retired_ids")} == {7}
    assert {v for (v,) in rows(cfg.db, "select value from retired_ids")} == {"duid-R", "sid-R"}


async def test_each_logout_in_one_batch_rotates(client: Any, cfg: Config) -> None:
    """An offline queue flushed at once: two logouts, three users; none shares a device with another."""
    resp = await client.post(
        TP2,
        json=batch(
            ev(eid="a1", uid="alice"),
            ev("ue", eid="x1", uid="alice", ue_pr=ANON_UE),
            ev(eid="b1", uid="bob"),
            ev("ue", eid="x2", uid="bob", ue_pr=ANON_UE),
            ev("ue", eid="x3", ue_pr=ANON_UE),  # a repeat with nothing in between: nothing to rotate
            ev(eid="c1", uid="carol"),
        ),
    )
    assert resp.status == 200
    dev = {r["event_id"]: r["network_userid"] for r in rows(cfg.db, "select * from events")}
    assert len({dev["a1"], dev["b1"], dev["c1"]}) == 3
    assert dev["x1"] == dev["a1"] and dev["x2"] == dev["b1"] and dev["x3"] == dev["c1"]


@pytest.mark.parametrize("stuffed", [30, 100])
async def test_one_event_retires_a_bounded_number_of_values(client: Any, cfg: Config, stuffed: int) -> None:
    # Every tracker id an event carries is checked against the retired ones (one left out could be
    # the retired one), so an event with more than TRACKER_IDS_CHECKED is refused; an anonymize event
    # within it retires its own ids and those its device remembered (LASTING_IDS_KEPT and BRIEF_IDS_KEPT).
    session = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
    entities = [
        {"schema": session, "data": {"userId": f"u{i:03}" * 30, "sessionId": f"s{i:03}" * 30}}
        for i in range(stuffed)
    ]
    co = orjson.dumps({"schema": "iglu:x/contexts/jsonschema/1-0-0", "data": entities}).decode()
    resp = await client.post(TP2, json=batch(ev("ue", eid="stuffed", ue_pr=ANON_UE, co=co)))
    if 2 * stuffed <= identifiers.TRACKER_IDS_CHECKED:
        assert resp.status == 200
        bound = identifiers.TRACKER_IDS_CHECKED + identifiers.LASTING_IDS_KEPT + identifiers.BRIEF_IDS_KEPT
        assert 2 * stuffed <= count(cfg, "retired_ids") <= bound
    else:
        assert resp.status == 400 and (await resp.json())["error"]["reason"] == "too_many_tracker_ids"
        assert count(cfg, "retired_ids") == 0 and count(cfg, "events") == 0


async def test_a_retired_id_copied_into_a_required_column_is_no_store_fault(client: Any, cfg: Config) -> None:
    """A client that sends a retired duid as its tracker version too: the cut of copies must not empty a
    column the store requires (a NOT NULL failure would answer the whole group 503, and mark the store
    failing), nor touch the collector's own columns (a duid shaped like a time rewrote collector_tstamp)."""
    v, t = "V0123456789abcdef", "2027-01-15 0"
    b = Browser(client)
    await b.send(ev(eid="p1", duid=v), ev(eid="p2", duid=t))
    await b.send(ev("ue", eid="rot", duid=v, ue_pr=ANON_UE))
    resp = await client.post(TP2, json=batch(ev(eid="after", duid=v, tv=v), ev(eid="time", duid=t)))
    assert resp.status == 200
    assert (await client.get("/ready")).status == 200
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events where event_id in ('after', 'time')")}
    assert v not in got["after"]["v_tracker"] and got["after"]["domain_userid"] is None
    assert got["time"]["collector_tstamp"].startswith("20")


async def test_a_forgotten_row_with_a_ruled_envelope_is_no_store_fault(client: Any, cfg: Config) -> None:
    """Contexts need only `{data: [...]}`: an envelope whose schema names a `forget` entity (web_page)
    must not be left out of the row it wraps when the row is forgotten (found by review: the rewrite
    raised inside the commit, a 503 for every request of the group and the store marked failing)."""
    web_page = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
    co = orjson.dumps(
        {"schema": web_page, "data": [{"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": {}}]}
    )
    b = Browser(client)
    await b.send(ev(eid="p1", duid="duid-old-1234"))
    await b.send(ev("ue", eid="rot", duid="duid-old-1234", ue_pr=ANON_UE))
    resp = await client.post(TP2, json=batch(ev(eid="after", duid="duid-old-1234", co=co.decode())))
    assert resp.status == 200
    assert (await client.get("/ready")).status == 200
    [row] = rows(cfg.db, "select domain_userid, contexts from events where event_id = 'after'")
    assert row["domain_userid"] is None and "com.acme/x" in row["contexts"]  # forgotten, and kept


NUL_ID = "aaaaaaaa\x00bbbb"  # as a client's JSON may spell it (`\u0000`), or a URL's `%00`
WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
SCREEN = "iglu:com.snowplowanalytics.mobile/screen/jsonschema/1-0-0"
SCREEN_VIEW = "iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"


def _b64(doc: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def nul_event(where: str, eid: str) -> dict[str, str]:
    """An event whose tracker id holds U+0000, where the collector reads tracker ids from."""
    page = {"schema": CONTEXTS, "data": [{"schema": WEB_PAGE, "data": {"id": NUL_ID}}]}
    if where == "co":
        return ev(eid=eid, co=orjson.dumps(page).decode())
    if where == "cx":
        return ev(eid=eid, cx=_b64(page))
    if where == "cx_nested":
        app = {
            "schema": "iglu:com.acme/r/jsonschema/1-0-0",
            "data": {"x": {"schema": SCREEN, "data": {"id": NUL_ID}}},
        }
        return ev(eid=eid, cx=_b64({"schema": CONTEXTS, "data": [app]}))
    if where == "ue_px":
        view = {"schema": UNSTRUCT, "data": {"schema": SCREEN_VIEW, "data": {"id": NUL_ID, "name": "s"}}}
        return ev("ue", eid=eid, ue_px=_b64(view))
    return ev(eid=eid, url="https://shop.test/?_sp=aaaaaaaa%00bbbb.1799999999000")


@pytest.mark.parametrize("where", ["co", "cx", "cx_nested", "ue_px", "url_link"])
async def test_a_nul_in_a_tracker_id_is_checked_as_it_is_stored(client: Any, cfg: Config, where: str) -> None:
    """U+0000 in a tracker id read from JSON or a link is stored as U+FFFD, and is looked up so: the raw
    value would fail PostgreSQL's retired-id lookup, answering 503 to every request in the group."""
    bystander = client.post(TP2, json=batch(ev(eid="bystander", duid="duid-bystander")))
    b = Browser(client)
    culprit = b.send(nul_event(where, "nul-1"))
    _, other = await asyncio.gather(culprit, bystander)  # the culprit's send asserts its 200
    assert other.status == 200, await other.text()
    await b.send(ev("ue", eid="rot", ue_pr=ANON_UE))
    await b.send(nul_event(where, "nul-2"))  # the retired id again, from the rotated device
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events where event_id like 'nul-%'")}
    kept = "".join(map(str, got["nul-1"]))  # the control: stored as U+FFFD (in JSON, maybe escaped)
    assert "bbbb" in kept and ("\ufffd" in kept or "\\ufffd" in kept), kept
    assert "bbbb" not in "".join(map(str, got["nul-2"]))  # retired as stored, so cut
    assert (await client.get("/ready")).status == 200


async def test_an_app_entity_listing_many_screens_is_checked_not_refused(client: Any, cfg: Config) -> None:
    """An app's own entity listing the screens visited (a breadcrumb) holds a tracker id per screen:
    each is checked against retired ids, the 70th too, but only the top level counts toward
    TRACKER_IDS_CHECKED (nested ones are bounded by the body, as a batch's events are), so the event
    is not refused."""
    old = "5c4ee500-0000-4000-8000-0000000000aa"
    b = Browser(client)
    await b.send(ev(eid="seen", co=orjson.dumps({"schema": CONTEXTS, "data": [_screen(old)]}).decode()))
    await b.send(ev("ue", eid="rot", ue_pr=ANON_UE))
    crumbs = "iglu:com.acme/breadcrumbs/jsonschema/1-0-0"
    for eid, last in (("clean", f"{69:08}-0000-4000-8000-000000000000"), ("hit", old)):
        trail = [_screen(f"{i:08}-0000-4000-8000-000000000000") for i in range(69)] + [_screen(last)]
        assert len(trail) > identifiers.TRACKER_IDS_CHECKED
        co = {"schema": CONTEXTS, "data": [{"schema": crumbs, "data": {"trail": trail}}]}
        await b.send(ev(eid=eid, co=orjson.dumps(co).decode()))  # asserts its 200
    got = dict(rows(cfg.db, "select event_id, contexts from events where event_id in ('clean', 'hit')"))
    assert all(f"{i:08}-0000" in got["clean"] for i in range(70))  # the control: kept as sent
    assert "0000000000aa" not in got["hit"]  # the retired one, 70th in the trail, was checked


def _screen(screen_id: str) -> dict[str, Any]:
    return {"schema": SCREEN, "data": {"id": screen_id, "name": "s"}}


@pytest.mark.parametrize("where", ["url", "entity", "long"])
async def test_a_link_whose_duid_is_not_utf8_is_no_store_fault(client: Any, cfg: Config, where: str) -> None:
    """A link inside an encoded param value (`u=%5Fsp%3D...`) whose duid holds a byte that is not UTF-8:
    decoded as is, neither store can encode the id, and the retired-id lookup failed the whole group
    (503 to every request in it). It is looked up, retired and cut as the other links are, a long one
    too (its length checked as it is looked up: each such byte one U+FFFD)."""
    duid = "a" * 100 + "%FF" * 10 + "bbbb" if where == "long" else "aaaaaaaa%FFbbbb"
    url = f"https://shop.test/?u=%5Fsp%3D{duid}.1799999999000"

    def event(eid: str) -> dict[str, str]:
        if where == "url":
            return ev(eid=eid, url=url)
        link = {"schema": "iglu:com.acme/link/jsonschema/1-0-0", "data": {"to": url}}
        return ev(eid=eid, co=orjson.dumps({"schema": CONTEXTS, "data": [link]}).decode())

    b = Browser(client)
    bystander = client.post(TP2, json=batch(ev(eid="bystander", duid="duid-bystander")))
    _, other = await asyncio.gather(b.send(event("bad-1")), bystander)  # the send asserts its 200
    assert other.status == 200, await other.text()
    await b.send(ev("ue", eid="rot", ue_pr=ANON_UE))
    await b.send(event("bad-2"))  # the same link from the rotated device
    got = {
        r["event_id"]: "".join(map(str, r))
        for r in rows(cfg.db, "select * from events where event_id like 'bad-%'")
    }
    assert "bbbb" in got["bad-1"]  # the control: the link is kept where it belongs
    assert "bbbb" not in got["bad-2"]  # retired, so cut
    assert (await client.get("/ready")).status == 200


@pytest.mark.parametrize("trail", [0, 30])
async def test_an_events_nested_views_push_no_remembered_id_out(client: Any, cfg: Config, trail: int) -> None:
    """An app's own entity listing the screens visited (a breadcrumb) nests a view id per screen: they
    are remembered after the event's own ids and those the device remembered, so one such event pushes
    neither an idle tab's view id out of what the rotation retires, nor the event's own view id."""
    b = Browser(client)
    idle, busy = "1d1e0000-0000-4000-8000-000000000001", "b0590000-0000-4000-8000-000000000002"
    await b.send(ev(eid="idle", co=orjson.dumps({"schema": CONTEXTS, "data": [_page(idle)]}).decode()))
    crumbs = {
        "schema": "iglu:com.acme/breadcrumbs/jsonschema/1-0-0",
        "data": {"trail": [_screen(f"s{i:07}") for i in range(trail)]},
    }
    await b.send(
        ev(eid="busy", co=orjson.dumps({"schema": CONTEXTS, "data": [_page(busy), crumbs]}).decode())
    )
    await b.send(ev("ue", eid="rot", ue_pr=ANON_UE))  # carries no ids of its own
    retired = {r[0] for r in rows(cfg.db, "select value from retired_ids")}
    assert {idle, busy} <= retired, {idle, busy} - retired
    room = identifiers.BRIEF_IDS_KEPT - len({idle, busy})  # the nested ones fill what is left
    assert len(retired & {f"s{i:07}" for i in range(trail)}) == min(trail, room)


def _page(page_id: str) -> dict[str, Any]:
    return {"schema": WEB_PAGE, "data": {"id": page_id}}


@pytest.mark.parametrize("kind", ["brief", "lasting"])
async def test_an_id_only_ever_nested_is_retired_when_the_device_remembers_its_fill(
    client: Any, cfg: Config, kind: str
) -> None:
    """An app whose own entity holds the current screen, or wraps its session entity: that id rides
    nested only. Once the device remembers as many ids of its kind as it keeps (a day's page views,
    months of tabs), the event's first nested ids still go before the older ones, so the rotation
    retires it, and the rotated device's next row, with the same app state, loses it."""
    b = Browser(client)
    if kind == "brief":
        fill = [_page(f"{i:08}-0000-4000-8000-00000000f111") for i in range(identifiers.BRIEF_IDS_KEPT)]
        old = "c0ffee00-0000-4000-8000-00000000b21e"
        app = {"schema": "iglu:com.acme/app_state/jsonschema/1-0-0", "data": {"current": _screen(old)}}
    else:
        browser = "iglu:com.snowplowanalytics.snowplow/browser_context/jsonschema/2-0-0"
        fill = [
            {"schema": browser, "data": {"tabId": f"{i:08}-0000-4000-8000-0000000007ab"}}
            for i in range(identifiers.LASTING_IDS_KEPT)
        ]
        old = "c0ffee00-0000-4000-8000-0000005ea51d"
        app = {"schema": CONTEXTS, "data": [{"schema": SESSION, "data": {"userId": old}}]}
    for entity in fill:
        await b.send(ev(co=orjson.dumps({"schema": CONTEXTS, "data": [entity]}).decode()))
    app_state = orjson.dumps({"schema": CONTEXTS, "data": [app]}).decode()
    await b.send(ev(eid="before", co=app_state))
    await b.send(ev("ue", eid="rot", ue_pr=ANON_UE))
    await b.send(ev(eid="after", co=app_state))
    got = dict(rows(cfg.db, "select event_id, contexts from events where event_id in ('before', 'after')"))
    assert old in str(got["before"])  # the control
    assert old in {r[0] for r in rows(cfg.db, "select value from retired_ids")}
    assert old not in str(got["after"])


SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
