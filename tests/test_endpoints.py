"""Every endpoint through the real app factory on a real SQLite file."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Config
from collector.protocol import PIXEL
from tests.conftest import SCHEMA, TP2, batch, ev, only, rows

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

UE = {
    "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
    "data": {"schema": "iglu:com.acme/button_click/jsonschema/1-0-0", "data": {"id": "buy"}},
}
CO = {
    "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
    "data": [{"schema": "iglu:com.acme/page/jsonschema/1-0-0", "data": {"kind": "article"}}],
}


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


def cookie_value(resp: Any, name: str = "sp") -> str | None:
    morsel = resp.cookies.get(name)
    return None if morsel is None else str(morsel.value)


@pytest.mark.parametrize("path", ["/i", "/ice.png", TP2])
async def test_get_pixel_stores_one_event(client: Any, cfg: Config, path: str) -> None:
    resp = await client.get(path, params=ev("pv", eid="e-1", url="https://shop.test/a", page="A", aid="shop"))
    assert resp.status == 200
    assert await resp.read() == PIXEL and len(PIXEL) == 43
    assert resp.headers["Content-Type"] == "image/gif"
    assert resp.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    [row] = rows(cfg.db, "select * from events")
    assert (row["event_id"], row["event"], row["page_url"], row["page_title"], row["app_id"]) == (
        "e-1",
        "pv",
        "https://shop.test/a",
        "A",
        "shop",
    )
    assert row["platform"] == "web" and row["v_tracker"] == "js-4.10.1" and row["anonymous"] == 0


async def test_head_pixel_without_params_is_a_probe_and_stores_nothing(client: Any, cfg: Config) -> None:
    resp = await client.head("/ice.png")
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/gif"
    assert rows(cfg.db, "select count(*) from events")[0][0] == 0


async def test_head_pixel_with_params_stores_the_event(client: Any, cfg: Config) -> None:
    resp = await client.head("/ice.png", params=ev("pv", eid="h-1"))
    assert resp.status == 200
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["h-1"]


async def test_post_batch_merges_query_params_into_every_event(client: Any, cfg: Config) -> None:
    body = batch(
        ev("pv", eid="p-1", aid="inbody"), ev("se", eid="p-2", se_ca="cat", se_ac="act", se_va="2.5")
    )
    resp = await client.post(TP2 + "?aid=fromquery", json=body)
    assert resp.status == 200 and await resp.text() == "ok"
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert set(got) == {"p-1", "p-2"}
    assert {r["app_id"] for r in got.values()} == {"fromquery"}  # the query string overrides the body
    assert (got["p-2"]["se_category"], got["p-2"]["se_action"], got["p-2"]["se_value"]) == ("cat", "act", 2.5)


@pytest.mark.parametrize("version", ["1-0-0", "1-0-1", "1-0-2", "1-0-3", "1-0-4"])
async def test_every_payload_schema_version_is_accepted(client: Any, cfg: Config, version: str) -> None:
    body = {"schema": SCHEMA.replace("1-0-4", version), "data": [ev("pv")]}
    resp = await client.post(
        TP2, data=orjson.dumps(body), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert resp.status == 200


async def test_self_describing_json_and_base64_encodings_store_the_same(client: Any, cfg: Config) -> None:
    plain = ev("ue", eid="json", ue_pr=orjson.dumps(UE).decode(), co=orjson.dumps(CO).decode())
    encoded = ev("ue", eid="b64", ue_px=b64(UE), cx=b64(CO))
    assert (await client.post(TP2, json=batch(plain))).status == 200
    assert (await client.get("/i", params=encoded)).status == 200
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    for eid in ("json", "b64"):
        assert orjson.loads(got[eid]["unstruct_event"]) == UE
        assert orjson.loads(got[eid]["contexts"]) == CO
        assert (got[eid]["event_vendor"], got[eid]["event_name"], got[eid]["event_version"]) == (
            "com.acme",
            "button_click",
            "1-0-0",
        )


async def test_timestamps_and_other_params(client: Any, cfg: Config) -> None:
    resp = await client.get(
        "/i",
        params=ev(
            "pv", dtm="1732270000123", stm="1732270001000", f_pdf="1", lang="en-GB", tz="Europe/London"
        ),
    )
    assert resp.status == 200
    [row] = rows(cfg.db, "select * from events")
    assert row["dvce_created_tstamp"] == "2024-11-22 10:06:40.123"
    assert row["dvce_sent_tstamp"] == "2024-11-22 10:06:41.000"
    assert (row["br_lang"], row["os_timezone"]) == ("en-GB", "Europe/London")
    assert orjson.loads(row["other_params"]) == {"f_pdf": "1"}  # a param without a column of its own
    assert row["collector_tstamp"] == "2027-01-15 08:00:00.000"  # the test clock


async def test_device_cookie_is_issued_then_reused(client: Any, cfg: Config) -> None:
    first = await client.get("/i", params=ev("pv", eid="c-1"))
    header = first.headers["Set-Cookie"]
    for attr in ("Path=/", "HttpOnly", "Secure", "SameSite=None", "Max-Age=31536000", "Expires="):
        assert attr in header
    value = cookie_value(first)
    assert value is not None
    second = await client.get("/i", params=ev("pv", eid="c-2"), headers={"Cookie": f"sp={value}"})
    assert cookie_value(second) == value  # refreshed, same id
    ids = {r[0] for r in rows(cfg.db, "select network_userid from events")}
    assert ids == {value.split(".")[0]}


async def test_cookie_domain_and_name_are_configurable(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(cookie_name="dev", cookie_domain="example.test"))
    resp = await client.get("/i", params=ev("pv"))
    assert (
        resp.headers["Set-Cookie"].startswith("dev=") and "Domain=example.test" in resp.headers["Set-Cookie"]
    )


async def test_anonymous_header_floor(client: Any, cfg: Config) -> None:
    known = await client.get("/i", params=ev("pv", eid="before"))
    value = cookie_value(known)
    resp = await client.get(
        "/i", params=ev("pv", eid="anon"), headers={"SP-Anonymous": "*", "Cookie": f"sp={value}"}
    )
    assert resp.status == 200
    assert resp.headers["Set-Cookie"].startswith("sp=; Max-Age=0")  # the old cookie is expired
    row = rows(cfg.db, "select * from events where event_id = 'anon'")[0]
    assert row["network_userid"] is None and row["user_ipaddress"] is None and row["anonymous"] == 1
    # the same checks find the values where they belong: the non-anonymous row has both
    row = rows(cfg.db, "select * from events where event_id = 'before'")[0]
    assert row["network_userid"] == value.split(".")[0] and row["user_ipaddress"] == "127.0.0.1"


async def test_anonymous_request_without_cookie_gets_no_set_cookie(client: Any) -> None:
    resp = await client.get("/i", params=ev("pv"), headers={"sp-anonymous": "yes"})
    assert resp.status == 200 and "Set-Cookie" not in resp.headers


async def test_retries_do_not_duplicate(client: Any, cfg: Config) -> None:
    body = batch(ev("pv", eid="r-1"), ev("pv", eid="r-2"))
    for _ in range(3):
        assert (await client.post(TP2, json=body)).status == 200
    assert (await client.get("/i", params=ev("pv", eid="r-1"))).status == 200
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["r-1", "r-2"]


async def test_redirect_to_an_allowed_host(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.test", "*.partner.test")))
    resp = await client.get("/r/tp2", params={"u": "https://a.partner.test/x?y=1"}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "https://a.partner.test/x?y=1"
    [row] = rows(cfg.db, "select * from events")
    assert row["event_name"] == "uri_redirect"
    assert orjson.loads(row["unstruct_event"])["data"]["data"] == {"uri": "https://a.partner.test/x?y=1"}
    resp = await client.get(
        "/r/tp2", params={**ev("pv", eid="rd"), "u": "http://shop.test/"}, allow_redirects=False
    )
    assert resp.status == 302
    assert rows(cfg.db, "select event from events where event_id = 'rd'")[0][0] == "pv"


@pytest.mark.parametrize(
    "target", ["https://evil.test/", "javascript:alert(1)", "//evil.test", "", "https://shop.test.evil/"]
)
async def test_redirect_refuses_other_targets(make_client: Any, cfg: Config, target: str) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.test",)))
    resp = await client.get("/r/tp2", params={"u": target}, allow_redirects=False)
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "redirect_refused"
    assert "Location" not in resp.headers
    assert rows(cfg.db, "select count(*) from events")[0][0] == 0


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_a_redirect_probe_without_params_stores_nothing(
    make_client: Any, cfg: Config, method: str
) -> None:
    # A link checker's HEAD on the bare redirect path is not a refused event; a GET without a target
    # is, and keeps its bad row (the control: the same check finds it).
    client = await make_client(cfg.replace(redirect_domains=("shop.test",)))
    resp = await client.request(method, "/r/tp2", allow_redirects=False)
    assert resp.status == 400 and "Location" not in resp.headers
    await _flush(client)
    reasons = [r[0] for r in rows(cfg.db, "select reason from bad_rows")]
    assert reasons == ([] if method == "HEAD" else ["redirect_refused"])
    assert rows(cfg.db, "select count(*) from events where event_id != 'flush-marker'")[0][0] == 0


async def test_redirects_are_off_by_default(client: Any, cfg: Config) -> None:
    resp = await client.get("/r/tp2", params={"u": "https://shop.test/"}, allow_redirects=False)
    assert resp.status == 400 and "off" in (await resp.json())["error"]["message"]


async def test_path_aliases(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(paths=(("/collect/tp", TP2), ("/px.gif", "/i"))))
    assert (await client.post("/collect/tp", json=batch(ev("pv", eid="alias-post")))).status == 200
    assert (await client.get("/px.gif", params=ev("pv", eid="alias-get"))).status == 200
    assert (await client.options("/collect/tp", headers={"Origin": "http://a.test"})).status == 200
    assert {r[0] for r in rows(cfg.db, "select event_id from events")} == {"alias-post", "alias-get"}


async def test_preflight_and_cors_echo_the_origin(client: Any) -> None:
    resp = await client.options(
        TP2,
        headers={
            "Origin": "http://site.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,sp-anonymous",
        },
    )
    assert resp.status == 200
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == "http://site.test"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Allow-Headers"] == "Content-Type, SP-Anonymous"
    assert int(h["Access-Control-Max-Age"]) > 0
    post = await client.post(TP2, json=batch(ev()), headers={"Origin": "http://site.test"})
    assert post.headers["Access-Control-Allow-Origin"] == "http://site.test"
    assert post.headers["Access-Control-Allow-Credentials"] == "true"
    bad = await client.post(
        TP2, data=b"{", headers={"Origin": "http://site.test", "Content-Type": "application/json"}
    )
    assert bad.status == 400 and bad.headers["Access-Control-Allow-Origin"] == "http://site.test"


async def test_cors_allow_list(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(cors_origins=("https://good.test",)))
    ok = await client.options(TP2, headers={"Origin": "https://good.test"})
    assert ok.status == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://good.test"
    no = await client.options(TP2, headers={"Origin": "https://other.test"})
    assert no.status == 403 and "Access-Control-Allow-Origin" not in no.headers
    post = await client.post(TP2, json=batch(ev()), headers={"Origin": "https://other.test"})
    assert "Access-Control-Allow-Origin" not in post.headers


async def test_health_ready_robots(client: Any) -> None:
    assert (await client.get("/health")).status == 200
    assert (await (await client.get("/ready")).json()) == {"status": "ready"}
    robots = await client.get("/robots.txt")
    assert "Disallow: /" in await robots.text()


async def test_ready_is_503_while_draining(client: Any) -> None:
    from collector.handlers import STATE

    client.app[STATE].draining = True
    resp = await client.get("/ready")
    assert resp.status == 503 and (await resp.json())["error"]["reason"] == "draining"
    assert (await client.get("/health")).status == 200


BAD_POSTS = [
    (b"{not json", "application/json", 400, "bad_json"),
    (
        orjson.dumps({"schema": "iglu:com.acme/other/jsonschema/1-0-0", "data": [ev()]}),
        "application/json",
        400,
        "bad_schema",
    ),
    (orjson.dumps([ev()]), "application/json", 400, "bad_envelope"),
    (orjson.dumps({"schema": SCHEMA, "data": []}), "application/json", 400, "bad_envelope"),
    (
        orjson.dumps(batch({"e": "pv", "p": "web", "tv": "js", "vid": 3})),
        "application/json",
        400,
        "non_string_value",
    ),
    (orjson.dumps(batch({"p": "web", "tv": "js"})), "application/json", 400, "missing_field"),
    (orjson.dumps(batch(ev(ue_px="!!!not base64"))), "application/json", 400, "bad_base64"),
    (orjson.dumps(batch(ev(co="{oops"))), "application/json", 400, "bad_json"),
    (orjson.dumps(batch(ev(p="mars"))), "application/json", 400, "bad_platform"),
    (orjson.dumps(batch(ev())), "application/xml", 415, "bad_content_type"),
    (b"\xff\xfe garbage", "application/json", 400, "bad_json"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "reason"), BAD_POSTS)
async def test_bad_posts_get_a_clear_4xx_and_a_bad_row(
    client: Any, cfg: Config, body: bytes, ctype: str, status: int, reason: str
) -> None:
    resp = await client.post(TP2, data=body, headers={"Content-Type": ctype})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["status"] == status and err["reason"] == reason and err["message"]
    await _flush(client)
    assert rows(cfg.db, "select count(*) from events where event_id != 'flush-marker'")[0][0] == 0
    [bad] = rows(cfg.db, "select * from bad_rows")
    assert bad["reason"] == reason and bad["size"] > 0


async def _flush(client: Any) -> None:
    """Bad rows of refused requests are queued without waiting: commit a marker request behind them."""
    resp = await client.get("/i", params=ev("pv", eid="flush-marker"))
    assert resp.status == 200


async def test_bad_get_params(client: Any, cfg: Config) -> None:
    resp = await client.get("/i", params={"e": "pv"})
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "missing_field"
    resp = await client.get("/i", params=ev("ue", ue_px="@@@"))
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "bad_base64"


async def test_one_bad_event_does_not_cost_the_good_ones(client: Any, cfg: Config) -> None:
    body = batch(ev("pv", eid="good-1"), {"e": "pv", "eid": "bad-1"}, ev("se", eid="good-2"), ev("pv", vid=3))  # type: ignore[arg-type]
    resp = await client.post(TP2, json=body)
    assert resp.status == 200
    answer = await resp.json()
    assert (answer["stored"], answer["rejected"]) == (2, 2)
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["good-1", "good-2"]
    assert sorted(r[0] for r in rows(cfg.db, "select reason from bad_rows")) == [
        "missing_field",
        "non_string_value",
    ]


async def test_oversized_body_is_413_before_reading_it(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(max_body=2048))
    big = orjson.dumps(batch(*[ev("pv", url="x" * 100) for _ in range(40)]))
    resp = await client.post(TP2, data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"]["reason"] == "body_too_large"

    async def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    resp = await client.post(TP2, data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    await _flush(client)
    assert [r[0] for r in rows(cfg.db, "select reason from bad_rows")] == ["body_too_large"] * 2


async def test_absurd_query_string_is_414(client: Any, cfg: Config) -> None:
    resp = await client.get("/i", params=ev("pv", url="x" * 20000))
    assert resp.status == 414 and (await resp.json())["error"]["reason"] == "query_too_long"


async def test_too_many_events(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(max_events=3))
    resp = await client.post(TP2, json=batch(*[ev() for _ in range(4)]))
    assert resp.status == 413 and (await resp.json())["error"]["reason"] == "too_many_events"


async def test_unknown_path_and_method_use_the_error_shape(client: Any) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["status"] == 404
    resp = await client.delete(TP2)
    assert resp.status == 405 and (await resp.json())["error"]["status"] == 405
    assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD", "POST", "OPTIONS"}  # what tp2 takes


@only("sqlite")  # holds SQLite's write lock from another connection; test_postgres holds a row lock
async def test_full_write_queue_answers_503_with_retry_after(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(queue_max=3, busy_timeout=20000))
    blocker = sqlite3.connect(cfg.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the writer waits
    import asyncio

    first = asyncio.ensure_future(client.post(TP2, json=batch(ev(eid="q-1"), ev(eid="q-2"))))
    await asyncio.sleep(0.3)
    resp = await client.post(TP2, json=batch(ev(eid="q-3"), ev(eid="q-4")))
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["reason"] == "overloaded"
    blocker.execute("ROLLBACK")
    blocker.close()
    assert (await first).status == 200  # the queued request commits once the lock is free
    assert sorted(r[0] for r in rows(cfg.db, "select event_id from events")) == ["q-1", "q-2"]


async def test_a_batch_over_queue_max_events_is_not_a_permanent_503(make_client: Any, cfg: Config) -> None:
    # The queue is empty, so nothing is "full"; yet a batch with more events than COLLECTOR_QUEUE_MAX
    # (allowed: COLLECTOR_MAX_EVENTS defaults to 500, QUEUE_MAX may be 1..) is never admitted, and the
    # tracker retries its 503 forever. The byte bound takes such a request when nothing else waits.
    client = await make_client(cfg.replace(queue_max=2))
    body = batch(ev(eid="q-1"), ev(eid="q-2"), ev(eid="q-3"))
    for _ in range(3):  # not a momentary state: every retry gets the same
        resp = await client.post(TP2, json=body)
        assert resp.status == 200, (resp.status, await resp.text())
    assert rows(cfg.db, "select count(*) from events")[0][0] == 3


async def test_events_survive_in_a_fresh_connection_when_acknowledged(
    client: Any, cfg: Config, tmp_path: Path
) -> None:
    resp = await client.post(TP2, json=batch(*[ev(eid=f"d-{i}") for i in range(50)]))
    assert resp.status == 200
    assert rows(cfg.db, "select count(*) from events")[0][0] == 50
