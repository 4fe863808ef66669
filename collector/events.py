"""Event rows, pure: one tracker event's params (already scrubbed by the policy) to a row of the store."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from collector import __version__, identifiers, protocol
from collector.errors import BadInput
from collector.identity import random_uuid
from collector.protocol import MAX_KEY, MAX_VALUE, param_name
from storage.base import COL, COLUMNS

V_COLLECTOR = f"anon-collector-{__version__}"
# Params copied as they are into the column of the same meaning.
SIMPLE = {
    "e": COL["event"],
    "aid": COL["app_id"],
    "p": COL["platform"],
    "tna": COL["name_tracker"],
    "tv": COL["v_tracker"],
    "url": COL["page_url"],
    "page": COL["page_title"],
    "refr": COL["page_referrer"],
    "se_ca": COL["se_category"],
    "se_ac": COL["se_action"],
    "se_la": COL["se_label"],
    "se_pr": COL["se_property"],
    "lang": COL["br_lang"],
    "tz": COL["os_timezone"],
    "uid": COL["user_id"],
    "duid": COL["domain_userid"],
    "sid": COL["domain_sessionid"],
    "ua": COL["useragent"],
    "cd": COL["br_colordepth"],
    "cs": COL["doc_charset"],
    "tr_id": COL["tr_orderid"],
    "tr_af": COL["tr_affiliation"],
    "tr_ci": COL["tr_city"],
    "tr_st": COL["tr_state"],
    "tr_co": COL["tr_country"],
    "tr_cu": COL["tr_currency"],
    "ti_id": COL["ti_orderid"],
    "ti_sk": COL["ti_sku"],
    "ti_nm": COL["ti_name"],
    "ti_na": COL["ti_name"],  # the older trackers' name of ti_nm
    "ti_ca": COL["ti_category"],
    "ti_cu": COL["ti_currency"],
    "fp": COL["user_fingerprint"],  # an identifier: the policy drops it under SP-Anonymous
}
# Params converted into a typed column; a value that does not convert stays in other_params.
INTS = {
    "pp_mix": COL["pp_xoffset_min"],
    "pp_max": COL["pp_xoffset_max"],
    "pp_miy": COL["pp_yoffset_min"],
    "pp_may": COL["pp_yoffset_max"],
    "ti_qu": COL["ti_quantity"],
    "tid": COL["txn_id"],
}
NUMBERS = {
    "tr_tt": COL["tr_total"],
    "tr_tx": COL["tr_tax"],
    "tr_sh": COL["tr_shipping"],
    "ti_pr": COL["ti_price"],
}
SIZES = {  # "WIDTHxHEIGHT"
    "vp": (COL["br_viewwidth"], COL["br_viewheight"]),
    "res": (COL["dvce_screenwidth"], COL["dvce_screenheight"]),
    "ds": (COL["doc_width"], COL["doc_height"]),
}
TYPED = frozenset({*INTS, *NUMBERS, *SIZES, "cookie"})
INT_MAX = 2**31 - 1  # Snowplow's integer columns (and PostgreSQL's integer) hold 32 bits
PAGE_PARTS = tuple(COL[f"page_url{p}"] for p in ("scheme", "host", "port", "path", "query", "fragment"))
REFR_PARTS = tuple(COL[f"refr_url{p}"] for p in ("scheme", "host", "port", "path", "query", "fragment"))
# Each URL's six part columns are adjacent: one slice assignment fills them.
PAGE_SLICE = slice(PAGE_PARTS[0], PAGE_PARTS[-1] + 1)
REFR_SLICE = slice(REFR_PARTS[0], REFR_PARTS[-1] + 1)
assert tuple(range(PAGE_SLICE.start, PAGE_SLICE.stop)) == PAGE_PARTS
assert tuple(range(REFR_SLICE.start, REFR_SLICE.stop)) == REFR_PARTS
# Snowplow's campaign attribution: the utm_* params of the page URL's query.
UTM = {f"utm_{k}": COL[f"mkt_{k}"] for k in ("medium", "source", "term", "content", "campaign")}
DEFAULT_PORTS = {"http": 80, "https": 443}
TSTAMPS = {"dtm": COL["dvce_created_tstamp"], "stm": COL["dvce_sent_tstamp"], "ttm": COL["true_tstamp"]}
# Consumed elsewhere (identity, policy) or decoded below: never copied into other_params.
HANDLED = frozenset({"eid", "vid", "se_va", "ue_pr", "ue_px", "co", "cx", *identifiers.NETWORK_PARAMS})
DUID, SID = COL["domain_userid"], COL["domain_sessionid"]
PAGE_URL, REFERRER, ANONYMOUS = COL["page_url"], COL["page_referrer"], COL["anonymous"]
FP, REFR_DUID = COL["user_fingerprint"], COL["refr_domain_userid"]
# Where each param goes, in one lookup per param on the hot path: a column index (>= 0), consumed
# elsewhere, a typed column, or a timestamp column (TSTAMP_BASE - column); a key not here goes to
# other_params.
HANDLED_KEY, TYPED_KEY, TSTAMP_BASE = -2, -3, -4
PLACE: dict[str, int] = {
    **{k: HANDLED_KEY for k in HANDLED},
    **{k: TYPED_KEY for k in TYPED},
    **{k: TSTAMP_BASE - i for k, i in TSTAMPS.items()},
    **SIMPLE,
}
MAX_EID = 128


_SECONDS: dict[int, str] = {}


# The last (ms, text): a batch's events share their send time (stm). One tuple, swapped whole, since
# the lifecycle formats times on another thread: a pair updated in two steps could be read half-new.
_LAST: list[tuple[int, str]] = [(-1, "")]


def format_ms(ms: int) -> str:
    """UTC 'YYYY-MM-DD HH:MM:SS.mmm' for a millisecond epoch."""
    last = _LAST[0]
    if last[0] == ms:
        return last[1]
    sec = ms // 1000
    text = _SECONDS.get(sec)
    if text is None:  # strftime is the costliest step of a row; events of a batch share their seconds
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        text = _SECONDS[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
    out = f"{text}.{ms % 1000:03d}"
    _LAST[0] = (ms, out)
    return out


def base_row(collector_tstamp: str, ip: str | None, useragent: str | None, anonymous: bool) -> list[Any]:
    """The request-level values every row of a request shares."""
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["v_collector"]] = V_COLLECTOR
    row[COL["collector_tstamp"]] = collector_tstamp
    row[COL["user_ipaddress"]] = ip
    row[COL["useragent"]] = useragent
    row[COL["anonymous"]] = int(anonymous)
    return row


def _int(value: str) -> int | None:
    # isdigit() alone is true for superscripts and other scripts' digits, which int() refuses
    return int(value) if value.isascii() and value.isdigit() and len(value) < 16 else None


def _signed(value: str) -> int | None:
    n = _int(value[1:]) if value[:1] == "-" else _int(value)
    if n is None or n > INT_MAX:
        return None
    return -n if value[:1] == "-" else n


Converted = tuple[tuple[int, Any], ...] | None  # (column, value) pairs; None: it does not convert


def _convert(key: str, value: str) -> Converted:
    """One typed param's column(s) and value(s), or None if the value does not convert."""
    if key in INTS:
        n = _signed(value)
        return None if n is None else ((INTS[key], n),)
    if key in NUMBERS:
        try:
            number = float(value)
        except ValueError:
            return None
        return ((NUMBERS[key], number),) if math.isfinite(number) else None
    if key in SIZES:
        w, sep, h = value.partition("x")
        width, height = _int(w), _int(h)
        if not sep or width is None or height is None or width > INT_MAX or height > INT_MAX:
            return None
        return (SIZES[key][0], width), (SIZES[key][1], height)
    # cookie: "1" or "0"
    return ((COL["br_cookies"], value == "1"),) if value in ("0", "1") else None


# A device sends the same screen, viewport and cookie values with each event: converted once. Short
# values only, and bounded, so that a stream of made-up ones costs a few MiB at most.
_CONVERTED: dict[tuple[str, str], Converted] = {}
_CONVERTED_MAX, _CONVERTED_VALUE = 4096, 32


def _typed(row: list[Any], key: str, value: str) -> bool:
    """Convert one typed param into its column(s); False if the value does not convert."""
    k = (key, value)
    try:
        conv = _CONVERTED[k]
    except KeyError:
        conv = _convert(key, value)
        if len(value) <= _CONVERTED_VALUE:
            if len(_CONVERTED) >= _CONVERTED_MAX:
                _CONVERTED.clear()
            _CONVERTED[k] = conv
    if conv is None:
        return False
    for idx, v in conv:
        row[idx] = v
    return True


# A page's pings and views repeat its URL: parsed once. Only URLs up to this length are cached, so a
# hostile stream of 64 KiB URLs cannot make the caches hold more than a few MiB.
CACHED_URL = 2048


def url_parts(url: str) -> tuple[Any, ...] | None:
    """(scheme, host, port, path, query, fragment) of an absolute URL (see _url_parts)."""
    return _cached_url_parts(url) if len(url) <= CACHED_URL else _url_parts(url)


def query_fields(query: str) -> tuple[tuple[int, str], ...]:
    """The mkt_* values (from utm_*) and the cross-domain `_sp` link value (index -1) of a query."""
    return _cached_query_fields(query) if len(query) <= CACHED_URL else _query_fields(query)


def _url_parts(url: str) -> tuple[Any, ...] | None:
    """(scheme, host, port, path, query, fragment) of an absolute URL, as Snowplow's page_url* and
    refr_url* columns hold them (port defaulted from the scheme); None if it is not one."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:  # a bad port or IPv6 literal
        return None
    if not u.scheme or not u.netloc:
        return None
    scheme = u.scheme.lower()
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    return scheme, u.hostname, port, u.path or None, u.query or None, u.fragment or None


def _query_fields(query: str) -> tuple[tuple[int, str], ...]:
    if "utm_" not in query and "_sp=" not in query:
        return ()
    out: dict[int, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        idx = UTM.get(name) if name != "_sp" else -1
        if idx is not None and idx not in out:
            # parse_qsl decodes %00 to a NUL, which PostgreSQL's text refuses: the collector's own
            # decoding must not turn a storable URL into an unstorable row (U+FFFD, as for bad UTF-8)
            out[idx] = value.replace("\x00", "\ufffd") if "\x00" in value else value
    return tuple(out.items())


_cached_url_parts = lru_cache(maxsize=1024)(_url_parts)
_cached_query_fields = lru_cache(maxsize=1024)(_query_fields)


def _link_duids(url: str) -> tuple[str, ...]:
    return tuple(identifiers.link_duids(url))


_cached_link_duids = lru_cache(maxsize=1024)(_link_duids)


def url_links(url: str) -> tuple[str, ...]:
    """identifiers.link_duids of a page URL or referrer, cached like its parts (the same few repeat)."""
    return _cached_link_duids(url) if len(url) <= CACHED_URL else _link_duids(url)


_COLLECTOR_MS: dict[str, int] = {}


def _collector_ms(text: str) -> int:
    """The millisecond epoch of a row's collector_tstamp (every row of a request shares it)."""
    ms = _COLLECTOR_MS.get(text)
    if ms is None:
        if len(_COLLECTOR_MS) > 64:
            _COLLECTOR_MS.clear()
        ms = _COLLECTOR_MS[text] = int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)
    return ms


def _derived(row: list[Any], times: dict[str, int]) -> str:
    """Snowplow's derived_tstamp: true_tstamp if sent; else collector_tstamp - (dvce_sent_tstamp -
    dvce_created_tstamp) when the device created the event before sending it; else collector_tstamp."""
    if "ttm" in times:
        return row[COL["true_tstamp"]]  # type: ignore[no-any-return]
    created, sent = times.get("dtm"), times.get("stm")
    collector: str = row[COL["collector_tstamp"]]
    if created is None or sent is None or created >= sent:
        return collector
    ms = _collector_ms(collector) - (sent - created)
    # device times decades apart would put it before 1970 (or BC, which PostgreSQL refuses): no estimate
    return format_ms(ms) if ms >= 0 else collector


def _from_urls(row: list[Any]) -> tuple[str, ...]:
    """The URL-derived columns: page_url*/refr_url* components, mkt_* and the cross-domain link; return
    the duids of every link in the page URL and the referrer (the page URL's query, as the
    refr_domain_userid column holds it, its fragment, the referrer's: the landing page's URL, as the next
    page's document.referrer keeps it), in any spelling `without_link` would cut: tracker ids to check
    against retired ones like the column's."""
    url = row[PAGE_URL]
    parts = url_parts(url) if url else None
    if parts is not None:
        row[PAGE_SLICE] = parts
        if parts[4] is not None:
            for idx, value in query_fields(parts[4]):
                if idx >= 0:
                    row[idx] = value
                elif not row[ANONYMOUS]:  # `_sp` = duid.timestamp[...]: the linking site's device id
                    duid, _, rest = value.partition(".")
                    if duid and len(duid) <= identifiers.TRACKER_ID_MAX:
                        row[REFR_DUID] = duid
                        ms = _int(rest.partition(".")[0])
                        row[COL["refr_dvce_tstamp"]] = format_ms(ms) if ms is not None else None
    refr = row[REFERRER]
    parts = url_parts(refr) if refr else None
    if parts is not None:
        row[REFR_SLICE] = parts
    if row[ANONYMOUS]:  # an anonymous row has every link cut already, and keeps no tracker id
        return ()
    return (*(url_links(url) if url else ()), *(url_links(refr) if refr else ()))


# The self-describing params an anonymous request's rewrite puts back (identifiers.anonymous_params)
REWRITTEN = frozenset({"co", "ue_pr"})


def _refuse(key: str, value: object) -> None:
    """Raise BadInput for a param whose value is not a string or is too long."""
    if value.__class__ is not str:
        raise BadInput("non_string_value", f"value of {param_name(key)} is not a string")
    what = f"value of {param_name(key)}" if len(key) <= MAX_KEY else "a param's name"
    raise BadInput("value_too_long", f"{what} is longer than the limit")


def build_row(
    params: dict[str, str], base: list[Any], anonymize_names: tuple[str, ...]
) -> tuple[list[Any], bool, identifiers.TrackerIds]:
    """The stored row for an event (params already scrubbed by the policy), whether it is an anonymize
    event, and the tracker ids it carries; raise BadInput if malformed."""
    row = base.copy()
    other: dict[str, str] = {}
    times: dict[str, int] = {}
    for key, value in params.items():
        # one pass both checks and copies (a str subclass cannot come from JSON); the keys PLACE
        # knows are short, so only an unknown key's length is checked
        # (an anonymous row's entities are the collector's rewrite, checked as sent by the policy)
        if (value.__class__ is not str or len(value) > MAX_VALUE) and not (
            row[ANONYMOUS] and key in REWRITTEN and value.__class__ is str
        ):
            _refuse(key, value)
        idx = PLACE.get(key)
        if idx is None:
            if len(key) > MAX_KEY:
                raise BadInput("value_too_long", "a param's name is longer than the limit")
            other[key] = value
        elif idx >= 0:
            row[idx] = value
        elif idx == TYPED_KEY:
            if not _typed(row, key, value):
                other[key] = value
        elif idx != HANDLED_KEY:  # a timestamp: its column is encoded in the place
            ms = _int(value)
            if ms is None:
                other[key] = value
            else:
                row[TSTAMP_BASE - idx] = format_ms(ms)
                times[key] = ms
    duid, sid = row[DUID], row[SID]
    if (duid and len(duid) > identifiers.TRACKER_ID_MAX) or (sid and len(sid) > identifiers.TRACKER_ID_MAX):
        raise BadInput("bad_tracker_id", f"duid and sid are at most {identifiers.TRACKER_ID_MAX} characters")
    fp = row[FP]
    if fp and len(fp) > identifiers.TRACKER_ID_MAX:
        raise BadInput("bad_tracker_id", f"fp is at most {identifiers.TRACKER_ID_MAX} characters")
    eid = params.get("eid")
    if eid is not None and (not eid or len(eid) > MAX_EID):
        raise BadInput("bad_event_id", f"eid must be 1 to {MAX_EID} characters")
    row[COL["event_id"]] = eid or random_uuid()
    if "vid" in params:
        vid = _int(params["vid"])
        if vid is not None and vid <= INT_MAX:  # Snowplow's (and PostgreSQL's) integer column
            row[COL["domain_sessionidx"]] = vid
        else:  # as for every typed param: a value that does not convert stays in other_params
            other["vid"] = params["vid"]
    if "se_va" in params:
        try:
            number = float(params["se_va"])
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            row[COL["se_value"]] = number
        else:  # SQLite would store NaN as NULL and inf as a REAL nobody can aggregate: keep the text
            other["se_va"] = params["se_va"]
    (ue, ue_text), (co, co_text) = protocol.self_describing(params)  # U+0000 in them as U+FFFD
    anonymize = False
    if ue_text is not None:
        vendor, name, fmt, version = protocol.schema_parts(ue)
        row[COL["event_vendor"]], row[COL["event_name"]], row[COL["event_version"]] = vendor, name, version
        row[COL["event_format"]] = fmt
        row[COL["unstruct_event"]] = ue_text
        lname = (name or "").lower()
        anonymize = lname in anonymize_names or f"{(vendor or '').lower()}/{lname}" in anonymize_names
    if co_text is not None:
        row[COL["contexts"]] = co_text
    if other:
        row[COL["other_params"]] = orjson.dumps(other).decode()
    row[COL["derived_tstamp"]] = _derived(row, times)
    linked = _from_urls(row)
    if not row[ANONYMOUS] and (
        (co_text is not None and identifiers.json_may_link(co_text))
        or (ue_text is not None and identifiers.json_may_link(ue_text))
    ):  # substring tests on text in hand: the walk is for the rare row that may hold a link
        linked = (*linked, *identifiers.entity_links(co, ue))
    more = (
        (fp, row[REFR_DUID], *(other.get(k) for k in identifiers.DEVICE_PARAMS))
        if other
        else (fp, row[REFR_DUID])
    )
    nested = identifiers.may_nest(co_text, co, contexts=True) or identifiers.may_nest(
        ue_text, ue, contexts=False
    )
    ids = identifiers.tracker_ids(duid, sid, co, more, linked, ue, nested)
    return row, anonymize, ids
