"""The derived views (page_views, sessions, users) on fixture traffic sent through the HTTP edge, with
exact numbers worked out by hand from the rules in storage/migrations/sqlite/0008_views.sql."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector.config import Config
from tests.conftest import TP2, Clock, batch, ev, rows
from tests.test_sessions import ANON_UE, Browser

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

T = 1_800_000_000_000  # ms, a multiple of 10 s: the heartbeat buckets start here
SHOP = "https://shop.test"
LANDING = f"{SHOP}/a?utm_source=news&utm_medium=email&utm_campaign=winter&utm_term=boots&utm_content=top"


def web_page(view_id: str) -> str:
    """The contexts param carrying the web_page entity (the page view id) that the browser tracker sends."""
    return orjson.dumps(
        {
            "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
            "data": [
                {
                    "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
                    "data": {"id": view_id},
                }
            ],
        }
    ).decode()


def at(seconds: float, sent: float, **kw: str) -> dict[str, str]:
    """Device times: created `seconds` after T, sent at `sent` (derived_tstamp follows from them)."""
    return {"dtm": str(T + int(seconds * 1000)), "stm": str(T + int(sent * 1000)), **kw}


def pv(eid: str, url: str, seconds: float, sent: float, **kw: str) -> dict[str, str]:
    return ev("pv", eid=eid, url=url, **at(seconds, sent, **kw))


def pp(eid: str, url: str, seconds: float, sent: float, **kw: str) -> dict[str, str]:
    return ev("pp", eid=eid, url=url, **at(seconds, sent, **kw))


def by(db: Any, sql: str, key: str = "event_id") -> dict[str, Any]:
    return {r[key]: r for r in rows(db, sql)}


async def visit(client: Any, clock: Clock) -> Browser:
    """One identified visit of two pages, sent in one batch 60 s after T (collector time = device time)."""
    clock.t = (T + 60_000) / 1000
    b = Browser(client)
    await b.send(
        pv("v1", LANDING, 0, 60, sid="s1", refr="https://news.example.org/post/1", co=web_page("wp-1")),
        # entity pings of view 1: buckets 0, 1, 1, 2 (T+5, T+15, T+17, T+25)
        *(pp(f"p1-{s}", LANDING, s, 60, sid="s1", co=web_page("wp-1")) for s in (5, 15, 17, 25)),
        # view 2 and its pings carry no entity: attached as the pings after it of its page
        pv("v2", f"{SHOP}/b", 40, 60, sid="s1", vp="1000x800", ds="2000x4000"),
        pp("p2-45", f"{SHOP}/b", 45, 60, sid="s1"),
        pp("p2-48", f"{SHOP}/b", 48, 60, sid="s1"),
        pp("p2-55", f"{SHOP}/b", 55, 60, sid="s1", pp_mix="0", pp_max="500", pp_miy="0", pp_may="2400"),
        pp("stale", f"{SHOP}/a", 50, 60, sid="s1"),  # no entity, not view 2's page: attached to nothing
        # back on view 1's tab after view 2: its entity attaches it there (bucket 5)
        pp("p1-58", LANDING, 58, 60, sid="s1", co=web_page("wp-1")),
    )
    return b


async def test_page_views_engaged_time_scroll_and_attachment(client: Any, cfg: Config, clock: Clock) -> None:
    b = await visit(client, clock)
    views = by(cfg.db, "select * from page_views")
    assert set(views) == {"v1", "v2"}
    v1, v2 = views["v1"], views["v2"]
    assert (v1["page_view_id"], v2["page_view_id"]) == ("wp-1", "v2")  # the entity's id, else the event's
    assert v1["device_id"] == v2["device_id"] == b.device and v1["anonymous"] == 0
    assert v1["session_id"] == v2["session_id"] is not None
    # view 1: pings in buckets 0, 1, 2, 5 -> 10 * (4 - 1) + 5
    assert (v1["page_pings"], v1["engaged_time_in_s"]) == (5, 35)
    assert (v1["start_tstamp"], v1["end_tstamp"]) == ("2027-01-15 08:00:00.000", "2027-01-15 08:00:58.000")
    # view 2: 45 and 48 share bucket 4, 55 is bucket 5 -> 10 * (2 - 1) + 5; the stale ping is not its
    assert (v2["page_pings"], v2["engaged_time_in_s"]) == (3, 15)
    assert (v2["start_tstamp"], v2["end_tstamp"]) == ("2027-01-15 08:00:40.000", "2027-01-15 08:00:55.000")
    # scroll: min(500 + 1000, 2000) / 2000 and min(2400 + 800, 4000) / 4000; view 1's pings carry none
    assert (v2["horizontal_percentage_scrolled"], v2["vertical_percentage_scrolled"]) == (75, 80)
    assert (v1["horizontal_percentage_scrolled"], v1["vertical_percentage_scrolled"]) == (None, None)
    assert (v1["page_urlhost"], v1["page_urlpath"], v1["refr_urlhost"]) == (
        "shop.test",
        "/a",
        "news.example.org",
    )
    assert (v1["mkt_source"], v1["mkt_campaign"]) == ("news", "winter")


async def test_a_rotated_device_is_another_device_and_its_pings_reach_no_old_view(
    client: Any, cfg: Config, clock: Clock
) -> None:
    b = await visit(client, clock)
    old = b.device
    clock.t += 10
    await b.send(ev("ue", eid="rotate", ue_pr=ANON_UE))
    assert b.device != old
    # the same tab keeps sending view 1's id after the rotation: the id was retired with the device
    clock.t += 10
    await b.send(pp("after", LANDING, 80, 80, sid="s1", co=web_page("wp-1")))
    views = by(cfg.db, "select * from page_views")
    assert set(views) == {"v1", "v2"}
    assert (views["v1"]["page_pings"], views["v1"]["engaged_time_in_s"]) == (5, 35)  # as before
    [after] = rows(cfg.db, "select network_userid, contexts from events where event_id = 'after'")
    assert after["network_userid"] == b.device and "wp-1" not in str(after["contexts"])


async def test_anonymous_page_views_attach_by_entity_and_by_tracker_session(
    client: Any, cfg: Config, clock: Clock
) -> None:
    clock.t = (T + 60_000) / 1000
    anon = {"SP-Anonymous": "*"}
    body = batch(
        pv("a1", f"{SHOP}/x", 0, 60, sid="anon-s1", uid="u-dropped", co=web_page("wp-a")),
        *(pp(f"ap1-{s}", f"{SHOP}/x", s, 60, sid="anon-s1", co=web_page("wp-a")) for s in (5, 15, 25, 35)),
        pv("a2", f"{SHOP}/y", 40, 60, sid="anon-s1"),
        pp("ap2-45", f"{SHOP}/y", 45, 60, sid="anon-s1"),
        pv("b1", f"{SHOP}/y", 0, 60, sid="anon-s2"),  # another tracker session on the same page
        pp("bp1-5", f"{SHOP}/y", 5, 60, sid="anon-s2"),
        pp("bp1-15", f"{SHOP}/y", 15, 60, sid="anon-s2"),
    )
    assert (await client.post(TP2, json=body, headers=anon)).status == 200
    views = by(cfg.db, "select * from page_views")
    assert {k: (v["session_id"], v["device_id"], v["user_id"], v["anonymous"]) for k, v in views.items()} == {
        "a1": ("anon-s1", None, None, 1),
        "a2": ("anon-s1", None, None, 1),
        "b1": ("anon-s2", None, None, 1),
    }
    got = {k: (v["page_pings"], v["engaged_time_in_s"]) for k, v in views.items()}
    assert got == {"a1": (4, 35), "a2": (1, 5), "b1": (2, 15)}
    sessions = by(cfg.db, "select * from sessions", "session_id")
    s1, s2 = sessions["anon-s1"], sessions["anon-s2"]
    assert (s1["anonymous"], s1["page_views"], s1["engaged_time_in_s"], s1["is_engaged"]) == (1, 2, 40, 1)
    assert (s2["page_views"], s2["engaged_time_in_s"], s2["is_engaged"]) == (1, 15, 0)  # under 20 s
    assert s1["first_page_urlpath"] == "/x" and s1["device_id"] is None
    assert rows(cfg.db, "select * from users") == []  # anonymous sessions have no user


async def test_sessions_landing_page_referrer_campaign_and_engagement(
    client: Any, cfg: Config, clock: Clock
) -> None:
    b = await visit(client, clock)
    clock.t += 3600  # past the session timeout: a new session, one page view and no pings
    await b.send(pv("v3", f"{SHOP}/c", 3600, 3600, sid="s2"))
    [s1, s2] = rows(cfg.db, "select * from sessions order by session_index")
    assert s1["device_id"] == s2["device_id"] == b.device and (s1["session_index"], s2["session_index"]) == (
        1,
        2,
    )
    assert (s1["first_page_url"], s1["first_page_urlpath"]) == (LANDING, "/a")
    assert (s1["referrer"], s1["refr_urlhost"]) == ("https://news.example.org/post/1", "news.example.org")
    assert (s1["mkt_source"], s1["mkt_medium"], s1["mkt_campaign"], s1["mkt_term"], s1["mkt_content"]) == (
        "news",
        "email",
        "winter",
        "boots",
        "top",
    )
    assert (s1["page_views"], s1["engaged_time_in_s"], s1["is_engaged"], s1["event_count"]) == (2, 50, 1, 11)
    assert (s2["first_page_urlpath"], s2["referrer"], s2["mkt_source"]) == ("/c", None, None)
    assert (s2["page_views"], s2["engaged_time_in_s"], s2["is_engaged"]) == (1, 0, 0)
    # the devices view still reads sessions as before
    [d] = rows(cfg.db, "select * from devices")
    assert (d["device_id"], d["session_count"]) == (b.device, 2)


@pytest.mark.parametrize("later_first", [True, False])
async def test_a_landing_page_tie_is_broken_by_the_dedupe_key(
    client: Any, cfg: Config, clock: Clock, later_first: bool
) -> None:
    # Two page views that share an event id and an event time but not a device creation time: both
    # are stored (their dedupe keys differ), and the landing page is the one with the earlier
    # creation time, whichever arrived first. Created T+10 and sent T+60, or created T+5 and sent T+55:
    # both derive T+10 in a batch the collector receives at T+60.
    clock.t = (T + 60_000) / 1000
    later = pv("same", f"{SHOP}/later", 10, 60, sid="s1")
    earlier = pv("same", f"{SHOP}/earlier", 5, 55, sid="s1")
    await Browser(client).send(*((later, earlier) if later_first else (earlier, later)))
    views = rows(cfg.db, "select page_urlpath, start_tstamp from page_views")
    assert len({v["start_tstamp"] for v in views}) == 1 and len(views) == 2  # the tie is real
    [s] = rows(cfg.db, "select first_page_urlpath, page_views from sessions")
    assert (s["first_page_urlpath"], s["page_views"]) == ("/earlier", 2)


async def test_users_count_sessions_page_views_and_devices(client: Any, cfg: Config, clock: Clock) -> None:
    alice = Browser(client)
    await alice.send(pv("al-1", f"{SHOP}/1", 0, 0, sid="as1"))  # before login: her session by backfill
    clock.t += 60
    await alice.send(
        pv("al-2", f"{SHOP}/2", 60, 60, sid="as2", uid="alice"),
        pv("al-3", f"{SHOP}/3", 61, 61, sid="as2", uid="alice"),
    )
    clock.t += 60
    first = alice.device
    await alice.send(ev("ue", eid="al-rotate", uid="alice", sid="as2", ue_pr=ANON_UE))
    assert alice.device != first
    clock.t += 60
    await alice.send(pv("al-4", f"{SHOP}/4", 180, 180, sid="as3", uid="alice"))
    bob = Browser(client)
    await bob.send(pv("bo-1", f"{SHOP}/1", 180, 180, sid="bs1", uid="bob"))
    await client.post(
        TP2, json=batch(pv("anon-1", f"{SHOP}/1", 0, 0, sid="x")), headers={"SP-Anonymous": "*"}
    )
    users = by(cfg.db, "select * from users", "user_id")
    assert set(users) == {"alice", "bob"}
    a, o = users["alice"], users["bob"]
    # sessions: as1 (backfilled), as2, and the rotated device's session; a rotated device is another
    assert (a["sessions"], a["page_views"], a["devices"]) == (3, 4, 2)
    assert (a["first_seen"], a["last_seen"]) == ("2027-01-15 08:00:00.000", "2027-01-15 08:03:00.000")
    assert (o["sessions"], o["page_views"], o["devices"]) == (1, 1, 1)
    assert o["first_seen"] == o["last_seen"] == "2027-01-15 08:03:00.000"


async def test_entities_that_are_not_objects_do_not_break_the_views(client: Any, cfg: Config) -> None:
    odd = {
        "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
        "data": [
            "text",
            5,
            None,
            [1],
            {"schema": 7},
            {"schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0", "data": [1]},
        ],
    }
    sent = batch(pv("odd", f"{SHOP}/o", 0, 0, co=orjson.dumps(odd).decode()), pp("odd-p", f"{SHOP}/o", 5, 5))
    assert (await client.post(TP2, json=sent)).status == 200
    [v] = rows(cfg.db, "select * from page_views")
    assert (v["page_view_id"], v["page_pings"], v["engaged_time_in_s"]) == ("odd", 1, 5)
