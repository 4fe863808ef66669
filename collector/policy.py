"""The anonymisation policy, pure: what arrived with a request in, what may be kept out.

Everything the collector persists or reports about a request passes through `decide` (request level:
IP, cookie, which params go) and `scrub_event` (event level). Read this file to audit the promise:

* Consent signals first (`consent`): a do-not-track cookie, or `Sec-GPC: 1` / `DNT: 1` in `drop` mode,
  means nothing of the request is kept (answered as usual); in `anonymous` mode they are SP-Anonymous.
* With an `SP-Anonymous` header (any value, name case-insensitive): no IP from any source, no device
  cookie read, issued or stored (one that arrives is expired), the `ip`, `nuid` and `tnuid` params
  dropped, plus the person-level params of `COLLECTOR_ANONYMOUS_DROP` (default uid, duid, fp, mac,
  ad_uid), plus identifying entities and entity fields (collector.identifiers says which), in rows and
  in bad rows alike; bad rows keep no raw body.
* Without it: the client IP is the socket peer, or with trusted proxies the first untrusted hop of
  the one forwarding header the proxy is configured to set, read from the right; a client never
  chooses it. The `ip` param counts only when COLLECTOR_TRUST_IP_PARAM is on. The kept IP is then
  full, truncated to a network prefix, or dropped (COLLECTOR_IP_MODE).
* Headers are never kept wholesale: only the user agent (an allow-list of one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector import identifiers
from collector.config import Config, Network

ANON_HEADER = "SP-Anonymous"
ALWAYS_DROP = identifiers.NETWORK_PARAMS
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Decision:
    """What may be kept for one request."""

    anonymous: bool
    ip: str | None  # the IP to store (already truncated or dropped by the mode)
    ip_param: bool  # whether an event's own `ip` param may replace it
    use_cookie: bool  # the device cookie may be read, and issued in the answer
    expire_cookie: bool  # a device cookie arrived but may not be used: the answer expires it
    drop: frozenset[str]  # params removed from every event
    store: bool = True  # False: a do-not-track signal in `drop` mode: answered as usual, nothing kept
    signal: str | None = None  # the signal that decided (sp_anonymous, gpc, dnt, dnt_cookie), for metrics


def is_anonymous(headers: Mapping[str, str]) -> bool:
    """Whether the request asked for server-side anonymisation (presence counts, not value)."""
    return ANON_HEADER in headers


def consent(cfg: Config, headers: Mapping[str, str], cookies: Mapping[str, str]) -> tuple[str, str] | None:
    """The strongest privacy signal a request carries and what it asks: (signal, anonymous|drop), or None.

    The do-not-track cookie always drops (Snowplow's semantics); Global Privacy Control (`Sec-GPC: 1`)
    and `DNT: 1` do what COLLECTOR_GPC and COLLECTOR_DNT_HEADER say; SP-Anonymous anonymises. When
    several apply, the strongest wins: drop over anonymous.
    """
    if cfg.dnt_cookie_name and cfg.dnt_cookie_name in cookies:
        pattern = cfg.dnt_cookie_value
        if pattern is None or pattern.fullmatch(cookies[cfg.dnt_cookie_name]):
            return "dnt_cookie", "drop"
    found: list[tuple[str, str]] = []
    if cfg.gpc != "ignore" and headers.get("Sec-GPC", "").strip() == "1":
        found.append(("gpc", cfg.gpc))
    if cfg.dnt_header != "ignore" and headers.get("DNT", "").strip() == "1":
        found.append(("dnt", cfg.dnt_header))
    if is_anonymous(headers):
        found.append(("sp_anonymous", "anonymous"))
    drops = [f for f in found if f[1] == "drop"]
    return (drops or found)[0] if found else None


def decide(cfg: Config, peer: str | None, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Decision:
    """The request-level decision: whether anything is kept, which IP, whether the cookie may be used,
    which params go."""
    has_cookie = cfg.cookie_name in cookies
    signal = consent(cfg, headers, cookies)
    if signal is not None:
        drop = ALWAYS_DROP | frozenset(cfg.anonymous_drop)
        if signal[1] == "drop":  # nothing is stored, so no cookie is touched either
            return Decision(True, None, False, False, False, drop, store=False, signal=signal[0])
        return Decision(True, None, False, False, has_cookie, drop, signal=signal[0])
    return _named(cfg, peer, headers)


# Named decisions in `full` IP mode, by what they depend on: the peer, the forwarding header's values
# when proxies are trusted (else it is never read) and which header that is, and whether the `ip`
# param counts. The same key always gives the same frozen Decision, so recent ones are reused: parsing
# the address (ipaddress) and building the Decision were 13 of decide's 14 us a request. Bounded in
# entries, and in size: a forwarding header over CACHED_HOPS characters (a client can send 16 KiB
# lines) is decided afresh. In memory only, and only addresses the store keeps whole: in `truncate`
# mode the key would hold the whole address the row never does, so those are decided afresh too, and
# `drop` needs no address at all. An anonymous request never comes here.
_NAMED: dict[tuple[Any, ...], Decision] = {}
_NAMED_MAX = 16384
CACHED_HOPS = 256


def _named(cfg: Config, peer: str | None, headers: Mapping[str, str]) -> Decision:
    trusted, header = cfg.trusted_proxies, cfg.forwarded_header
    if cfg.ip_mode == "drop":
        return _kept(cfg, None)
    hops: tuple[str, ...] | None = None
    if trusted:
        getall = getattr(headers, "getall", None)
        hops = tuple(getall(header, ())) if getall else ((headers[header],) if header in headers else ())
        if sum(map(len, hops)) > CACHED_HOPS:
            hops = None
    if cfg.ip_mode != "full" or (trusted and hops is None):
        return _kept(cfg, keep_ip(cfg, client_ip(peer, headers, trusted, header)))
    key = (peer, hops, trusted, header, cfg.trust_ip_param)
    decision = _NAMED.get(key)
    if decision is None:
        if len(_NAMED) >= _NAMED_MAX:
            _NAMED.clear()
        decision = _NAMED[key] = _kept(cfg, keep_ip(cfg, client_ip(peer, headers, trusted, header)))
    return decision


def _kept(cfg: Config, ip: str | None) -> Decision:
    """A named request's decision: its IP as kept, its cookie used, only the network params dropped."""
    return Decision(False, ip, cfg.trust_ip_param, True, False, ALWAYS_DROP)


def event_ip(cfg: Config, decision: Decision, param: str | None) -> str | None:
    """The IP stored for one event: the request's, or the event's own `ip` param when trusted."""
    if decision.ip_param and param:
        return keep_ip(cfg, parse_ip(param))
    return decision.ip


def scrub_event(params: dict[str, Any], decision: Decision, strict: bool = True) -> dict[str, Any]:
    """What of an event's params may be kept: for rows (strict) and bad rows alike.

    Without SP-Anonymous only the network params go (a copy only when one is there); with it, the
    identifying params and entity fields too (`identifiers.anonymous_params`).
    """
    if decision.anonymous:
        return identifiers.anonymous_params(params, decision.drop, strict)
    if decision.drop.isdisjoint(params):
        return params
    return {k: v for k, v in params.items() if k not in decision.drop}


def scrub_bad_event(params: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """What a bad row keeps of a refused event's params: what a row would (scrub_event, not strict), and
    for a named request never the tracker's ids (`identifiers.without_tracker_ids`)."""
    kept = scrub_event(params, decision, strict=False)
    return kept if decision.anonymous else identifiers.without_tracker_ids(kept)


def scrub_bad_body(text: str, decision: Decision) -> str | None:
    """What a bad row keeps of a request refused whole (its body would not parse, or was refused as a
    whole): nothing under SP-Anonymous, else the body without the tracker's ids
    (`identifiers.raw_without_tracker_ids`)."""
    return None if decision.anonymous else identifiers.raw_without_tracker_ids(text)


def parse_ip(raw: str | None) -> IPAddress | None:
    """An address from a header or param entry (with optional port, brackets, quotes, zone); or None."""
    if not raw:
        return None
    value = raw.strip().strip('"')
    if value.startswith("["):  # [v6] or [v6]:port
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # v4:port
        value = value.partition(":")[0]
    value = value.partition("%")[0]  # a zone id says nothing about the client
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # how a dual-stack socket reports an IPv4 peer: that peer
    return addr


def _embedded(addr: IPAddress) -> IPAddress:
    """The IPv4 address a 6to4 or Teredo address carries whole (truncating the IPv6 form would keep
    it), else the address. Only for the stored form: a host at 2002:ac1c:c8::1 is not 172.28.0.200,
    and trusting it as that proxy would let it choose the stored address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.sixtofour is not None:
            return addr.sixtofour
        if addr.teredo is not None:
            return addr.teredo[1]  # (server, client): the client's
    return addr


def _forwarded_for(header: str) -> list[str]:
    # RFC 7239: `Forwarded: for=1.2.3.4;proto=http, for="[2001:db8::1]:80"`; only the for= parameter.
    out = []
    for element in header.split(","):
        value = ""
        for pair in element.split(";"):
            key, _, val = pair.strip().partition("=")
            if key.lower() == "for":
                value = val
        out.append(value)
    return out


def forwarding_chain(headers: Mapping[str, str], name: str) -> list[str]:
    """The hops the configured forwarding header lists, leftmost (farthest) first."""
    getall = getattr(headers, "getall", None)
    values = list(getall(name, ())) if getall else ([headers[name]] if name in headers else [])
    if name == "forwarded":
        return [hop for v in values for hop in _forwarded_for(v)]
    return [hop.strip() for v in values for hop in v.split(",")]


def _trusted(addr: IPAddress, trusted: tuple[Network, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def client_ip(
    peer: str | None,
    headers: Mapping[str, str],
    trusted: tuple[Network, ...],
    header: str = "x-forwarded-for",
) -> IPAddress | None:
    """The client's address: the peer, or walking the forwarding header from the right past trusted hops.

    Only the header the trusted proxy is configured to set is read: any other one is passed through by
    the proxy as the client sent it, so believing it would let a client choose its own address.
    """
    addr = parse_ip(peer)
    if addr is None or not trusted or not _trusted(addr, trusted):
        return addr
    for hop in reversed(forwarding_chain(headers, header)):
        hop_addr = parse_ip(hop)
        if hop_addr is None:
            return None  # a malformed or obfuscated hop: the client is unknown, so keep nothing
        addr = hop_addr
        if not _trusted(addr, trusted):
            return addr
    return addr


def keep_ip(cfg: Config, addr: IPAddress | None) -> str | None:
    """The stored form of an address under COLLECTOR_IP_MODE."""
    if addr is None or cfg.ip_mode == "drop":
        return None
    addr = _embedded(addr)
    if cfg.ip_mode == "truncate":
        prefix = cfg.ipv4_prefix if addr.version == 4 else cfg.ipv6_prefix
        return str(ipaddress.ip_network((addr, prefix), strict=False).network_address)
    return str(addr)
