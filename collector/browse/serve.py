"""The Datasette process `python -m collector browse` starts: what `datasette serve` does, through
Datasette's Python API, without uvicorn's access log.

`datasette serve` leaves uvicorn's access log on, which writes every URL an analyst opens (a table
filtered by a user id, a SQL query naming a device) and the analyst's address to the log, where the
values outlive an erasure. Its command line has no switch to turn it off. Nor for Datasette's own
report of a failed query, which quotes it (_Withheld).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import TextIO

import uvicorn
from datasette.app import Datasette

from collector.browse import SETTINGS


class _Withheld(io.TextIOBase):
    """stderr without what Datasette writes of a failed query: its `ERROR: conn=…, sql = …, params =
    …` and the CSV export's `Caught this error: …` quote the analyst's SQL and its values (a user id
    typed in the SQL box, a table filtered by one), which the log would keep past an erasure. Each is
    written whole by one write()."""

    QUOTING = ("ERROR: conn=", "Caught this error:")

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        if text.startswith(self.QUOTING):
            text = "browse: a query failed (not logged: its text may name a person)\n"
        return self._out.write(text)

    def flush(self) -> None:
        self._out.flush()


def datasette(db: Path, metadata_path: Path) -> Datasette:
    """The database in Datasette's default mode: mutable, so opened read-only and read live (never
    `immutables`, which would read a snapshot of a file the collector is writing)."""
    metadata = json.loads(metadata_path.read_text())
    return Datasette([str(db)], metadata=metadata, settings=dict(SETTINGS), cors=False)


def main(argv: list[str]) -> None:
    db, host, port, metadata_path = Path(argv[0]), argv[1], int(argv[2]), Path(argv[3])
    sys.stderr = _Withheld(sys.stderr)  # before uvicorn's log handlers take it
    ds = datasette(db, metadata_path)
    asyncio.run(ds.invoke_startup())  # the plugins' startup hooks, as `datasette serve` runs them
    uvicorn.run(ds.app(), host=host, port=port, log_level="info", lifespan="on", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
