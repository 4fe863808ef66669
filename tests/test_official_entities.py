"""SP-Anonymous against the identifiers that official tracker plugins' entities carry.

Each test sends one anonymous request carrying a canary in a field a real Snowplow tracker (or one of
its official plugins) fills, searches every table, view and byte of the SQLite file (WAL included),
the logs and /metrics, and fails if the canary is there. The `control` twin sends the same request
without the header and finds the canary (so each search can fail).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from collector.config import Config, Secret
from tests.conftest import TP2, batch, ev, rows
from tests.test_anonymous_canaries import ctx, everything

# @snowplow/browser-plugin-optimizely-x attaches this entity to every event; visitorId is
# Optimizely's own end-user id (its first-party cookie): a device identifier that outlives rotation.
OPTIMIZELY_X = "iglu:com.optimizely.optimizelyx/summary/jsonschema/1-0-0"
# The Snowplow ecommerce plugin's (web, iOS, Android) checkout step entity: postal addresses.
CHECKOUT_STEP = "iglu:com.snowplowanalytics.snowplow.ecommerce/checkout_step/jsonschema/1-0-0"
SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"


def config(db: Path, **kw: Any) -> Config:
    return Config(db=db, cookie_secret=(Secret("test-secret"),), access_log=True, **kw)


async def send(make_client: Any, cfg: Config, body: Any, anonymous: bool) -> str:
    client = await make_client(cfg)
    headers = {"SP-Anonymous": "*"} if anonymous else {}
    resp = await client.post(TP2, json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    metrics = await (await client.get("/metrics")).text()
    await client.close()
    return metrics


def optimizely(canary: str) -> Any:
    data = {"experimentId": 1234, "variationName": "b", "variation": 5678, "visitorId": canary}
    return batch(ev(eid="e1", co=ctx({"schema": OPTIMIZELY_X, "data": data})))


def checkout(canary: str) -> Any:
    data = {
        "step": 2,
        "shipping_postcode": f"{canary}-P1",
        "billing_postcode": f"{canary}-P2",
        "shipping_full_address": f"{canary}-A1 12 Rue de la Paix, Paris",
        "billing_full_address": f"{canary}-A2 12 Rue de la Paix, Paris",
        "delivery_method": "courier",
    }
    return batch(ev("ue", eid="e2", co=ctx({"schema": CHECKOUT_STEP, "data": data})))


def parrable(canary: str) -> Any:
    data = {"encryptedId": canary, "optout": "false"}
    return batch(
        ev(eid="e4", co=ctx({"schema": "iglu:com.parrable/encrypted_payload/jsonschema/1-0-0", "data": data}))
    )


def augur(canary: str) -> Any:
    data = {"consumer": {"UUID": f"{canary}-C"}, "device": {"ID": f"{canary}-D", "isBot": False}}
    return batch(
        ev(
            eid="e5",
            co=ctx({"schema": "iglu:io.augur.snowplow/identity_lite/jsonschema/1-0-0", "data": data}),
        )
    )


def custom_visitor(canary: str) -> Any:  # a custom entity naming its visitor id so
    data = {"abVisitorId": canary, "bucket": 3}
    return batch(ev(eid="e6", co=ctx({"schema": "iglu:com.acme/experiment/jsonschema/1-0-0", "data": data})))


CASES = {
    "optimizely-x visitorId": optimizely,
    "ecommerce checkout_step address": checkout,
    "parrable encryptedId": parrable,
    "augur identity_lite": augur,
    "a custom entity's visitor id": custom_visitor,
}


@pytest.mark.parametrize("name", list(CASES))
async def test_anonymous_request_keeps_no_official_entity_identifier(
    make_client: Any, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = f"REV6B{list(CASES).index(name)}CANARY"
    cfg = config(tmp_path / "anon.db")
    metrics = await send(make_client, cfg, CASES[name](canary), anonymous=True)
    assert isinstance(cfg.db, Path)
    assert rows(cfg.db, "select count(*) as n from events")[0]["n"] == 1
    assert canary not in metrics
    assert not [r for r in caplog.records if canary in r.getMessage()]
    assert canary not in everything(cfg.db), rows(cfg.db, "select contexts from events")[0]["contexts"]


@pytest.mark.parametrize("name", list(CASES))
async def test_control_named_request_keeps_the_entity(make_client: Any, tmp_path: Path, name: str) -> None:
    canary = f"REV6B{list(CASES).index(name)}CONTROL"
    cfg = config(tmp_path / "named.db")
    await send(make_client, cfg, CASES[name](canary), anonymous=False)
    assert isinstance(cfg.db, Path)
    assert canary in everything(cfg.db)


def session_event(sid: str) -> Any:
    data = {
        "userId": "11111111-2222-4333-8444-555555555555",
        "sessionId": sid,
        "sessionIndex": 3,
        "eventIndex": 1,
        "storageMechanism": "COOKIE_1",
        "previousSessionId": None,
        "firstEventId": "66666666-7777-4888-8999-000000000000",
        "firstEventTimestamp": "2026-01-01T00:00:00.000Z",
    }
    return batch(ev(eid="e3", sid=sid, vid="3", co=ctx({"schema": SESSION, "data": data})))


DROP_SESSION = ("uid", "duid", "fp", "mac", "ad_uid", "sid", "vid")


async def test_a_session_id_dropped_by_config_goes_from_client_session_too(
    make_client: Any, tmp_path: Path
) -> None:
    # sid and vid are kept by default under SP-Anonymous; COLLECTOR_ANONYMOUS_DROP may name them. The
    # browser and mobile trackers send the same session id as `sid` and as client_session.sessionId.
    sid = "c4a7e0b2-REV6B-SESSION-0000000000aa"
    cfg = config(tmp_path / "drop-sid.db", anonymous_drop=DROP_SESSION)
    await send(make_client, cfg, session_event(sid), anonymous=True)
    assert isinstance(cfg.db, Path)
    row = rows(cfg.db, "select domain_sessionid, domain_sessionidx, contexts from events")[0]
    assert row["domain_sessionid"] is None and row["domain_sessionidx"] is None  # the param went
    assert sid not in everything(cfg.db), row["contexts"]  # ...and the same id from the entity
    assert '"sessionIndex"' not in row["contexts"] and '"eventIndex"' in row["contexts"]


async def test_control_session_id_kept_by_default(make_client: Any, tmp_path: Path) -> None:
    sid = "c4a7e0b2-REV6B-SESSION-0000000000bb"
    cfg = config(tmp_path / "keep-sid.db")
    await send(make_client, cfg, session_event(sid), anonymous=True)
    assert isinstance(cfg.db, Path)
    assert rows(cfg.db, "select domain_sessionid from events")[0]["domain_sessionid"] == sid


AMP_SESSION = "iglu:dev.amp.snowplow/amp_session/jsonschema/1-0-0"


def amp_session_event(session_id: int) -> Any:
    # Iglu Central's amp_session: the AMP session's number and count, both integers
    data = {
        "ampSessionId": session_id,
        "ampSessionIndex": 7,
        "sessionEngaged": True,
        "sessionCreationTimestamp": 1764547200000,
        "lastSessionEventTimestamp": None,
    }
    return batch(ev(eid="e4", co=ctx({"schema": AMP_SESSION, "data": data})))


async def test_a_session_id_dropped_by_config_goes_from_the_amp_session_too(
    make_client: Any, tmp_path: Path
) -> None:
    cfg = config(tmp_path / "drop-amp-sid.db", anonymous_drop=DROP_SESSION)
    await send(make_client, cfg, amp_session_event(1947382615), anonymous=True)
    assert isinstance(cfg.db, Path)
    [row] = rows(cfg.db, "select contexts from events")
    assert "1947382615" not in everything(cfg.db), row["contexts"]
    assert '"ampSessionIndex"' not in row["contexts"] and '"sessionEngaged"' in row["contexts"]


async def test_control_amp_session_kept_by_default(make_client: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path / "keep-amp-sid.db")
    await send(make_client, cfg, amp_session_event(1947382616), anonymous=True)
    assert isinstance(cfg.db, Path)
    [row] = rows(cfg.db, "select contexts from events")
    assert '"ampSessionId":1947382616' in row["contexts"] and '"ampSessionIndex":7' in row["contexts"]
