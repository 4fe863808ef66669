"""CORS: echo an allowed Origin with credentials (trackers send `credentials: include`), answer preflights."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from collector.config import Config

ALLOW_HEADERS = "Content-Type, SP-Anonymous"
ALLOW_METHODS = "GET, POST, OPTIONS"
MAX_AGE = "86400"  # a day: one preflight per origin and day, not one per batch


def allowed_origin(cfg: Config, headers: Mapping[str, str]) -> str | None:
    """The Origin to echo, or None: no Origin, or one not on COLLECTOR_CORS_ORIGINS."""
    origin = headers.get("Origin")
    if origin is None or (cfg.cors_origins and origin not in cfg.cors_origins):
        return None
    # echoed into a header: only printable ASCII (an Origin is scheme://host[:port], never more)
    if not (origin.isascii() and origin.isprintable()) or len(origin) > 512:
        return None
    return origin


def apply(out: MutableMapping[str, str], origin: str | None) -> None:
    """Add the CORS headers of a simple or actual request (never `*`: browsers refuse it with credentials)."""
    if origin is not None:
        out["Access-Control-Allow-Origin"] = origin
        out["Access-Control-Allow-Credentials"] = "true"
        out["Vary"] = "Origin"


def preflight_headers(origin: str) -> dict[str, str]:
    """Headers answering an allowed preflight."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Max-Age": MAX_AGE,
        "Vary": "Origin",
    }
