"""SP-Anonymous against hostile shapes: an identifier planted where the scrub might not look.

Each probe plants a unique canary value in one place an identifier can hide (keys beside `data` in a
self-describing envelope, entity data that is an array, a schema with a rule that also carries a
generic identifier, nested fields, schema names in another case, the cross-domain `_sp` link
percent-encoded or in other URLs, identifier-named params that are not the protocol's own). Sent
with SP-Anonymous, the canary must be nowhere: not in any table or view, not in the database's
raw bytes (file, WAL), not in a log line, not in /metrics. The same request without the header is
the control: it keeps the canary, so each check can fail.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from collector.config import Config, Secret
from tests.conftest import SCHEMA, TP2, batch, ev, rows

ANON = {"SP-Anonymous": "*"}
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
CUSTOM = "iglu:com.acme/thing/jsonschema/1-0-0"
SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
MOBILE = "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3"
LINK_CLICK = "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1"
GEO = "iglu:com.snowplowanalytics.snowplow/geolocation_context/jsonschema/1-1-0"


def ctx(*entities: Any, **beside: Any) -> str:
    return orjson.dumps({"schema": CONTEXTS, "data": list(entities), **beside}).decode()


def ue(schema: str, data: Any, **beside: Any) -> str:
    return orjson.dumps({"schema": UNSTRUCT, "data": {"schema": schema, "data": data, **beside}}).decode()


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def post(*events: Any) -> tuple[str, str, dict[str, Any]]:
    return "POST", TP2, {"json": batch(*events)}


def get(**params: str) -> tuple[str, str, dict[str, Any]]:
    return "GET", "/i", {"params": ev(**params)}


def probes(c: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Each probe's request, planting the canary c once."""
    sp = f"{c}.1732270000123"
    twice = quote(quote(f"https://c.test/?_sp={sp}", safe=""), safe="")
    # a duplicate key: orjson keeps the last, so the entity is scrubbed as the geolocation it reads as
    dup_schema = (
        f'{{"schema":"{CONTEXTS}","data":[{{"schema":"{CUSTOM}","data":{{"lat":"{c}"}},"schema":"{GEO}"}}]}}'
    )
    return {
        "a key beside an entity's data": post(ev(co=ctx({"schema": CUSTOM, "data": {}, "userId": c}))),
        "a key beside the contexts' data": post(ev(co=ctx({"schema": CUSTOM, "data": {}}, userId=c))),
        "a key beside the event's data": post(ev("ue", ue_pr=ue(CUSTOM, {}, userId=c))),
        "entity data that is an array": post(ev(co=ctx({"schema": CUSTOM, "data": [{"userId": c}]}))),
        "session data that is an array": post(ev(co=ctx({"schema": SESSION, "data": [{"userId": c}]}))),
        "base64 entity data that is an array": post(
            ev(cx=b64(ctx({"schema": CUSTOM, "data": [{"email": c}]})))
        ),
        "a generic id in a schema with a rule": post(
            ev(co=ctx({"schema": WEB_PAGE, "data": {"id": "wp", "userId": c}}))
        ),
        "a nested id in a schema with a rule": post(
            ev(co=ctx({"schema": SESSION, "data": {"sessionId": "s", "meta": {"userId": c}}}))
        ),
        "a deep id in a schema with a rule": post(
            ev(co=ctx({"schema": SESSION, "data": {"sessionId": "s", "x": [[[{"email": c}]]]}}))
        ),
        "a rule's field nested": post(
            ev(co=ctx({"schema": SESSION, "data": {"sessionId": "s", "x": {"previousSessionId": c}}}))
        ),
        "a schema name in another case": post(
            ev(
                co=ctx(
                    {"schema": MOBILE.replace("mobile_context", "Mobile_Context"), "data": {"appleIdfa": c}}
                )
            )
        ),
        "a schema name with a space": post(
            ev(co=ctx({"schema": SESSION.replace("iglu:", "iglu: "), "data": {"previousSessionId": c}}))
        ),
        "a percent-encoded _sp in the page URL": get(url=f"https://s.test/p?%5Fsp={sp}"),
        "a percent-encoded _sp in the referrer": get(refr=f"https://s.test/p?%5fsp={sp}"),
        # decoded once by the collector: `url` is https://s.test/?utm_source=x&%5Fsp=..., a link to parse_qsl
        "an _sp inside a percent-encoded query": (
            "GET",
            f"/i?e=pv&p=web&tv=js&url=https://s.test/?utm_source=x%26%255Fsp={sp}",
            {},
        ),
        "an _sp param of its own": get(_sp=sp),
        "an _sp in a hash route's query": get(
            url=f"https://s.test/#/route?_sp={sp}", refr=f"https://s.test/#/r?_sp={sp}"
        ),
        "an _sp after a second question mark": get(url=f"https://s.test/?a=1?_sp={sp}"),
        "a rule's field in another case": post(
            ev(
                co=ctx(
                    {
                        "schema": "iglu:com.snowplowanalytics.snowplow.ecommerce/user/jsonschema/1-0-0",
                        "data": {"ID": c},
                    }
                )
            )
        ),
        "an _sp in a redirect's target": (
            "GET",
            "/r/tp2",
            {"params": {"u": f"https://shop.test/x?_sp={sp}"}},
        ),
        "an _sp in a link click's target": post(
            ev("ue", ue_pr=ue(LINK_CLICK, {"targetUrl": f"https://b.test/?_sp={sp}"}))
        ),
        "an _sp in an entity's URL, the rest kept": post(
            ev(co=ctx({"schema": CUSTOM, "data": {"href": f"https://b.test/?a=1&_sp={sp}&b=2", "n": 1}}))
        ),
        "an _sp in an encoded URL inside the page URL": get(
            url="https://s.test/p?next=" + quote(f"https://b.test/?_sp={sp}", safe="")
        ),
        "an _sp in a twice-encoded URL inside an entity's URL": post(
            ev(co=ctx({"schema": CUSTOM, "data": {"href": "https://b.test/?r=" + twice}}))
        ),
        "an _sp whose = is encoded": get(url=f"https://s.test/p?x=1&_sp%3D{sp}"),
        "an _sp with a newline in its name (URL parsers drop it)": get(url=f"https://s.test/?_s\np={sp}"),
        "an _sp with a tab in an entity's URL": post(
            ev(co=ctx({"schema": CUSTOM, "data": {"href": f"https://o.test/?_s\tp={sp}"}}))
        ),
        "a refused event's object value": post(ev(eid="ok4"), {**ev(), "foo": {"userId": c}, "n": [1]}),
        "an identifier-named param in another case": get(UID=c),
        "an identifier-named field with a lookalike letter": post(
            ev(co=ctx({"schema": CUSTOM, "data": {"userİd": c}}))
        ),
        "an identifier-named field with a prefix": post(
            ev(co=ctx({"schema": CUSTOM, "data": {"customerEmail": c}}))
        ),
        "a refused event's key beside data": post(
            ev(eid="ok1"), {**ev(p="BAD"), "co": ctx({"schema": CUSTOM, "data": {}, "email": c})}
        ),
        "a refused event's array data": post(
            ev(eid="ok2"), {**ev(p="BAD"), "co": ctx({"schema": CUSTOM, "data": [{"userId": c}]})}
        ),
        "an object as an entity's schema": post(ev(co=ctx({"schema": {"userId": c}, "data": {}}))),
        "an object as the contexts' schema": post(
            ev(co=orjson.dumps({"schema": {"userId": c}, "data": [{"schema": CUSTOM, "data": {}}]}).decode())
        ),
        "an _sp in an entity's schema": post(ev(co=ctx({"schema": f"{CUSTOM}?_sp={sp}", "data": {"n": 1}}))),
        "an email in an entity's schema": post(
            ev(co=ctx({"schema": f"iglu:com.acme/{c}@mail.test/jsonschema/1-0-0", "data": {"n": 1}}))
        ),
        "an object as the event's outer schema": post(
            ev(
                "ue",
                ue_pr=orjson.dumps(
                    {"schema": {"userId": c}, "data": {"schema": CUSTOM, "data": {}}}
                ).decode(),
            )
        ),
        # the envelope's schema is the client's to name: one with a rule is the entity it names
        "a ruled schema as the event's envelope": post(
            ev(
                "ue",
                ue_pr=orjson.dumps({"schema": GEO, "data": {"schema": CUSTOM, "data": {"lat": c}}}).decode(),
            )
        ),
        "a ruled envelope's field in the event's data": post(
            ev(
                "ue",
                ue_pr=orjson.dumps(
                    {"schema": SESSION, "data": {"schema": CUSTOM, "data": {"previousSessionId": c}}}
                ).decode(),
            )
        ),
        "an object as a refused event's inner schema": post(
            ev(eid="ok5"),
            ev("ue", ue_pr=ue({"userId": c}, {})),  # type: ignore[arg-type]
        ),
        "a refused event's inner schema that is not an iglu URI": post(
            ev(eid="ok6"), ev("ue", ue_pr=ue(f"urn:{c}:x", {}))
        ),
        "a repeated uid param": ("GET", f"/i?e=pv&p=web&tv=js&uid=a&uid={c}&duid={c}", {}),
        "a duplicate schema key": (
            "POST",
            TP2,
            {
                "data": orjson.dumps(
                    {"schema": SCHEMA, "data": [{"e": "pv", "p": "web", "tv": "js", "co": dup_schema}]}
                ),
            },
        ),
    }


NAMES = list(probes("x"))


def everything(db: Path) -> str:
    """Every row of every table and view, and the database's raw bytes (file, WAL)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [n for (n,) in conn.execute("select name from sqlite_master where type in ('table', 'view')")]
        out = [f"{n}: {r!r}" for n in names for r in conn.execute(f"select * from {n}")]
    finally:
        conn.close()
    raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    return "\n".join(out) + raw.decode("latin-1")


def config(db: Path) -> Config:
    return Config(
        db=db, cookie_secret=(Secret("test-secret"),), access_log=True, redirect_domains=("shop.test",)
    )


async def send(make_client: Any, cfg: Config, name: str, canary: str, headers: dict[str, str]) -> str:
    client = await make_client(cfg)
    method, path, kw = probes(canary)[name]
    if "data" in kw:
        headers = {**headers, "Content-Type": "application/json"}
    resp = await client.request(method, path, headers=headers, allow_redirects=False, **kw)
    assert resp.status < 500
    metrics = await (await client.get("/metrics")).text()
    await client.close()
    return metrics


@pytest.mark.parametrize("name", NAMES)
async def test_an_anonymous_request_keeps_no_planted_identifier(
    make_client: Any, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = f"CANARY{NAMES.index(name):03d}Z"
    cfg = config(tmp_path / "anon.db")
    metrics = await send(make_client, cfg, name, canary, ANON)
    assert isinstance(cfg.db, Path)
    assert canary not in everything(cfg.db)
    assert canary not in metrics
    assert rows(cfg.db, "select count(*) as n from events")[0]["n"] >= 1  # scrubbed and stored, not refused
    # aiohttp's own access logger quotes the request line; the collector turns it off (logs.setup)
    assert [r.name for r in caplog.records if canary in r.getMessage() and r.name != "aiohttp.access"] == []


@pytest.mark.parametrize("name", NAMES)
async def test_without_the_header_the_planted_value_is_kept(
    make_client: Any, tmp_path: Path, name: str
) -> None:
    canary = f"CONTROL{NAMES.index(name):03d}Z"
    cfg = config(tmp_path / "named.db")
    await send(make_client, cfg, name, canary, {})
    assert isinstance(cfg.db, Path)
    assert canary in everything(cfg.db)
