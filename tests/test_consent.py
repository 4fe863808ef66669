"""Consent signals at the edge: the do-not-track cookie, Global Privacy Control, DNT; cookie domains."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from collector import identity, policy
from collector.config import Config, ConfigError, load_config
from tests.conftest import TP2, batch, ev, rows, tables

STORES = ("sqlite", "postgres")
SECRET = b"test-secret"
DEVICE = "dddddddd-0000-4000-8000-00000000000d"
UID, PAGE = "consent-uid-81c3", "consent-page-5e2a"
CANARIES = (UID, PAGE, DEVICE, "127.0.0.1")


def headers(**kw: str) -> CIMultiDict[str]:
    return CIMultiDict(kw)


@pytest.mark.parametrize(
    ("settings", "hdrs", "cookies", "expected"),
    [
        ({}, {}, {}, None),
        ({}, {"Sec-GPC": "1"}, {}, ("gpc", "anonymous")),  # the default: privacy first
        ({"gpc": "drop"}, {"Sec-GPC": "1"}, {}, ("gpc", "drop")),
        ({"gpc": "ignore"}, {"Sec-GPC": "1"}, {}, None),
        ({}, {"Sec-GPC": "0"}, {}, None),
        ({}, {"DNT": "1"}, {}, ("dnt", "anonymous")),
        ({"dnt_header": "ignore"}, {"DNT": "1"}, {}, None),
        ({}, {"SP-Anonymous": "*"}, {}, ("sp_anonymous", "anonymous")),
        # the strongest wins: drop over anonymous, whichever signal asks for it
        ({"dnt_header": "drop"}, {"Sec-GPC": "1", "DNT": "1"}, {}, ("dnt", "drop")),
        ({"gpc": "drop"}, {"SP-Anonymous": "*", "Sec-GPC": "1"}, {}, ("gpc", "drop")),
        ({"dnt_cookie_name": "dnt"}, {}, {"dnt": "anything"}, ("dnt_cookie", "drop")),
        (
            {"dnt_cookie_name": "dnt", "dnt_cookie_value": re.compile("yes|1")},
            {},
            {"dnt": "yes"},
            ("dnt_cookie", "drop"),
        ),
        (
            {"dnt_cookie_name": "dnt", "dnt_cookie_value": re.compile("yes|1")},
            {},
            {"dnt": "yes!"},
            None,
        ),  # whole value
        (
            {"dnt_cookie_name": "dnt"},
            {"Sec-GPC": "1"},
            {},
            ("gpc", "anonymous"),
        ),  # no cookie, GPC still counts
    ],
)
def test_the_signal_that_decides(
    settings: dict[str, Any], hdrs: dict[str, str], cookies: dict[str, str], expected: Any
) -> None:
    assert policy.consent(Config(**settings), headers(**hdrs), cookies) == expected


def test_a_drop_decision_keeps_nothing_and_touches_no_cookie() -> None:
    d = policy.decide(Config(gpc="drop"), "1.2.3.4", headers(**{"Sec-GPC": "1"}), {"sp": "x"})
    assert (d.store, d.ip, d.use_cookie, d.expire_cookie, d.signal) == (False, None, False, False, "gpc")
    d = policy.decide(Config(), "1.2.3.4", headers(**{"Sec-GPC": "1"}), {"sp": "x"})
    assert (d.store, d.anonymous, d.ip, d.use_cookie, d.expire_cookie) == (True, True, None, False, True)


def stored_text(db: Any) -> str:
    """Every row of every table and view as text; on SQLite also every byte of its files (WAL included)."""
    text = "\n".join(str(tuple(r)) for t in tables(db) for r in rows(db, f'select * from "{t}"'))
    if isinstance(db, Path):
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())
        text += raw.decode("latin-1")  # byte for byte: an ASCII canary is found where it lies
    return text


async def send_all(client: Any, extra: dict[str, str], cookie: bool = True) -> list[Any]:
    """A pixel, a batch (one event refused), a redirect: every kind of answer, carrying the canaries."""
    hdrs = {"Origin": "https://shop.example", **extra}
    if cookie:
        hdrs["Cookie"] = f"sp={identity.sign(DEVICE, SECRET)}; dnt=1"
    return [
        await client.get("/i", params=ev(eid="c-get", uid=UID, url=PAGE), headers=hdrs),
        await client.post(
            TP2, json=batch(ev(eid="c-post", uid=UID, url=PAGE), {"e": "pv", "uid": UID}), headers=hdrs
        ),
        await client.get(
            "/r/tp2",
            params={**ev(eid="c-r", uid=UID), "u": "https://shop.example/x"},
            headers=hdrs,
            allow_redirects=False,
        ),
    ]


DROPS = [
    ("dnt_cookie", {"dnt_cookie_name": "dnt"}, {}),
    ("gpc", {"gpc": "drop"}, {"Sec-GPC": "1"}),
    ("dnt", {"dnt_header": "drop"}, {"DNT": "1"}),
]


@pytest.mark.parametrize(("signal", "settings", "extra"), DROPS, ids=[d[0] for d in DROPS])
async def test_a_drop_signal_is_answered_as_usual_and_keeps_nothing(
    make_client: Any, cfg: Config, signal: str, settings: dict[str, Any], extra: dict[str, str]
) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.example",), **settings))
    answers = await send_all(client, extra)
    assert [a.status for a in answers] == [200, 200, 302]
    assert (await answers[1].json())["stored"] == 1  # what the tracker expects to hear
    assert all("Set-Cookie" not in a.headers for a in answers)
    # a request after them without the signal commits (bad rows would be queued in front of it)
    assert (await client.get("/i", params=ev(eid="flush"))).status == 200
    assert [r[0] for r in rows(cfg.db, "select event_id from events")] == ["flush"]
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 0
    assert rows(cfg.db, "select count(*) from device_state")[0][0] == 1  # the flush's own device only
    text = stored_text(cfg.db)
    assert not [c for c in CANARIES[:3] if c in text]
    metrics = await (await client.get("/metrics")).text()
    assert f'collector_consent_signals_total{{mode="drop",signal="{signal}"}} 3.0' in metrics


ANONYMOUS = [("gpc", {}, {"Sec-GPC": "1"}), ("dnt", {}, {"DNT": "1"})]


@pytest.mark.parametrize(("signal", "settings", "extra"), ANONYMOUS, ids=[a[0] for a in ANONYMOUS])
async def test_an_anonymous_signal_is_sp_anonymous(
    make_client: Any, cfg: Config, signal: str, settings: dict[str, Any], extra: dict[str, str]
) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.example",), **settings))
    answers = await send_all(client, extra)
    assert [a.status for a in answers] == [200, 200, 302]
    assert all(a.headers["Set-Cookie"].startswith("sp=; Max-Age=0") for a in answers)  # expired, never set
    got = rows(cfg.db, "select anonymous, user_ipaddress, network_userid, user_id, page_url from events")
    assert len(got) == 3 and all(r[0] == 1 and r[1] is None and r[2] is None and r[3] is None for r in got)
    assert PAGE in {r[4] for r in got}  # what is not identifying is kept
    assert not [c for c in (UID, DEVICE, "127.0.0.1") if c in stored_text(cfg.db)]
    metrics = await (await client.get("/metrics")).text()
    assert f'collector_consent_signals_total{{mode="anonymous",signal="{signal}"}} 3.0' in metrics


async def test_without_a_signal_the_canaries_are_where_they_belong(make_client: Any, cfg: Config) -> None:
    client = await make_client(cfg.replace(redirect_domains=("shop.example",), dnt_cookie_name="other"))
    answers = await send_all(client, {})
    assert [a.status for a in answers] == [200, 200, 302]
    await client.get("/i", params=ev(eid="flush"))
    text = stored_text(cfg.db)
    assert all(c in text for c in CANARIES), [c for c in CANARIES if c not in text]
    assert rows(cfg.db, "select count(*) from bad_rows")[0][0] == 1


async def test_cookie_domains_follow_the_origin(make_client: Any, cfg: Config) -> None:
    client = await make_client(
        cfg.replace(
            cookie_domains=("shop.example", "other.example"), cookie_fallback_domain="fallback.example"
        )
    )

    async def domain_for(origin: str, cookie: str | None = None) -> tuple[str, str]:
        hdrs = {"Origin": origin, **({"Cookie": f"sp={cookie}"} if cookie else {})}
        resp = await client.get("/i", params=ev(), headers=hdrs)
        value = resp.headers["Set-Cookie"]
        attrs = dict(p.strip().partition("=")[::2] for p in value.split(";")[1:])
        return attrs.get("Domain", ""), value.split(";")[0].removeprefix("sp=")

    domain, cookie = await domain_for("https://www.shop.example")
    assert domain == "shop.example"
    assert (await domain_for("https://shop.example:8443"))[0] == "shop.example"
    assert (await domain_for("https://blog.other.example"))[0] == "other.example"
    assert (await domain_for("https://notshop.example"))[0] == "fallback.example"  # not a parent: no match
    assert (await domain_for("https://unlisted.test"))[0] == "fallback.example"
    # the same device cookie verifies whichever domain it was set on
    again, same = await domain_for("https://blog.other.example", cookie)
    assert again == "other.example" and same == cookie


def test_cookie_domain_without_the_list_is_the_fixed_one() -> None:
    assert identity.cookie_domain((), "", "", "https://a.example") == ""
    assert identity.cookie_domain((), "", "fixed.example", "https://a.example") == "fixed.example"
    assert identity.cookie_domain(("a.example",), "", "fixed.example", None) == ""


def test_consent_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="COLLECTOR_GPC"):
        load_config({"COLLECTOR_GPC": "maybe"})
    with pytest.raises(ConfigError, match="COLLECTOR_COOKIE_DOMAINS"):
        load_config({"COLLECTOR_COOKIE_DOMAINS": "https://shop.example"})
    with pytest.raises(ConfigError, match="COLLECTOR_DNT_COOKIE_VALUE"):
        load_config({"COLLECTOR_DNT_COOKIE_VALUE": "("})
    assert load_config({}).gpc == "anonymous" and load_config({}).dnt_header == "anonymous"
