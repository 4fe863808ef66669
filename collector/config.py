"""One frozen Config, read once from COLLECTOR_* environment variables and CLI flags, validated."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.identifiers import PERSON_PARAMS

ENV_PREFIX = "COLLECTOR_"
CANONICAL_PATHS = ("/com.snowplowanalytics.snowplow/tp2", "/i", "/ice.png", "/r/tp2")
IP_MODES = ("full", "truncate", "drop")
CONSENT_MODES = ("ignore", "anonymous", "drop")
SYNCHRONOUS_LEVELS = ("FULL", "NORMAL")
LOG_FORMATS = ("text", "json")
FORWARDED_HEADERS = (
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
    "fastly-client-ip",
    "x-client-ip",
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and the value."""


class Secret(str):
    """A string whose repr never shows its value, so configs can be logged."""

    def __repr__(self) -> str:
        return "'***'" if self else "''"


def _hidden_param(m: re.Match[str]) -> str:
    """A query param as a repr shows it: its value `***` if its name, decoded (asyncpg decodes it),
    names a password (libpq's `password`, `sslpassword`)."""
    name = urllib.parse.unquote_plus(m[1][1:-1]).lower()
    return m[1] + "***" if name.endswith("password") else m[0]


_URL_PASSWORDS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"(//[^:/@]*:)[^@]*@"), r"\1***@"),  # user:password@
    (re.compile(r"([?&][^=&#]*=)[^&#]*"), _hidden_param),
)


class DatabaseUrl(str):
    """A `postgresql://` URL whose repr hides the passwords: after the user, and as query params."""

    def __repr__(self) -> str:
        shown = str(self)
        for pattern, hidden in _URL_PASSWORDS:
            shown = pattern.sub(hidden, shown)
        return repr(shown)


def _db(raw: str) -> Path | DatabaseUrl:
    value = raw.strip()
    if value.startswith(("postgresql://", "postgres://")):
        return DatabaseUrl(value)
    if "://" in value:
        raise ValueError("expected a file path (SQLite) or a postgresql:// URL")
    return Path(value)


def is_postgres(db: Path | str) -> bool:
    """Whether the store setting names a PostgreSQL database."""
    return isinstance(db, str)


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _lower_list(raw: str) -> tuple[str, ...]:
    return tuple(p.lower() for p in _list(raw))


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _network(text: str) -> Network:
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        # written as IPv4-mapped: peers are compared as the IPv4 address the socket mapped, so the
        # range must be IPv4 too, or it would be accepted and never match
        v4 = net.network_address.ipv4_mapped
        if v4 is not None:
            return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def _networks(raw: str) -> tuple[Network, ...]:
    return tuple(_network(p) for p in _list(raw))


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"expected {lo}..{hi}")
        return value

    return parse


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("expected a number >= 0")
    return value


def _paths(raw: str) -> tuple[tuple[str, str], ...]:
    """`/alias=/canonical,...`: extra paths that behave like a canonical tracking path."""
    out = []
    for item in _list(raw):
        alias, sep, target = item.partition("=")
        alias, target = alias.strip(), target.strip()
        if not sep or not alias.startswith("/") or target not in CANONICAL_PATHS:
            raise ValueError(f"expected /alias=<one of {', '.join(CANONICAL_PATHS)}>, got {item!r}")
        out.append((alias, target))
    return tuple(out)


def _hosts(raw: str) -> tuple[str, ...]:
    hosts = _lower_list(raw)
    for h in hosts:
        # a host name only: a redirect is checked by host, so an entry with a port could never match
        if not re.fullmatch(r"(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*", h):
            raise ValueError(f"not a host name (no scheme, port or path): {h!r}")
    return hosts


def _regex(raw: str) -> re.Pattern[str] | None:
    try:
        return re.compile(raw) if raw else None
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def _domains(raw: str) -> tuple[str, ...]:
    domains = tuple(d.lstrip(".") for d in _lower_list(raw))
    for d in domains:
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*", d):
            raise ValueError(f"not a domain (no scheme, port or path): {d!r}")
    return domains


def _origins(raw: str) -> tuple[str, ...]:
    origins = _list(raw)
    for o in origins:
        if not re.fullmatch(r"https?://[^/\s]+", o):
            raise ValueError(f"not an origin (scheme://host[:port]): {o!r}")
    return origins


@dataclass(frozen=True)
class Setting:
    """One setting: its env name, parser, default and one line of help."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str
    flag: bool = False  # also a CLI flag of `serve`

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


# The single list of settings: environment variables, flags and the README table all come from it.
SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address to listen on (0.0.0.0 in containers).", flag=True),
    Setting("port", _int_range(0, 65535), "8080", "TCP port to listen on.", flag=True),
    Setting(
        "db",
        _db,
        "./data/events.db",
        "The store: a SQLite file (created with its directory) or a `postgresql://user:pass@host/db` URL.",
        flag=True,
    ),
    Setting(
        "pg_pool_size",
        _int_range(1, 100),
        "4",
        "PostgreSQL: connections per process (the writer's, health probes, queries).",
    ),
    Setting(
        "pg_statement_timeout",
        _int_range(100, 600_000),
        "10000",
        "PostgreSQL: milliseconds a statement (or a wait for a connection) may take before a 503.",
    ),
    Setting(
        "workers",
        _int_range(1, 64),
        "1",
        "Processes sharing the port (SO_REUSEPORT) and the store.",
        flag=True,
    ),
    Setting("paths", _paths, "", "Path aliases `/alias=/canonical,...` (to dodge ad blockers)."),
    Setting("cors_origins", _origins, "", "Origins allowed for CORS; empty echoes any Origin."),
    Setting(
        "redirect_domains",
        _hosts,
        "",
        "Hosts /r/tp2 may redirect to (`*.example.com` for subdomains); empty turns redirects off.",
    ),
    Setting("cookie_name", str, "sp", "Name of the device (network_userid) cookie."),
    Setting(
        "cookie_domain",
        str,
        "",
        "Domain attribute of the device cookie (when COLLECTOR_COOKIE_DOMAINS is empty); empty: host-only.",
    ),
    Setting(
        "cookie_domains",
        _domains,
        "",
        "Cookie domains chosen by Origin: the first that equals or is a parent of the Origin's host wins.",
    ),
    Setting(
        "cookie_fallback_domain",
        lambda raw: _domains(raw)[0] if raw.strip() else "",
        "",
        "With COLLECTOR_COOKIE_DOMAINS: the domain for an Origin none matches; empty: host-only.",
    ),
    Setting("cookie_secure", _bool, "true", "Mark the device cookie Secure (required by SameSite=None)."),
    Setting(
        "cookie_max_age",
        _int_range(60, 10 * 365 * 86400),
        "31536000",
        "Device cookie lifetime in seconds, refreshed on every answer.",
    ),
    Setting(
        "cookie_secret",
        lambda raw: tuple(Secret(s) for s in _list(raw)),
        "",
        "HMAC secrets for the device cookie, comma-separated: the first signs, all verify; "
        "empty: generated once and kept beside the database (mode 0600).",
    ),
    Setting(
        "max_body",
        _int_range(1024, 64 * 1024 * 1024),
        "1048576",
        "Largest request body in bytes (413 above).",
    ),
    Setting("max_query", _int_range(256, 60000), "16384", "Longest query string in bytes (414 above)."),
    Setting("max_events", _int_range(1, 10000), "500", "Most events in one POST batch."),
    Setting(
        "queue_max",
        _int_range(1, 10_000_000),
        "50000",
        "Events waiting for the writer before new requests get 503 + Retry-After.",
    ),
    Setting(
        "queue_max_bytes",
        _int_range(1024, 4 * 1024**3),
        "67108864",
        "Request bytes waiting for the writer before new requests get 503 + Retry-After.",
    ),
    Setting("group_max", _int_range(1, 100_000), "5000", "Most events committed in one transaction."),
    Setting(
        "synchronous",
        _choice(SYNCHRONOUS_LEVELS, upper=True),
        "FULL",
        "SQLite synchronous level: FULL survives power loss, NORMAL only a process crash.",
    ),
    Setting(
        "busy_timeout",
        _int_range(0, 600_000),
        "10000",
        "Milliseconds a writer waits for another process's transaction.",
    ),
    Setting(
        "wal_size_limit",
        _int_range(-1, 64 * 1024**3),
        "67108864",
        "SQLite: bytes the WAL file is truncated back to once long reads have let it grow; -1: never.",
    ),
    Setting(
        "trusted_proxies",
        _networks,
        "",
        "CIDRs of proxies whose forwarding headers are believed; empty: the socket peer is the client.",
    ),
    Setting(
        "forwarded_header",
        _choice(FORWARDED_HEADERS),
        "x-forwarded-for",
        "The one header the trusted proxies set (x-forwarded-for, forwarded, x-real-ip or a CDN's); "
        "no other is believed.",
    ),
    Setting("trust_ip_param", _bool, "false", "Believe the tracker's `ip` param (server-side trackers)."),
    Setting(
        "ip_mode", _choice(IP_MODES), "full", "Non-anonymous IPs: full, truncate (to the prefixes) or drop."
    ),
    Setting("ipv4_prefix", _int_range(0, 32), "24", "Bits of an IPv4 address kept in truncate mode."),
    Setting("ipv6_prefix", _int_range(0, 128), "48", "Bits of an IPv6 address kept in truncate mode."),
    Setting(
        "anonymous_drop",
        _lower_list,
        ",".join(PERSON_PARAMS),
        "Params dropped from SP-Anonymous requests besides ip, nuid and tnuid (always dropped).",
    ),
    Setting(
        "retention_days",
        _int_range(0, 100 * 365),
        "0",
        "Events and bad rows older than this many days are removed (oldest first); 0 keeps them forever.",
    ),
    Setting(
        "retired_days",
        _int_range(1, 100 * 365),
        "730",
        "Days a retired tracker id stays refused after a request last sent it: as long as a tracker keeps "
        "its own cookie (2 years).",
    ),
    Setting(
        "lifecycle_interval",
        _int_range(1, 7 * 86400),
        "3600",
        "Seconds between lifecycle runs inside the collector (retention, culling).",
    ),
    Setting(
        "gpc",
        _choice(CONSENT_MODES),
        "anonymous",
        "Global Privacy Control (`Sec-GPC: 1`): ignore, anonymous (as SP-Anonymous) or drop (keep nothing).",
    ),
    Setting(
        "dnt_header",
        _choice(CONSENT_MODES),
        "anonymous",
        "`DNT: 1`: ignore, anonymous (as SP-Anonymous) or drop (keep nothing).",
    ),
    Setting(
        "dnt_cookie_name",
        str,
        "",
        "A do-not-track cookie (Snowplow's): a request carrying it is answered but nothing is kept.",
    ),
    Setting(
        "dnt_cookie_value",
        _regex,
        "",
        "Regex the do-not-track cookie's whole value must match; empty: any value.",
    ),
    Setting(
        "session_timeout",
        _int_range(1, 7 * 86400),
        "1800",
        "Seconds of inactivity after which a device's next event starts a new session.",
    ),
    Setting(
        "anonymize_events",
        _lower_list,
        "anonymize",
        "Self-describing event names (or vendor/name) that rotate the device id.",
    ),
    Setting(
        "drain_seconds",
        _positive_float,
        "0",
        "After SIGTERM, seconds /ready answers 503 while still serving, so the balancer moves away.",
    ),
    Setting("access_log", _bool, "true", "One log line per request (never an IP, cookie or identifier)."),
    Setting("log_format", _choice(LOG_FORMATS), "text", "Log line format: text or json."),
    Setting("log_level", _choice(("debug", "info", "warning", "error")), "info", "Log level."),
    Setting("metrics", _bool, "true", "Serve Prometheus metrics on GET /metrics."),
    Setting(
        "metrics_token",
        lambda raw: Secret(raw.strip()),
        "",
        "When set, /metrics requires `Authorization: Bearer <token>`.",
    ),
    Setting(
        "browse_password_hash",
        # checked by `browse`, not here: a config error quotes the value, and this may be a password
        lambda raw: Secret(raw.strip()),
        "",
        "`browse`: hash (`datasette hash-password`) of the analyst's password; required off loopback.",
    ),
)


@dataclass(frozen=True)
class Config:
    """Every setting, validated; built once by `load_config` and passed down."""

    host: str = "127.0.0.1"
    port: int = 8080
    db: Path | DatabaseUrl = Path("./data/events.db")
    pg_pool_size: int = 4
    pg_statement_timeout: int = 10000
    workers: int = 1
    paths: tuple[tuple[str, str], ...] = ()
    cors_origins: tuple[str, ...] = ()
    redirect_domains: tuple[str, ...] = ()
    cookie_name: str = "sp"
    cookie_domain: str = ""
    cookie_domains: tuple[str, ...] = ()
    cookie_fallback_domain: str = ""
    cookie_secure: bool = True
    cookie_max_age: int = 31536000
    cookie_secret: tuple[Secret, ...] = ()
    max_body: int = 1048576
    max_query: int = 16384
    max_events: int = 500
    queue_max: int = 50000
    queue_max_bytes: int = 67108864
    group_max: int = 5000
    synchronous: str = "FULL"
    busy_timeout: int = 10000
    wal_size_limit: int = 67108864
    trusted_proxies: tuple[Network, ...] = ()
    forwarded_header: str = "x-forwarded-for"
    trust_ip_param: bool = False
    ip_mode: str = "full"
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    anonymous_drop: tuple[str, ...] = PERSON_PARAMS
    retention_days: int = 0
    retired_days: int = 730
    lifecycle_interval: int = 3600
    gpc: str = "anonymous"
    dnt_header: str = "anonymous"
    dnt_cookie_name: str = ""
    dnt_cookie_value: re.Pattern[str] | None = None
    session_timeout: int = 1800
    anonymize_events: tuple[str, ...] = ("anonymize",)
    drain_seconds: float = 0.0
    access_log: bool = True
    log_format: str = "text"
    log_level: str = "info"
    metrics: bool = True
    metrics_token: Secret = field(default_factory=lambda: Secret(""))
    browse_password_hash: Secret = field(default_factory=lambda: Secret(""))

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (tests and the worker supervisor use it)."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, str]:
        """Effective settings for the start-up log, secrets hidden."""
        return {f.name: repr(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _parse(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}={raw!r} is invalid: {exc}") from None


def load_config(
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
    serving: bool = True,
) -> Config:
    """Defaults, then COLLECTOR_* variables, then CLI flags; raise ConfigError naming a bad setting."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw, source = s.default, s.env
        if s.env in env:
            raw = env[s.env]
        if flags and flags.get(s.name) is not None:
            raw, source = str(flags[s.name]), "--" + s.name.replace("_", "-")
        values[s.name] = _parse(s, raw, source)
    if serving and is_postgres(values["db"]) and not values["cookie_secret"]:
        # replicas on several hosts must share the secret: none can be generated beside a URL
        raise ConfigError("COLLECTOR_COOKIE_SECRET is required when COLLECTOR_DB is a postgresql:// URL")
    return Config(**values)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the settings marked as flags to a CLI parser (the values stay strings until load_config)."""
    for s in SETTINGS:
        if s.flag:
            parser.add_argument(
                "--" + s.name.replace("_", "-"),
                dest=s.name,
                default=None,
                help=f"{s.help} [env {s.env}, default {s.default!r}]",
            )


def settings_table(settings: Sequence[Setting] = SETTINGS) -> str:
    """The README's settings table, generated so a test can keep the two in step."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for s in settings:
        flag = f" (`--{s.name.replace('_', '-')}`)" if s.flag else ""
        lines.append(f"| `{s.env}`{flag} | `{s.default}` | {s.help} |")
    return "\n".join(lines)
