"""Server-side sessions and rotation rules, pure: a device's latest state and one event in, new state out."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.ids import UuidPool

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
    closed: bool = False
    rotations: list[int] = field(default_factory=list)
    tracker_duid: str | None = None


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings sessions and rotations follow."""

    timeout_ms: int
    rotation_burst: int  # per second
    rotation_per_minute: int


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
    rotations = state.rotations if state is not None else []
    last_duid = duid or (state.tracker_duid if state is not None else None)
    return DeviceState(new_session_id(), index, now_ms, sid, uid, False, rotations, last_duid)


def retire(state: DeviceState) -> list[str]:
    """Close the device's session; the tracker ids it was using, never to be stored again."""
    state.closed = True
    return [v for v in (state.tracker_duid, state.tracker_sid) if v]


def may_rotate(state: DeviceState, now_ms: int, rules: SessionRules) -> bool:
    """Record a rotation and say yes, unless the device is over its burst or per-minute limit."""
    recent = [t for t in state.rotations if now_ms - t < 60_000]
    if (
        len(recent) >= rules.rotation_per_minute
        or sum(now_ms - t < 1000 for t in recent) >= rules.rotation_burst
    ):
        state.rotations = recent
        return False
    recent.append(now_ms)
    state.rotations = recent
    return True
