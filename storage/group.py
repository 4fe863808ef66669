"""The group logic, pure and shared by every store: a group's submissions and the state looked up for
them in, the writes and each request's result out.

A store only looks up (`wanted`) and writes (`Writes`) inside its own transaction; dedupe, session
assignment, rotation and retirement are decided here once, so that every backend agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector import identifiers
from storage import lifecycle
from storage.base import (
    DOMAIN_SESSIONID,
    DOMAIN_USERID,
    DVCE_CREATED,
    EVENT_ID,
    NETWORK_USERID,
    SESSION_ID,
    SESSION_INDEX,
    USER_ID,
    AppendResult,
    BadRow,
    Submission,
)
from storage.sessions import DeviceState, SessionRules, assign, remember, remembered, retire

# What makes two events one (dedupe): the event id and the time the device created the event.
# A tracker's retry resends the event as it was (the same eid and dtm; only stm changes), so retries
# are stored once. Two events that share an id but not a creation time are two events, as Snowplow
# counts them (its "synthetic duplicates", from bots and broken id generators), and both are kept.
# The time comes first in the stores' unique index: live traffic is created about now, so the index
# takes its inserts at one end instead of at a random page per event (the event id is random).
DedupeKey = tuple[str, str]  # (dvce_created_tstamp or "", event_id)


def dedupe_key(row: Sequence[Any]) -> DedupeKey:
    """An event row's dedupe key; an event without a device time has "" there."""
    return (row[DVCE_CREATED] or "", row[EVENT_ID])


@dataclass(slots=True)
class Wanted:
    """What a group needs looked up: dedupe keys, tracker ids (retired?) and device states."""

    events: set[DedupeKey]
    tracker_ids: set[str]
    devices: set[str]


@dataclass(slots=True)
class Found:
    """The lookups' answers: the stored dedupe keys, the retired values, the devices' states."""

    seen: set[DedupeKey]
    retired: dict[str, str]  # each retired value, and the month after which it may go (YYYY-MM)
    states: dict[str, DeviceState]


@dataclass(slots=True)
class Writes:
    """Everything one group's transaction writes."""

    events: list[list[Any]] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    states: dict[str, DeviceState] = field(default_factory=dict)  # upserted
    retired: list[str] = field(default_factory=list)  # inserted, or their expiry extended (still sent)
    retired_until: str = ""  # the month after which the newly retired ids may go (YYYY-MM)


def wanted(subs: Sequence[Submission]) -> Wanted:
    """The lookups a group needs."""
    return Wanted(
        {dedupe_key(r) for s in subs for r in s.rows},
        {v for s in subs for ids in s.tracker_ids for v in ids.every},
        {d for s in subs for d in (*(r[NETWORK_USERID] for r in s.rows), s.opted_out) if d},
    )


def decide(
    subs: Sequence[Submission], found: Found, rules: SessionRules, new_device_id: Callable[[], str]
) -> tuple[Writes, list[AppendResult]]:
    """The group's writes and one result per submission, in order; the input rows are not modified."""
    seen, retired, states = found.seen, set(found.retired), found.states
    now_ms = max((s.now_ms for s in subs), default=0)
    out = Writes(retired_until=lifecycle.month_after(now_ms, rules.retired_days))

    def retire_values(values: Iterable[str | None]) -> None:
        for value in values:
            if value and len(value) <= identifiers.TRACKER_ID_MAX and value not in retired:
                retired.add(value)
                out.retired.append(value)

    results = []
    renewed: set[str] = set()
    expires, until = found.retired, out.retired_until
    for sub in subs:
        res = AppendResult()
        out.bad_rows.extend(sub.bad_rows)
        # A device with no state has nothing to retire; writing one would record its id and the time
        # of an anonymous request, so nothing is written for it.
        state = states.get(sub.opted_out) if sub.opted_out is not None else None
        if state is not None and sub.opted_out is not None and not state.closed:
            retire_values(retire(state))
            out.states[sub.opted_out] = state
        # A device's id for the rest of this request: the one it rotated to, or None once it is retired.
        moved: dict[str, str | None] = {}
        # ids minted by a rotation in this request that have stored no event yet: rotating them again
        # would mint ids for nothing (a batch of 50 anonymize events rotates once)
        rotated: set[str] = set()
        for i, original in enumerate(sub.rows):
            row = original.copy()  # a retried transaction decides again from the same submissions
            ids = sub.tracker_ids[i] if sub.tracker_ids else identifiers.NO_TRACKER_IDS
            old_identity = False
            if retired and not retired.isdisjoint(ids.every):
                # still sent: a tracker renews its own cookie with each event, so the id is retired
                # for as long again (written when its month moves: no write, no row lock, otherwise)
                renewed.update(v for v in retired.intersection(ids.every) if expires.get(v, "") < until)
                old_identity = not retired.isdisjoint(identifiers.cleared_ids(row))
                ids = identifiers.forget(row, retired, ids)  # ids from before a rotation: they go
            device = row[NETWORK_USERID]
            if device is not None:
                if device not in moved and (st := states.get(device)) is not None and st.closed:
                    moved[device] = None
                device = row[NETWORK_USERID] = moved.get(device, device)
            late = None
            if old_identity and device is not None and (st := states.get(device)) and remembered(st):
                # The duid or sid from before a rotation, on a device whose tracker has ids of its own
                # since (an app that forgot clearUserData() never has): an event the old identity made
                # and sent late (a tab's queue, an offline app's) with the new cookie. Kept without a
                # device, as the old cookie's events are.
                late, device = device, None
                row[NETWORK_USERID] = None
            key = dedupe_key(row)
            if key in seen:
                res.duplicates += 1
                continue
            seen.add(key)
            out.events.append(row)
            res.stored += 1
            if device is None:
                res.deviceless += original[NETWORK_USERID] is not None
                if late is None or i not in sub.anonymize_at:
                    continue
                # a logout still rotates the device it was sent from, though its event is kept apart
                device, state = late, states[late]
                out.states[late] = state
            else:
                state = assign(
                    states.get(device),
                    sub.now_ms,
                    row[DOMAIN_SESSIONID],
                    row[USER_ID],
                    rules,
                    row[DOMAIN_USERID],
                )
                remember(state, ids)
                states[device] = out.states[device] = state
                row[SESSION_ID], row[SESSION_INDEX] = state.session_id, state.session_index
                if i not in sub.anonymize_at:
                    rotated.discard(device)  # a device with an event of its own may rotate (log out) again
                    continue
            if device in rotated:  # a second anonymize event with nothing between: nothing to rotate
                res.ignored += 1
                continue
            retire_values([*ids.every, *retire(state)])
            new = new_device_id()  # a new random id: nothing derives it from the old
            rotated.add(new)
            for old, current in moved.items():
                if current == device:
                    moved[old] = new
            moved[device] = new
            res.rotated += 1
        if sub.device_id is not None:
            res.device_id = moved.get(sub.device_id, sub.device_id)
            res.retired_device = res.device_id is None
        results.append(res)
    out.retired.extend(renewed.difference(out.retired))
    return out, results
