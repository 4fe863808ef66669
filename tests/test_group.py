"""The group logic (storage.group.decide) on looked-up state alone: pure, no store."""

from __future__ import annotations

import time

from collector.identifiers import TrackerIds
from storage.base import Submission
from storage.group import Found, decide
from storage.sessions import SessionRules
from tests.conftest import event_row

RULES = SessionRules(1_800_000)
OLD = "old-duid-0000-0001"


def _decide(expires: dict[str, str]) -> list[str]:
    """What the group writes to the retired ids for one row that still sends OLD."""
    sub = Submission(
        int(time.time() * 1000), None, [event_row("e1", domain_userid=OLD)], (), [TrackerIds((OLD,))]
    )
    out, _ = decide([sub], Found(set(), expires, {}), RULES, lambda: "new-device")
    return out.retired


def test_a_retired_id_still_sent_is_renewed_only_when_its_month_moves() -> None:
    # a tracker renews its own cookie with every event: the id stays retired as long again, but a
    # write for every group that carries it would take a row lock (PostgreSQL) each time for nothing
    until = decide([Submission(int(time.time() * 1000), None)], Found(set(), {}, {}), RULES, str)[
        0
    ].retired_until
    assert _decide({OLD: "2000-01"}) == [OLD]  # an earlier month: renewed
    assert _decide({OLD: until}) == []  # already that long: nothing written
    assert _decide({OLD: "9999-12"}) == []  # later (a longer COLLECTOR_RETIRED_DAYS before): kept
