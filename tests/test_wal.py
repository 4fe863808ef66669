"""The WAL stays bounded while analysts read: a real collector writes while one long read is held.

Sizes only (no timings). The twin without journal_size_limit shows what the setting prevents: the
WAL file keeps its largest size for good.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wal_growth import MIB, measure

pytestmark = pytest.mark.slow
HOLD = 32 * MIB
# The writer's backstop autocheckpoint (storage.sqlite.BACKSTOP_PAGES, 16 MiB) plus a group's commit,
# with room to spare: the checkpointer beside it usually starts the WAL over well before (it reached
# 11 MiB here once), at a size that follows the write rate and the disk.
BOUND = 20 * MIB


def test_wal_grows_under_a_long_read_and_shrinks_after(tmp_path: Path) -> None:
    run = measure(tmp_path / "events.db", MIB, HOLD, BOUND)
    print(run.report())
    first, last = run.reader_counts
    assert first == last and first > 0  # the read really held one snapshot while rows were added
    assert max(w for _, w in run.holding) >= HOLD  # a held read does let the WAL grow...
    back = next(i for i, (_, w) in enumerate(run.after) if w <= BOUND)  # ...and it comes back
    assert max(w for _, w in run.after[back:]) <= BOUND, run.report()  # and stays bounded
    assert run.after[-1][0] - run.after[back][0] >= 9_000  # over about 10,000 more events


def test_without_a_size_limit_the_wal_keeps_its_peak(tmp_path: Path) -> None:
    run = measure(tmp_path / "events.db", -1, HOLD, BOUND, settle_events=20_000)
    print(run.report())
    assert min(w for _, w in run.after) >= HOLD, run.report()
