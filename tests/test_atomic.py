"""The tracker-sent atomic columns (migration sqlite 0007 / postgres 0003): what each param becomes, on
both stores, through the HTTP edge and through a store directly; the identifier columns never under
SP-Anonymous and retired with the device."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import Config
from collector.events import query_fields, url_parts
from collector.identifiers import without_link
from storage import migrate as sqlite_migrate
from storage import pg_schema
from storage.base import COL, Submission
from storage.postgres import PostgresStore
from storage.sessions import SessionRules
from storage.sqlite import SqliteStore
from tests.conftest import TP2, batch, columns, ev, event_row, only, rows
from tests.test_sessions import ANON_UE, Browser

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

FP = "fp-canary-3141592653"
REFR_DUID = "5f1d7e36-refr-4c3a-9b1e-6a2f9d8c7b11"
URL = f"https://Shop.Test:8443/p/q?utm_source=news&utm_medium=email&_sp={REFR_DUID}.1732270000123#top"


def test_without_link_cuts_only_the_cross_domain_param() -> None:
    assert without_link("https://a.test/p?_sp=d.1") == "https://a.test/p"
    assert without_link("https://a.test/p?x=1&_sp=d.1&_sp=e.2&y=2#f") == "https://a.test/p?x=1&y=2#f"
    assert without_link("https://a.test/p?x=1&_sp=d.1#f") == "https://a.test/p?x=1#f"
    assert without_link("https://a.test/p?a_sp=1&b=_sp=") == "https://a.test/p?a_sp=1&b=_sp="  # not the param
    # the name as collector.events reads it (percent-decoded, as parse_qsl does), any case, in the fragment
    assert without_link("https://a.test/p?%5Fsp=d.1&x=1") == "https://a.test/p?x=1"
    assert without_link("https://a.test/p?x=1&_SP=d.1") == "https://a.test/p?x=1"
    assert without_link("https://a.test/p?x=1#_sp=d.1") == "https://a.test/p?x=1"
    assert without_link("https://a.test/p?_sp=d.1" + "&" * 50_000 + "x") == "https://a.test/p?x"  # linear


def test_without_link_cuts_the_link_inside_an_encoded_url() -> None:
    # A redirect target or a return address carries a whole URL as one param's value, encoded once or
    # more; its `_sp` is the same link. Only the link goes, the rest of the value as it was sent.
    inner = "https://b.test/q?_sp=d.1&k=v"
    once = quote_plus(inner, safe="")
    assert without_link(f"https://a.test/p?next={once}&x=1") == (
        f"https://a.test/p?next={quote_plus('https://b.test/q?k=v', safe='')}&x=1"
    )
    twice = quote_plus(once, safe="")
    assert "d.1" not in unquote_plus(unquote_plus(without_link(f"https://a.test/p?next={twice}")))
    assert without_link(f"https://a.test/p#next={once}") == (
        f"https://a.test/p#next={quote_plus('https://b.test/q?k=v', safe='')}"
    )
    # the name encoded whole or in part, `=` included, as a server decoding the pair would read it
    assert without_link("https://a.test/p?x=1&_sp%3Dd.1") == "https://a.test/p?x=1"
    assert without_link("https://a.test/p?x=1&%5F%73%70=d.1") == "https://a.test/p?x=1"
    # what is not the link stays byte for byte, encoded values included
    kept = f"https://a.test/p?next={quote_plus('https://b.test/?a_sp=1&b=_sp=', safe='')}&y=a+b%2B"
    assert without_link(kept) == kept
    # a value encoded past any reason is dropped rather than decoded without end
    deep = "_sp=d.1"
    for _ in range(40):
        deep = quote_plus(deep, safe="")
    assert "d.1" not in without_link(f"https://a.test/p?x={deep}")
    letters = "%5F%73%70%3Dd.1"  # the letters encoded too: no `sp` to see at any level
    for _ in range(7):
        letters = quote_plus(letters, safe="")
    assert "d.1" not in without_link(f"https://a.test/p?x={letters}")
    # a string that is a whole encoded URL (an entity's `encodeURIComponent(url)`), or a bare query
    assert without_link(quote_plus("https://b.test/?_sp=d.1", safe="")) == quote_plus(
        "https://b.test/", safe=""
    )
    assert without_link("a=1&_sp=d.1") == "a=1"
    # `;` separates pairs for some servers (and `&amp;` ends in one)
    assert without_link("https://a.test/p?a=1;_sp=d.1") == "https://a.test/p?a=1"
    assert without_link("https://a.test/p?a=1&amp;_sp=d.1") == "https://a.test/p?a=1&amp"
    # a cut value keeps what was not the link: bytes that are not UTF-8, slashes as they were
    latin = f"https://a.test/p?n={quote_plus('https://b.test/?_sp=d.1&k=', safe='')}caf%E9"
    assert without_link(latin) == f"https://a.test/p?n={quote_plus('https://b.test/?k=', safe='')}caf%E9"
    # ... and never grows much: a value that would come back many times its size is dropped
    grown = "?x=" + deep6("https://b/?_sp=d&b=") + "/" * 64_000
    assert len(without_link(grown)) <= 2 * len(grown) and "_sp" not in without_link(grown)
    # a pair that was only the link, encoded, leaves no empty pair behind
    assert without_link("https://a.test/p?x=1&%255Fsp%253Dd.1&y=2") == "https://a.test/p?x=1&y=2"


def _spelled(ch: str, escaped: bool, upper: bool) -> str:
    escape = f"%{ord(ch):02x}"
    return (escape.upper() if upper else escape) if escaped else ch


@settings(max_examples=500, deadline=None)
@given(
    escaped=st.lists(st.booleans(), min_size=4, max_size=4),
    upper=st.booleans(),
    name=st.sampled_from(["_sp", "_SP", "_Sp"]),
    tab=st.sampled_from(["", "\t", "%09", "\n", "%0D"]),
    depth=st.integers(0, 5),
    where=st.sampled_from(["param", "fragment", "whole", "semicolon"]),
    beside=st.sampled_from(["", "a=1&", "q=caf%C3%A9+x&", "x=%20y&"]),
)
def test_every_spelling_of_the_link_is_cut(
    escaped: list[bool], upper: bool, name: str, tab: str, depth: int, where: str, beside: str
) -> None:
    # may_link rules strings out before any is walked: no spelling of the link may get past it, each
    # of `_`, `s`, `p`, `=` escaped or not, a tab or newline inside, at any level of encoding.
    chars = [_spelled(c, e, upper) for c, e in zip(name + "=", escaped, strict=True)]
    inner = f"https://b.test/p?{beside}{''.join(chars[:2])}{tab}{''.join(chars[2:])}DUID7.1&k=v"
    for _ in range(depth):
        inner = quote_plus(inner, safe="")
    url = {
        "param": f"https://a.test/?next={inner}",
        "fragment": f"https://a.test/#r={inner}",
        "whole": inner,
        "semicolon": f"https://a.test/?x=1;n={inner}",
    }[where]
    assert "DUID7" not in without_link(url)


def deep6(text: str) -> str:
    for _ in range(6):
        text = quote_plus(text, safe="")
    return text


def _holds_link(text: str, depth: int = 0) -> bool:
    """Whether any pair of a query or fragment, or of a value decoded from one, is the link."""
    for pair in re.split(r"[?&#;]", text):
        name, eq, _ = unquote_plus(pair).partition("=")
        if eq and name.strip().lower() == "_sp":
            return True
        value = pair.partition("=")[2] if "=" in pair else pair
        if depth < 12 and unquote_plus(value) != value and _holds_link(unquote_plus(value), depth + 1):
            return True
    return False


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="_sp=?&#;%5F3D27x.1/+", max_size=30))
def test_without_link_leaves_no_link_and_cuts_once(url: str) -> None:
    out = without_link(url)
    assert without_link(out) == out
    head, _, fragment = out.partition("#")
    assert not _holds_link(head.partition("?")[2]) and not _holds_link(fragment)


def test_url_parts_and_query_fields_pure() -> None:
    assert url_parts("https://Shop.Test/a/b?x=1#f") == ("https", "shop.test", 443, "/a/b", "x=1", "f")
    assert url_parts("http://h.test") == ("http", "h.test", 80, None, None, None)
    assert url_parts("http://h.test:99999/") is None  # a bad port: no components rather than a 400
    assert url_parts("not a url") is None
    assert dict(query_fields("utm_source=a&utm_source=b&utm_term=t")) == {
        COL["mkt_source"]: "a",
        COL["mkt_term"]: "t",
    }
    assert dict(query_fields("_sp=d.1")) == {-1: "d.1"} and query_fields("q=1") == ()


async def test_every_new_column_from_its_param(client: Any, cfg: Config) -> None:
    page = ev(
        "pp",
        eid="ping",
        url=URL,
        refr="http://news.example.org/post?id=7",
        pp_mix="-5",
        pp_max="300",
        pp_miy="0",
        pp_may="2400",
        cookie="1",
        cd="24",
        vp="1280x720",
        res="1920x1080",
        cs="UTF-8",
        ds="1280x5000",
        fp=FP,
        tid="421337",
        dtm="1732270000000",
        stm="1732270002500",
    )
    tr = ev(
        "tr",
        eid="tr",
        tr_id="o-1",
        tr_af="web",
        tr_tt="99.95",
        tr_tx="16.66",
        tr_sh="4.5",
        tr_ci="Lyon",
        tr_st="ARA",
        tr_co="FR",
        tr_cu="EUR",
        ttm="1732260000000",
        dtm="1732270000000",
        stm="1732270002500",
    )
    ti = ev(
        "ti",
        eid="ti",
        ti_id="o-1",
        ti_sk="sku-9",
        ti_nm="Boots",
        ti_ca="shoes",
        ti_pr="49.5",
        ti_qu="2",
        ti_cu="EUR",
    )
    ue = orjson.dumps(
        {
            "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
            "data": {"schema": "iglu:com.acme/click/jsonschema/1-0-0", "data": {}},
        }
    ).decode()
    assert (await client.post(TP2, json=batch(page, tr, ti, ev("ue", eid="ue", ue_pr=ue)))).status == 200
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    p = got["ping"]
    assert [p[c] for c in ("pp_xoffset_min", "pp_xoffset_max", "pp_yoffset_min", "pp_yoffset_max")] == [
        -5,
        300,
        0,
        2400,
    ]
    assert bool(p["br_cookies"]) is True and p["br_colordepth"] == "24" and p["doc_charset"] == "UTF-8"
    assert (p["br_viewwidth"], p["br_viewheight"], p["dvce_screenwidth"], p["dvce_screenheight"]) == (
        1280,
        720,
        1920,
        1080,
    )
    assert (p["doc_width"], p["doc_height"], p["txn_id"], p["user_fingerprint"]) == (1280, 5000, 421337, FP)
    assert [p[f"page_url{c}"] for c in ("scheme", "host", "port", "path", "fragment")] == [
        "https",
        "shop.test",
        8443,
        "/p/q",
        "top",
    ]
    assert p["page_urlquery"].startswith("utm_source=news&")
    assert [p[f"refr_url{c}"] for c in ("scheme", "host", "port", "path", "query", "fragment")] == [
        "http",
        "news.example.org",
        80,
        "/post",
        "id=7",
        None,
    ]
    assert (p["mkt_source"], p["mkt_medium"], p["mkt_campaign"]) == ("news", "email", None)
    assert (p["refr_domain_userid"], p["refr_dvce_tstamp"]) == (REFR_DUID, "2024-11-22 10:06:40.123")
    # collector time minus the 2.5 s the device held the event
    assert p["collector_tstamp"] == "2027-01-15 08:00:00.000"
    assert p["derived_tstamp"] == "2027-01-15 07:59:57.500"
    assert p["other_params"] is None  # every param has its column now
    t = got["tr"]
    assert (t["tr_orderid"], t["tr_affiliation"], t["tr_total"], t["tr_tax"], t["tr_shipping"]) == (
        "o-1",
        "web",
        99.95,
        16.66,
        4.5,
    )
    assert (t["tr_city"], t["tr_state"], t["tr_country"], t["tr_currency"]) == ("Lyon", "ARA", "FR", "EUR")
    assert t["derived_tstamp"] == t["true_tstamp"] == "2024-11-22 07:20:00.000"  # true_tstamp wins
    i = got["ti"]
    assert (
        i["ti_orderid"],
        i["ti_sku"],
        i["ti_name"],
        i["ti_category"],
        i["ti_price"],
        i["ti_quantity"],
    ) == (
        "o-1",
        "sku-9",
        "Boots",
        "shoes",
        49.5,
        2,
    )
    assert i["ti_currency"] == "EUR" and i["derived_tstamp"] == i["collector_tstamp"]  # no device times
    assert (got["ue"]["event_format"], got["ue"]["event_name"]) == ("jsonschema", "click")


async def test_values_that_do_not_convert_stay_in_other_params(client: Any, cfg: Config) -> None:
    odd = {"vp": "wide", "pp_mix": "1.5", "tr_tt": "inf", "cookie": "yes", "ds": "10x", "tid": "99999999999"}
    # created after it was sent: a clock went backwards, so derived_tstamp is the collector's time
    sent = ev("pv", eid="odd", dtm="1732270009000", stm="1732270000000", url="/relative", **odd)
    assert (await client.get("/i", params=sent)).status == 200
    [r] = rows(cfg.db, "select * from events")
    assert orjson.loads(r["other_params"]) == odd
    assert (r["br_viewwidth"], r["pp_xoffset_min"], r["tr_total"], r["br_cookies"], r["txn_id"]) == (
        None,
    ) * 5
    assert r["derived_tstamp"] == r["collector_tstamp"] and r["page_urlhost"] is None


async def test_device_times_too_far_apart_give_no_derived_estimate(client: Any, cfg: Config) -> None:
    # sent 31,000 years after it was created: collector time minus that is no time a store can hold
    sent = ev("pv", eid="far", dtm="1", stm="999999999999999")
    assert (await client.get("/i", params=sent)).status == 200
    [r] = rows(cfg.db, "select derived_tstamp, collector_tstamp from events")
    assert r["derived_tstamp"] == r["collector_tstamp"]


async def test_a_store_keeps_the_new_columns_with_their_types(cfg: Config) -> None:
    values = {
        "br_cookies": False,
        "pp_yoffset_max": 12,
        "tr_total": 10.25,
        "derived_tstamp": "2026-12-01 09:59:58.250",
        "refr_dvce_tstamp": "2026-12-01 09:00:00.000",
        "page_urlport": 443,
        "mkt_campaign": "c",
        "event_format": "jsonschema",
    }
    rules = SessionRules(1_800_000)
    store = PostgresStore(str(cfg.db), rules) if isinstance(cfg.db, str) else SqliteStore(cfg.db, rules)
    await store.start()
    try:
        result = await store.append(Submission(0, None, [event_row("typed", **values)]))
    finally:
        await store.close()
    assert result.stored == 1
    [r] = rows(cfg.db, "select * from events")
    assert {k: (bool(r[k]) if k == "br_cookies" else r[k]) for k in values} == values
    assert set(values) <= set(columns(cfg.db, "events"))


async def test_fingerprint_and_cross_domain_id_never_under_sp_anonymous(client: Any, cfg: Config) -> None:
    """The same event with and without the header: found in their columns without it, nowhere with it."""
    for eid, headers in (("named", {}), ("anon", {"SP-Anonymous": "*"})):
        sent = batch(ev("pv", eid=eid, fp=FP, url=URL))
        assert (await client.post(TP2, json=sent, headers=headers)).status == 200
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}

    def where(eid: str, value: str) -> list[str]:
        return [name for name in got[eid].keys() if value in str(got[eid][name])]  # noqa: SIM118

    assert where("named", FP) == ["user_fingerprint"]
    assert "refr_domain_userid" in where("named", REFR_DUID)
    assert {"page_url", "page_urlquery"} <= set(where("named", REFR_DUID))  # the URL as it was sent
    assert where("anon", FP) == [] and where("anon", REFR_DUID) == []
    assert got["anon"]["refr_domain_userid"] is None and got["anon"]["refr_dvce_tstamp"] is None
    # the link is cut out of the anonymous page URL; the rest of it stays
    assert got["anon"]["page_url"] == "https://Shop.Test:8443/p/q?utm_source=news&utm_medium=email#top"
    assert got["anon"]["mkt_source"] == "news"


async def test_fingerprint_and_cross_domain_id_are_retired_with_the_device(client: Any, cfg: Config) -> None:
    b = Browser(client)
    await b.send(ev("pv", eid="before", fp=FP, url=URL, duid="d-1"))
    old = b.device
    await b.send(ev("ue", eid="rotate", ue_pr=ANON_UE))
    assert b.device != old
    # the same browser after the rotation: its fingerprint (or the linking site's id) would tie it back
    await b.send(ev("pv", eid="fp-after", fp=FP, duid="d-2"))
    await b.send(ev("pv", eid="sp-after", url=URL, duid="d-3"))
    await b.send(ev("pv", eid="other", fp="another-fp", duid="d-4"))
    got = {r["event_id"]: r for r in rows(cfg.db, "select * from events")}
    assert (got["before"]["user_fingerprint"], got["before"]["refr_domain_userid"]) == (FP, REFR_DUID)
    for eid in ("fp-after", "sp-after"):
        r = got[eid]
        assert (r["user_fingerprint"], r["refr_domain_userid"], r["domain_userid"]) == (None, None, None), eid
        assert r["network_userid"] == b.device
    assert (got["other"]["user_fingerprint"], got["other"]["domain_userid"]) == ("another-fp", "d-4")


async def test_a_fingerprint_longer_than_a_tracker_id_is_refused(client: Any, cfg: Config) -> None:
    resp = await client.get("/i", params=ev("pv", eid="long", fp="f" * 129))
    assert resp.status == 400 and (await resp.json())["error"]["reason"] == "bad_tracker_id"


OLD_ROW = (
    "INSERT INTO events (event_id, event, platform, v_tracker, v_collector, collector_tstamp, anonymous, "
    "network_userid, session_id, session_index, page_url, other_params) VALUES ('old', 'pv', 'web', 't', "
    "'c', '2026-12-01 10:00:00.000', 0, 'dev-old', 'ses-old', 1, 'https://shop.test/old?utm_source=s', "
    """'{"vp": "800x600", "pp_max": "5"}')"""
)


def _check_old_row(db: Path | str) -> None:
    [r] = rows(db, "select * from events")
    assert orjson.loads(r["other_params"]) == {"vp": "800x600", "pp_max": "5"}  # kept where it was
    assert (r["br_viewwidth"], r["page_urlhost"], r["mkt_source"], r["derived_tstamp"]) == (None,) * 4
    [v] = rows(db, "select * from page_views")  # the views read old rows: collector time as event time
    assert (v["page_view_id"], v["start_tstamp"], v["engaged_time_in_s"]) == (
        "old",
        "2026-12-01 10:00:00.000",
        0,
    )
    [s] = rows(db, "select * from sessions")
    assert (s["session_id"], s["first_page_url"], s["page_views"], s["mkt_source"]) == (
        "ses-old",
        "https://shop.test/old?utm_source=s",
        1,
        None,
    )


@only("sqlite")
async def test_rows_stored_before_the_new_columns_keep_theirs_in_other_params(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "migrations"
    old.mkdir()
    for path in sqlite_migrate.MIGRATIONS.glob("000[1-6]_*.sql"):
        shutil.copy(path, old)
    assert isinstance(cfg.db, Path)
    conn = sqlite3.connect(cfg.db, isolation_level=None)
    try:
        with monkeypatch.context() as m:
            m.setattr(sqlite_migrate, "MIGRATIONS", old)
            sqlite_migrate.migrate(conn)
        conn.execute(OLD_ROW)
        assert sqlite_migrate.migrate(conn)[:2] == ["0007_atomic_columns", "0008_views"]
    finally:
        conn.close()
    _check_old_row(cfg.db)


@only("postgres")
async def test_postgres_rows_stored_before_the_new_columns_keep_theirs_in_other_params(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "migrations"
    old.mkdir()
    for path in pg_schema.MIGRATIONS.glob("000[1-2]_*.sql"):
        shutil.copy(path, old)
    conn = await asyncpg.connect(str(cfg.db))
    try:
        with monkeypatch.context() as m:
            m.setattr(pg_schema, "MIGRATIONS", old)
            await pg_schema.migrate(conn)
        await conn.execute(OLD_ROW)
        assert (await pg_schema.migrate(conn))[:2] == ["0003_atomic_columns", "0004_views"]
    finally:
        await conn.close()
    _check_old_row(cfg.db)
