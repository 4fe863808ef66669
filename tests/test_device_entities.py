"""Device identifiers that official Snowplow trackers put in entities of their own (identifiers.ENTITY_RULES).

* Roku tracker (snowplow-incubator/snowplow-roku-tracker, DeviceInfoContext.bs): every event carries
  `iglu:com.roku/device_info/jsonschema/1-0-0` with `channelClientId` ("a unique device identifier")
  and, with RIDATracking, `RIDA` (Roku's advertising id, "a persistent unique identifier (UUID) for
  the device"). The tracker supports `serverAnonymous` (SP-Anonymous).
* AMP tracker (ampproject/amphtml, extensions/amp-analytics/0.1/vendors/snowplow_v2.json): every GET
  `/i` carries `co` with `iglu:dev.amp.snowplow/amp_id/jsonschema/1-0-0` whose `ampClientId` is
  CLIENT_ID(_sp_ampid), the AMP device id. An image pixel cannot add SP-Anonymous, but a browser with
  Global Privacy Control sends `Sec-GPC: 1` on it, which is SP-Anonymous by default (COLLECTOR_GPC).

Each anonymous test has a control that finds the values where they belong (so the search can fail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from collector.config import Config, Secret
from tests.conftest import TP2, batch, ev, rows
from tests.test_anonymous_canaries import ctx, everything
from tests.test_sessions import ANON_UE, Browser

ROKU = "iglu:com.roku/device_info/jsonschema/1-0-0"
AMP_ID = "iglu:dev.amp.snowplow/amp_id/jsonschema/1-0-0"
AMP_PAGE = "iglu:dev.amp.snowplow/amp_web_page/jsonschema/1-0-0"
AMP_SESSION = "iglu:dev.amp.snowplow/amp_session/jsonschema/1-0-0"
MOBILE = "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3"


def config(db: Path) -> Config:
    return Config(db=db, cookie_secret=(Secret("test-secret"),), access_log=True)


def roku(client_id: str, rida: str) -> dict[str, Any]:
    # as DeviceInfoContext.getPayloadData() builds it
    return {
        "schema": ROKU,
        "data": {
            "model": "3940EU",
            "modelDisplayName": "Roku Express 4K",
            "modelType": "STB",
            "osVersion": "11.5.0.4312",
            "channelClientId": client_id,
            "isRIDADisabled": False,
            "RIDA": rida,
            "captionsMode": "Off",
            "audioOutputChannel": "Stereo",
            "timeSinceLastKeypress": 3,
            "countryCode": "GB",
            "videoMode": "1080p",
            "displayWidth": 100,
            "displayHeight": 60,
            "displayProperties": [],
            "connectionType": "WiFiConnection",
            "features": [],
        },
    }


async def post(make_client: Any, cfg: Config, body: Any, headers: dict[str, str]) -> None:
    client = await make_client(cfg)
    resp = await client.post(TP2, json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    await client.close()


# --- Roku device_info: stored row and bad row -------------------------------------------------------


def roku_batch(c: str) -> Any:
    co = ctx(roku(f"{c}-CHANNELCLIENTID", f"{c}-RIDA"))
    # the second event is refused (bad platform): its bad row is scrubbed "exactly as a stored row"
    return batch(ev(eid="r1", p="tv", co=co), ev(eid="r2", p="BAD", co=co))


async def test_anonymous_roku_request_keeps_no_device_id(make_client: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path / "anon.db")
    c = "REVROKUANON"
    await post(make_client, cfg, roku_batch(c), {"SP-Anonymous": "*"})
    [row] = rows(cfg.db, "select anonymous, contexts from events")
    [bad] = rows(cfg.db, "select anonymous, payload from bad_rows")
    assert row["anonymous"] == 1 and bad["anonymous"] == 1
    assert c not in (bad["payload"] or ""), bad["payload"]  # the bad row
    assert f"{c}-CHANNELCLIENTID" not in row["contexts"], row["contexts"]
    assert f"{c}-RIDA" not in row["contexts"], row["contexts"]
    assert c not in (bad["payload"] or ""), bad["payload"]
    assert c not in everything(cfg.db)


async def test_control_named_roku_request_keeps_them(make_client: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path / "named.db")
    c = "REVROKUNAMED"
    await post(make_client, cfg, roku_batch(c), {})
    [row] = rows(cfg.db, "select contexts from events")
    assert f"{c}-CHANNELCLIENTID" in row["contexts"] and f"{c}-RIDA" in row["contexts"]


# --- AMP amp_id: a GET pixel under Sec-GPC (SP-Anonymous by default) or SP-Anonymous ---------------


def amp_params(c: str) -> dict[str, str]:
    co = orjson.dumps(
        {
            "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
            "data": [
                {"schema": AMP_ID, "data": {"ampClientId": f"amp-{c}", "domainUserid": "", "userId": ""}},
                {"schema": AMP_PAGE, "data": {"ampPageViewId": "1234567890123456"}},
            ],
        }
    ).decode()
    return {"p": "web", "tv": "amp-1.0.2", "e": "pv", "url": "https://news.test/a.amp", "co": co}


async def amp_get(make_client: Any, cfg: Config, c: str, headers: dict[str, str]) -> None:
    client = await make_client(cfg)
    resp = await client.get("/i", params=amp_params(c), headers=headers)
    assert resp.status == 200
    await client.close()


async def test_anonymous_amp_pixel_keeps_no_amp_client_id(make_client: Any, tmp_path: Path) -> None:
    for name, headers in (("gpc", {"Sec-GPC": "1"}), ("sp", {"SP-Anonymous": "*"})):
        cfg = config(tmp_path / f"amp-{name}.db")
        c = f"REVAMP{name.upper()}"
        await amp_get(make_client, cfg, c, headers)
        [row] = rows(cfg.db, "select anonymous, contexts from events")
        assert row["anonymous"] == 1
        assert c not in row["contexts"], (name, row["contexts"])


async def test_control_named_amp_pixel_keeps_it(make_client: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path / "amp-named.db")
    await amp_get(make_client, cfg, "REVAMPNAMED", {})
    [row] = rows(cfg.db, "select contexts from events")
    assert "amp-REVAMPNAMED" in row["contexts"]


# --- rotation: the Roku ids are the device's own (as the IDFV), but nothing retires them -------------


async def rotate(make_client: Any, tmp_path: Path, *entities: dict[str, Any]) -> tuple[str, str, str, str]:
    """A named device sends an event, an anonymize event, then (new cookie, tracker ids cleared) an
    event with the same device entity. (old device, new device, old contexts, new contexts)."""
    cfg = config(tmp_path / "rot.db")
    client = await make_client(cfg)
    b = Browser(client)
    co = ctx(*entities)
    await b.send(ev(eid="before", p="tv", duid="duid-old-000001", sid="sid-old-0000001", co=co))
    old = b.device
    await b.send(ev("ue", eid="anon", p="tv", duid="duid-old-000001", sid="sid-old-0000001", ue_pr=ANON_UE))
    new = b.device
    await b.send(ev(eid="after", p="tv", duid="duid-new-000002", sid="sid-new-0000002", co=co))
    got = {r["event_id"]: r for r in rows(cfg.db, "select event_id, network_userid, contexts from events")}
    await client.close()
    assert old != new and got["before"]["network_userid"] == old and got["after"]["network_userid"] == new
    return old, new, got["before"]["contexts"], got["after"]["contexts"]


async def test_rotation_leaves_no_roku_device_id_linking_old_and_new(
    make_client: Any, tmp_path: Path
) -> None:
    _, _, before, after = await rotate(make_client, tmp_path, roku("ROTCHANNELCLIENTID", "ROTRIDA-UUID"))
    assert "ROTCHANNELCLIENTID" in before  # kept on the old device, as the IDFV is
    shared = [v for v in ("ROTCHANNELCLIENTID", "ROTRIDA-UUID") if v in before and v in after]
    assert shared == [], f"old and new device rows both hold {shared}"


async def test_control_rotation_cuts_the_idfv(make_client: Any, tmp_path: Path) -> None:
    mobile = {
        "schema": MOBILE,
        "data": {
            "osType": "ios",
            "osVersion": "17",
            "deviceManufacturer": "Apple",
            "deviceModel": "iPhone",
            "appleIdfv": "ROTIDFV-0000-UUID",
        },
    }
    _, _, before, after = await rotate(make_client, tmp_path, mobile)
    assert "ROTIDFV-0000-UUID" in before and "ROTIDFV-0000-UUID" not in after


def amp_entities(page_view_id: str) -> list[dict[str, Any]]:
    # the AMP tracker's contextsHead and contextsTail: amp_id, then amp_web_page (PAGE_VIEW_ID_64)
    return [
        {"schema": AMP_ID, "data": {"ampClientId": "amp-ROTCLIENT", "domainUserid": "", "userId": ""}},
        {"schema": AMP_PAGE, "data": {"ampPageViewId": page_view_id}},
        {"schema": AMP_SESSION, "data": {"ampSessionId": 1947382617, "ampSessionIndex": 2}},
    ]


async def test_rotation_leaves_no_amp_page_view_linking_old_and_new(make_client: Any, tmp_path: Path) -> None:
    # An AMP page keeps pinging under the same page view id after another tab rotated the device, as a
    # single-page app keeps its web_page id: retired with the rotation, as that one is.
    view = "ROTAMPPAGEVIEW64"
    _, _, before, after = await rotate(make_client, tmp_path, *amp_entities(view))
    assert view in before and "1947382617" in before  # the old device's rows keep their view
    assert view not in after, after
    # the session's number goes with the view it came with (the row carries a retired id)
    assert "1947382617" not in after, after


async def test_control_rotation_cuts_the_web_page_id(make_client: Any, tmp_path: Path) -> None:
    page = {
        "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
        "data": {"id": "ROTWEBPAGE-VIEW"},
    }
    _, _, before, after = await rotate(make_client, tmp_path, page)
    assert "ROTWEBPAGE-VIEW" in before and "ROTWEBPAGE-VIEW" not in after
