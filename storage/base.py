"""The store interface the collector sees: append a request's events, query read-only, close."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # collector.identifiers reads this module's column map
    from collector.identifiers import TrackerIds

# Event rows are lists in this column order (the conventional Snowplow names); building them as
# plain lists keeps the hot path free of per-event dicts.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "event",
    "app_id",
    "platform",
    "name_tracker",
    "v_tracker",
    "v_collector",
    "collector_tstamp",
    "dvce_created_tstamp",
    "dvce_sent_tstamp",
    "true_tstamp",
    "user_ipaddress",
    "useragent",
    "network_userid",
    "domain_userid",
    "domain_sessionid",
    "domain_sessionidx",
    "user_id",
    "session_id",
    "session_index",
    "anonymous",
    "page_url",
    "page_title",
    "page_referrer",
    "se_category",
    "se_action",
    "se_label",
    "se_property",
    "se_value",
    "event_vendor",
    "event_name",
    "event_version",
    "unstruct_event",
    "contexts",
    "br_lang",
    "os_timezone",
    "other_params",
    # Added by migration 0007 (SQLite) / 0003 (PostgreSQL): the rest of the tracker-sent atomic columns,
    # same names and meanings as Snowplow's atomic.events. Rows stored before keep these in other_params.
    "pp_xoffset_min",
    "pp_xoffset_max",
    "pp_yoffset_min",
    "pp_yoffset_max",
    "br_cookies",
    "br_colordepth",
    "br_viewwidth",
    "br_viewheight",
    "dvce_screenwidth",
    "dvce_screenheight",
    "doc_charset",
    "doc_width",
    "doc_height",
    "tr_orderid",
    "tr_affiliation",
    "tr_total",
    "tr_tax",
    "tr_shipping",
    "tr_city",
    "tr_state",
    "tr_country",
    "tr_currency",
    "ti_orderid",
    "ti_sku",
    "ti_name",
    "ti_category",
    "ti_price",
    "ti_quantity",
    "ti_currency",
    "refr_domain_userid",
    "refr_dvce_tstamp",
    "txn_id",
    "event_format",
    "user_fingerprint",
    "derived_tstamp",
    "page_urlscheme",
    "page_urlhost",
    "page_urlport",
    "page_urlpath",
    "page_urlquery",
    "page_urlfragment",
    "refr_urlscheme",
    "refr_urlhost",
    "refr_urlport",
    "refr_urlpath",
    "refr_urlquery",
    "refr_urlfragment",
    "mkt_medium",
    "mkt_source",
    "mkt_term",
    "mkt_content",
    "mkt_campaign",
)
COL = {name: i for i, name in enumerate(COLUMNS)}
EVENT_ID, NETWORK_USERID, DOMAIN_USERID, DOMAIN_SESSIONID = (
    COL["event_id"],
    COL["network_userid"],
    COL["domain_userid"],
    COL["domain_sessionid"],
)
USER_ID, SESSION_ID, SESSION_INDEX = COL["user_id"], COL["session_id"], COL["session_index"]
DVCE_CREATED = COL["dvce_created_tstamp"]


class Overloaded(Exception):
    """The write queue is full: answer 503 with Retry-After, never buffer without bound."""


class StoreFailed(Exception):
    """The transaction holding the request's events did not commit: nothing of it is kept."""


class RejectedData(StoreFailed):
    """The database refused this request's data itself: a client error (400), not an outage (503)."""


@dataclass(slots=True)
class BadRow:
    """An input the collector refused, already scrubbed by the policy."""

    received_at: str
    reason: str
    detail: str
    payload: str | None
    size: int
    anonymous: bool


@dataclass(slots=True)
class Submission:
    """One request's writes, committed together."""

    now_ms: int  # collector time of the request, for session timeouts
    # The request's own device (its cookie's, or minted for it): the cookie the answer sets. Each row's
    # network_userid holds its event's device, which a server-side tracker may send per event.
    device_id: str | None
    rows: list[list[Any]] = field(default_factory=list)
    anonymize_at: tuple[int, ...] = ()  # indexes of rows that rotate their device
    # Per row, the tracker's own ids it carries (duid, sid, session entity): checked against retired ids.
    tracker_ids: list[TrackerIds] = field(default_factory=list)
    # A device whose cookie came with SP-Anonymous: it opted out, so it is retired (its session ends,
    # its tracker ids are retired). Submitted on its own, never with the anonymous rows.
    opted_out: str | None = None
    bad_rows: list[BadRow] = field(default_factory=list)
    nbytes: int = 0  # what the request weighs in the write queue (its body or query string)


@dataclass(slots=True)
class AppendResult:
    """What the commit did with a submission."""

    stored: int = 0
    duplicates: int = 0
    device_id: str | None = None  # the request's device after any rotation: the cookie to set
    retired_device: bool = False  # the request's device had rotated away or opted out: expire its cookie
    rotated: int = 0
    ignored: int = 0  # anonymize events that did not rotate: a repeat with no event of the device between
    deviceless: int = 0  # events stored without a device: their cookie's device was retired


class Store(Protocol):
    """A durable, append-only event store. `append` returns only after the commit."""

    async def append(self, submission: Submission) -> AppendResult:
        """Queue the submission into the next group commit and wait for that commit."""
        ...

    def append_nowait(self, submission: Submission) -> bool:
        """Queue bad rows without waiting (they acknowledge nothing); False when the queue is full."""
        ...

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query."""
        ...

    async def lifecycle(self, now_ms: int, retention_days: int, cookie_max_age_s: int) -> Any:
        """One run of the data lifecycle's rules (retention, culling): what it removed."""
        ...

    @property
    def queue_depth(self) -> int:
        """Events waiting for the writer."""
        ...

    @property
    def healthy(self) -> bool:
        """Commits succeed: false while the last one failed (disk full, I/O) or the writer is gone."""
        ...

    async def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        ...
