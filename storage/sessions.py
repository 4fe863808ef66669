"""Server-side sessions, pure: a device's latest state and one event in, new state out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from collector.identifiers import BRIEF_IDS_KEPT, LASTING_IDS_KEPT, LINK_IDS_KEPT, TrackerIds
from storage.ids import UuidPool

# How many of an event's nested ids of each kind are remembered with its own ids (remember).
NESTED_FIRST = 4
# Session ids are minted on the writer thread only: this pool is that thread's.
new_session_id = UuidPool()


@dataclass(slots=True)
class DeviceState:
    """A device's current session, as kept in device_state."""

    session_id: str
    session_index: int
    last_ms: int
    tracker_sid: str | None = None
    user_id: str | None = None
    # The device rotated away (an anonymize event) or opted out (SP-Anonymous with its cookie): it is
    # retired for good. Its cookie is never refreshed again, and events that still carry it are kept
    # without a device, so a late answer can neither undo the rotation nor tie what follows to it.
    closed: bool = False
    tracker_duid: str | None = None
    # The tracker ids (identifiers.tracker_ids) of the device's latest events, newest first, lasting,
    # brief and link ids apart (identifiers.BRIEF_IDS_KEPT says why): retired with the device even
    # when the retiring request carries none (an opt-out, a mobile tracker that keeps its
    # installation id only in the session entity).
    tracker_ids: tuple[str, ...] = ()
    brief_ids: tuple[str, ...] = ()
    link_ids: tuple[str, ...] = ()


# device_state's columns, named in every statement (never `SELECT *`): a later migration may add one
# while older replicas still run.
STATE_COLUMNS = (
    "device_id",
    "session_id",
    "session_index",
    "last_ms",
    "tracker_sid",
    "user_id",
    "closed",
    "tracker_duid",
    "tracker_ids",
    "brief_ids",
    "link_ids",
)


def state_row(device: str, st: DeviceState) -> tuple[Any, ...]:
    """A device_state row, in STATE_COLUMNS order, the ids as JSON arrays. The column tracker_ids holds
    every id the device remembers, of each kind, and brief_ids and link_ids say which are which: a
    replica of a version from before they were apart (during a rolling upgrade) reads tracker_ids
    alone, and retires all of them when it rotates the device."""
    ids = orjson.dumps(st.tracker_ids + st.link_ids + st.brief_ids).decode()
    brief = orjson.dumps(st.brief_ids).decode()
    links = orjson.dumps(st.link_ids).decode()
    closed = int(st.closed)
    return (
        device,
        st.session_id,
        st.session_index,
        st.last_ms,
        st.tracker_sid,
        st.user_id,
        closed,
        st.tracker_duid,
        ids,
        brief,
        links,
    )


def state_of(row: Sequence[Any]) -> tuple[str, DeviceState]:
    """(device id, state) from a device_state row in STATE_COLUMNS order: the lasting ids are what
    tracker_ids holds before the link and brief ids state_row wrote after them, or all of it when an
    older replica wrote it last."""
    dev, sess, idx, last, sid, uid, closed, duid, ids, brief, links = row
    every, short, linked = orjson.loads(ids), orjson.loads(brief), orjson.loads(links)
    if short or linked:
        apart = linked + short
        own = len(every) - len(apart)
        if own >= 0 and every[own:] == apart:  # as state_row wrote it
            del every[own:]
        else:  # an older replica wrote tracker_ids last: which are lasting cannot be told, so all
            # are (a landing link's duid is lasting too, as the next page's refr_domain_userid)
            every = list(dict.fromkeys(every))
    lasting = tuple(every[:LASTING_IDS_KEPT])
    state = DeviceState(sess, idx, last, sid, uid, bool(closed), duid, lasting, tuple(short), tuple(linked))
    return dev, state


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings sessions and retirement follow."""

    timeout_ms: int
    # How long a tracker may keep sending an id it kept for itself (the browser tracker's own cookie
    # lasts two years by default): a retired id is refused that long, then forgotten.
    retired_days: int = 730


def continues(state: DeviceState, now_ms: int, sid: str | None, uid: str | None, rules: SessionRules) -> bool:
    """Whether an event continues the device's session (no timeout, same tracker sid, same user)."""
    return not (
        state.closed
        or now_ms - state.last_ms > rules.timeout_ms
        or (sid is not None and state.tracker_sid is not None and sid != state.tracker_sid)
        or (uid is not None and state.user_id is not None and uid != state.user_id)
    )


def assign(
    state: DeviceState | None,
    now_ms: int,
    sid: str | None,
    uid: str | None,
    rules: SessionRules,
    duid: str | None = None,
) -> DeviceState:
    """The device's state after one event: the same session updated, or the next session."""
    if state is not None and continues(state, now_ms, sid, uid, rules):
        state.last_ms = max(state.last_ms, now_ms)
        state.tracker_sid = sid or state.tracker_sid
        state.user_id = uid or state.user_id
        state.tracker_duid = duid or state.tracker_duid
        return state
    index = state.session_index + 1 if state is not None else 1
    last_duid = duid or (state.tracker_duid if state is not None else None)
    if state is None:
        return DeviceState(new_session_id(), index, now_ms, sid, uid, False, last_duid)
    kept, brief, links = state.tracker_ids, state.brief_ids, state.link_ids
    return DeviceState(new_session_id(), index, now_ms, sid, uid, False, last_duid, kept, brief, links)


def remember(state: DeviceState, ids: TrackerIds) -> None:
    """Keep an event's tracker ids on its device's state: newest first, each kind bounded. Of the ids
    of its nested entities, the first NESTED_FIRST of each kind go with the event's own (an app's
    current screen, a wrapped session entity: they may ride nested only), the rest after those
    remembered, where there is room (a breadcrumb of thirty screens pushes out four ids, not all)."""
    if ids.lasting or ids.nested_lasting:
        deep = ids.nested_lasting
        lasting = (*ids.lasting, *deep[:NESTED_FIRST], *state.tracker_ids, *deep[NESTED_FIRST:])
        state.tracker_ids = tuple(dict.fromkeys(lasting))[:LASTING_IDS_KEPT]
    if ids.brief or ids.nested_brief:
        deep = ids.nested_brief
        brief = (*ids.brief, *deep[:NESTED_FIRST], *state.brief_ids, *deep[NESTED_FIRST:])
        state.brief_ids = tuple(dict.fromkeys(brief))[:BRIEF_IDS_KEPT]
    if ids.links:
        state.link_ids = tuple(dict.fromkeys((*ids.links, *state.link_ids)))[:LINK_IDS_KEPT]


def retire(state: DeviceState) -> list[str]:
    """Retire the device for good; the tracker ids it was using, never to be stored again."""
    state.closed = True
    return remembered(state)


def remembered(state: DeviceState) -> list[str]:
    """The tracker ids a device's state remembers: what retiring it retires (and erasing it takes out
    of the retired ids again)."""
    ids = (*state.tracker_ids, *state.link_ids, *state.brief_ids)
    return [v for v in (state.tracker_duid, state.tracker_sid, *ids) if v]
