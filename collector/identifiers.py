"""What identifies a person or device: the one room that rows, bad rows and retirement all ask.

Read this file to audit what the collector keeps. Three kinds of identifier:

* **Params** (`PERSON_PARAMS`, `NETWORK_PARAMS`): the tracker protocol's own id fields. Network ids are
  never stored as they arrive (policy resolves the IP, identity the device id); person and device ids
  are dropped under SP-Anonymous (the list is COLLECTOR_ANONYMOUS_DROP, by default `PERSON_PARAMS`).
* **Entity fields** (`ENTITY_RULES`): per schema of the entities the Snowplow trackers send, which
  fields identify a person or device, or whether the whole entity does (a precise location, the GA
  cookies). Under SP-Anonymous they are removed from contexts and from the self-describing event.
  Every entity, listed or not, also loses the fields named in `GENERIC_FIELDS` or `DATA_FIELDS` or
  containing one of `GENERIC_PARTS` (letters and digits compared, case and accents ignored), at any
  depth, and keeps nothing beside its `schema` (only if it is an Iglu URI: `kept_schema`) and `data`:
  a custom entity that carries an identifier under another name keeps it, so name it here or do not
  send it. Strings lose the cross-domain link (`_sp`).
* **Tracker ids** (`tracker_ids`): the ids a tracker keeps for itself (duid, sid, the fingerprint
  `fp`, the cross-domain `refr_domain_userid`, and the client_session entity's userId / sessionId /
  previousSessionId, the page and screen view ids, the tab id), and the device's own ids that outlive
  any tracker (`EntityRule.device`: the mobile ad and vendor ids, the GA client id; `DEVICE_PARAMS`:
  mac, ad_uid). When a device rotates or opts out, they are retired. A later row that still carries
  one of the device's own loses those (`forget_device_ids`); one that carries one of the tracker's
  loses every trace of the tracker's identity too (`forget_tracker`): its duid, sid, vid, fingerprint
  and refr_domain_userid columns, its `forget` entities and the `_sp` link wherever it keeps a
  string, so that nothing kept from before the rotation ties the new device to the old; then the
  row's own ids (of CUT_MIN characters or more) are cut wherever else it copies them, under names
  of the app's own (`cut_everywhere`). A named
  request's bad row never keeps any of them (`without_tracker_ids`; of a body refused whole,
  `raw_without_tracker_ids`).
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus

import ahocorasick
import orjson

from collector import protocol
from collector.errors import BadInput
from storage.base import COL

# Device ids a tracker may send as params, kept in other_params: retired with the device, and dropped
# from a later row that still carries one (they outlive any rotation).
DEVICE_PARAMS = ("mac", "ad_uid")
# Params resolved by the policy (ip) and identity (nuid, tnuid): never copied into a row.
NETWORK_PARAMS = frozenset({"ip", "nuid", "tnuid"})
# The default of COLLECTOR_ANONYMOUS_DROP: user id, the tracker's device id, fingerprint, MAC, ad id.
PERSON_PARAMS = ("uid", "duid", "fp", "mac", "ad_uid")
# Columns holding a person/device identifier besides domain_userid and user_id: user_fingerprint (the
# `fp` param, in PERSON_PARAMS) and refr_domain_userid (the linking site's duid, from the `_sp` of the
# page URL; collector.events never sets it under SP-Anonymous). Both are tracker ids (retired with the
# device) and forgotten from a row that carries a retired id.
ROW_IDS = ("user_fingerprint", "refr_domain_userid")
# The cross-domain link `_sp` (the linking site's duid, and in its extended form its session and user
# ids) rides in a URL's query (or fragment) under that name, which collector.events reads percent-decoded
# as parse_qsl does. Under SP-Anonymous it is cut from every string the row keeps (params, entity fields:
# a link click's target, a redirect's), wherever it sits; a param of that name is dropped.
LINK_PARAM = "_sp"
# Row columns a URL with the link lands in; `forget` cuts it from them too (refr_domain_userid, parsed
# from it, is a tracker id).
LINK_URL_COLUMNS = ("page_url", "page_referrer")
LINK_PART_COLUMNS = ("page_urlquery", "page_urlfragment", "refr_urlquery", "refr_urlfragment")
# Tracker ids longer than this are refused (Snowplow's atomic columns hold 128 characters); it also
# bounds what a retired value may cost.
TRACKER_ID_MAX = 128
# The tracker ids a device remembers for its rotation (DeviceState), newest first, each kind bounded so
# that device_state stays small and an event stuffed with ids cannot retire hundreds of values. The
# brief ones (the session's, the page and screen views') change with every view and session: only the
# newest matter, the ones a tracker may still send after the rotation (a page ping of the current view,
# the next screen view's previousId). An idle tab's view id is among them only while fewer than that
# many views came since (its tabId, when sent, is lasting). The lasting ones (the device's and
# tracker's own, a tab's id, a landing link's) stay as long as the tab or the app does: the views must
# not push them out, so an idle tab's id or a link landed forty pages back is still retired.
BRIEF_IDS_KEPT = 24
LASTING_IDS_KEPT = 48
# The duids of the cross-domain links a device landed through are kept apart too: a URL may carry any
# number of `_sp` links (a crafted one someone was sent), and they must not push a tab's id out.
LINK_IDS_KEPT = 16
# The tracker ids an event may bring to the check against retired ones: every one is checked (one left
# out could be the retired one), and an event with more at its top level is refused. A tracker sends
# up to some 20; the ids nested in an app's own entity (a breadcrumb of screens) do not count.
TRACKER_IDS_CHECKED = 64
MAX_DEPTH = 64  # nesting the anonymous scrub walks into; orjson re-encodes at most 254 levels anyway


@dataclass(frozen=True, slots=True)
class EntityRule:
    """What of one entity schema identifies a person or device."""

    fields: frozenset[str] = frozenset()  # removed under SP-Anonymous
    whole: bool = False  # the entity itself identifies: dropped under SP-Anonymous
    tracker: tuple[str, ...] = ()  # the tracker's own ids: checked against retired ids
    brief: frozenset[str] = frozenset()  # those of `tracker` that change with each view or session
    forget: bool = False  # dropped from a row that carries a retired tracker id
    device: bool = False  # its tracker ids are the device's own, not the tracker's: see forget()


CLIENT_SESSION = "com.snowplowanalytics.snowplow/client_session"
# Keyed by `vendor/name`: every version of a schema follows the same rule.
ENTITY_RULES: dict[str, EntityRule] = {
    # userId is the tracker's device id (duid), previousSessionId ties sessions together, firstEventId
    # points at an event of the session; sessionId is the anonymous session (as the `sid` param) and stays.
    CLIENT_SESSION: EntityRule(
        frozenset({"userId", "previousSessionId", "firstEventId"}),
        tracker=("userId", "sessionId", "previousSessionId"),
        brief=frozenset({"sessionId", "previousSessionId"}),
        forget=True,
    ),
    # The ad and vendor ids outlive any rotation (the IDFV is the app's for as long as it is installed):
    # retired with the device, and dropped from a later row that still carries one.
    "com.snowplowanalytics.snowplow/mobile_context": EntityRule(
        frozenset({"appleIdfa", "appleIdfv", "androidIdfa", "openIdfa", "appSetId", "appSetIdScope"}),
        tracker=("appleIdfa", "appleIdfv", "androidIdfa", "openIdfa", "appSetId"),
        device=True,
    ),
    # The page view id (web) and screen view id (mobile) last until the next view: kept under
    # SP-Anonymous (page pings belong to their view), but a rotation or opt-out retires them, since the
    # tracker keeps sending the same one across a logout in a single-page app.
    "com.snowplowanalytics.snowplow/web_page": EntityRule(
        tracker=("id",), brief=frozenset({"id"}), forget=True
    ),
    "com.snowplowanalytics.mobile/screen": EntityRule(tracker=("id",), brief=frozenset({"id"}), forget=True),
    # The media plugin's playback (the id the app gives its media tracking): kept under SP-Anonymous
    # as the page view's is (a playback's pings belong to it); a video playing on across a logout
    # sends the same one on both sides of the rotation.
    "com.snowplowanalytics.snowplow.media/session": EntityRule(
        tracker=("mediaSessionId",), brief=frozenset({"mediaSessionId"}), forget=True
    ),
    # The mobile trackers' screen view event names its screen and the one before it: after a rotation
    # the next screen view's previousId is the old device's last screen. As the self-describing event
    # (not an entity) it is not dropped from a row that is forgotten; these two fields are.
    "com.snowplowanalytics.mobile/screen_view": EntityRule(
        tracker=("id", "previousId"), brief=frozenset({"id", "previousId"}), forget=True
    ),
    # tabId lives as long as the browser tab: an identifier of it, and a tracker id to retire
    "com.snowplowanalytics.snowplow/browser_context": EntityRule(
        frozenset({"tabId"}), tracker=("tabId",), forget=True
    ),
    "com.snowplowanalytics.snowplow.ecommerce/user": EntityRule(frozenset({"id", "email"})),
    # the ecommerce plugins' checkout step: where the buyer lives
    "com.snowplowanalytics.snowplow.ecommerce/checkout_step": EntityRule(
        frozenset({"shipping_full_address", "billing_full_address", "shipping_postcode", "billing_postcode"})
    ),
    # the Optimizely X plugin's summary, on every event: visitorId is Optimizely's own cookie id for the
    # browser, which outlives any rotation (as the GA client id)
    "com.optimizely.optimizelyx/summary": EntityRule(
        frozenset({"visitorId"}), tracker=("visitorId",), device=True
    ),
    # the browser tracker's (v2) Parrable and Augur contexts: a cross-site device id, and a person's
    # and a device's ids, which is all they are for
    "com.parrable/encrypted_payload": EntityRule(
        whole=True, tracker=("encryptedId",), forget=True, device=True
    ),
    "io.augur.snowplow/identity_lite": EntityRule(whole=True, forget=True),
    # what a visitor typed into a form (the form tracker's events): the fields' names and types stay
    "com.snowplowanalytics.snowplow/submit_form": EntityRule(frozenset({"value"})),
    "com.snowplowanalytics.snowplow/change_form": EntityRule(frozenset({"value"})),
    "com.snowplowanalytics.snowplow/focus_form": EntityRule(frozenset({"value"})),
    "com.snowplowanalytics.snowplow/geolocation_context": EntityRule(whole=True),
    # the Roku tracker's device info, on every event: channelClientId is the device's id for the channel
    # and RIDA Roku's advertising id, both as lasting as the IDFV
    "com.roku/device_info": EntityRule(
        frozenset({"channelClientId", "RIDA"}), tracker=("channelClientId", "RIDA"), device=True
    ),
    # the AMP tracker's ids on every pixel: ampClientId is AMP's cookie id for the browser (_sp_ampid)
    "dev.amp.snowplow/amp_id": EntityRule(
        frozenset({"ampClientId", "domainUserid", "userId"}),
        tracker=("ampClientId", "domainUserid"),
        device=True,
    ),
    # the AMP page view (PAGE_VIEW_ID_64), as web_page's id: an AMP page pinging on after another tab
    # rotated the device sends the same one on both sides
    "dev.amp.snowplow/amp_web_page": EntityRule(
        tracker=("ampPageViewId",), brief=frozenset({"ampPageViewId"}), forget=True
    ),
    # AMP's session (a number and a count, not retired: numbers this small are not one device's own);
    # dropped from a row that carries a retired id, as client_session is
    "dev.amp.snowplow/amp_session": EntityRule(forget=True),
    # the GA client id (`_ga`) is the browser's for two years: retired, and the entity forgotten
    "com.google.analytics/cookies": EntityRule(whole=True, tracker=("_ga",), forget=True, device=True),
    "com.google.ga4/cookies": EntityRule(whole=True, tracker=("_ga",), forget=True, device=True),
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
# ...and inside entity data (and a refused event's object params), the tracker protocol's own id
# params and what apps call their users: the same values an entity may carry under these names. Not
# for top-level params, where COLLECTOR_ANONYMOUS_DROP decides (an operator may keep `duid`).
DATA_FIELDS = frozenset(
    {"uid", "duid", "nuid", "tnuid", "fp", "mac", "ip", "aduid", "clientid", "customerid", "username"}
)
# ...and names that contain one of these (customerEmail, previousUserId, billing_phone_number): a custom
# entity names its fields as it likes, and a field dropped by mistake costs less than an id kept.
GENERIC_PARTS = (
    "userid",
    "deviceid",
    "visitorid",
    "advertisingid",
    "email",
    "phonenumber",
    "ipaddress",
    "idfa",
    "idfv",
)


def _norm(key: str) -> str:
    """A field or param name as identifier names are compared: letters and digits only, case-folded,
    accents and other combining marks off (so `userİd` and `User-ID` are `userid`)."""
    # in C-level steps, whatever the key's length: a client chooses it (NFKD splits the accents off,
    # the ASCII encoding drops them and whatever else is not ASCII)
    if not key.isascii():
        key = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode()
    return _NOT_ALNUM.sub("", key.lower())


_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_NAMES_SEEN: dict[str, tuple[str, bool]] = {}  # name -> (normalised, names an identifier): a few, often
_NAMES_SEEN_MAX = 4096  # bounded in number and length, as _RULES_SEEN: a client chooses the names
NAME_CACHED_MAX = 64


def _name(key: str) -> tuple[str, bool]:
    """(the name normalised, whether it names an identifier as GENERIC_FIELDS and GENERIC_PARTS say,
    or carries the cross-domain link: a map keyed by URLs, a param named by one, holds the linking
    site's duid in its name, where cutting the value alone leaves it)."""
    try:
        return _NAMES_SEEN[key]
    except KeyError:
        pass
    norm = _norm(key)
    seen = (
        norm,
        (
            norm in GENERIC_FIELDS
            or any(part in norm for part in GENERIC_PARTS)
            or (may_link(key) and without_link(key) != key)
        ),
    )
    if len(key) <= NAME_CACHED_MAX:
        if len(_NAMES_SEEN) >= _NAMES_SEEN_MAX:
            _NAMES_SEEN.clear()
        _NAMES_SEEN[key] = seen
    return seen


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
    # Compared without case or spaces, with or without `iglu:`: a rule must not be dodged by spelling
    # the schema another way (Iglu resolves vendor and name case-sensitively; the rules err the other way).
    # Nor by a trailing or doubled slash, a missing version, or an invisible character (a zero-width
    # space is not whitespace to split()): the vendor and name are the first two parts that remain.
    uri = "".join(schema.split()).lower()
    if not uri.isascii():
        uri = "".join(c for c in uri if unicodedata.category(c) != "Cf")
    parts = [p for p in uri.removeprefix("iglu:").split("/") if p]
    if len(parts) >= 2:
        rule = ENTITY_RULES.get(f"{parts[0]}/{parts[1]}")
    if len(schema) <= 256:  # real schema URIs are short; a long made-up one is not worth keeping
        if len(_RULES_SEEN) >= _RULES_SEEN_MAX:
            _RULES_SEEN.clear()
        _RULES_SEEN[schema] = rule
    return rule


def scrub_data(schema: Any, data: Any, also: frozenset[str] = frozenset()) -> tuple[bool, Any]:
    """(keep, data without identifiers) for one entity's data under SP-Anonymous.

    A schema with a rule loses the rule's fields and, like any other, the fields named like
    identifiers, at any depth; its data must be the object its schema defines, or nothing of it is
    kept (a rule read for an object says nothing about an array). `also`: more (normalised) names to
    drop everywhere (entity_drops).
    """
    rule = rule_of(schema)
    if rule is None:
        kept = _generic(data, also)
    elif rule.whole or not isinstance(data, dict):
        return False, None
    else:
        kept = _generic(data, _normed(rule.fields) | also)
    return (False, None) if kept is _GONE else (True, kept)  # its data an entity its rule drops whole


@lru_cache(maxsize=64)  # one entry per rule: the rules' field sets are fixed
def _normed(fields: frozenset[str]) -> frozenset[str]:
    return frozenset(_norm(f) for f in fields)


_GONE = object()  # what _generic returns for a nested entity its rule drops whole: left out of its parent


def _generic(value: Any, drop: frozenset[str], depth: int = 0) -> Any:
    """Data without the fields named like identifiers or (normalised) in `drop`, and strings without
    the cross-domain link, at any depth (up to MAX_DEPTH).

    An object with a `schema` that has a rule is the entity its schema names, wherever it sits (in
    another entity's data, contexts inside contexts, an event wrapping another): its rule holds
    there as at the top, its fields dropped below it and, for a rule that drops the entity whole or
    data that is not an object, the object itself (_GONE); a client must not dodge a rule by nesting."""
    if depth > MAX_DEPTH:  # deeper than anything a tracker sends: refused rather than half scrubbed
        raise BadInput("nested_too_deep", "a JSON value is nested too deeply")
    if isinstance(value, dict):
        schema = value.get("schema")
        if schema is not None and (rule := rule_of(schema)) is not None:
            if rule.whole or not isinstance(value.get("data"), dict):
                return _GONE
            drop = drop | _normed(rule.fields)
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and ((n := _name(k))[1] or n[0] in drop or n[0] in DATA_FIELDS):
                continue
            if (kept := _generic(v, drop, depth + 1)) is not _GONE:
                out[k] = kept
        return out
    if isinstance(value, list):
        return [kept for v in value if (kept := _generic(v, drop, depth + 1)) is not _GONE]
    if isinstance(value, str) and may_link(value):
        return without_link(value)
    return value


# The schema an anonymous row or bad row keeps: an Iglu URI in Iglu's own alphabet. Anything else in
# its place (an object, a query, an email) is not a schema and could carry an identifier: it goes.
_IGLU_URI = re.compile(r"iglu:[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+\Z")


def kept_schema(schema: Any) -> str | None:
    """`schema` if it is an Iglu URI (`iglu:vendor/name/format/version`), else None."""
    return schema if schema.__class__ is str and _IGLU_URI.match(schema) else None


def scrub_contexts(contexts: Any, also: frozenset[str] = frozenset()) -> Any:
    """Contexts (`{schema, data: [entities]}`) without identifying entities and fields; each entity, and
    the envelope, keep only their `schema` and `data` (nothing a client adds beside them)."""
    kept = []
    for entity in contexts.get("data", []):
        if not isinstance(entity, dict):
            continue
        schema = entity.get("schema")
        keep, data = scrub_data(schema, entity.get("data"), also)
        if keep:
            kept.append({"schema": kept_schema(schema), "data": data})
    return {"schema": kept_schema(contexts.get("schema")), "data": kept}


def scrub_unstruct(ue: Any, also: frozenset[str] = frozenset()) -> Any:
    """A self-describing event (`{schema, data: {schema, data}}`) without identifying fields, and
    without anything beside `schema` and `data` at either level."""
    inner = ue.get("data")
    outer = kept_schema(ue.get("schema"))
    if not isinstance(inner, dict):
        return {"schema": outer, "data": None}
    schema = inner.get("schema")
    # the envelope's schema is the client's to name: one with a rule makes the inner event the entity
    # it names, as everywhere else (_generic), its fields dropped below it, or all of it
    if (rule := rule_of(ue.get("schema"))) is not None:
        if rule.whole:
            return {"schema": outer, "data": {"schema": kept_schema(schema), "data": {}}}
        also = also | _normed(rule.fields)
    keep, data = scrub_data(schema, inner.get("data"), also)
    return {"schema": outer, "data": {"schema": kept_schema(schema), "data": data if keep else {}}}


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
    names = _dropped_names(drop)
    out = {
        # the self-describing fields are JSON (or base64 of it): decoded and scrubbed field by field below
        k: v if k in SELF_DESCRIBING else _anonymous_value(v)
        for k, v in params.items()
        if k not in drop and not _dropped_name(k, names)
    }
    also = entity_drops(drop)
    if also:
        _rewrite_self_describing(
            out, partial(scrub_contexts, also=also), partial(scrub_unstruct, also=also), strict
        )
    else:
        _rewrite_self_describing(out, scrub_contexts, scrub_unstruct, strict)
    return out


# The entity fields that carry a session param's value (the trackers send the same session id as `sid`
# and in the client_session entity; AMP's amp_session holds its own session's number and count):
# dropped from every entity with the param, when COLLECTOR_ANONYMOUS_DROP names it.
SESSION_PARAM_FIELDS = {"sid": ("sessionId", "ampSessionId"), "vid": ("sessionIndex", "ampSessionIndex")}


@lru_cache(maxsize=8)
def entity_drops(drop: frozenset[str]) -> frozenset[str]:
    """The (normalised) entity field names an anonymous event loses with its dropped params."""
    return frozenset(_norm(f) for p, fields in SESSION_PARAM_FIELDS.items() if p in drop for f in fields)


def _anonymous_value(value: Any) -> Any:
    """A param's value under SP-Anonymous: a string without the link; an object or a list (a refused
    event's, kept for its shape in the bad row) walked as entity data is, or nothing when too deep."""
    if isinstance(value, str):  # _generic's own string case, without its call: every param takes it
        return without_link(value) if may_link(value) else value
    try:
        kept = _generic(value, frozenset())
    except BadInput:
        return None
    return None if kept is _GONE else kept


SELF_DESCRIBING = frozenset({"co", "cx", "ue_pr", "ue_px"})


def _rewrite_self_describing(
    out: dict[str, Any], contexts: Callable[[Any], Any], unstruct: Callable[[Any], Any], strict: bool
) -> None:
    """Each self-describing field of `out` decoded (co/cx, ue_pr/ue_px, whatever the encoding), checked
    for the shape the rewrite walks, rewritten, and put back as plain JSON (co, ue_pr). `strict` (rows)
    refuses a field that cannot be decoded; otherwise (bad rows) that field is left out, since what
    cannot be read cannot be scrubbed."""
    for plain, encoded, rewrite in (("co", "cx", contexts), ("ue_pr", "ue_px", unstruct)):
        name = plain if plain in out else encoded if encoded in out else None
        if name is None:
            continue
        value = out.pop(name)
        out.pop(encoded, None)
        try:
            if not isinstance(value, str):
                raise BadInput("non_string_value", f"value of {name!r} is not a string")
            # the limit is on what was sent: the rewrite may write it longer (`1e5` as 100000.0)
            if len(value) > protocol.MAX_VALUE:
                raise BadInput("value_too_long", f"value of {name!r} is longer than the limit")
            doc = protocol.read_json(value, name, base64=name == encoded)  # rewritten below
            protocol.check_self_describing(doc, contexts=plain == "co")
            out[plain] = _dumps(rewrite(doc))
        except BadInput:
            if strict:
                raise


def _dropped_name(key: str, names: frozenset[str]) -> bool:
    norm, identifier = _name(key)
    return identifier or norm in names


@lru_cache(maxsize=8)
def _dropped_names(drop: frozenset[str]) -> frozenset[str]:
    """The normalised names of the params an anonymous event loses (so `UID` goes as `uid` does), with
    the network params and the cross-domain link's."""
    return frozenset(_norm(k) for k in (*drop, *NETWORK_PARAMS, LINK_PARAM))


# The tracker's own id params: never in a named request's bad row (see without_tracker_ids).
TRACKER_PARAMS = ("duid", "sid", "vid", "fp", *DEVICE_PARAMS)


def without_tracker_ids(params: dict[str, Any]) -> dict[str, Any]:
    """A named request's refused event as its bad row keeps it: without the tracker's ids (TRACKER_PARAMS,
    the `_sp` link, the `forget` entities and every entity's and the event's tracker fields, wherever
    they sit), nor their copies elsewhere.

    A bad row is never checked against retired ids, and it shares its request's time with the rows
    stored beside it: were it to keep a retired duid, it would tie the device after a rotation to the
    one before. What it is kept for, the shape that was refused, needs none of them. Contexts that
    cannot be decoded are left out, since what cannot be read cannot be scrubbed.
    """
    ids = [params.get(k) for k in TRACKER_PARAMS]

    def collect(doc: Any) -> Any:
        ids.extend(_tracker_fields(doc))
        return doc

    # first every tracker field, of the contexts and the event both: either may copy the other's
    _rewrite_self_describing(
        {k: v for k, v in params.items() if k in SELF_DESCRIBING}, collect, collect, False
    )

    def contexts(doc: Any) -> Any:
        return without_values(_bad_row_contexts(doc), cuttable(ids))

    def unstruct(doc: Any) -> Any:
        return without_values(_bad_row_event(doc), cuttable(ids))

    out = {
        # an object or a list (what made it non_string_value) is walked too
        k: v if k in SELF_DESCRIBING else cut_links(v)
        for k, v in params.items()
        if k not in TRACKER_PARAMS
    }
    _rewrite_self_describing(out, contexts, unstruct, strict=False)
    # ...and their copies under other names (an app's own entity or param that repeats the duid)
    needles = cuttable(ids)
    if needles:
        out = {
            _cut(k, needles): v if k in ("co", "ue_pr") else without_values(v, needles)
            for k, v in out.items()
        }
    return out


def _tracker_fields(doc: Any) -> Iterable[Any]:
    """The values of the tracker fields (EntityRule.tracker) of every entity in a document, and of the
    event in a self-describing event's, wherever they sit."""
    for rule, data in _ruled(doc):
        yield from (data.get(name) for name in rule.tracker)


def _bad_row_entity(entity: Any, rule: EntityRule) -> Any:
    return _GONE if rule.forget else _without_tracker_fields(entity)


def _bad_row_contexts(doc: Any) -> Any:
    """Contexts as a named request's bad row keeps them: without the `forget` entities, the other
    entities' tracker fields or the `_sp` link, wherever they sit."""
    return cut_links(_entities_rewritten(doc, _bad_row_entity, event=False))


def _bad_row_event(doc: Any) -> Any:
    """A self-describing event as a named request's bad row keeps it: as _bad_row_contexts, and
    without the event's own tracker fields."""
    return cut_links(_entities_rewritten(doc, _bad_row_entity, event=True))


# What a named request's refused body keeps (raw_without_tracker_ids): the param names whose values
# go, wherever the body holds them; a number too (`"vid": 3`, an old tracker's numeric `fp`); an
# object or array under one of them, or under a self-describing field's name, goes whole.
_RAW_DROPPED = frozenset({*TRACKER_PARAMS, *NETWORK_PARAMS})
_RAW_CONTAINED = _RAW_DROPPED | SELF_DESCRIBING
_AFTER_KEY = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")  # JSON's whitespace
_RAW_NUMBER = re.compile(r"-?[0-9][0-9.eE+-]*")
_FORM_SEPARATORS = re.compile(r"([&;])")


def raw_without_tracker_ids(text: str, depth: int = 0) -> str:
    """A named request's refused body (it would not parse, or was refused whole) as its bad row keeps
    it: what without_tracker_ids keeps of each event, the body's own text otherwise. A body that parses
    (a byte-order mark and whitespace before it aside; a JSON string too, a body encoded twice) is
    scrubbed as its events would be. One that does not (bad JSON, cut at the bad row's length) is
    read string by string: a value after a tracker or network param's name is emptied, `co`/`cx`/`ue_pr`
    /`ue_px` are decoded and scrubbed (emptied when they do not decode: what cannot be read cannot be
    scrubbed), every other string loses the `_sp` link, and a string cut short is left out with what
    follows it. JSON inside a string is read the same way, up to MAX_ENCODINGS deep. A body that does
    not start as JSON is read as a form too: those params' pairs go, the self-describing ones are
    scrubbed, and the link is cut."""
    stripped = text.lstrip(" \t\n\r\ufeff")
    try:
        doc = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        pass
    else:
        try:
            kept = _doc_without_tracker_ids(doc, depth)
            if depth == 0:  # the ids' copies under other names, once for the whole body
                kept = _json_without_values(kept, cuttable(_named_ids(doc)), 0)
            return orjson.dumps(kept).decode()
        except (orjson.JSONEncodeError, RecursionError):  # deeper than orjson writes: nothing is kept
            return ""
    if '"' in text:
        ids = cuttable(_raw_named_ids(text)) if depth == 0 else ()
        text = _raw_json_without_tracker_ids(text, depth)
        # cut from the text as it stands: only ids that JSON writes as they are (no quote, backslash
        # or control character), so that a cut cannot reach outside a string's content
        text = _cut(text, Needles(i for i in ids if orjson.dumps(i)[1:-1] == i.encode()))
    if stripped[:1] not in _JSON_START:
        text = _form_without_tracker_ids(text)
    return text


def _named_ids(doc: Any) -> Iterable[Any]:
    """The values a parsed body holds under a tracker param's name, at any depth (a number as its text)."""
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if k in TRACKER_PARAMS and (item.__class__ is str or item.__class__ is int):
                    yield str(item)
                elif isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)


def _loads_or_none(literal: str) -> Any:
    try:
        return orjson.loads(literal)
    except orjson.JSONDecodeError:
        return None


def _raw_named_ids(text: str) -> Iterable[str]:
    """The string values a body that does not parse holds right after a tracker param's name."""
    name: str | None = None
    end = -1
    for m in _JSON_LITERAL.finditer(text):
        if m.group(1) is None:
            return
        if name is not None and m.start() == end:
            value = _loads_or_none(m.group(0))
            if value is not None:
                yield value
        name = None
        sep = _AFTER_KEY.match(text, m.end())
        if sep is not None:
            try:
                key = orjson.loads(m.group(0))  # its escapes read, as the scrub reads the name
            except orjson.JSONDecodeError:
                continue
            if key in TRACKER_PARAMS:
                name, end = key, sep.end()


def _json_without_values(value: Any, needles: tuple[str, ...], encodings: int) -> Any:
    """without_values, a string that is JSON (a `co` kept as text, a body encoded twice) read and cut
    inside as such, up to MAX_ENCODINGS deep, so that a cut never reaches outside a string."""
    if not needles:
        return value
    if value.__class__ is str:
        if encodings < MAX_ENCODINGS and value.lstrip()[:1] in _JSON_START:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                return _cut(value, needles)
            return orjson.dumps(_json_without_values(doc, needles, encodings + 1)).decode()
        return _cut(value, needles)
    if isinstance(value, dict):
        return {_cut(k, needles): _json_without_values(v, needles, encodings) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_without_values(v, needles, encodings) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in needles:
        return None
    return value


def _string_without_tracker_ids(value: str, depth: int) -> str:
    """A string in a refused body: JSON in it read as a body is, else the link cut."""
    if depth < MAX_ENCODINGS and value.lstrip()[:1] in _JSON_START:
        return raw_without_tracker_ids(value, depth + 1)
    cut = cut_links(value)
    return cut if isinstance(cut, str) else ""


def _doc_without_tracker_ids(value: Any, depth: int) -> Any:
    """without_tracker_ids at every object of a parsed body, the network params out too (as
    scrub_event would take them first), each string read once."""
    if isinstance(value, dict):
        kept = {
            k: v if k in SELF_DESCRIBING else _doc_without_tracker_ids(v, depth)
            for k, v in value.items()
            if k not in _RAW_DROPPED
        }
        _rewrite_self_describing(kept, _bad_row_contexts, _bad_row_event, strict=False)
        return kept
    if isinstance(value, list):
        return [_doc_without_tracker_ids(v, depth) for v in value]
    if isinstance(value, str):
        return _string_without_tracker_ids(value, depth)
    return value


def _self_describing_kept(key: str, value: str) -> str:
    """A `co`/`cx`/`ue_pr`/`ue_px` value without the tracker's ids, in its own encoding; "" when it
    does not decode."""
    kept = without_tracker_ids({key: value})  # comes back as co / ue_pr: plain JSON
    plain = next(iter(kept.values()), "")
    if plain and key in ("cx", "ue_px"):  # the body's name stays: its encoding too
        plain = base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")
    return str(plain)


def _raw_json_without_tracker_ids(text: str, depth: int) -> str:
    out: list[str] = []
    at = 0  # the text up to here is in `out`
    key: str | None = None  # the name the next value is of
    level = 0  # objects and arrays open at `at` (counted outside strings)
    emptied: int | None = None  # while level is above this, every value goes (a tracker name's object)
    for m in _JSON_LITERAL.finditer(text):
        gap = text[at : m.start()]
        level += gap.count("{") + gap.count("[") - gap.count("}") - gap.count("]")
        if emptied is not None:
            gap = _RAW_NUMBER.sub("0", gap)  # numbers inside what goes
            if level <= emptied:
                emptied = None
        if m.group(1) is None:  # cut short: it and what follows go
            out.append(gap)
            return "".join(out)
        try:
            value = orjson.loads(m.group(0))
        except orjson.JSONDecodeError:
            value = None
        literal = m.group(0)
        at = m.end()
        sep = _AFTER_KEY.match(text, at)
        if sep is not None:  # a name
            key = value if isinstance(value, str) else None
            if emptied is None and key in _RAW_CONTAINED and text[sep.end() : sep.end() + 1] in ("{", "["):
                emptied = level  # what the next `{` or `[` opens goes
            elif emptied is None and key in _RAW_DROPPED:  # its value, if a number, goes here
                number = _RAW_NUMBER.match(text, sep.end())
                if number is not None:
                    out.append(gap + literal + text[at : sep.end()] + '""')
                    at = number.end()
                    key = None
                    continue
            out.append(gap + literal)
            continue
        if emptied is not None or not isinstance(value, str) or key in _RAW_DROPPED:
            literal = '""'  # what goes, what cannot be read, an id
        elif key in SELF_DESCRIBING:
            literal = _dumps(_self_describing_kept(key, value))
        else:
            kept = _string_without_tracker_ids(value, depth)
            if kept != value:
                literal = _dumps(kept)
        out.append(gap + literal)
        key = None
    out.append(text[at:] if emptied is None else _RAW_NUMBER.sub("0", text[at:]))
    return "".join(out)


def _form_without_tracker_ids(text: str) -> str:
    """A form body's pairs (split on `&` and `;`, as _is_link reads them) without the tracker's and
    network params, its self-describing values scrubbed, the link cut."""
    parts = _FORM_SEPARATORS.split(_without_link_pairs(text))
    out: list[str] = []
    for i in range(0, len(parts), 2):
        pair = parts[i]
        name, eq, value = pair.partition("=")
        name = unquote_plus(name)
        if name in _RAW_DROPPED:
            continue
        if eq and name in SELF_DESCRIBING:
            pair = (
                f"{parts[i].partition('=')[0]}={quote_plus(_self_describing_kept(name, unquote_plus(value)))}"
            )
        if out:
            out.append(parts[i - 1])
        out.append(pair)
    return "".join(out)


def without_link(url: str) -> str:
    """A URL without its cross-domain link params (`_sp=...`, the name percent-encoded or not, in the
    query or the fragment, a hash route's query too, or inside another param's value that is itself an
    encoded URL), the rest as it was; the URL itself when it has none. A string with neither `?` nor
    `#` is read as pairs too: a bare query, or a whole URL encoded (`encodeURIComponent(url)`)."""
    head, hashmark, fragment = url.partition("#")
    base, mark, query = head.partition("?")
    if not mark and not hashmark:
        return _without_link_pairs(url)
    cut_query, cut_fragment = _without_link_pairs(query), _without_link_pairs(fragment)
    if cut_query is query and cut_fragment is fragment:
        return url
    cut = (f"{base}?{cut_query}" if cut_query else base) if mark else head
    return (f"{cut}#{cut_fragment}" if cut_fragment else cut) if hashmark else cut


# Every spelling of a link shows in the text as it is: its name `_sp=` (any case) is made of
# characters that are there as they are, so `sp=` shows, or escaped, directly (`%5F`, `%73`, `%70`,
# `%3D`, in either case) or, a level deeper, through an escaped `%` (`%25`); a tab or newline that URL
# parsers drop may sit inside it, as it is or escaped. One scan rules out the rest: nearly every
# string, and nearly every URL with escapes (`%20`, `%2F`, `%C3%A9` are none of these).
_MAY_LINK = re.compile(r"sp=|%(?:5f|73|70|53|50|3d|25|09|0a|0d)|[\t\n\r]", re.IGNORECASE).search


_SP_EQ = re.compile(r"[sS][pP]=").search  # _MAY_LINK's first branch
_ESCAPE = re.compile(r"%(?:5f|73|70|53|50|3d|25|09|0a|0d)", re.IGNORECASE).search  # and its second


def may_link(text: str) -> bool:
    """_MAY_LINK's scan, branch by branch, each after the substring test it implies (`p=` or `P=`, a
    `%`, a tab or newline): the whole regex tries every position and its alternatives there, 2.4 us a
    100-character string and 10 us a 400-character JSON text with escapes in it, where a branch that
    starts with a literal `%` is found as fast as a substring; most strings pass no test at all."""
    return bool(
        (("p=" in text or "P=" in text) and _SP_EQ(text))
        or ("%" in text and _ESCAPE(text))
        or "\n" in text
        or "\t" in text
        or "\r" in text
    )


def json_may_link(text: str) -> bool:
    r"""may_link for a JSON text: its strings may also spell a link with JSON's escapes (`\u005fsp`,
    `\t`), which orjson reads (and the row would keep) as the characters themselves."""
    # no raw tab or newline to look for: JSON has none inside a string, and between tokens they link nothing
    return bool(
        (("p=" in text or "P=" in text) and _SP_EQ(text))
        or ("%" in text and _ESCAPE(text))
        or ("\\" in text and ("\\u" in text or "\\t" in text or "\\n" in text or "\\r" in text))
    )


# What URL parsers (WHATWG's, urlsplit) drop from anywhere in a URL before they read it: `_s\np=` is
# the link to them.
_URL_DROPPED = str.maketrans("", "", "\t\n\r")

_PAIR_SEPARATORS = re.compile(r"([?&#;])")  # `;` too: some servers split on it (and `&amp;`)
# How many times a value may be encoded inside another and still be looked into; past it a value
# that still holds an escape is dropped, since what is not read cannot be scrubbed.
MAX_ENCODINGS = 6
# What re-encoding a cut value leaves as it is: what encodeURIComponent leaves, as most senders encode
_VALUE_SAFE = "!'()*~"


def _is_link(pair: str) -> bool:
    # as a URL parser and then a server read the pair: tabs and newlines dropped, percent-decoded, so
    # `_sp%3D...` is the name `_sp` too (and so is `_SP`: over-cut rather than under); a bare `_sp` has
    # no value, so no id to link. What may_link rules out can never pass this.
    name, eq, _ = unquote_plus(pair.translate(_URL_DROPPED)).translate(_URL_DROPPED).partition("=")
    return bool(eq) and name.lower() == LINK_PARAM


def _without_link_pairs(text: str, depth: int = 0) -> str:
    """A query or fragment without its `_sp` pairs (and, once one is cut, without empty pairs); `?`,
    `#` and `;` separate as `&` does (`#/route?_sp=...`, a second `?`, a nested URL's own), the `?` or
    `#` before a cut pair passes to the next kept one, and a value that is an encoded URL is cut the
    same way, decoded and encoded again only when something went. The same object when nothing is
    cut."""
    if not may_link(text):
        return text
    parts = _PAIR_SEPARATORS.split(text)  # pair, separator, pair, ...
    out: list[str] = []
    pending = ""  # the `?` or `#` of a cut pair, for the next kept one
    changed = False
    for i in range(0, len(parts), 2):
        sep, pair = (parts[i - 1] if i else ""), parts[i]
        link = bool(pair) and _is_link(pair)
        if pair and not link and "%" in pair:  # a value that may be an encoded URL of its own
            name, eq, value = pair.partition("=") if "=" in pair else ("", "", pair)
            kept = _without_encoded_link(value, depth)
            if kept is not value:
                pair, changed = f"{name}{eq}{kept}", True
        if not pair or link:
            changed = changed or bool(parts[i])
            pending = "#" if "#" in (pending, sep) else pending or (sep if sep == "?" else "")
            continue
        out += (("#" if "#" in (pending, sep) else pending or sep) if out else "", pair)
        pending = ""
    return "".join(out) if changed else text


def _without_encoded_link(value: str, depth: int) -> str:
    """A param's value without the link inside it, when it is encoded (a URL passed as a param, once
    or more); the same object when there is none. Bytes that are not UTF-8 come back as they were."""
    decoded = unquote_plus(value, errors="surrogateescape")
    if decoded == value or not may_link(decoded):
        return value
    if depth >= MAX_ENCODINGS:
        return ""
    cut = _without_link_pairs(decoded, depth + 1)
    if cut is decoded:
        return value
    try:
        encoded = quote_plus(cut, safe=_VALUE_SAFE, errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte decoded to: nothing to keep it as
        return ""
    return encoded if len(encoded) <= len(value) + 16 else ""  # never a value grown past what was sent


def cut_links(value: Any, depth: int = 0) -> Any:
    """A JSON value with the cross-domain link cut from every string in it; what is nested deeper than
    MAX_DEPTH is dropped (it runs on stored rows too, where refusing is no longer an option)."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {k: cut_links(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [cut_links(v, depth + 1) for v in value]
    if isinstance(value, str) and may_link(value):
        return without_link(value)
    return value


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a microsecond an event
class TrackerIds:
    """The tracker's own ids an event carries (tracker_ids), by how long they last (BRIEF_IDS_KEPT),
    the cross-domain links' duids apart (LINK_IDS_KEPT), and those of entities nested below the top
    level apart too (an app's breadcrumb of screens: storage.sessions.remember keeps a few of them
    first and the rest where there is room, so that one such event cannot push out all the device
    remembered); each id in one of them."""

    lasting: tuple[str, ...] = ()
    brief: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    nested_lasting: tuple[str, ...] = ()
    nested_brief: tuple[str, ...] = ()

    @property
    def every(self) -> tuple[str, ...]:
        if self.nested_lasting or self.nested_brief:
            return self.lasting + self.links + self.brief + self.nested_lasting + self.nested_brief
        return self.lasting + self.links + self.brief

    def without(self, gone: set[str]) -> TrackerIds:
        return TrackerIds(
            *(tuple(v for v in ids if v not in gone) for ids in self._kinds()),
        )

    def _kinds(self) -> tuple[tuple[str, ...], ...]:
        return (self.lasting, self.brief, self.links, self.nested_lasting, self.nested_brief)


NO_TRACKER_IDS = TrackerIds()


def tracker_ids(
    duid: str | None,
    sid: str | None,
    contexts: Any,
    more: tuple[str | None, ...] = (),
    links: tuple[str, ...] = (),
    event: Any = None,
    nested: bool = False,
) -> TrackerIds:
    """The tracker's own ids an event carries, to check against retired ids (None-free, length-capped,
    each once); BadInput beyond TRACKER_IDS_CHECKED at the top level.

    `contexts` and `event` (the self-describing event: a screen view's own id and previousId) are
    parsed documents; with `nested` (may_nest found more schemas than the top level holds) every
    object with a rule is read wherever it sits, as the anonymous scrub reads it, else the top level
    only. `more`: the row's other device ids (ROW_IDS: user_fingerprint, refr_domain_userid;
    DEVICE_PARAMS), retired with the device like duid, since any would tie the device's rows before a
    rotation to those after. `links`: the duids of the cross-domain links the row holds (kept apart).
    """
    lasting = [v for v in (duid, *more) if v and v.__class__ is str and len(v) <= TRACKER_ID_MAX]
    brief = [sid] if sid and len(sid) <= TRACKER_ID_MAX else []
    top = _top_ruled(contexts, event)
    if top:
        _rule_fields(top, lasting, brief)
    kept = dict.fromkeys(lasting)
    found: dict[str, None] = {}
    linked: tuple[str, ...] = ()
    if links:  # the rare row: the common one builds no more than it needs (it runs for every event)
        # a link's `%00` decodes to U+0000, a byte that is not UTF-8 to a lone surrogate: looked up
        # as a store can keep them (the rows keep the URL's own text, and JSON's U+0000 as U+FFFD)
        found = dict.fromkeys(v for v in map(_storable, links) if v and len(v) <= TRACKER_ID_MAX)
        linked = tuple(v for v in found if v not in kept)
        short = tuple(v for v in dict.fromkeys(brief) if v not in kept and v not in found)
    else:
        short = tuple(v for v in dict.fromkeys(brief) if v not in kept) if brief else ()
    if len(kept) + len(linked) + len(short) > TRACKER_IDS_CHECKED:
        # only the top level counts: an app's own entity may list a screen per view (a breadcrumb),
        # and what it nests is bounded by the body, as the sum over a batch's events is
        raise BadInput("too_many_tracker_ids", f"an event carries at most {TRACKER_IDS_CHECKED} tracker ids")
    if not nested:
        return TrackerIds(tuple(kept), short, linked)
    seen = {id(data) for _, data in top}
    deep_lasting: list[str] = []
    deep_brief: list[str] = []
    below = [(r, d) for r, d in (*_ruled(contexts), *_ruled(event)) if id(d) not in seen and r.tracker]
    _rule_fields(below, deep_lasting, deep_brief)
    taken = {**kept, **found, **dict.fromkeys(short)}
    deep = tuple(v for v in dict.fromkeys(deep_lasting) if v not in taken)
    taken.update(dict.fromkeys(deep))
    return TrackerIds(
        tuple(kept), short, linked, deep, tuple(v for v in dict.fromkeys(deep_brief) if v not in taken)
    )


def _rule_fields(
    found: Iterable[tuple[EntityRule, dict[str, Any]]], lasting: list[str], brief: list[str]
) -> None:
    """The tracker fields of ruled entities' data, each to the list of its kind (EntityRule.brief)."""
    for rule, data in found:
        for name in rule.tracker:
            value = data.get(name)
            if value.__class__ is str and value and len(value) <= TRACKER_ID_MAX:
                if "\x00" in value:  # as the row stores it (build_row): the raw one fails PostgreSQL
                    value = value.replace("\x00", "\ufffd")
                if name in rule.brief:
                    brief.append(value)
                else:
                    lasting.append(value)


def _storable(value: str) -> str:
    """A link's duid as both stores can encode it: U+0000 as U+FFFD, and the bytes that are not UTF-8
    (decoded with surrogateescape) as the page URL's own decoding writes them (a U+FFFD each)."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: it is no text
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _top_ruled(contexts: Any, event: Any) -> list[tuple[EntityRule, dict[str, Any]]]:
    """The entities with a tracker rule at the top level of contexts, and the self-describing event's
    own data (`{schema, data: {schema, data}}`), each with its data: a list built in one loop, as this
    runs for every event."""
    found = []
    for entity in contexts["data"] if contexts is not None else ():
        if (
            entity.__class__ is dict
            and (rule := rule_of(entity.get("schema"))) is not None
            and rule.tracker
            and (data := entity.get("data")).__class__ is dict
        ):
            found.append((rule, data))
    if event is not None and (inner := event["data"]).__class__ is dict:
        rule = rule_of(inner.get("schema"))
        if rule is not None and rule.tracker and (data := inner.get("data")).__class__ is dict:
            found.append((rule, data))
        # the envelope's schema is the client's to name: one with a rule has the inner event as its
        # data, as the walks (_ruled) read it, and may_nest counts its key among the top level's
        if (rule := rule_of(event.get("schema"))) is not None and rule.tracker:
            found.append((rule, inner))
    return found


def _ruled(doc: Any) -> Iterable[tuple[EntityRule, dict[str, Any]]]:
    """Every object in a parsed JSON value whose `schema` has a rule and whose data is an object, with
    that data, wherever it sits (in another entity's data, contexts inside contexts), in the
    document's order (storage.sessions.remember keeps the first). Walked with a stack: a document
    may nest as deep as orjson writes (254)."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            rule = rule_of(value.get("schema"))
            if rule is not None and isinstance(data := value.get("data"), dict):
                yield rule, data
            stack.extend(reversed(value.values()))
        elif isinstance(value, list):
            stack.extend(reversed(value))


_SCHEMA_KEY = '"schema"'


def may_nest(text: str | None, doc: Any, contexts: bool) -> bool:
    """Whether a self-describing field's JSON text (as protocol.decode_json writes it, so every key
    `schema` is spelled so) may hold an object with a schema below its top level: more `"schema"`
    in it than the envelope and its entities (or the event) have keys of that name, counted as they
    are (an envelope or entity may come without one). A substring count on text in hand: the walk
    (_ruled) is for the rare document that nests one; a string value "schema" only walks for nothing."""
    if text is None:
        return False
    top = int("schema" in doc)
    for item in doc["data"] if contexts else (doc["data"],):
        if item.__class__ is dict and "schema" in item:
            top += 1
    return text.count(_SCHEMA_KEY) > top


def link_duids(text: str, depth: int = 0) -> list[str]:
    """The duids of the cross-domain links (`_sp=<duid>.<ms>`) in a text, found as `without_link` finds
    the pairs it cuts: the name in any spelling, a link inside a param's value that is an encoded URL
    (up to MAX_ENCODINGS deep), in the query, the fragment or a bare string of pairs. They are tracker
    ids to check against retired ones: what the cut would take is what links the row to a device."""
    if not may_link(text):
        return []
    found: list[str] = []
    for pair in _PAIR_SEPARATORS.split(text)[::2]:
        if not pair:
            continue
        if _is_link(pair):
            value = unquote_plus(pair.translate(_URL_DROPPED)).translate(_URL_DROPPED).partition("=")[2]
            duid = value.partition(".")[0]
            if duid and len(duid) <= TRACKER_ID_MAX:
                found.append(duid)
        elif "%" in pair and depth < MAX_ENCODINGS:
            value = pair.partition("=")[2] if "=" in pair else pair
            decoded = unquote_plus(value, errors="surrogateescape")
            if decoded != value:
                found += link_duids(decoded, depth + 1)
    return found


def entity_links(*docs: Any) -> list[str]:
    """The duids of the cross-domain links in the strings of the self-describing event and contexts (an
    entity holding the landing URL, a link click's target): tracker ids to check against retired ones,
    like the page URL's and the referrer's, since the link is the linking site's device. The caller
    only looks when the JSON text may hold one at all (json_may_link)."""
    found: list[str] = []
    for doc in docs:
        for text in _strings(doc) if doc is not None else ():
            found += link_duids(text)
    return found


def device_ids(row: list[Any]) -> set[str]:
    """The ids in a row that belong to the device rather than to the tracker (DEVICE_PARAMS, the
    tracker fields of the `device` entities: the mobile ad and vendor ids, the GA client id)."""
    found: set[str] = set()
    other = row[COL["other_params"]]
    if other is not None and any(f'"{p}"' in other for p in DEVICE_PARAMS):
        params = orjson.loads(other)
        found.update(v for p in DEVICE_PARAMS if isinstance(v := params.get(p), str))
    for name in ("contexts", "unstruct_event"):  # wherever the entity sits, as tracker_ids reads it
        text = row[COL[name]]
        for rule, data in _ruled(orjson.loads(text)) if text is not None else ():
            if rule.device:
                found.update(v for f in rule.tracker if isinstance(v := data.get(f), str))
    return found


# The columns of a stored event that row_tracker_ids reads, in its order.
ID_COLUMNS = (
    "domain_userid",
    "domain_sessionid",
    "user_fingerprint",
    "refr_domain_userid",
    "other_params",
    "contexts",
    "unstruct_event",
    "page_url",
    "page_referrer",
)


def row_tracker_ids(values: Iterable[Any]) -> set[str]:
    """Every tracker id a stored event carries (`values`: its ID_COLUMNS), as a rotation of its device
    retired them: what the event's device could have left in the retired ids. An erasure takes these
    out of the retired ids with the event, which would otherwise keep the erased person's device ids
    (a MAC, an IDFA, the duid) for COLLECTOR_RETIRED_DAYS.

    Read wherever they sit, as tracker_ids reads a nested document, and without its bounds: the row
    was stored, and what it holds is what goes."""
    duid, sid, fp, refr, other, co_text, ue_text, url, referrer = values
    found: list[Any] = [duid, sid, fp, refr]
    if other is not None and any(f'"{p}"' in other for p in DEVICE_PARAMS):
        params = orjson.loads(other)
        found += (params.get(p) for p in DEVICE_PARAMS)
    docs = [orjson.loads(text) for text in (co_text, ue_text) if text is not None]
    for doc in docs:
        for rule, data in _ruled(doc):
            found += (data.get(name) for name in rule.tracker)
    for text in (url, referrer):
        if text is not None:
            found += map(_storable, link_duids(text))
    found += map(_storable, entity_links(*docs))
    return {v for v in found if v.__class__ is str and v and len(v) <= TRACKER_ID_MAX}


def forget(row: list[Any], retired: set[str], ids: TrackerIds) -> TrackerIds:
    """A row carrying retired ids (`ids` are its tracker ids) loses them; returns the ids it keeps.

    When the only retired ones are the device's own (an IDFV, an ad id, `mac`: they outlive any
    rotation, so every later row of the device carries them), only those go: the tracker's new ids
    are its own. Otherwise the tracker kept ids from before the rotation, and the row loses the
    tracker's whole identity (`forget_tracker`).
    """
    hit = retired.intersection(ids.every)
    device = device_ids(row) if hit else set()
    forget_device_ids(row)
    if hit <= device:
        # the tracker's columns too, where it uses a device id as its own (an app's duid = IDFV),
        # however short: the rest of the tracker's ids are new, and stay
        for name in ("domain_userid", "domain_sessionid", *ROW_IDS):
            if row[COL[name]] in device:
                row[COL[name]] = None
        cut_everywhere(row, cuttable(device))
        return ids.without(device)
    forget_tracker(row)
    cut_everywhere(row, cuttable((*ids.every, *device)))
    return NO_TRACKER_IDS


def cleared_ids(row: list[Any]) -> set[str]:
    """The ids a tracker renews when the app clears its user data (`clearUserData()`, a mobile
    tracker's new session): the duid and sid columns and the `client_session` entity's userId and
    sessionId. A row that still carries a retired one, on a device whose tracker has ids of its own
    since, is the old identity's: made before the rotation, sent after it (storage.group). The ids
    that clearing keeps or carries over are no such evidence: the tab's id (sessionStorage), the
    page or screen view's, the screen view's `previousId`, a link's duid."""
    found = {v for v in (row[COL["domain_userid"]], row[COL["domain_sessionid"]]) if isinstance(v, str)}
    text = row[COL["contexts"]]
    if text is not None and "client_session" in text:
        session = ENTITY_RULES[CLIENT_SESSION]
        for rule, data in _ruled(orjson.loads(text)):
            if rule is session:
                found.update(v for f in ("userId", "sessionId") if isinstance(v := data.get(f), str))
    return found


# A tracker id shorter than this is common text (a `vid`, a short fingerprint): it goes from the fields
# that hold it by name, but is not cut from every other string, where it would take a title's digits.
CUT_MIN = 8
# Never cut: the row's own keys, and what the collector writes itself (times it formatted, its version,
# the event and platform it checked against their codes), which hold no copy
# of a tracker's id: a duid shaped like a time would otherwise rewrite collector_tstamp.
_KEY_COLUMNS = frozenset(
    COL[c]
    for c in (
        "event_id",
        "network_userid",
        "collector_tstamp",
        "dvce_created_tstamp",
        "dvce_sent_tstamp",
        "true_tstamp",
        "derived_tstamp",
        "v_collector",
        "event",
        "platform",
    )
)
# A column the store requires (NOT NULL) is cut to "" rather than NULL: a client's copy of a retired id
# in its tracker version must not fail the commit of every request in the group.
_REQUIRED_COLUMNS = frozenset({COL["v_tracker"]})
_JSON_COLUMNS = frozenset({COL["unstruct_event"], COL["contexts"], COL["other_params"]})


# Up to this many ids are each looked for in turn (C's substring search, the fastest for a few); more
# are found at once by an Aho-Corasick automaton (pyahocorasick, in C), reading a text once whatever
# their number: an event may nest thousands of ids (only the top level's are bounded), and cutting
# them from thousands of strings must not cost their product on the store's writer.
FEW_NEEDLES = 8
# A cut can join two halves into another occurrence: a text is cut again, this many times at most. A
# text built to form an id again after every cut (`abcd` * k + `efgh` * k) is left out whole: it is
# no one's data, and cutting it to the end would cost k passes.
CUT_PASSES = 4


class Needles(tuple[str, ...]):
    """Ids to cut (cuttable's), each CUT_MIN or more characters, with what finds many at once."""

    @cached_property
    def automaton(self) -> Any:
        """Each needle, found longest first where several start at one place (iter_long)."""
        found = ahocorasick.Automaton()
        for needle in self:
            found.add_word(needle, len(needle))
        found.make_automaton()
        return found

    @cached_property
    def members(self) -> frozenset[str]:
        return frozenset(self)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value in self.members


def cuttable(values: Iterable[Any]) -> Needles:
    """The ids among `values` that cut_everywhere and without_values cut: strings of CUT_MIN or more."""
    return Needles(dict.fromkeys(v for v in values if v.__class__ is str and len(v) >= CUT_MIN))


def _cut(text: str, needles: tuple[str, ...]) -> str:
    """`text` without the needles, cut again where a cut formed one (CUT_PASSES), or "" if it still
    holds one then."""
    if not needles or len(text) < CUT_MIN:
        return text
    once = _cut_few if len(needles) <= FEW_NEEDLES else _cut_many
    for _ in range(CUT_PASSES):
        cut = once(text, needles)
        if cut is text:
            return text
        text = cut
    return "" if once(text, needles) is not text else text


def _cut_few(text: str, needles: tuple[str, ...]) -> str:
    """One pass of each needle in turn; the same object when the text holds none."""
    for needle in needles:
        if needle in text:
            text = text.replace(needle, "")
    return text


def _cut_many(text: str, needles: tuple[str, ...]) -> str:
    """One pass, left to right, of every needle at once; the same object when the text holds none."""
    automaton = (needles if isinstance(needles, Needles) else Needles(needles)).automaton
    parts: list[str] = []
    kept = 0
    for end, length in automaton.iter_long(text):
        parts.append(text[kept : end + 1 - length])
        kept = end + 1
    if not parts:
        return text
    parts.append(text[kept:])
    return "".join(parts)


def without_values(value: Any, needles: tuple[str, ...], depth: int = 0) -> Any:
    """A JSON value with every needle cut from its strings, keys too (an id may key a map), and an
    integer whose text is one dropped; what is nested deeper than MAX_DEPTH is dropped, as cut_links
    drops it."""
    if value.__class__ is str:
        return _cut(value, needles)
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {_cut(k, needles): without_values(v, needles, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [without_values(v, needles, depth + 1) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in needles:
        return None
    return value


def cut_everywhere(row: list[Any], needles: tuple[str, ...]) -> None:
    """Every needle (ids a rotation retired) cut from every string a row keeps: a URL's query, a title,
    an app's own entity that copies the tracker's duid under a name of its own (`visitorRef`), and
    the JSON columns parsed, so that an escaped spelling (`\\u0061...`) is read as the id it is. The
    fields that hold the ids by name are emptied before this; this takes the copies."""
    if not needles:
        return
    for i, value in enumerate(row):
        if value.__class__ is not str or i in _KEY_COLUMNS:
            continue
        if i in _JSON_COLUMNS:
            if "\\" in value or any(n in value for n in needles):
                doc = _loads_or_none(value)  # the row's own JSON; as text, should it ever not parse
                row[i] = (
                    _cut(value, needles)
                    if doc is None
                    else orjson.dumps(without_values(doc, needles)).decode()
                )
        elif any(n in value for n in needles):
            row[i] = _cut(value, needles) or ("" if i in _REQUIRED_COLUMNS else None)


def forget_device_ids(row: list[Any]) -> None:
    """The device's own ids out of a row: DEVICE_PARAMS, the `device` entities' tracker fields (the
    entity itself when it is forgotten whole: the GA cookies)."""
    other = row[COL["other_params"]]
    if other is not None and any(f'"{p}"' in other for p in DEVICE_PARAMS):
        params = {k: v for k, v in orjson.loads(other).items() if k not in DEVICE_PARAMS}
        row[COL["other_params"]] = orjson.dumps(params).decode() if params else None
    _rewrite_entities(row, _without_device_ids, cut=False)


def forget_tracker(row: list[Any]) -> None:
    """Drop the tracker's identity from a row: duid, sid, vid (its column, or other_params when it did
    not fit), the fingerprint and cross-domain id (ROW_IDS), the link they came from wherever the row
    keeps a string, the `forget` entities (the session, the page and screen views, the GA cookies)."""
    row[COL["domain_userid"]] = row[COL["domain_sessionid"]] = row[COL["domain_sessionidx"]] = None
    for name in ROW_IDS:
        row[COL[name]] = None
    row[COL["refr_dvce_tstamp"]] = None  # half of the cross-domain link value
    for names, cut in ((LINK_URL_COLUMNS, without_link), (LINK_PART_COLUMNS, _without_link_pairs)):
        for name in names:  # where refr_domain_userid was parsed from
            value = row[COL[name]]
            if isinstance(value, str) and may_link(value):
                row[COL[name]] = cut(value) or None
    other = row[COL["other_params"]]
    if other is not None:
        params = cut_links({k: v for k, v in orjson.loads(other).items() if k != "vid"})
        row[COL["other_params"]] = orjson.dumps(params).decode() if params else None
    _rewrite_entities(row, _unforgotten, cut=True)


def _rewrite_entities(row: list[Any], each: Callable[[Any, EntityRule], Any], cut: bool) -> None:
    """The row's contexts and self-describing event rewritten by _entities_rewritten; with `cut`, the
    `_sp` link cut from every string."""
    for name in ("contexts", "unstruct_event"):
        text = row[COL[name]]
        if text is None:
            continue
        doc = _entities_rewritten(orjson.loads(text), each, event=name == "unstruct_event")
        if cut:
            doc = cut_links(doc)
        try:
            row[COL[name]] = orjson.dumps(doc).decode()
        except orjson.JSONEncodeError:  # nested too deep to re-encode: keep the entities that can be
            if name == "contexts" and isinstance(doc.get("data"), list):
                row[COL[name]] = orjson.dumps({**doc, "data": list(_encodable(doc["data"]))}).decode()
            else:
                row[COL[name]] = None


def _entities_rewritten(doc: Any, each: Callable[[Any, EntityRule], Any], event: bool) -> Any:
    """A document with `each` applied to every object with a rule, wherever it sits: the object,
    rewritten, or _GONE to leave it out of its parent. With `event` the document is a self-describing
    event, whose own object is never left out: only its tracker fields go (a forgotten screen view is
    still a screen view)."""
    if not isinstance(doc, dict):
        return _with_entities(doc, each)
    if not (event and isinstance(doc.get("data"), dict)):
        return _children(doc, each)  # the envelope itself is never left out, whatever its schema
    if (outer := rule_of(doc.get("schema"))) is not None:  # a ruled envelope loses its fields only
        kept_outer = each(doc, outer)
        doc = kept_outer if isinstance(kept_outer, dict) else _without_tracker_fields(doc)
    inner = doc["data"]
    rule = rule_of(inner.get("schema"))
    kept = inner if rule is None else each(inner, rule)
    if not isinstance(kept, dict):  # _GONE
        kept = _without_tracker_fields(inner)
    return {**_children(doc, each), "data": _children(kept, each)}


def _with_entities(value: Any, each: Callable[[Any, EntityRule], Any], depth: int = 0) -> Any:
    """_entities_rewritten's walk; what is nested deeper than MAX_DEPTH is dropped, as cut_links drops it
    (a refused body may nest as deep as orjson reads)."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        rule = rule_of(value.get("schema"))
        if rule is not None:
            value = each(value, rule)
            if value is _GONE or not isinstance(value, dict):
                return value
        return _children(value, each, depth)
    if isinstance(value, list):
        return [v for item in value if (v := _with_entities(item, each, depth + 1)) is not _GONE]
    return value


def _children(
    value: dict[str, Any], each: Callable[[Any, EntityRule], Any], depth: int = 0
) -> dict[str, Any]:
    return {k: v for k, item in value.items() if (v := _with_entities(item, each, depth + 1)) is not _GONE}


def _without_device_ids(entity: Any, rule: EntityRule) -> Any:
    if not rule.device:
        return entity
    return _GONE if rule.forget else _without_tracker_fields(entity)


def _unforgotten(entity: Any, rule: EntityRule) -> Any:
    return _GONE if rule.forget else entity


def _without_tracker_fields(entity: Any) -> Any:
    rule = rule_of(entity.get("schema")) if isinstance(entity, dict) else None
    if rule is None or not rule.tracker or not isinstance(entity.get("data"), dict):
        return entity
    return {**entity, "data": {k: v for k, v in entity["data"].items() if k not in rule.tracker}}


def _encodable(entities: Iterable[Any]) -> Iterable[Any]:
    for entity in entities:
        try:
            orjson.dumps(entity)
        except orjson.JSONEncodeError:
            continue
        yield entity


def erasure_needles(value: str) -> tuple[str, ...]:
    """How a text holds `value` (a user or device id being erased) as a value, not a substring: as a
    JSON string, as a JSON string inside a JSON string (an entity inside `co`), and as a query or form
    param's value (`=v&`, matched against the text with `&` appended). Another person's text that
    merely contains a short id is not theirs, and the match is exact in case on both stores."""
    once = orjson.dumps(value).decode()
    forms = {once, orjson.dumps(once).decode()[1:-1]}
    forms.update(f"={enc}&" for enc in (quote_plus(value, safe=""), quote(value, safe="")))
    return tuple(sorted(forms))


# A bad row keeps what the collector refused as it came (a body that would not parse) or as JSON of
# the refused event's params, whose values hold the tracker's encodings: `co` and `ue_pr` are JSON in
# a string, `cx` and `ue_px` base64 of it, a URL's query is percent-encoded, and JSON may spell any
# character as `\uXXXX`. An erased id must be found in every spelling the collector would have read
# it in, so a bad row's payload is read as the collector reads: each level decoded, up to
# MAX_ENCODINGS deep, each string compared whole.
_JSON_START = frozenset("{[")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")  # a run that may be base64 or base64url
_BASE64_WHOLE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}").fullmatch  # a value that may be, whatever its length
# A JSON string, its escapes left as they are; one never closed is matched too (without its group 2)
# and skipped. Possessive, and taking the unclosed one whole, so that each character is read once: the
# plain `"(?:[^"\\]|\\.)*"` failed to the end of the text from every quote of a run of `\"` (a 64
# KiB `{"\"\"...` body took 14 s). It finds the same strings: a failed match's later quotes are all
# escaped ones, whose reading fails at the same place.
_JSON_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*+(")?')


def _literals(text: str) -> Iterable[str]:
    """The JSON strings in a text that does not parse as a whole (a body cut at the bad row's length,
    or refused for its syntax), each decoded as JSON decodes it: its escapes read."""
    for m in _JSON_LITERAL.finditer(text):
        if m.group(1) is None:  # never closed
            continue
        try:
            value = orjson.loads(m.group(0))
        except orjson.JSONDecodeError:  # a lone surrogate escape: not a string orjson reads
            continue
        if value.__class__ is str:
            yield value


def _decoded_base64(run: str) -> str | None:
    """The text a base64 or base64url run decodes to, as protocol.decode_json reads `cx`/`ue_px`;
    None when it is not base64 of UTF-8 text."""
    try:
        raw = base64.urlsafe_b64decode(run.replace("+", "-").replace("/", "_") + "=" * (-len(run) % 4))
        return raw.decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return None


def _strings(value: Any) -> Iterable[str]:
    """Every string in a parsed JSON value, keys too (an id may key a map: `{"<device>": ...}`), and an
    integer as its text (a refused `uid: 42`). Walked with a stack, not recursion: orjson reads
    documents nested far deeper than the scrub's MAX_DEPTH, and a bad row keeps what it reads."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            yield from v.keys()
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            yield str(v)


def _readings(text: str, depth: int) -> Iterable[tuple[str, bool]]:
    """The strings a text holds as the collector reads it, each with whether it is a whole value (to
    compare equal) or only text (to search with erasure_needles' forms)."""
    yield text, True
    if depth >= MAX_ENCODINGS:
        yield text, False
        return
    stripped = text.lstrip()
    parsed = False
    if stripped[:1] in _JSON_START:
        try:
            doc = orjson.loads(stripped)
            parsed = True
        except orjson.JSONDecodeError:
            doc = None
        if parsed:
            for s in _strings(doc):
                yield from _readings(s, depth + 1)
            return
        for literal in _literals(text):  # what did not parse: its strings, each decoded
            if literal != text:
                yield from _readings(literal, depth + 1)
    yield text, False
    if "=" in text:  # a query, a form body, a URL: its values percent-decoded, as parse_qsl reads them
        query = text.partition("?")[2] or text
        for _, v in parse_qsl(query.replace("#", "&"), keep_blank_values=False):
            if v != text:
                yield from _readings(v, depth + 1)
    if _BASE64_WHOLE(text):
        runs = [text]
    else:
        runs = _BASE64.findall(text)
        if len(runs) > 1:  # base64 broken by line breaks or junk: the collector drops what is not of
            runs.append(text)  # the alphabet and reads the rest (protocol.decode_json), so read it so
    for run in runs:
        decoded = _decoded_base64(run)
        if decoded is not None and decoded != text:
            yield from _readings(decoded, depth + 1)


# A device id is a random UUID: found as a token anywhere in a text (a signed cookie `<uuid>.<mac>`, a
# cookie header pasted into a field, free text naming it), not only as a whole value, since no other
# person's text holds it by chance. A token: not inside a longer run of letters, digits, `_` or `-`.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
_TOKEN_EDGE = re.compile(r"[0-9A-Za-z_-]")  # `_` too: `order_<uuid>` names something else


def _holds_token(text: str, token: str) -> bool:
    at = text.find(token)
    while at >= 0:
        end = at + len(token)
        if not (at and _TOKEN_EDGE.match(text, at - 1)) and not _TOKEN_EDGE.match(text, end):
            return True
        at = text.find(token, at + 1)
    return False


def payload_holds(payload: str, values: Iterable[str], devices: Iterable[str] = ()) -> bool:
    """Whether a bad row's payload holds one of `values` (the ids an erasure removes) in any spelling
    the collector reads: a value, not a substring (see erasure_needles), exact in case; one of
    `devices` (the collector's UUIDs, among the values) as a token too. A user id shaped like a UUID
    is the app's, perhaps a placeholder many share: only as a value."""
    wanted = {v for v in values if v}
    if not wanted:
        return False
    needles = [n for v in wanted for n in erasure_needles(v)]
    tokens = [v for v in devices if v in wanted and _UUID(v)]
    for text, whole in _readings(payload, 0):
        if whole:
            if text in wanted:
                return True
        else:
            padded = text + "&"  # once, not once a needle (an erasure may name hundreds of devices)
            if any(n in padded for n in needles) or any(_holds_token(text, t) for t in tokens):
                return True
    return False
