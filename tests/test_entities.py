"""Identifiers inside entities: scrubbed under SP-Anonymous in rows and bad rows, forgotten on rotation."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from collector.config import Config
from tests.conftest import TP2, batch, ev, rows
from tests.test_sessions import ANON_UE, Browser

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
SESSION_UID, PREV_SID, FIRST_EID = "cs-user-5b1d", "cs-prev-77aa", "cs-first-e0e0"
IDFA, IDFV, ANDROID, APPSET = "idfa-c4n4ry", "idfv-c4n4ry", "aaid-c4n4ry", "appset-c4n4ry"
GA, UTMA, GA4, GA4_SESSION = "GA1.1.c4n4ry", "utma-c4n4ry", "GA1.2.ga4c4n4ry", "GS1.1.sessc4n4ry"
LAT, LON = "51.98765432", "4.12345678"
CANARIES = [
    SESSION_UID,
    PREV_SID,
    FIRST_EID,
    IDFA,
    IDFV,
    ANDROID,
    APPSET,
    GA,
    UTMA,
    GA4,
    GA4_SESSION,
    LAT,
    LON,
]


def entities(sid: str = "cs-sess-0001") -> dict[str, Any]:
    return {
        "schema": CONTEXTS,
        "data": [
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2",
                "data": {
                    "userId": SESSION_UID,
                    "sessionId": sid,
                    "sessionIndex": 3,
                    "previousSessionId": PREV_SID,
                    "firstEventId": FIRST_EID,
                    "storageMechanism": "COOKIE_1",
                },
            },
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3",
                "data": {
                    "osType": "ios",
                    "osVersion": "17",
                    "deviceManufacturer": "Apple",
                    "deviceModel": "iPhone",
                    "appleIdfa": IDFA,
                    "appleIdfv": IDFV,
                    "androidIdfa": ANDROID,
                    "appSetId": APPSET,
                    "appSetIdScope": "app",
                },
            },
            {
                "schema": "iglu:com.google.analytics/cookies/jsonschema/1-0-0",
                "data": {"_ga": GA, "__utma": UTMA},
            },
            {
                "schema": "iglu:com.google.ga4/cookies/jsonschema/1-0-0",
                "data": {
                    "_ga": GA4,
                    "session_cookies": [{"measurement_id": "G-1", "session_cookie": GA4_SESSION}],
                },
            },
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/geolocation_context/jsonschema/1-1-0",
                "data": {"latitude": float(LAT), "longitude": float(LON)},
            },
            {"schema": "iglu:com.acme/page/jsonschema/1-0-0", "data": {"kind": "article"}},
        ],
    }


def with_co(event: dict[str, Any], encoded: bool) -> dict[str, Any]:
    text = orjson.dumps(entities())
    if encoded:
        return {**event, "cx": base64.urlsafe_b64encode(text).rstrip(b"=").decode()}
    return {**event, "co": text.decode()}


def found(db: Any, table: str) -> set[str]:
    text = "\n".join(str(tuple(r)) for r in rows(db, f"select * from {table}"))
    return {c for c in CANARIES if c in text}


async def post_mixed(client: Any, anonymous: bool) -> None:
    """One valid event and two invalid ones, each with identifying entities in co and cx."""
    events = []
    for encoded in (False, True):
        tag = "cx" if encoded else "co"
        events += [
            with_co(ev(eid=f"ok-{tag}"), encoded),
            with_co(ev(eid=f"badp-{tag}", p="BAD"), encoded),
            with_co({**ev(eid=f"badva-{tag}"), "se_va": {"x": 1}}, encoded),
        ]
    resp = await client.post(TP2, json=batch(*events), headers={"SP-Anonymous": "*"} if anonymous else {})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["rejected"] == 4


async def test_anonymous_bad_rows_keep_no_entity_identifier(client: Any, cfg: Config) -> None:
    await post_mixed(client, anonymous=True)
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 4
    assert found(cfg.db, "bad_rows") == set()
    assert found(cfg.db, "events") == set()
    # what is not identifying stays: the custom entity and the scrubbed envelope
    assert all("article" in r["payload"] for r in rows(cfg.db, "select payload from bad_rows"))


async def test_without_the_header_bad_rows_and_rows_keep_the_entities(client: Any, cfg: Config) -> None:
    await post_mixed(client, anonymous=False)
    # the same search finds them where they belong: the rows, and of the bad rows' entities what is not
    # a tracker id (identifiers.without_tracker_ids: the session, mobile and GA ids never reach a bad row)
    assert found(cfg.db, "bad_rows") == {LAT, LON}
    assert found(cfg.db, "events") == set(CANARIES)


async def test_anonymous_rows_drop_ad_ids_app_set_id_and_ga_cookies(client: Any, cfg: Config) -> None:
    for path in ("/i", TP2):
        resp = await client.get(path, params=with_co(ev(eid=f"get{path}"), encoded=path == "/i"))
        assert resp.status == 200
    resp = await client.post(TP2, json=batch(with_co(ev(eid="post"), False)), headers={"SP-Anonymous": "*"})
    assert resp.status == 200
    [row] = rows(cfg.db, "select contexts from events where event_id = 'post'")
    kept = {e["schema"].split("/")[1]: e["data"] for e in orjson.loads(row["contexts"])["data"]}
    assert set(kept) == {"client_session", "mobile_context", "page"}
    assert kept["client_session"]["sessionId"] == "cs-sess-0001"  # the anonymous session stays
    assert not {"appleIdfa", "appleIdfv", "androidIdfa", "appSetId", "appSetIdScope"} & set(
        kept["mobile_context"]
    )
    assert kept["mobile_context"]["osType"] == "ios"
    anon = rows(cfg.db, "select * from events where event_id = 'post'")
    assert {c for c in CANARIES if c in str(tuple(anon[0]))} == set()
    # the identified GET requests keep them all
    assert found(cfg.db, "events") == set(CANARIES)


def session_entity(uid: str, sid: str, prev: str | None, first: str, index: int) -> str:
    return orjson.dumps(
        {
            "schema": CONTEXTS,
            "data": [
                {
                    "schema": "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2",
                    "data": {
                        "userId": uid,
                        "sessionId": sid,
                        "sessionIndex": index,
                        "previousSessionId": prev,
                        "firstEventId": first,
                        "eventIndex": 4,
                        "storageMechanism": "COOKIE_1",
                    },
                }
            ],
        }
    ).decode()


async def test_rotation_forgets_the_session_entity_and_vid(client: Any, cfg: Config) -> None:
    """A tracker that forgets clearUserData keeps sending its ids inside client_session: none survive."""
    b = Browser(client)
    co = session_entity("duid-OLD", "sid-OLD", "sid-PREV", "first-OLD", 7)
    await b.send(ev(eid="before", duid="duid-OLD", sid="sid-OLD", vid="7", uid="alice", co=co))
    old = b.device
    await b.send(ev("ue", eid="logout", duid="duid-OLD", sid="sid-OLD", vid="7", ue_pr=ANON_UE, co=co))
    assert b.device != old
    # the next user on this browser: the tracker still sends the old ids, in columns and in the entity
    await b.send(ev(eid="after", duid="duid-OLD", sid="sid-OLD", vid="7", uid="bob", co=co))
    # and a new tracker session that points back at the old one through previousSessionId
    co2 = session_entity("duid-NEW", "sid-NEW", "sid-OLD", "first-NEW", 1)
    await b.send(ev(eid="after2", duid="duid-NEW", sid="sid-NEW", vid="1", uid="bob", co=co2))
    # the tracker's next session no longer points at a retired one: its own ids are kept again
    co3 = session_entity("duid-NEW", "sid-NEW3", "sid-NEW", "first-NEW3", 2)
    await b.send(ev(eid="after3", duid="duid-NEW", sid="sid-NEW3", vid="2", uid="bob", co=co3))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert "duid-OLD" in got["before"]["contexts"] and got["before"]["domain_sessionidx"] == 7
    for eid in ("after", "after2"):
        text = str(tuple(got[eid]))
        assert got[eid]["network_userid"] == b.device
        for old_value in ("duid-OLD", "sid-OLD", "sid-PREV", "first-OLD", old):
            assert old_value not in text, (eid, old_value, text)
    assert got["after"]["domain_sessionidx"] is None  # vid counted on the old duid
    # a row that points back at a retired id loses the tracker's whole identity, its new duid too
    assert got["after2"]["domain_userid"] is None and "client_session" not in got["after2"]["contexts"]
    assert got["after3"]["domain_userid"] == "duid-NEW" and got["after3"]["domain_sessionidx"] == 2
    assert "sid-NEW3" in got["after3"]["contexts"]


async def test_opt_out_forgets_the_session_entity(client: Any, cfg: Config) -> None:
    b = Browser(client)
    co = session_entity("duid-T", "sid-T", None, "first-T", 2)
    await b.send(ev(eid="on-1", duid="duid-T", sid="sid-T", vid="2", co=co))
    old_cookie = b.cookie
    anon = await client.post(
        TP2,
        json=batch(ev(eid="anon-1", sid="sid-T", vid="2", co=co)),
        headers={"Cookie": f"sp={old_cookie}", "SP-Anonymous": "*"},
    )
    assert anon.status == 200
    b.cookie = None
    await b.send(ev(eid="on-2", duid="duid-T", sid="sid-T", vid="2", co=co))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert "sid-T" in got["on-1"]["contexts"]
    for eid in ("anon-1", "on-2"):
        text = str(tuple(got[eid]))
        for value in ("duid-T", "sid-T", "first-T"):
            assert value not in text, (eid, value, text)


def page_entities(page_view: str, tab: str) -> str:
    return orjson.dumps(
        {
            "schema": CONTEXTS,
            "data": [
                {
                    "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
                    "data": {"id": page_view},
                },
                {
                    "schema": "iglu:com.snowplowanalytics.snowplow/browser_context/jsonschema/2-0-0",
                    "data": {"tabId": tab, "viewport": "1280x720"},
                },
            ],
        }
    ).decode()


async def test_a_single_page_logout_retires_the_page_view_and_tab_ids(client: Any, cfg: Config) -> None:
    """The browser tracker keeps the page view id until the next page view, and the tab id for ever."""
    b = Browser(client)
    co = page_entities("pv-id-0001", "tab-id-0001")
    await b.send(ev("se", eid="old", uid="alice", co=co))
    await b.send(ev("ue", eid="logout", uid="alice", ue_pr=ANON_UE, co=co))
    await b.send(ev("se", eid="new", uid="bob", co=co))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert "pv-id-0001" in got["old"]["contexts"] and "tab-id-0001" in got["old"]["contexts"]
    assert "pv-id-0001" not in got["new"]["contexts"] and "tab-id-0001" not in got["new"]["contexts"]


async def test_an_opt_out_retires_the_page_view_id_and_a_mobile_installation_id(
    client: Any, cfg: Config
) -> None:
    b = Browser(client)
    install = "install-id-77"  # mobile trackers keep it only in client_session.userId (no duid param)
    co = orjson.dumps(
        {
            "schema": CONTEXTS,
            "data": [
                orjson.loads(session_entity(install, "s-1", None, "f-1", 1))["data"][0],
                orjson.loads(page_entities("pv-id-0002", "tab-2"))["data"][0],
            ],
        }
    ).decode()
    await b.send(ev(eid="on", co=co))
    anon = await client.post(
        TP2, json=batch(ev(eid="anon", co=co)), headers={"Cookie": f"sp={b.cookie}", "SP-Anonymous": "*"}
    )
    assert anon.status == 200
    b.cookie = None
    await b.send(ev(eid="back", co=co))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert install in got["on"]["contexts"] and "pv-id-0002" in got["on"]["contexts"]
    for eid in ("anon", "back"):
        assert install not in str(got[eid]["contexts"]) and "pv-id-0002" not in str(got[eid]["contexts"]), eid


async def test_anonymous_rows_drop_ecommerce_user_ids_and_nested_custom_ids(client: Any, cfg: Config) -> None:
    co = orjson.dumps(
        {
            "schema": CONTEXTS,
            "data": [
                {
                    "schema": "iglu:com.snowplowanalytics.snowplow.ecommerce/user/jsonschema/1-0-0",
                    "data": {"id": "customer-4711", "is_guest": False, "email": "a@b.example"},
                },
                {
                    "schema": "iglu:com.acme/account/jsonschema/1-0-0",
                    "data": {"owner": {"userId": "nested-uid", "email": "n@b.example", "plan": "pro"}},
                },
            ],
        }
    ).decode()
    resp = await client.post(TP2, json=batch(ev(eid="e", co=co)), headers={"SP-Anonymous": "*"})
    assert resp.status == 200
    [row] = rows(cfg.db, "select contexts from events")
    for value in ("customer-4711", "a@b.example", "nested-uid", "n@b.example"):
        assert value not in row[0], value
    assert '"plan":"pro"' in row[0].replace(" ", "") and "is_guest" in row[0]


async def test_anonymous_contexts_of_the_wrong_shape_are_a_bad_event(client: Any, cfg: Config) -> None:
    for i, co in enumerate(['{"data": 5}', '{"data": null}', '{"data": {}}', '{"data": "s"}', "[1]"]):
        resp = await client.post(
            TP2, json=batch(ev(eid=f"good-{i}"), ev(eid=f"bad-{i}", co=co)), headers={"SP-Anonymous": "*"}
        )
        assert resp.status == 200, (co, await resp.text())
        assert (await resp.json())["rejected"] == 1
    assert len(rows(cfg.db, "select event_id from events")) == 5
