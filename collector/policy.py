"""The anonymisation policy, pure: what arrived with a request in, what may be kept out.

Everything the collector persists or reports about a request passes through `decide` (request level:
IP, cookie, which params go) and `scrub_event` (event level). Read this file to audit the promise:

* With an `SP-Anonymous` header (any value, name case-insensitive): no IP from any source, no device
  cookie read, issued or stored (one that arrives is expired), the `ip`, `nuid` and `tnuid` params
  dropped, plus the person-level params of `COLLECTOR_ANONYMOUS_DROP` (default uid, duid, fp, mac,
  ad_uid), plus identifier fields inside known entities; bad rows keep no raw body.
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

from collector.config import Config, Network

ANON_HEADER = "SP-Anonymous"
# Never stored as event params: ip is resolved into user_ipaddress by this policy, nuid/tnuid into the
# device id by collector.identity (only when they carry a valid MAC).
ALWAYS_DROP = frozenset({"ip", "nuid", "tnuid"})
# Fields of entities (contexts) that identify a person or device; removed under SP-Anonymous.
ENTITY_ID_FIELDS = frozenset(
    {
        "userId",
        "previousSessionId",
        "firstEventId",
        "appleIdfa",
        "appleIdfv",
        "androidIdfa",
        "openIdfa",
        "deviceId",
        "advertisingId",
        "idfa",
        "idfv",
        "user_id",
        "userid",
    }
)
# Whole entities dropped under SP-Anonymous: a precise location identifies a person.
ENTITY_DROP_NAMES = frozenset({"geolocation_context"})
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


def is_anonymous(headers: Mapping[str, str]) -> bool:
    """Whether the request asked for server-side anonymisation (presence counts, not value)."""
    return ANON_HEADER in headers


def decide(cfg: Config, peer: str | None, headers: Mapping[str, str], has_cookie: bool) -> Decision:
    """The request-level decision: which IP, whether the cookie may be used, which params go."""
    if is_anonymous(headers):
        return Decision(True, None, False, False, has_cookie, ALWAYS_DROP | frozenset(cfg.anonymous_drop))
    ip = keep_ip(cfg, client_ip(peer, headers, cfg.trusted_proxies, cfg.forwarded_header))
    return Decision(False, ip, cfg.trust_ip_param, True, False, ALWAYS_DROP)


def event_ip(cfg: Config, decision: Decision, param: str | None) -> str | None:
    """The IP stored for one event: the request's, or the event's own `ip` param when trusted."""
    if decision.ip_param and param:
        return keep_ip(cfg, parse_ip(param))
    return decision.ip


def scrub_event(params: dict[str, str], decision: Decision) -> dict[str, str]:
    """The event's params without those the decision drops (a copy only when something goes)."""
    if decision.drop.isdisjoint(params):
        return params
    return {k: v for k, v in params.items() if k not in decision.drop}


def scrub_entities(contexts: Any) -> Any:
    """Contexts without identifying entities and fields (for anonymous requests)."""
    kept = []
    for entity in contexts.get("data", []):
        if not isinstance(entity, dict):
            continue
        schema = entity.get("schema")
        name = schema.split("/")[1] if isinstance(schema, str) and schema.count("/") >= 3 else ""
        if name in ENTITY_DROP_NAMES:
            continue
        data = entity.get("data")
        if isinstance(data, dict) and not ENTITY_ID_FIELDS.isdisjoint(data):
            kept.append({**entity, "data": {k: v for k, v in data.items() if k not in ENTITY_ID_FIELDS}})
        else:
            kept.append(entity)
    return {**contexts, "data": kept}


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
        return addr.ipv4_mapped
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
    if cfg.ip_mode == "truncate":
        prefix = cfg.ipv4_prefix if addr.version == 4 else cfg.ipv6_prefix
        return str(ipaddress.ip_network((addr, prefix), strict=False).network_address)
    return str(addr)
