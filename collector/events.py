"""Event rows, pure: one tracker event's params (already scrubbed by the policy) to a row of the store."""

from __future__ import annotations

import math
import time
from typing import Any

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
}
TSTAMPS = {"dtm": COL["dvce_created_tstamp"], "stm": COL["dvce_sent_tstamp"], "ttm": COL["true_tstamp"]}
# Consumed elsewhere (identity, policy) or decoded below: never copied into other_params.
HANDLED = frozenset({"eid", "vid", "se_va", "ue_pr", "ue_px", "co", "cx", *identifiers.NETWORK_PARAMS})
DUID, SID = COL["domain_userid"], COL["domain_sessionid"]
# Where each param goes, in one lookup per param on the hot path: a column index (>= 0), other_params,
# consumed elsewhere, or a timestamp column (TSTAMP_BASE - column).
OTHER, HANDLED_KEY, TSTAMP_BASE = -1, -2, -3
PLACE: dict[str, int] = {
    **{k: HANDLED_KEY for k in HANDLED},
    **{k: TSTAMP_BASE - i for k, i in TSTAMPS.items()},
    **SIMPLE,
}
MAX_EID = 128


_SECONDS: dict[int, str] = {}


_LAST: list[Any] = [None, ""]  # the last (ms, text): a batch's events share their send time (stm)


def format_ms(ms: int) -> str:
    """UTC 'YYYY-MM-DD HH:MM:SS.mmm' for a millisecond epoch."""
    last = _LAST
    if last[0] == ms:
        return last[1]  # type: ignore[no-any-return]
    sec = ms // 1000
    text = _SECONDS.get(sec)
    if text is None:  # strftime is the costliest step of a row; events of a batch share their seconds
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        text = _SECONDS[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
    out = f"{text}.{ms % 1000:03d}"
    last[0], last[1] = ms, out
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


def build_row(
    params: dict[str, str], base: list[Any], anonymize_names: tuple[str, ...]
) -> tuple[list[Any], bool, tuple[str, ...]]:
    """The stored row for an event (params already scrubbed by the policy), whether it is an anonymize
    event, and the tracker ids it carries; raise BadInput if malformed."""
    row = base.copy()
    other: dict[str, str] = {}
    for key, value in params.items():
        # one pass both checks and copies (a str subclass cannot come from JSON)
        if value.__class__ is not str:
            raise BadInput("non_string_value", f"value of {param_name(key)} is not a string")
        if len(value) > MAX_VALUE or len(key) > MAX_KEY:
            what = f"value of {param_name(key)}" if len(key) <= MAX_KEY else "a param's name"
            raise BadInput("value_too_long", f"{what} is longer than the limit")
        idx = PLACE.get(key, OTHER)
        if idx >= 0:
            row[idx] = value
        elif idx == OTHER:
            other[key] = value
        elif idx != HANDLED_KEY:  # a timestamp: its column is encoded in the place
            ms = _int(value)
            if ms is None:
                other[key] = value
            else:
                row[TSTAMP_BASE - idx] = format_ms(ms)
    duid, sid = row[DUID], row[SID]
    if (duid and len(duid) > identifiers.TRACKER_ID_MAX) or (sid and len(sid) > identifiers.TRACKER_ID_MAX):
        raise BadInput("bad_tracker_id", f"duid and sid are at most {identifiers.TRACKER_ID_MAX} characters")
    eid = params.get("eid")
    if eid is not None and (not eid or len(eid) > MAX_EID):
        raise BadInput("bad_event_id", f"eid must be 1 to {MAX_EID} characters")
    row[COL["event_id"]] = eid or random_uuid()
    if "vid" in params:
        row[COL["domain_sessionidx"]] = _int(params["vid"])
    if "se_va" in params:
        try:
            number = float(params["se_va"])
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            row[COL["se_value"]] = number
        else:  # SQLite would store NaN as NULL and inf as a REAL nobody can aggregate: keep the text
            other["se_va"] = params["se_va"]
    (ue, ue_text), (co, co_text) = protocol.self_describing(params)
    anonymize = False
    if ue_text is not None:
        vendor, name, version = protocol.schema_parts(ue)
        row[COL["event_vendor"]], row[COL["event_name"]], row[COL["event_version"]] = vendor, name, version
        row[COL["unstruct_event"]] = ue_text
        lname = (name or "").lower()
        anonymize = lname in anonymize_names or f"{(vendor or '').lower()}/{lname}" in anonymize_names
    if co_text is not None:
        row[COL["contexts"]] = co_text
    if other:
        row[COL["other_params"]] = orjson.dumps(other).decode()
    ids = identifiers.tracker_ids(duid, sid, co)
    return row, anonymize, ids
