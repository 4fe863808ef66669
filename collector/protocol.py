"""The Snowplow tracker protocol, pure: query strings and payload_data bodies in, raw events out."""

from __future__ import annotations

import base64 as _b64
import binascii
import re
from typing import Any

import orjson

from collector.errors import BadInput

# The 43-byte transparent 1x1 GIF every pixel answer carries.
PIXEL = _b64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
assert len(PIXEL) == 43

PAYLOAD_SCHEMA = re.compile(r"iglu:com\.snowplowanalytics\.snowplow/payload_data/jsonschema/1-0-[0-4]")
# Every real tracker sends one of these (web, mobile, pc, server, app, tv, console, iot, headset).
PLATFORMS = frozenset({"web", "mob", "pc", "srv", "app", "tv", "cnsl", "iot", "headset"})
MAX_VALUE = 64 * 1024  # one param's value; a longer one is a client bug or an attack, not an event
MAX_KEY = 128  # one param's name: a longer one is no tracker's
IDENTITY_PARAMS = ("ip", "nuid", "tnuid")
# The tracker protocol's params: an error message may name these; any other key is client text.
KNOWN_PARAMS = frozenset(
    [
        "e",
        "eid",
        "tv",
        "tna",
        "aid",
        "p",
        "dtm",
        "stm",
        "ttm",
        "tz",
        "lang",
        "cs",
        "cd",
        "cookie",
        "res",
        "vp",
        "ds",
        "duid",
        "sid",
        "vid",
        "uid",
        "nuid",
        "tnuid",
        "ip",
        "ua",
        "fp",
        "mac",
        "ad_uid",
        "url",
        "page",
        "refr",
        "pp_mix",
        "pp_max",
        "pp_miy",
        "pp_may",
        "se_ca",
        "se_ac",
        "se_la",
        "se_pr",
        "se_va",
        "ue_pr",
        "ue_px",
        "co",
        "cx",
        "tr_id",
        "tr_af",
        "tr_tt",
        "tr_tx",
        "tr_sh",
        "tr_ci",
        "tr_st",
        "tr_co",
        "tr_cu",
        "ti_id",
        "ti_sk",
        "ti_nm",
        "ti_ca",
        "ti_pr",
        "ti_qu",
        "ti_cu",
        "ti_na",
        "tid",
        "u",
    ]
)
JSON_TYPES = frozenset({"application/json", "text/plain"})

Event = dict[str, str]


def param_name(key: str) -> str:
    """How an error message names a param: by its name if the protocol defines it, else not at all."""
    return repr(key) if key in KNOWN_PARAMS else "a param"


def may_hold_nul(data: bytes | str) -> bool:
    """Whether a body or a (decoded) query string can carry U+0000: as JSON's escape, `%00` or the
    character itself. A prefilter, so that only such requests pay for without_nul."""
    if isinstance(data, str):
        return "\x00" in data or "%00" in data or "\\u0000" in data
    return b"%00" in data or b"\\u0000" in data


def _no_nul(value: Any) -> Any:
    if value.__class__ is str and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def without_nul(raw: object) -> object:
    """An event's params with U+0000 as U+FFFD, in names and values: PostgreSQL's text and jsonb refuse
    it, and one such value must not cost its batch (a tracker drops a batch answered 400). Both stores
    keep the same, as for bytes that are not UTF-8. The escape inside a JSON-valued param (co, ue_pr,
    and their base64 forms, which no prefilter sees) is events.build_row's: there it is JSON, in a
    plain param it is six characters of text."""
    if not isinstance(raw, dict):
        return raw
    return {_no_nul(k): _no_nul(v) for k, v in raw.items()}


def check_event(raw: object) -> Event:
    """An event's params if it is an object with e, p and tv of a known platform; else raise BadInput."""
    if not isinstance(raw, dict):
        raise BadInput("event_not_object", "an event must be a JSON object")
    # Every value being a string is checked by collector.events.build_row, in its one pass over them.
    for key in ("e", "p", "tv"):
        if not raw.get(key) or not isinstance(raw[key], str):
            raise BadInput("missing_field", f"required field {key!r} is missing or empty")
    if raw["p"] not in PLATFORMS:
        raise BadInput("bad_platform", f"platform 'p' is not one of {sorted(PLATFORMS)}")
    if len(raw["e"]) > 32:
        raise BadInput("bad_event_type", "event type 'e' is longer than 32 characters")
    # The params the policy and identity read before the row is built: checked here, like every other
    # value is in build_row.
    for key in IDENTITY_PARAMS:
        value = raw.get(key)
        if value is not None and (value.__class__ is not str or len(value) > MAX_VALUE):
            if value.__class__ is not str:
                raise BadInput("non_string_value", f"value of {key!r} is not a string")
            raise BadInput("value_too_long", f"value of {key!r} is longer than {MAX_VALUE} characters")
    return raw


# orjson's refusals of a surrogate's escape; its refusal of bytes that are not UTF-8 ("surrogates not
# allowed") is not one of them: that body is not JSON, and reading it again would cost as much
_SURROGATE_ERRORS = ("no low surrogate", "invalid high surrogate", "invalid low surrogate")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LOW_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _without_lone_surrogates(raw: bytes) -> bytes:
    """raw with each lone surrogate's escape written `\\ufffd` (as long: errors keep their place). An
    escape counts after an even number of backslashes; a high one followed by a low one is a pair,
    kept. A search for the escape itself (no look-behind tried at every byte): linear in the body."""
    out: list[bytes] = []
    at = paired_to = 0
    for m in _SURROGATE_ESCAPE.finditer(raw):
        start = m.start()
        if start < paired_to:
            continue  # the low half of a pair kept
        run = start
        while run and raw[run - 1] == 0x5C:  # the backslashes before it (each run read once)
            run -= 1
        if (start - run) % 2:
            continue  # `\\u…`: an escaped backslash, then text
        if raw[start + 3] in b"89abAB" and _LOW_ESCAPE.match(raw, start + 6):
            paired_to = start + 12
            continue
        out += (raw[at:start], rb"\ufffd")
        at = start + 6
    out.append(raw[at:])
    return b"".join(out)


def loads(data: bytes | str) -> Any:
    """orjson.loads, reading a lone surrogate's escape as U+FFFD.

    JSON.stringify writes a lone surrogate (a string cut inside an emoji's pair) as its escape,
    `\\ud83c`: valid JSON, which orjson refuses, and one such title must not cost its batch (a tracker
    drops a batch answered 400). Both stores keep U+FFFD, as for bytes that are not UTF-8. Only a body
    orjson refused for such an escape is read again.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if not any(e in str(exc) for e in _SURROGATE_ERRORS):
            raise
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        return orjson.loads(_without_lone_surrogates(raw))


def parse_body(body: bytes, content_type: str) -> list[object]:
    """The events of a POST body (a payload_data envelope); raise BadInput for a bad envelope."""
    if content_type not in JSON_TYPES:
        raise BadInput("bad_content_type", "the content type is not application/json", status=415)
    try:
        doc = loads(body)
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


def read_json(value: str, field: str, base64: bool = False) -> Any:
    """A JSON param decoded, or its base64url form; raise BadInput if it is neither."""
    if not base64:
        try:
            return loads(value)
        except orjson.JSONDecodeError:
            raise BadInput("bad_json", f"{field} is not valid JSON") from None
    # Trackers send base64url without padding; older ones send standard base64: accept both.
    try:
        return loads(
            _b64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
        )
    except (binascii.Error, ValueError):
        raise BadInput("bad_base64", f"{field} is not base64url-encoded JSON") from None


# JSON's escape of U+0000: `\u0000` after an even number of backslashes (`\\u0000` is a backslash, then
# the text `u0000`, which is kept as sent)
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def decode_json(value: str, field: str, base64: bool = False) -> tuple[Any, str]:
    """(decoded, JSON text) of a JSON param, or of its base64url form; raise BadInput if it is neither.

    The text is the decoded value written again, not the one sent: JSON that names a key twice reads
    as its last value here and as its first in SQLite's json_extract, so the text kept must hold only
    what the collector read (the ids it checked against a rotation's). About 0.7 us a KiB.
    """
    doc = read_json(value, field, base64)
    try:
        text = orjson.dumps(doc).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254)
        raise BadInput("nested_too_deep", f"{field} is nested too deeply") from None
    if "\\u0000" in text:
        # U+0000, which PostgreSQL's text and jsonb refuse, as U+FFFD (see without_nul), in the text
        # and in the document, which the row's other columns (the event's schema) are read from
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
        doc = orjson.loads(text)
    return doc, text


NONE = (None, None)


def self_describing(params: Event) -> tuple[tuple[Any, str | None], tuple[Any, str | None]]:
    """The unstruct event (ue_pr / ue_px) and contexts (co / cx): (decoded, JSON text) or Nones.

    The JSON text is the decoded value written again (decode_json says why).
    """
    ue: tuple[Any, str | None] = NONE
    co: tuple[Any, str | None] = NONE
    if "ue_pr" in params:
        ue = decode_json(params["ue_pr"], "ue_pr")
    elif "ue_px" in params:
        ue = decode_json(params["ue_px"], "ue_px", base64=True)
    if "co" in params:
        co = decode_json(params["co"], "co")
    elif "cx" in params:
        co = decode_json(params["cx"], "cx", base64=True)
    if ue[1] is not None:
        check_self_describing(ue[0], contexts=False)
    if co[1] is not None:
        check_self_describing(co[0], contexts=True)
    return ue, co


def check_self_describing(doc: Any, contexts: bool) -> None:
    """Raise BadInput unless doc is contexts `{schema, data: [entities]}` or an event `{schema, data: {}}`."""
    if contexts and not (isinstance(doc, dict) and isinstance(doc.get("data"), list)):
        raise BadInput("bad_contexts", "contexts must be {schema, data: [entities]}")
    if not contexts and not (isinstance(doc, dict) and isinstance(doc.get("data"), dict)):
        raise BadInput("bad_self_describing", "ue must be {schema, data: {schema, data}}")


def schema_parts(ue: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(vendor, name, format, version) of a self-describing event's inner schema, or Nones."""
    if ue is None:
        return None, None, None, None
    schema = ue["data"].get("schema")
    if not isinstance(schema, str) or not schema.startswith("iglu:"):
        raise BadInput("bad_self_describing", "the event's schema must be an iglu: URI")
    parts = schema[5:].split("/")
    if len(parts) != 4 or not all(parts):
        raise BadInput("bad_self_describing", "the event's schema must be iglu:vendor/name/format/version")
    return parts[0], parts[1], parts[2], parts[3]


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
