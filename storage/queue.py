"""What every store's group commit shares: a write queue bounded in events and bytes, taking a group,
and settling each request's future with its outcome. Stores differ only in how their writer waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.base import AppendResult, RejectedData, Submission

Outcome = AppendResult | BaseException


@dataclass(slots=True)
class Pending:
    """A queued submission and the future its request awaits."""

    submission: Submission
    size: int  # events and bad rows
    nbytes: int
    future: asyncio.Future[AppendResult] | None  # None: nobody waits (bad rows of a refused request)


class WriteQueue:
    """Admission, grouping and settling; the store guards `items` with its own lock or loop."""

    def __init__(self, queue_max: int, queue_max_bytes: int, group_max: int) -> None:
        self.items: deque[Pending] = deque()
        self._queue_max = queue_max
        self._queue_max_bytes = queue_max_bytes
        self._group_max = group_max
        # events and bytes queued or being written; touched only on the event loop's thread
        self.pending = 0
        self.pending_bytes = 0

    def admit(self, submission: Submission, future: asyncio.Future[AppendResult] | None) -> Pending | None:
        """The queue entry for a submission, or None when it would go over either bound."""
        size = len(submission.rows) + len(submission.bad_rows)
        nbytes = submission.nbytes
        # one request over either bound alone is still taken when nothing else waits: a batch of more
        # events than COLLECTOR_QUEUE_MAX would otherwise be answered 503 at every retry, for ever
        if (self.pending and self.pending + size > self._queue_max) or (
            self.pending_bytes and self.pending_bytes + nbytes > self._queue_max_bytes
        ):
            return None
        self.pending += size
        self.pending_bytes += nbytes
        return Pending(submission, size, nbytes, future)

    def take(self) -> tuple[list[Pending], int]:
        """The next group: everything queued, up to group_max events (at least one submission)."""
        group: list[Pending] = []
        size = 0
        while self.items and (not group or size + self.items[0].size <= self._group_max):
            item = self.items.popleft()
            group.append(item)
            size += item.size
        return group, size

    def settle(self, group: Sequence[Pending], outcomes: Sequence[Outcome]) -> None:
        """Hand each request its outcome (on the event loop's thread)."""
        for item, outcome in zip(group, outcomes, strict=True):
            self.pending -= item.size
            self.pending_bytes -= item.nbytes
            fut = item.future
            if fut is None or fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)


def size_of(subs: Iterable[Submission]) -> int:
    """Events and bad rows in submissions."""
    return sum(len(s.rows) + len(s.bad_rows) for s in subs)


def with_rejected(count: int, bad: set[int], rest: Iterable[Outcome]) -> list[Outcome]:
    """Outcomes in order: RejectedData for the unstorable submissions, the rest's outcomes for the others."""
    others = iter(rest)
    rejected = RejectedData("the event data could not be stored")
    return [rejected if i in bad else next(others) for i in range(count)]
