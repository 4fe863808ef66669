"""Entities inside entities under SP-Anonymous: a known schema's rule holds at any depth.

A `{schema, data}` nested in another entity's data, in contexts inside contexts, or in a
self-describing event that wraps another, is the entity its schema names: its rule's fields go, and
an entity its rule drops whole goes whole. And the cross-domain link goes from a JSON key and a
param's name as from a value. Each case is also sent without the header, where the value is kept:
the same search finds it there.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector import identifiers
from collector.config import Config, Secret
from tests.conftest import TP2, batch, ev, rows, tables

ANON = {"SP-Anonymous": "*"}
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
CUSTOM = "iglu:com.acme/thing/jsonschema/1-0-0"
SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
MOBILE = "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3"
ECOM_USER = "iglu:com.snowplowanalytics.snowplow.ecommerce/user/jsonschema/1-0-0"
GEO = "iglu:com.snowplowanalytics.snowplow/geolocation_context/jsonschema/1-1-0"
GA = "iglu:com.google.analytics/cookies/jsonschema/1-0-0"
BROWSER = "iglu:com.snowplowanalytics.snowplow/browser_context/jsonschema/2-0-0"
C = "C4NARYC4NARY"


def ctx(*entities: Any) -> str:
    return orjson.dumps({"schema": CONTEXTS, "data": list(entities)}).decode()


def ue(schema: str, data: Any) -> str:
    return orjson.dumps({"schema": UNSTRUCT, "data": {"schema": schema, "data": data}}).decode()


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


SESS = {"schema": SESSION, "data": {"sessionId": "s1", "previousSessionId": C, "firstEventId": C}}
EVENTS: dict[str, dict[str, str]] = {
    "contexts inside contexts": ev(co=ctx({"schema": CONTEXTS, "data": [SESS]})),
    "contexts inside cx": ev(
        cx=b64(ctx({"schema": CONTEXTS, "data": [{"schema": MOBILE, "data": {"appSetId": C}}]}))
    ),
    "ue wrapping ue": ev("ue", ue_pr=ue(UNSTRUCT, SESS)),
    "ue whose data is contexts": ev("ue", ue_pr=ue(CONTEXTS, [SESS])),
    "custom holding ecommerce user": ev(
        co=ctx({"schema": CUSTOM, "data": {"u": {"schema": ECOM_USER, "data": {"id": C}}}})
    ),
    "custom holding browser tab": ev(
        co=ctx({"schema": CUSTOM, "data": {"b": {"schema": BROWSER, "data": {"tabId": C}}}})
    ),
    "custom holding geolocation": ev(
        co=ctx({"schema": CUSTOM, "data": {"g": [{"schema": GEO, "data": {"latitude": C}}]}})
    ),
    "custom holding GA cookies": ev(
        co=ctx({"schema": CUSTOM, "data": {"g": {"schema": GA, "data": {"_ga": C}}}})
    ),
    "refused event (bad row)": ev(
        p="BAD", co=ctx({"schema": CUSTOM, "data": {"u": {"schema": ECOM_USER, "data": {"id": C}}}})
    ),
    "link in a JSON key": ev(
        co=ctx({"schema": CUSTOM, "data": {"links": {f"https://b.test/?_sp={C}.1732270000123": 1}}})
    ),
    "link in a param name": ev(**{f"https://b.test/?_sp={C}.1732270000123": "1"}),
}


def found(db: Path) -> list[str]:
    """Every column of every table whose text holds C."""
    out = []
    for t in tables(db):
        cols = [r[1] for r in rows(db, f"PRAGMA table_info({t})")]
        out += [
            f"{t}.{k}"
            for r in rows(db, f"SELECT * FROM {t}")
            for k, v in zip(cols, r, strict=True)
            if isinstance(v, str) and C in v
        ]
    return out


async def send(make_client: Any, db: Path, event: dict[str, str], headers: dict[str, str]) -> list[str]:
    client = await make_client(Config(db=db, cookie_secret=(Secret("s"),)))
    resp = await client.post(
        TP2, json=batch(ev(), event), headers=headers
    )  # a valid sibling: the answer is 200 either way
    assert resp.status == 200
    metrics = await (await client.get("/metrics")).text()
    await client.close()
    return found(db) + (["/metrics"] if C in metrics else [])


@pytest.mark.parametrize("name", list(EVENTS))
async def test_anonymous_keeps_no_nested_identifier(make_client: Any, tmp_path: Path, name: str) -> None:
    assert await send(make_client, tmp_path / "a.db", EVENTS[name], ANON) == []


@pytest.mark.parametrize("name", list(EVENTS))
async def test_named_keeps_it_where_it_belongs(make_client: Any, tmp_path: Path, name: str) -> None:
    assert await send(make_client, tmp_path / "n.db", EVENTS[name], {}) != []


def test_nested_rule_keeps_the_rest() -> None:
    """A nested entity loses its rule's fields, not its other fields, nor its parent's."""
    doc = {
        "schema": CONTEXTS,
        "data": [{"schema": CUSTOM, "data": {"keep": "k", "s": SESS, "g": [{"schema": GEO, "data": {}}, 1]}}],
    }
    out = identifiers.scrub_contexts(doc)
    assert out["data"][0]["data"] == {
        "keep": "k",
        "s": {"schema": SESSION, "data": {"sessionId": "s1"}},
        "g": [1],
    }


def test_nested_schema_of_a_rule_with_data_not_an_object_goes() -> None:
    doc = {"schema": CONTEXTS, "data": [{"schema": CUSTOM, "data": {"s": {"schema": SESSION, "data": [C]}}}]}
    assert identifiers.scrub_contexts(doc)["data"][0]["data"] == {}


def test_a_key_that_carries_the_link_goes() -> None:
    data = {f"https://b.test/?x=1&_sp={C}.1732270000123": 1, "https://b.test/?x=1": 2, "display=1": 3}
    assert identifiers.scrub_data(CUSTOM, data) == (True, {"https://b.test/?x=1": 2, "display=1": 3})


def test_data_that_is_an_entity_dropped_whole_goes() -> None:
    assert identifiers.scrub_data(CUSTOM, {"schema": GA, "data": {"_ga": C}}) == (False, None)
