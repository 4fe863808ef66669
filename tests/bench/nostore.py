"""`python -m tests.bench.nostore serve ...`: the collector's own server with a store that stores nothing.

For `tests.bench.threads --no-store` only: every append is answered at once, as committed, without a
writer thread's work or a wait, so a round on it measures what HTTP and the handler cost the event
loop alone; the difference to a round on the real store is the store's share of it (the queue, the
futures, the writer thread taking turns on the core and on the GIL). The store still opens its file
(migrations, the writer thread idles), so start-up and /ready are the real ones. Never a way to run
the collector: it acknowledges what it does not keep.
"""

from __future__ import annotations

import sys

from collector.__main__ import main
from storage.base import AppendResult, Submission
from storage.sqlite import SqliteStore
from tests.bench.handler import AtOnce


async def _append(self: SqliteStore, sub: Submission) -> AppendResult:
    return await AtOnce().append(sub)


def _append_nowait(self: SqliteStore, sub: Submission) -> bool:
    return True


if __name__ == "__main__":
    SqliteStore.append = _append  # type: ignore[method-assign]
    SqliteStore.append_nowait = _append_nowait  # type: ignore[method-assign]
    sys.exit(main())
