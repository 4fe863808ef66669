"""The anonymisation policy as a pure function: a table of inputs to the values it keeps."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from multidict import CIMultiDict

from collector import policy
from collector.config import Config

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
ALL_IP_HEADERS = {
    "X-Forwarded-For": "1.1.1.1",
    "X-Real-IP": "2.2.2.2",
    "Forwarded": "for=3.3.3.3",
    "CF-Connecting-IP": "4.4.4.4",
    "True-Client-IP": "5.5.5.5",
    "Fastly-Client-IP": "6.6.6.6",
    "X-Client-IP": "7.7.7.7",
}


def h(**kw: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()})


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "header", "expected"),
    [
        # no trusted proxies: the socket peer, whatever the headers say
        ("9.9.9.9", ALL_IP_HEADERS, (), "x-forwarded-for", "9.9.9.9"),
        # peer not trusted: its forwarding headers are a client's claim
        ("9.9.9.9", {"X-Forwarded-For": "1.1.1.1"}, NETS, "x-forwarded-for", "9.9.9.9"),
        # one trusted proxy: the address it appended
        ("10.0.0.1", {"X-Forwarded-For": "1.1.1.1"}, NETS, "x-forwarded-for", "1.1.1.1"),
        # spoof: the client prepended its own claim; the proxy appended the real address
        ("10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 1.1.1.1"}, NETS, "x-forwarded-for", "1.1.1.1"),
        # two trusted hops are skipped from the right
        ("10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 1.1.1.1, 10.0.0.7"}, NETS, "x-forwarded-for", "1.1.1.1"),
        # several header lines form one list
        (
            "10.0.0.1",
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "1.1.1.1")],
            NETS,
            "x-forwarded-for",
            "1.1.1.1",
        ),
        # every hop trusted: the farthest one
        ("10.0.0.1", {"X-Forwarded-For": "10.1.1.1, 10.0.0.2"}, NETS, "x-forwarded-for", "10.1.1.1"),
        # no header from a trusted proxy: the proxy itself
        ("10.0.0.1", {}, NETS, "x-forwarded-for", "10.0.0.1"),
        # a malformed hop where the client should be: unknown, keep nothing
        ("10.0.0.1", {"X-Forwarded-For": "1.1.1.1, garbage"}, NETS, "x-forwarded-for", None),
        # ports and IPv6 brackets
        ("10.0.0.1", {"X-Forwarded-For": "1.1.1.1:5555"}, NETS, "x-forwarded-for", "1.1.1.1"),
        ("10.0.0.1", {"X-Forwarded-For": "[2001:db8::1]:80"}, NETS, "x-forwarded-for", "2001:db8::1"),
        # RFC 7239 Forwarded, quoted IPv6 with port, only when configured
        (
            "10.0.0.1",
            {"Forwarded": 'for="[2001:db8::5]:4711";proto=https, for=10.0.0.9'},
            NETS,
            "forwarded",
            "2001:db8::5",
        ),
        (
            "10.0.0.1",
            {"Forwarded": "for=6.6.6.6", "X-Forwarded-For": "1.1.1.1"},
            NETS,
            "x-forwarded-for",
            "1.1.1.1",
        ),
        ("10.0.0.1", {"Forwarded": "for=_hidden"}, NETS, "forwarded", None),
        # a CDN header, only when it is the configured one
        (
            "10.0.0.1",
            {"CF-Connecting-IP": "4.4.4.4", "X-Forwarded-For": "1.1.1.1"},
            NETS,
            "cf-connecting-ip",
            "4.4.4.4",
        ),
        ("10.0.0.1", {"CF-Connecting-IP": "4.4.4.4"}, NETS, "x-forwarded-for", "10.0.0.1"),
        # IPv4-mapped IPv6 peers are IPv4 clients (and match IPv4 trusted networks)
        ("::ffff:10.0.0.1", {"X-Forwarded-For": "1.1.1.1"}, NETS, "x-forwarded-for", "1.1.1.1"),
        ("::ffff:9.9.9.9", {}, (), "x-forwarded-for", "9.9.9.9"),
        ("fd00::1", {"X-Forwarded-For": "2001:db8::2"}, NETS, "x-forwarded-for", "2001:db8::2"),
        ("fe80::1%eth0", {}, (), "x-forwarded-for", "fe80::1"),
        (None, {}, (), "x-forwarded-for", None),
        ("not-an-ip", {}, (), "x-forwarded-for", None),
    ],
)
def test_client_ip(
    peer: str | None, headers: object, trusted: tuple[policy.Network, ...], header: str, expected: str | None
) -> None:
    hdrs = CIMultiDict(headers if isinstance(headers, list) else list(dict(headers).items()))  # type: ignore[call-overload]
    got = policy.client_ip(peer, hdrs, trusted, header)
    assert (str(got) if got else None) == expected


@pytest.mark.parametrize(
    ("mode", "addr", "expected"),
    [
        ("full", "203.0.113.77", "203.0.113.77"),
        ("truncate", "203.0.113.77", "203.0.113.0"),
        ("truncate", "2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("truncate", "::ffff:203.0.113.77", "203.0.113.0"),
        ("drop", "203.0.113.77", None),
    ],
)
def test_ip_modes(mode: str, addr: str, expected: str | None) -> None:
    assert policy.keep_ip(Config(ip_mode=mode), policy.parse_ip(addr)) == expected


def test_truncation_prefixes_are_configurable() -> None:
    cfg = Config(ip_mode="truncate", ipv4_prefix=16, ipv6_prefix=32)
    assert policy.keep_ip(cfg, policy.parse_ip("203.0.113.77")) == "203.0.0.0"
    assert policy.keep_ip(cfg, policy.parse_ip("2001:db8:abcd::1")) == "2001:db8::"


def test_anonymous_keeps_no_ip_from_any_source() -> None:
    cfg = Config(trusted_proxies=NETS, trust_ip_param=True)
    headers = CIMultiDict({**ALL_IP_HEADERS, "sp-anonymous": "*"})
    d = policy.decide(cfg, "10.0.0.1", headers, {"sp": "x"})
    assert d.anonymous and d.ip is None and not d.ip_param and not d.use_cookie and d.expire_cookie
    assert policy.event_ip(cfg, d, "8.8.8.8") is None
    # the same request without the header keeps the proxied address and would trust the param
    d2 = policy.decide(cfg, "10.0.0.1", CIMultiDict(ALL_IP_HEADERS), {"sp": "x"})
    assert d2.ip == "1.1.1.1" and d2.use_cookie and not d2.expire_cookie
    assert policy.event_ip(cfg, d2, "8.8.8.8") == "8.8.8.8"


@pytest.mark.parametrize("value", ["*", "", "0", "false"])
def test_header_presence_counts_not_its_value(value: str) -> None:
    assert policy.decide(Config(), "1.2.3.4", CIMultiDict({"SP-ANONYMOUS": value}), {}).anonymous


def test_ip_param_is_ignored_unless_trusted() -> None:
    d = policy.decide(Config(), "9.9.9.9", CIMultiDict(), {})
    assert policy.event_ip(Config(), d, "8.8.8.8") == "9.9.9.9"


def test_scrub_event_drops_identifiers_under_anonymity() -> None:
    params = {
        "e": "pv",
        "uid": "u",
        "duid": "d",
        "sid": "s",
        "vid": "1",
        "nuid": "n",
        "tnuid": "t",
        "ip": "1.1.1.1",
        "fp": "f",
        "mac": "m",
        "ad_uid": "a",
        "url": "https://x",
    }
    anon = policy.decide(Config(), None, CIMultiDict({"SP-Anonymous": "*"}), {})
    assert policy.scrub_event(params, anon) == {"e": "pv", "sid": "s", "vid": "1", "url": "https://x"}
    normal = policy.decide(Config(), None, CIMultiDict(), {})
    kept = policy.scrub_event(params, normal)
    assert kept["uid"] == "u" and kept["duid"] == "d" and "ip" not in kept and "nuid" not in kept


def test_anonymous_drop_list_is_configurable() -> None:
    cfg = Config(anonymous_drop=("uid", "sid", "vid"))
    anon = policy.decide(cfg, None, CIMultiDict({"SP-Anonymous": "*"}), {})
    assert policy.scrub_event(
        {"e": "pv", "uid": "u", "sid": "s", "vid": "1", "duid": "d", "ip": "x"}, anon
    ) == {"e": "pv", "duid": "d"}


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("2002:c633:6401::1", "198.51.100.0"),  # 6to4 carries 198.51.100.1 in its /48
        ("2001:0:4136:e378:8000:63bf:3cfe:9bfe", "195.1.100.0"),  # Teredo: the client, obfuscated
        ("::ffff:198.51.100.1", "198.51.100.0"),
    ],
)
def test_truncation_unwraps_addresses_that_embed_an_ipv4(addr: str, expected: str) -> None:
    cfg = Config(ip_mode="truncate")
    assert policy.keep_ip(cfg, policy.parse_ip(addr)) == expected


@pytest.mark.parametrize(
    "peer",
    [
        "2002:ac1c:c8::1234",  # 6to4, embedding 172.28.0.200
        "2001:0:4136:e378:8000:63bf:53e3:ff37",  # Teredo, its client 172.28.0.200 (obfuscated)
        "::ffff:172.28.0.200",  # the control: how a dual-stack socket reports the proxy itself
    ],
)
def test_only_the_proxys_own_address_is_trusted_not_one_embedding_it(peer: str) -> None:
    """An IPv6 host whose address embeds the proxy's IPv4 one is not the proxy: trusting it would let
    it choose the stored address. Only an IPv4-mapped peer is the proxy, seen through a v6 socket."""
    trusted = (ipaddress.ip_network("172.28.0.200/32"),)
    got = policy.client_ip(peer, CIMultiDict({"X-Forwarded-For": "6.6.6.6"}), trusted)
    is_proxy = peer.startswith("::ffff:")
    assert (str(got) == "6.6.6.6") == is_proxy, got
    if not is_proxy:  # kept as the peer it is, and stored (truncated) as the IPv4 address it embeds
        assert got == ipaddress.ip_address(peer)
        assert policy.keep_ip(Config(ip_mode="truncate"), got) == "172.28.0.0"


def test_a_hop_embedding_a_trusted_address_ends_the_walk() -> None:
    """Behind a proxy that appends, a client at 2002:a00:1::99 (6to4 of 10.0.0.1, a trusted range)
    is the client, not one more trusted hop past which its forged entry would be read."""
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = CIMultiDict({"X-Forwarded-For": "6.6.6.6, 2002:a00:1::99"})
    assert policy.client_ip("10.0.0.5", headers, trusted) == ipaddress.ip_address("2002:a00:1::99")
    control = CIMultiDict({"X-Forwarded-For": "6.6.6.6, 10.0.0.1"})  # a real trusted hop: walked past
    assert str(policy.client_ip("10.0.0.5", control, trusted)) == "6.6.6.6"


@pytest.fixture
def fresh_decisions() -> Iterator[None]:
    """policy._NAMED starts empty, and is emptied after: no test sees another's decisions."""
    policy._NAMED.clear()
    yield
    policy._NAMED.clear()


def held(addr: str) -> bool:
    return any(addr in str(k) or addr == v.ip for k, v in policy._NAMED.items())


@pytest.mark.usefixtures("fresh_decisions")
def test_reused_decisions_follow_every_input_they_depend_on() -> None:
    """decide reuses named decisions (policy._NAMED): one request's must never answer another's."""
    proxied = Config(trusted_proxies=NETS)
    via = [
        policy.decide(proxied, "10.0.0.1", CIMultiDict({"X-Forwarded-For": h}), {})
        for h in ("1.1.1.1", "2.2.2.2")
    ]
    assert [d.ip for d in via] == ["1.1.1.1", "2.2.2.2"]  # the same proxy, two clients
    direct = [policy.decide(Config(), p, CIMultiDict(), {}).ip for p in ("192.0.2.1", "192.0.2.2")]
    assert direct == ["192.0.2.1", "192.0.2.2"]  # two peers
    # a header only counts from a trusted peer, and only the configured one
    spoofed = CIMultiDict({"X-Forwarded-For": "3.3.3.3"})
    assert policy.decide(Config(), "10.0.0.1", spoofed, {}).ip == "10.0.0.1"
    assert policy.decide(proxied, "10.0.0.1", spoofed, {}).ip == "3.3.3.3"
    elsewhere = Config(trusted_proxies=(ipaddress.ip_network("192.0.2.0/24"),))
    assert policy.decide(elsewhere, "10.0.0.1", spoofed, {}).ip == "10.0.0.1"
    # the same value in two headers: the configured header's name is part of what decides
    xff = Config(trusted_proxies=NETS)
    fwd = Config(trusted_proxies=NETS, forwarded_header="forwarded")
    assert policy.decide(xff, "10.0.0.1", CIMultiDict({"X-Forwarded-For": "for=1.1.1.1"}), {}).ip is None
    assert policy.decide(fwd, "10.0.0.1", CIMultiDict({"Forwarded": "for=1.1.1.1"}), {}).ip == "1.1.1.1"
    same = ("203.0.113.77", CIMultiDict(), {})
    assert policy.decide(Config(trust_ip_param=True), *same).ip_param
    assert not policy.decide(Config(), *same).ip_param


@pytest.mark.usefixtures("fresh_decisions")
def test_only_whole_addresses_the_store_keeps_are_held() -> None:
    v6 = ("2001:db8:abcd:12::1", CIMultiDict(), {})
    assert [policy.decide(Config(ip_mode="truncate", ipv6_prefix=p), *v6).ip for p in (48, 32)] == [
        "2001:db8:abcd::",
        "2001:db8::",
    ]
    assert policy.decide(Config(ip_mode="drop"), "198.51.100.8", CIMultiDict(), {}).ip is None
    assert policy._NAMED == {}  # truncate and drop: decided afresh, no whole address held
    long_chain = CIMultiDict({"X-Forwarded-For": ", ".join(["1.1.1.1"] * 100)})
    assert policy.decide(Config(trusted_proxies=NETS), "10.0.0.1", long_chain, {}).ip == "1.1.1.1"
    assert policy._NAMED == {}  # a header over CACHED_HOPS characters: decided afresh
    anonymous = policy.decide(Config(), "198.51.100.9", CIMultiDict({"SP-Anonymous": "*"}), {})
    assert anonymous.ip is None and policy._NAMED == {}
    # the control: the same addresses of named requests in full mode are held
    policy.decide(Config(), "198.51.100.9", CIMultiDict(), {})
    short_chain = CIMultiDict({"X-Forwarded-For": "1.1.1.1"})
    policy.decide(Config(trusted_proxies=NETS), "10.0.0.1", short_chain, {})
    assert held("198.51.100.9") and held("1.1.1.1") and len(policy._NAMED) == 2


@pytest.mark.usefixtures("fresh_decisions")
def test_reused_decisions_are_bounded() -> None:
    for i in range(policy._NAMED_MAX + 10):
        policy.decide(Config(), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", CIMultiDict(), {})
    assert 0 < len(policy._NAMED) <= policy._NAMED_MAX
