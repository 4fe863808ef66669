"""Configuration: defaults, env and flags, errors that name the setting, and the README kept in step."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from collector import policy
from collector.config import SETTINGS, Config, ConfigError, load_config, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_match_the_dataclass() -> None:
    assert load_config({}) == Config()


def test_every_setting_is_a_field_and_back() -> None:
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(Config)]


def test_env_and_flags() -> None:
    cfg = load_config(
        {
            "COLLECTOR_PORT": "9000",
            "COLLECTOR_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
            "COLLECTOR_IP_MODE": "TRUNCATE",
            "COLLECTOR_PATHS": "/collect/tp=/com.snowplowanalytics.snowplow/tp2",
            "COLLECTOR_COOKIE_SECRET": "new,old",
        },
        {"port": "9100", "db": "/tmp/x.db"},
    )
    assert cfg.port == 9100 and cfg.db == Path("/tmp/x.db") and cfg.ip_mode == "truncate"
    assert cfg.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert cfg.paths == (("/collect/tp", "/com.snowplowanalytics.snowplow/tp2"),)
    assert cfg.cookie_secret == ("new", "old")
    assert "new" not in repr(cfg) and "old" not in str(cfg.redacted())  # secrets are redacted


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://collector:pw-SECRET-1@db/events",
        "postgresql://collector@db/events?password=pw-SECRET-1",  # libpq's (and asyncpg's) other form
        "postgresql://collector@db/events?sslmode=require&PASSWORD=pw-SECRET-1&application_name=x",
        "postgres://collector@db/events?sslpassword=pw-SECRET-1",  # the client key's passphrase
        "postgresql://collector@db/events?pass%77ord=pw-SECRET-1",  # the name percent-encoded
        "postgresql://collector:pw-SECRET-1@h1:5432,h2/events?password=pw-SECRET-1#f",
    ],
)
def test_the_start_up_line_hides_every_password_of_the_db_url(url: str) -> None:
    cfg = load_config({"COLLECTOR_DB": url, "COLLECTOR_COOKIE_SECRET": "x"})
    line = f"configuration: {cfg.redacted()}"  # what __main__ logs at start-up
    assert "pw-SECRET-1" not in line and "***" in line, line
    assert "pw-SECRET-1" in str(cfg.db)  # the control: the value itself is whole
    assert "collector" in line and "events" in line  # and the rest is shown


def test_an_ipv4_mapped_trusted_proxy_is_the_ipv4_one_peers_are_compared_with() -> None:
    """Peers are read as IPv4 when the socket maps them (policy.parse_ip): a trusted range written in
    the mapped form must match them, not be accepted and never match."""
    cfg = load_config({"COLLECTOR_TRUSTED_PROXIES": "::ffff:172.28.0.200/128, ::ffff:10.0.0.0/104, fd00::/8"})
    assert cfg.trusted_proxies == (
        ipaddress.ip_network("172.28.0.200/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    got = policy.client_ip("::ffff:172.28.0.200", {"x-forwarded-for": "198.51.100.7"}, cfg.trusted_proxies)
    assert str(got) == "198.51.100.7"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"COLLECTOR_PORT": "eighty"}, "COLLECTOR_PORT='eighty'"),
        ({"COLLECTOR_PORT": "70000"}, "COLLECTOR_PORT"),
        ({"COLLECTOR_TRUSTED_PROXIES": "10.0.0.0/33"}, "COLLECTOR_TRUSTED_PROXIES"),
        ({"COLLECTOR_IP_MODE": "hash"}, "COLLECTOR_IP_MODE='hash'"),
        ({"COLLECTOR_PATHS": "/x=/nowhere"}, "COLLECTOR_PATHS"),
        ({"COLLECTOR_CORS_ORIGINS": "*"}, "COLLECTOR_CORS_ORIGINS"),
        ({"COLLECTOR_TRUST_IP_PARAM": "maybe"}, "COLLECTOR_TRUST_IP_PARAM"),
        ({"COLLECTOR_SYNCHRONOUS": "OFF"}, "COLLECTOR_SYNCHRONOUS"),
        ({"COLLECTOR_FORWARDED_HEADER": "x-anything"}, "COLLECTOR_FORWARDED_HEADER"),
    ],
)
def test_errors_name_the_setting_and_value(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        load_config(env)


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--port='x'"):
        load_config({}, {"port": "x"})


def test_readme_settings_table_is_in_step() -> None:
    text = README.read_text()
    start, end = text.index("<!-- settings:start -->"), text.index("<!-- settings:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == settings_table().strip(), (
        "README settings table is stale: paste the output of "
        "`python -c 'from collector.config import settings_table; print(settings_table())'`"
    )
