"""The Snowplow tracker protocol, pure: query strings and payload_data bodies in, raw events out."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from collector.errors import BadInput

# The 43-byte transparent 1x1 GIF every pixel answer carries.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
assert len(PIXEL) == 43

PAYLOAD_SCHEMA = re.compile(r"iglu:com\.snowplowanalytics\.snowplow/payload_data/jsonschema/1-0-[0-4]")
# Every real tracker sends one of these (web, mobile, pc, server, app, tv, console, iot, headset).
PLATFORMS = frozenset({"web", "mob", "pc", "srv", "app", "tv", "cnsl", "iot", "headset"})
MAX_VALUE = 64 * 1024  # one param's value; a longer one is a client bug or an attack, not an event
JSON_TYPES = frozenset({"application/json", "text/plain"})

Event = dict[str, str]


def check_event(raw: object) -> Event:
    """An event's params if it is an object with e, p and tv of a known platform; else raise BadInput."""
    if not isinstance(raw, dict):
        raise BadInput("event_not_object", "an event must be a JSON object")
    # Every value being a string is checked by collector.events.build_row, in its one pass over them.
    for key in ("e", "p", "tv"):
        if not raw.get(key) or not isinstance(raw[key], str):
            raise BadInput("missing_field", f"required field {key!r} is missing or empty")
    if raw["p"] not in PLATFORMS:
        raise BadInput("bad_platform", f"platform {raw['p'][:16]!r} is not one of {sorted(PLATFORMS)}")
    if len(raw["e"]) > 32:
        raise BadInput("bad_event_type", "event type 'e' is longer than 32 characters")
    return raw


def parse_body(body: bytes, content_type: str) -> list[object]:
    """The events of a POST body (a payload_data envelope); raise BadInput for a bad envelope."""
    if content_type not in JSON_TYPES:
        raise BadInput(
            "bad_content_type", f"content type {content_type[:64]!r} is not application/json", status=415
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput("bad_json", f"body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise BadInput("bad_envelope", "body must be a JSON object with schema and data")
    schema = doc.get("schema")
    if not isinstance(schema, str) or not PAYLOAD_SCHEMA.fullmatch(schema):
        raise BadInput(
            "bad_schema",
            "schema must be iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-0 to 1-0-4",
        )
    data = doc.get("data")
    if not isinstance(data, list) or not data:
        raise BadInput("bad_envelope", "data must be a non-empty array of events")
    return data


def _b64_json(value: str, field: str) -> tuple[Any, str]:
    # Trackers send base64url without padding; older ones send standard base64: accept both.
    try:
        raw = base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
        return orjson.loads(raw), raw.decode()
    except (binascii.Error, ValueError):
        raise BadInput("bad_base64", f"{field} is not base64url-encoded JSON") from None


def _json(value: str, field: str) -> tuple[Any, str]:
    try:
        return orjson.loads(value), value
    except orjson.JSONDecodeError:
        raise BadInput("bad_json", f"{field} is not valid JSON") from None


NONE = (None, None)


def self_describing(params: Event) -> tuple[tuple[Any, str | None], tuple[Any, str | None]]:
    """The unstruct event (ue_pr / ue_px) and contexts (co / cx): (decoded, JSON text) or Nones.

    The JSON text is the one the tracker sent, validated: storing it spares a re-encode per event.
    """
    ue: tuple[Any, str | None] = NONE
    co: tuple[Any, str | None] = NONE
    if "ue_pr" in params:
        ue = _json(params["ue_pr"], "ue_pr")
    elif "ue_px" in params:
        ue = _b64_json(params["ue_px"], "ue_px")
    if "co" in params:
        co = _json(params["co"], "co")
    elif "cx" in params:
        co = _b64_json(params["cx"], "cx")
    if ue[1] is not None and not (isinstance(ue[0], dict) and isinstance(ue[0].get("data"), dict)):
        raise BadInput("bad_self_describing", "ue must be {schema, data: {schema, data}}")
    if co[1] is not None and not (isinstance(co[0], dict) and isinstance(co[0].get("data"), list)):
        raise BadInput("bad_contexts", "contexts must be {schema, data: [entities]}")
    return ue, co


def schema_parts(ue: Any) -> tuple[str | None, str | None, str | None]:
    """(vendor, name, version) of a self-describing event's inner schema, or Nones."""
    if ue is None:
        return None, None, None
    schema = ue["data"].get("schema")
    if not isinstance(schema, str) or not schema.startswith("iglu:"):
        raise BadInput("bad_self_describing", "the event's schema must be an iglu: URI")
    parts = schema[5:].split("/")
    if len(parts) != 4 or not all(parts):
        raise BadInput("bad_self_describing", "the event's schema must be iglu:vendor/name/format/version")
    return parts[0], parts[1], parts[3]


def redirect_event(params: Event, target: str) -> Event:
    """The event of a /r/tp2 request: its own params, or a uri_redirect event when it carries none."""
    if "e" in params:
        return params
    ue = {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {
            "schema": "iglu:com.snowplowanalytics.snowplow/uri_redirect/jsonschema/1-0-0",
            "data": {"uri": target},
        },
    }
    return {"p": "web", "tv": "r-tp2", **params, "e": "ue", "ue_pr": orjson.dumps(ue).decode()}
