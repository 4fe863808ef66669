"""What identifies a person or device: the one room that rows, bad rows and retirement all ask.

Read this file to audit what the collector keeps. Three kinds of identifier:

* **Params** (`PERSON_PARAMS`, `NETWORK_PARAMS`): the tracker protocol's own id fields. Network ids are
  never stored as they arrive (policy resolves the IP, identity the device id); person and device ids
  are dropped under SP-Anonymous (the list is COLLECTOR_ANONYMOUS_DROP, by default `PERSON_PARAMS`).
* **Entity fields** (`ENTITY_RULES`): per schema of the entities the Snowplow trackers send, which
  fields identify a person or device, or whether the whole entity does (a precise location, the GA
  cookies). Under SP-Anonymous they are removed from contexts and from the self-describing event.
  An entity of a schema not listed here keeps its fields except those named in `GENERIC_FIELDS`
  (compared case-insensitively, without `_` and `-`): a custom entity that carries an identifier
  under another name keeps it, so name it here or do not send it.
* **Tracker ids** (`tracker_ids`): the ids a tracker keeps for itself (duid, sid, the fingerprint
  `fp`, the cross-domain `refr_domain_userid`, and the client_session entity's userId / sessionId /
  previousSessionId). When a device rotates or opts out, they are retired; a later row that still
  carries one loses every trace of the tracker's identity (`forget`): its duid, sid, vid, fingerprint
  and refr_domain_userid columns and its client_session entity, so that nothing a tracker kept from
  before the rotation ties the new device to the old.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from collector import protocol
from collector.errors import BadInput
from storage.base import COL

# Params resolved by the policy (ip) and identity (nuid, tnuid): never copied into a row.
NETWORK_PARAMS = frozenset({"ip", "nuid", "tnuid"})
# The default of COLLECTOR_ANONYMOUS_DROP: user id, the tracker's device id, fingerprint, MAC, ad id.
PERSON_PARAMS = ("uid", "duid", "fp", "mac", "ad_uid")
# Columns holding a person/device identifier besides domain_userid and user_id: user_fingerprint (the
# `fp` param, in PERSON_PARAMS) and refr_domain_userid (the linking site's duid, from the `_sp` of the
# page URL; collector.events never sets it under SP-Anonymous). Both are tracker ids (retired with the
# device) and forgotten from a row that carries a retired id.
ROW_IDS = ("user_fingerprint", "refr_domain_userid")
# URL params that may carry the cross-domain link `_sp` (the linking site's duid, and in its extended
# form its session and user ids): under SP-Anonymous the link is cut out of them, wherever it sits.
LINK_URL_PARAMS = ("url", "refr")
_LINK = re.compile(r"([?&#])_sp=[^&#]*&?")
# Tracker ids longer than this are refused (Snowplow's atomic columns hold 128 characters); it also
# bounds what a retired value may cost.
TRACKER_ID_MAX = 128
# The tracker ids one event may bring to a lookup or a retirement: a tracker sends a handful; an event
# stuffed with session entities must not retire hundreds of values.
TRACKER_IDS_PER_EVENT = 16
MAX_DEPTH = 64  # nesting the anonymous scrub walks into; orjson re-encodes at most 254 levels anyway


@dataclass(frozen=True, slots=True)
class EntityRule:
    """What of one entity schema identifies a person or device."""

    fields: frozenset[str] = frozenset()  # removed under SP-Anonymous
    whole: bool = False  # the entity itself identifies: dropped under SP-Anonymous
    tracker: tuple[str, ...] = ()  # the tracker's own ids: checked against retired ids
    forget: bool = False  # dropped from a row that carries a retired tracker id


CLIENT_SESSION = "com.snowplowanalytics.snowplow/client_session"
# Keyed by `vendor/name`: every version of a schema follows the same rule.
ENTITY_RULES: dict[str, EntityRule] = {
    # userId is the tracker's device id (duid), previousSessionId ties sessions together, firstEventId
    # points at an event of the session; sessionId is the anonymous session (as the `sid` param) and stays.
    CLIENT_SESSION: EntityRule(
        frozenset({"userId", "previousSessionId", "firstEventId"}),
        tracker=("userId", "sessionId", "previousSessionId"),
        forget=True,
    ),
    "com.snowplowanalytics.snowplow/mobile_context": EntityRule(
        frozenset({"appleIdfa", "appleIdfv", "androidIdfa", "openIdfa", "appSetId", "appSetIdScope"})
    ),
    # The page view id (web) and screen view id (mobile) last until the next view: kept under
    # SP-Anonymous (page pings belong to their view), but a rotation or opt-out retires them, since the
    # tracker keeps sending the same one across a logout in a single-page app.
    "com.snowplowanalytics.snowplow/web_page": EntityRule(tracker=("id",), forget=True),
    "com.snowplowanalytics.mobile/screen": EntityRule(tracker=("id",), forget=True),
    # tabId lives as long as the browser tab: an identifier of it, and a tracker id to retire
    "com.snowplowanalytics.snowplow/browser_context": EntityRule(
        frozenset({"tabId"}), tracker=("tabId",), forget=True
    ),
    "com.snowplowanalytics.snowplow.ecommerce/user": EntityRule(frozenset({"id", "email"})),
    "com.snowplowanalytics.snowplow/geolocation_context": EntityRule(whole=True),
    "com.google.analytics/cookies": EntityRule(whole=True),
    "com.google.ga4/cookies": EntityRule(whole=True),
}
GENERIC_FIELDS = frozenset(
    {
        "userid",
        "deviceid",
        "advertisingid",
        "adid",
        "idfa",
        "idfv",
        "email",
        "emailaddress",
        "phone",
        "phonenumber",
        "ipaddress",
    }
)


def _norm(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


_RULES_SEEN: dict[str, EntityRule | None] = {}  # schema URI -> its rule: a tracker sends a few, often
_RULES_SEEN_MAX = 1024  # bounded in number and length: a client can send any made-up schemas


def rule_of(schema: Any) -> EntityRule | None:
    """The rule for an entity's schema URI (`iglu:vendor/name/format/version`), or None if unknown."""
    if schema.__class__ is not str:
        return None
    try:
        return _RULES_SEEN[schema]
    except KeyError:
        pass
    rule = None
    if schema.startswith("iglu:"):
        parts = schema[5:].split("/")
        rule = ENTITY_RULES.get(f"{parts[0]}/{parts[1]}") if len(parts) == 4 else None
    if len(schema) <= 256:  # real schema URIs are short; a long made-up one is not worth keeping
        if len(_RULES_SEEN) >= _RULES_SEEN_MAX:
            _RULES_SEEN.clear()
        _RULES_SEEN[schema] = rule
    return rule


def scrub_data(schema: Any, data: Any) -> tuple[bool, Any]:
    """(keep, data without identifiers) for one entity's data under SP-Anonymous."""
    rule = rule_of(schema)
    if rule is not None and rule.whole:
        return False, None
    if not isinstance(data, dict):
        return True, data
    if rule is not None:
        drop = rule.fields
        return True, {k: v for k, v in data.items() if k not in drop}
    return True, _generic(data)


def _generic(value: Any, depth: int = 0) -> Any:
    """A custom entity's data without fields named like identifiers, at any depth (up to MAX_DEPTH)."""
    if depth > MAX_DEPTH:  # deeper than anything a tracker sends: refused rather than half scrubbed
        raise BadInput("nested_too_deep", "a JSON value is nested too deeply")
    if isinstance(value, dict):
        return {
            k: _generic(v, depth + 1)
            for k, v in value.items()
            if not (isinstance(k, str) and _norm(k) in GENERIC_FIELDS)
        }
    if isinstance(value, list):
        return [_generic(v, depth + 1) for v in value]
    return value


def scrub_contexts(contexts: Any) -> Any:
    """Contexts (`{schema, data: [entities]}`) without identifying entities and fields."""
    kept = []
    for entity in contexts.get("data", []):
        if not isinstance(entity, dict):
            continue
        keep, data = scrub_data(entity.get("schema"), entity.get("data"))
        if keep:
            kept.append({**entity, "data": data})
    return {**contexts, "data": kept}


def scrub_unstruct(ue: Any) -> Any:
    """A self-describing event (`{schema, data: {schema, data}}`) without identifying fields."""
    inner = ue.get("data")
    if not isinstance(inner, dict):
        return ue
    keep, data = scrub_data(inner.get("schema"), inner.get("data"))
    return {**ue, "data": {**inner, "data": data if keep else {}}}


def _dumps(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254): refuse, never a 500
        raise BadInput("nested_too_deep", "a JSON value is nested too deeply") from None


def anonymous_params(params: dict[str, Any], drop: frozenset[str], strict: bool) -> dict[str, Any]:
    """An event's params as an anonymous request may keep them: ids dropped, entities scrubbed.

    The self-describing fields come back as plain JSON (co, ue_pr) whatever their encoding. `strict`
    (rows) refuses a field that cannot be decoded; otherwise (bad rows) that field is left out, since
    what cannot be read cannot be scrubbed.
    """
    out = {k: v for k, v in params.items() if k not in drop}
    for key in LINK_URL_PARAMS:
        link = out.get(key)
        if isinstance(link, str) and "_sp=" in link:
            out[key] = without_link(link)
    for plain, encoded, scrub in (("co", "cx", scrub_contexts), ("ue_pr", "ue_px", scrub_unstruct)):
        name = plain if plain in out else encoded if encoded in out else None
        if name is None:
            continue
        value = out.pop(name)
        out.pop(encoded, None)
        try:
            if not isinstance(value, str):
                raise BadInput("non_string_value", f"value of {name!r} is not a string")
            doc, _ = protocol.decode_json(value, name, base64=name == encoded)
            protocol.check_self_describing(doc, contexts=plain == "co")  # the shape the scrub walks
            out[plain] = _dumps(scrub(doc))
        except BadInput:
            if strict:
                raise
    return out


def without_link(url: str) -> str:
    """A URL without its cross-domain link params (`_sp=...`), the rest as it was."""
    while True:
        cut = _LINK.sub(r"\1", url)
        if cut == url:
            break
        url = cut
    return re.sub(r"[?&]+(?=#|$)", "", url)


def tracker_ids(
    duid: str | None, sid: str | None, contexts: Any, more: tuple[str | None, ...] = ()
) -> tuple[str, ...]:
    """The tracker's own ids an event carries, to check against retired ids (None-free, length-capped).

    `more`: the row's other device ids (ROW_IDS: user_fingerprint, refr_domain_userid), retired with
    the device like duid, since either would tie the device's rows before a rotation to those after.
    """
    ids = [v for v in (duid, sid, *more) if v]
    if contexts is not None:
        for entity in contexts.get("data", ()):
            if not isinstance(entity, dict):
                continue
            rule = rule_of(entity.get("schema"))
            data = entity.get("data")
            if rule is None or not rule.tracker or not isinstance(data, dict):
                continue
            for name in rule.tracker:
                value = data.get(name)
                if isinstance(value, str) and value and len(value) <= TRACKER_ID_MAX:
                    ids.append(value)
    return tuple(dict.fromkeys(ids))[:TRACKER_IDS_PER_EVENT]


def forget(row: list[Any]) -> None:
    """Drop the tracker's identity from a row carrying a retired id: duid, sid, vid, the fingerprint and
    cross-domain id (ROW_IDS), the session entity."""
    row[COL["domain_userid"]] = row[COL["domain_sessionid"]] = row[COL["domain_sessionidx"]] = None
    for name in ROW_IDS:
        row[COL[name]] = None
    row[COL["refr_dvce_tstamp"]] = None  # half of the cross-domain link value
    text = row[COL["contexts"]]
    if text is None:
        return
    contexts = orjson.loads(text)
    kept = [e for e in contexts.get("data", ()) if not _forgotten(e)]
    contexts["data"] = kept
    try:
        row[COL["contexts"]] = orjson.dumps(contexts).decode()
    except orjson.JSONEncodeError:  # one entity nested too deep to re-encode: keep those that can be
        row[COL["contexts"]] = orjson.dumps({**contexts, "data": list(_encodable(kept))}).decode()


def _forgotten(entity: Any) -> bool:
    rule = rule_of(entity.get("schema")) if isinstance(entity, dict) else None
    return rule is not None and rule.forget


def _encodable(entities: Iterable[Any]) -> Iterable[Any]:
    for entity in entities:
        try:
            orjson.dumps(entity)
        except orjson.JSONEncodeError:
            continue
        yield entity
