"""Hostile input at the edge: a clear 4xx in the one error shape, never a 500, nothing else changed."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from collector import handlers, identity, protocol
from collector.app import create_app
from collector.config import Config, ConfigError, load_config
from tests.conftest import SCHEMA, TP2, batch, ev, rows
from tests.procs import Collector

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

DEV = "aaaaaaaa-0000-4000-8000-00000000000a"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


async def error_of(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert set(body["error"]) >= {"status", "reason", "message"}
    return dict(body["error"])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_is_not_its_content_encoding_is_a_400(
    client: Any, cfg: Config, encoding: str
) -> None:
    resp = await client.post(
        TP2,
        data=orjson.dumps(batch(ev())),
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert resp.status == 400
    assert (await error_of(resp))["reason"] == "bad_encoding"
    assert rows(cfg.db, "select count(*) from events")[0][0] == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_is_accepted(client: Any, cfg: Config, encoding: str) -> None:
    raw = orjson.dumps(batch(ev(eid=f"z-{encoding}")))
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    resp = await client.post(
        TP2, data=body, headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    assert resp.status == 200, await resp.text()
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == [f"z-{encoding}"]


@pytest.mark.parametrize("encoding", ["fuzzip", "x-gzip", "compress", "gzip, gzip", "gzip, deflate"])
@pytest.mark.parametrize("compressed", [False, True])
async def test_a_content_encoding_it_cannot_undo_is_a_415(
    client: Any, cfg: Config, encoding: str, compressed: bool
) -> None:
    # aiohttp reads any coding but its own four as no coding at all: the body would be parsed as
    # sent (a guess that stores a batch the client said was something else) or refused as bad JSON
    # (a 400 that makes a tracker drop the batch). The coding is what is wrong, and it is named.
    raw = orjson.dumps(batch(ev(eid="coded")))
    resp = await client.post(
        TP2,
        data=gzip.compress(raw) if compressed else raw,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert resp.status == 415, await resp.text()
    assert (await error_of(resp))["reason"] == "unsupported_encoding"
    assert rows(cfg.db, "select count(*) from events")[0][0] == 0


@pytest.mark.parametrize("encoding", ["identity", "GZIP", "Deflate"])
async def test_a_content_encoding_in_any_case_or_identity_is_read(
    client: Any, cfg: Config, encoding: str
) -> None:
    raw = orjson.dumps(batch(ev(eid="coded")))
    body = {"identity": raw, "gzip": gzip.compress(raw), "deflate": zlib.compress(raw)}[encoding.lower()]
    resp = await client.post(
        TP2, data=body, headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    assert resp.status == 200, await resp.text()
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["coded"]


@pytest.mark.parametrize("param", ["dtm", "stm", "ttm", "vid"])
async def test_superscript_digits_are_not_numbers(client: Any, cfg: Config, param: str) -> None:
    resp = await client.get("/i", params=ev(eid="sup", **{param: "12²"}))
    assert resp.status == 200
    [row] = rows(cfg.db, "select other_params, domain_sessionidx from events")
    assert row["domain_sessionidx"] is None


@pytest.mark.parametrize("param", ["nuid", "tnuid", "ip"])
async def test_non_string_identity_params_are_a_bad_event(client: Any, cfg: Config, param: str) -> None:
    resp = await client.post(TP2, json=batch({**ev(eid="n"), param: {"x": 1}}))
    assert resp.status == 400
    assert (await error_of(resp))["reason"] == "non_string_value"


async def test_non_ascii_signed_values_do_not_verify(client: Any, cfg: Config) -> None:
    value = identity.sign(DEV, b"test-secret")
    forged = value[:-1] + "é"  # 59 characters, not ASCII
    assert identity.verify(forged, [b"test-secret"]) is None
    resp = await client.get("/i", params=ev(eid="c"), headers={"Cookie": f"sp={forged}"})
    assert resp.status == 200
    resp = await client.post(TP2, json=batch(ev(eid="n", nuid=forged)))
    assert resp.status == 200
    assert DEV not in {r[0] for r in rows(cfg.db, "select network_userid from events")}


@pytest.mark.parametrize("where", ["event", "data", "value", "co-anonymous", "co"])
async def test_json_nested_300_deep_is_a_4xx_or_stored(client: Any, cfg: Config, where: str) -> None:
    deep = nested(300)
    headers = {"SP-Anonymous": "*"} if where == "co-anonymous" else {}
    if where == "event":
        body: Any = batch(ev(eid="ok"), deep)
    elif where == "data":
        body = {"schema": SCHEMA, "data": deep}
    elif where == "value":
        body = batch(ev(eid="ok"), {**ev(eid="v"), "se_va": deep})
    else:
        co = orjson.dumps({"schema": "x", "data": [{"schema": "iglu:a/b/jsonschema/1-0-0", "data": {}}]})
        text = co.decode().replace("{}", json.dumps({"d": nested(300)}))
        body = batch(ev(eid="ok"), ev(eid="deep", co=text, uid="u"))
    data = json.dumps(body)  # orjson writes at most 254 levels; the standard library writes these
    resp = await client.post(TP2, data=data, headers={"Content-Type": "application/json", **headers})
    assert resp.status < 500, await resp.text()
    assert resp.status in (200, 400)


@pytest.mark.parametrize("anonymous", [False, True])
async def test_contexts_within_the_limit_as_sent_are_stored_though_read_back_longer(
    client: Any, cfg: Config, anonymous: bool
) -> None:
    # `1e5` is read as the float 100000.0 and written back so: the limit is on what the tracker sent,
    # not on the collector's own re-encoding (an anonymous request's entities are rewritten).
    from collector.protocol import MAX_VALUE

    headers = {"SP-Anonymous": "*"} if anonymous else {}
    numbers = ",".join(["1e5"] * ((MAX_VALUE - 200) // 4))
    co = '{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[' + (
        '{"schema":"iglu:com.acme/n/jsonschema/1-0-0","data":{"n":[' + numbers + "]}}]}"
    )
    assert len(co) <= MAX_VALUE < len(orjson.dumps(orjson.loads(co)))
    resp = await client.post(TP2, json=batch(ev(eid="long", co=co)), headers=headers)
    assert resp.status == 200, await resp.text()
    [row] = rows(cfg.db, "select contexts from events")
    assert len(orjson.loads(row[0])["data"][0]["data"]["n"]) == (MAX_VALUE - 200) // 4
    # the control: one past the limit as sent is refused, anonymous or not
    over = co.replace("[1e5,", "[1e5," + "1," * 100, 1)
    assert len(over) > MAX_VALUE
    resp = await client.post(TP2, json=batch(ev(eid="over", co=over)), headers=headers)
    assert resp.status == 400 and (await error_of(resp))["reason"] == "value_too_long"


@pytest.mark.parametrize(
    "target",
    [
        "http://xn--zz/",
        "https://shop.test/\r\nSet-Cookie: x=1",
        "https://shop.test/a\nb",
        "https://shop.test/ a",
    ],
)
async def test_hostile_redirect_targets_are_refused_before_storing(
    make_client: Any, cfg: Config, target: str
) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.test", "xn--zz")))
    resp = await client.get("/r/tp2", params={"u": target, **ev(eid="r")}, allow_redirects=False)
    assert resp.status in (302, 400)
    if resp.status == 302:
        location = resp.headers["Location"]
        assert "\r" not in location and "\n" not in location and " " not in location
    else:
        assert (await error_of(resp))["reason"] == "redirect_refused"
        assert rows(cfg.db, "select count(*) from events")[0][0] == 0


async def test_a_redirect_answers_the_url_it_checked(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.test",)))
    resp = await client.get("/r/tp2", params={"u": "https://SHOP.test/ä?q=1"}, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "https://shop.test/%C3%A4?q=1"


def test_redirect_domains_refuse_a_port() -> None:
    with pytest.raises(ConfigError, match="COLLECTOR_REDIRECT_DOMAINS"):
        load_config({"COLLECTOR_REDIRECT_DOMAINS": "shop.test:8443"})


async def test_405_names_the_allowed_methods(client: Any) -> None:
    resp = await client.put(TP2)
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert (await error_of(resp))["status"] == 405


async def test_metrics_token_is_compared_in_constant_time(
    make_client: Any, cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, Any]] = []
    real = handlers.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(handlers.hmac, "compare_digest", spy)
    client = await make_client(cfg.replace(metrics_token="tok"))
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer tok"})).status == 200
    assert len(calls) == 2


async def test_the_verify_cache_keeps_only_well_formed_values(client: Any, cfg: Config) -> None:
    signer = client.app[handlers.STATE].signer
    for i in range(20):
        resp = await client.post(TP2, json=batch(ev(eid=f"big-{i}", nuid=f"{i}" + "x" * 100_000)))
        assert resp.status == 400  # over the value limit, like every other param
        await client.get("/i", params=ev(eid=f"c-{i}"), headers={"Cookie": f"sp={i}{'y' * 3000}"})
    assert len(signer._verified) == 0


async def test_bad_row_detail_never_echoes_client_keys(client: Any, cfg: Config) -> None:
    key = "k" * 10_000
    resp = await client.post(TP2, json=batch({**ev(eid="k"), key: {"x": 1}}))
    assert resp.status == 400
    await client.get("/i", params=ev(eid="flush"))  # bad rows commit with the next group
    [row] = rows(cfg.db, "select detail from bad_rows")
    assert len(row[0]) < 200 and "kkkk" not in row[0]
    assert "kkkk" not in (await error_of(resp))["message"]


async def test_a_platform_or_content_type_is_not_echoed(client: Any, cfg: Config) -> None:
    resp = await client.get("/i", params={**ev(), "p": "secret-p-1"})
    assert "secret-p-1" not in await resp.text()
    resp = await client.post(TP2, data=b"{}", headers={"Content-Type": "secret/ctype"})
    assert resp.status == 415 and "secret" not in await resp.text()
    await client.get("/i", params=ev(eid="flush"))  # bad rows commit with the next group
    assert "secret" not in str([tuple(r) for r in rows(cfg.db, "select detail from bad_rows")])


async def raw_request(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return out


async def test_a_non_utf8_user_agent_is_stored_sanitised(cfg: Config) -> None:
    server = TestServer(create_app(cfg))
    await server.start_server()
    try:
        req = (
            b"GET /i?e=pv&p=web&tv=t&eid=ua HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"User-Agent: Mozilla \xff\xfe bot\r\n\r\n"
        )
        out = await raw_request(server.host, server.port, req)
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
    finally:
        await server.close()
    [row] = rows(cfg.db, "select useragent from events")
    assert row[0].startswith("Mozilla ") and row[0].endswith(" bot")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "request_bytes", "status"),
    [
        (
            "header too large",
            b"GET /i HTTP/1.1\r\nHost: x\r\nX-Big: " + b"s3cr3t" * 4000 + b"\r\n\r\n",
            431,
        ),
        (
            "bad chunking",
            b"POST " + TP2.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\nzz-s3cr3t\r\n",
            400,
        ),
        (
            "bad content length",
            b"POST " + TP2.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: s3cr3t\r\n\r\n",
            400,
        ),
        ("control character", b"GET /i HTTP/1.1\r\nHost: x\r\nX-A: s3cr3t\x01x\r\n\r\n", 400),
        (
            "unknown encoding",
            b"POST " + TP2.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Encoding: zstd\r\nX-S: s3cr3t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            415,
        ),
    ],
)
async def test_the_http_parsers_refusals_use_the_error_shape(
    tmp_path: Path, name: str, request_bytes: bytes, status: int
) -> None:
    with Collector(tmp_path / "p.db", env={"COLLECTOR_COOKIE_SECRET": "x"}) as proc:
        out = await raw_request(proc.host, proc.port, request_bytes)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), (name, out[:300])
    assert b"application/json" in head.lower()
    assert orjson.loads(body)["error"]["status"] == status
    assert b"s3cr3t" not in out
    assert b"s3cr3t" not in proc.log.read_bytes()


async def test_an_unknown_expectation_is_ignored_and_100_continue_works(client: Any, cfg: Config) -> None:
    resp = await client.get("/health", headers={"Expect": "<b>x</b>"})
    assert resp.status == 200 and "<b>" not in await resp.text()
    resp = await client.post(TP2, json=batch(ev(eid="cont")), headers={"Expect": "100-continue"})
    assert resp.status == 200
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["cont"]


async def test_a_session_index_out_of_range_stays_in_other_params(client: Any, cfg: Config) -> None:
    # vid past PostgreSQL's (and Snowplow's) 32-bit column: kept as sent, as any typed param that does
    # not convert, and stored on both stores; the event beside it too
    resp = await client.post(TP2, json=batch(ev(eid="good", vid="7"), ev(eid="big", vid="2147483648")))
    assert resp.status == 200, await resp.text()
    got = {
        r["event_id"]: r for r in rows(cfg.db, "select event_id, domain_sessionidx, other_params from events")
    }
    assert got["good"]["domain_sessionidx"] == 7 and got["good"]["other_params"] is None
    assert got["big"]["domain_sessionidx"] is None
    assert orjson.loads(got["big"]["other_params"]) == {"vid": "2147483648"}


async def test_a_nul_in_one_event_costs_neither_that_event_nor_its_batch(client: Any, cfg: Config) -> None:
    # JSON may carry U+0000 (`\u0000`) anywhere, PostgreSQL's text and jsonb refuse it, and a tracker
    # drops a batch answered 400: it is kept as U+FFFD, as bytes that are not UTF-8 are, on both stores
    co = (
        '{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",'
        '"data":[{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"note":"c\\u0000d"}}]}'
    )
    body = batch(
        ev(eid="good-1"),
        ev(eid="nul", page="a\x00b", co=co),
        {**ev(eid="key"), "odd\x00": "v"},
        ev(eid="text", page="a\\u0000b"),  # JSON's escape as plain text in a plain param: kept as sent
    )
    resp = await client.post(TP2, json=body)
    assert resp.status == 200, await resp.text()
    got = {
        r["event_id"]: r
        for r in rows(cfg.db, "select event_id, page_title, contexts, other_params from events")
    }
    assert sorted(got) == ["good-1", "key", "nul", "text"]
    assert got["nul"]["page_title"] == "a\ufffdb"
    assert got["text"]["page_title"] == "a\\u0000b"
    assert orjson.loads(got["nul"]["contexts"])["data"][0]["data"] == {"note": "c\ufffdd"}
    assert orjson.loads(got["key"]["other_params"]) == {"odd\ufffd": "v"}
    # a GET pixel too, and base64 contexts, whose escape the request's prefilter cannot see
    cx = base64.urlsafe_b64encode(co.encode()).decode().rstrip("=")
    assert (await client.get("/i", params=ev(eid="get-nul", page="x\x00y", cx=cx))).status == 200
    [cx_row] = rows(cfg.db, "select contexts from events where event_id = 'get-nul'")
    assert orjson.loads(cx_row[0])["data"][0]["data"] == {"note": "c\ufffdd"}
    assert rows(cfg.db, "select page_title from events where event_id = 'get-nul'")[0][0] == "x\ufffdy"


UE = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"


def _ue(schema_text: str) -> str:
    """A self-describing event's JSON text whose inner schema is `schema_text` as written in JSON."""
    return f'{{"schema":"{UE}","data":{{"schema":"{schema_text}","data":{{"n":1}}}}}}'


async def test_a_nul_in_the_events_schema_costs_neither_its_event_nor_its_batch(
    client: Any, cfg: Config
) -> None:
    # The row's JSON text was cleaned of `\u0000`, but the event's vendor, name, format and version
    # came from the parsed document, which still held U+0000: PostgreSQL refused the request (400
    # `unstorable`, the batch with it), SQLite stored the raw NUL.
    odd = ev("ue", eid="odd", ue_pr=_ue("iglu:com.acme\\u0000/clicked\\u0000/jsonschema/1-0-0\\u0000"))
    resp = await client.post(TP2, json=batch(ev(eid="good"), odd))
    assert resp.status == 200, await resp.text()
    got = {
        r[0]: r[1:]
        for r in rows(
            cfg.db, "select event_id, event_vendor, event_name, event_version, unstruct_event from events"
        )
    }
    assert sorted(got) == ["good", "odd"]
    assert got["odd"][:3] == ("com.acme\ufffd", "clicked\ufffd", "1-0-0\ufffd")
    assert (
        orjson.loads(got["odd"][3])["data"]["schema"]
        == "iglu:com.acme\ufffd/clicked\ufffd/jsonschema/1-0-0\ufffd"
    )
    # and in base64, which the request's prefilter cannot see
    ue_px = base64.urlsafe_b64encode(_ue("iglu:com.acme/tapped\\u0000/jsonschema/1-0-0").encode()).decode()
    assert (await client.get("/i", params=ev("ue", eid="px", ue_px=ue_px.rstrip("=")))).status == 200
    assert rows(cfg.db, "select event_name from events where event_id = 'px'")[0][0] == "tapped\ufffd"


async def test_a_lone_surrogate_escape_costs_neither_its_event_nor_its_batch(
    client: Any, cfg: Config
) -> None:
    # JSON.stringify writes a lone surrogate (a title cut inside an emoji) as its escape, `\ud83c`,
    # valid JSON; orjson refuses it, and the whole batch was answered 400 (a tracker drops it). It is
    # kept as U+FFFD, as bytes that are not UTF-8 are; a pair is one character, and an escaped
    # backslash before `u` no escape at all.
    def event(eid: str, title: str) -> str:
        return orjson.dumps(ev(eid=eid, page="@")).decode().replace("@", title)

    titles = {
        "high": ("Sale \\ud83c", "Sale \ufffd"),
        "low": ("x\\udc00y", "x\ufffdy"),
        "two-high": ("\\ud83c\\ud83c!", "\ufffd\ufffd!"),
        "pair": ("\\ud83c\\udf89 \\ud83c", "\U0001f389 \ufffd"),
        "escaped": ("\\\\ud83c \\udc01", "\\ud83c \ufffd"),
    }
    events = [event("good", "fine"), *(event(k, sent) for k, (sent, _) in titles.items())]
    body = f'{{"schema":"{SCHEMA}","data":[{",".join(events)}]}}'.encode()
    resp = await client.post(TP2, data=body, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert resp.status == 200, await resp.text()
    got = dict(rows(cfg.db, "select event_id, page_title from events"))
    assert got == {"good": "fine", **{k: kept for k, (_, kept) in titles.items()}}, got
    # inside a JSON param too (co, and base64 cx), where only its event was refused
    co = (
        '{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",'
        '"data":[{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"note":"c\\ud800d"}}]}'
    )
    cx = base64.urlsafe_b64encode(co.encode()).decode().rstrip("=")
    assert (await client.get("/i", params=ev(eid="co", co=co))).status == 200
    assert (await client.get("/i", params=ev(eid="cx", cx=cx))).status == 200
    for eid in ("co", "cx"):
        [ctx] = rows(cfg.db, "select contexts from events where event_id = ?", (eid,))
        assert orjson.loads(ctx[0])["data"][0]["data"] == {"note": "c\ufffdd"}
    # the control: a body that is not JSON for another reason is still refused
    resp = await client.post(TP2, data=body[:-1], headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "bad_json"


async def test_a_body_declared_past_any_integer_column_keeps_its_bad_row(cfg: Config) -> None:
    # the 413 is answered before the body is read, from the declared length; its bad row records the
    # size, which a 32-bit column (PostgreSQL's bad_rows.size) must hold, or the record is lost
    server = TestServer(create_app(cfg))
    await server.start_server()
    try:
        for length in (2_000_000, 10_000_000_000):
            req = (
                f"POST {TP2} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(req)  # and no body: the answer comes from the declared length alone
            status = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            assert status.startswith(b"HTTP/1.1 413"), status
        out = await raw_request(
            server.host,
            server.port,
            b"GET /i?e=pv&p=web&tv=t&eid=flush HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
    finally:
        await server.close()
    sizes = sorted(r[0] for r in rows(cfg.db, "select size from bad_rows where reason = 'body_too_large'"))
    assert sizes == [2_000_000, 2**31 - 1]  # the control, and the declared length at the column's limit


async def test_a_literal_backslash_u0000_is_text_kept_as_sent(client: Any, cfg: Config) -> None:
    # JSON's `\\u0000` is a backslash and `u0000`, not U+0000: only the escape is replaced
    text = "parse error at \\u0000, \\\\u0000 and \u0000"
    co = {
        "schema": SCHEMA.replace("payload_data", "contexts"),
        "data": [{"schema": "iglu:com.acme/e/jsonschema/1-0-0", "data": {"m": text}}],
    }
    resp = await client.post(TP2, json=batch(ev(eid="lit", co=orjson.dumps(co).decode())))
    assert resp.status == 200, await resp.text()
    [(stored,)] = rows(cfg.db, "select contexts from events where event_id = 'lit'")
    doc = stored if isinstance(stored, dict) else orjson.loads(stored)
    assert doc["data"][0]["data"]["m"] == text.replace("\u0000", "\ufffd")


async def test_redirect_query_over_max_query_is_414_and_stores_nothing(make_client: Any, cfg: Config) -> None:
    # "a query string over COLLECTOR_MAX_QUERY: 414" on every tracking path: /r/tp2 did not check it
    client = await make_client(cfg.replace(redirect_domains=("shop.test",)))
    params = {"u": "https://shop.test/landing", **ev("pv", eid="long-r"), "page": "p" * (cfg.max_query + 10)}
    assert len(client.make_url("/r/tp2").with_query(params).query_string) > cfg.max_query
    resp = await client.get("/r/tp2", params=params, allow_redirects=False)
    assert resp.status == 414, (resp.status, await resp.text())
    assert (await resp.json())["error"]["reason"] == "query_too_long"
    assert (await client.get("/i", params=ev("pv", eid="flush-marker"))).status == 200  # committed after
    assert rows(cfg.db, "select count(*) from events where event_id = 'long-r'")[0][0] == 0


async def test_a_400_for_a_body_that_is_not_its_encoding_does_not_kill_the_next_request(
    client: Any, cfg: Config
) -> None:
    # The 400 is sent without `Connection: close`, then aiohttp's lingering read of the broken payload
    # raises, logs "Unhandled exception" and closes the connection: the client's next request on that
    # keep-alive connection fails (ServerDisconnectedError).
    resp = await client.post(
        TP2,
        data=orjson.dumps(batch(ev())),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "bad_encoding"
    closes = resp.headers.get("Connection", "").lower() == "close"
    err: object = None
    try:
        nxt = await client.post(TP2, json=batch(ev(eid="after-bad-gzip")))
        ok = nxt.status == 200
        err = nxt.status
    except Exception as exc:  # noqa: BLE001 - aiohttp.ServerDisconnectedError
        ok = False
        err = exc
    assert closes or ok, f"400 without Connection: close, then the next request failed: {err!r}"


async def test_two_content_encoding_lines_are_a_stacked_coding_415(client: Any, cfg: Config) -> None:
    # RFC 9110: two Content-Encoding lines are one list ("gzip, gzip"), which the README answers 415.
    # The handler checks the first line, aiohttp's parser decodes by the last one.
    raw = orjson.dumps(batch(ev(eid="two-ce")))
    headers = CIMultiDict(
        [("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")]
    )
    resp = await client.post(TP2, data=gzip.compress(gzip.compress(raw)), headers=headers)
    assert resp.status == 415, (resp.status, await resp.text())
    assert (await resp.json())["error"]["reason"] == "unsupported_encoding"


async def test_identity_then_gzip_lines_are_refused_like_one_line(client: Any, cfg: Config) -> None:
    # "identity, gzip" in one line is a 415; on two lines the handler sees "identity", aiohttp gunzips.
    raw = orjson.dumps(batch(ev(eid="id-gz")))
    one = await client.post(
        TP2,
        data=gzip.compress(raw),
        headers={"Content-Type": "application/json", "Content-Encoding": "identity, gzip"},
    )
    assert one.status == 415
    headers = CIMultiDict(
        [("Content-Type", "application/json"), ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]
    )
    two = await client.post(TP2, data=gzip.compress(raw), headers=headers)
    assert two.status == one.status, (two.status, await two.text())


def _replaced_lone_surrogates(value: Any) -> Any:
    """A parsed value as the stores keep it: each lone surrogate as U+FFFD (json.loads joins a pair
    into its character already)."""
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, list):
        return [_replaced_lone_surrogates(v) for v in value]
    return {_replaced_lone_surrogates(k): _replaced_lone_surrogates(v) for k, v in value.items()}


# pieces that make escapes, look-alikes and their neighbours likely: a backslash before `ud83c` in
# the text is written `\\\\ud83c`, an escaped backslash and then text, never an escape
SURROGATE_TEXT = st.lists(
    st.sampled_from(["\\", "ud83c", "udc01", "\ud83c", "\udf89", "\udc00", '"', "a", "\u00e9"]), max_size=12
).map("".join)


@settings(max_examples=300, deadline=None)
@given(SURROGATE_TEXT)
def test_a_lone_surrogate_escape_reads_as_the_replacement_character(text: str) -> None:
    # json.dumps writes a lone surrogate as its escape, as JSON.stringify does; next to backslashes,
    # quotes and text that looks like an escape, each reads as U+FFFD and nothing else changes
    for doc in ([text], {text: [text, "\\u" + text]}):
        sent = json.dumps(doc)
        expected = _replaced_lone_surrogates(json.loads(sent))
        assert protocol.loads(sent.encode()) == expected
        assert protocol.loads(sent) == expected


def test_a_body_that_is_not_utf8_is_not_read_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # orjson refuses bytes that are not UTF-8 as "surrogates not allowed": such a body is not JSON,
    # and reading it for escapes again cost ~90 ms of the event loop a MiB for the same 400
    calls: list[int] = []
    rewrite = protocol._without_lone_surrogates
    monkeypatch.setattr(protocol, "_without_lone_surrogates", lambda raw: calls.append(1) or rewrite(raw))
    with pytest.raises(orjson.JSONDecodeError):
        protocol.loads(b'["caf\xe9 \\ud83c"]')
    assert calls == []
    assert protocol.loads(b'["caf\\u00e9 \\ud83c"]') == ["caf\u00e9 \ufffd"] and calls == [1]  # the control
