"""The PostgreSQL store itself: append-only for the collector's role, read-only queries, faults, locks."""

from __future__ import annotations

from typing import Any

from collector.config import Config
from tests.conftest import TP2, batch, ev, rows

STORES = ("postgres",)


async def test_events_round_trip_with_proper_types(client: Any, cfg: Config) -> None:
    resp = await client.post(TP2, json=batch(ev(eid="t1", se_va="2.5", dtm="1700000000123", vid="3")))
    assert resp.status == 200
    [row] = rows(cfg.db, "select * from events")
    assert row["se_value"] == 2.5 and row["domain_sessionidx"] == 3
    assert row["dvce_created_tstamp"] == "2023-11-14 22:13:20.123"  # a timestamptz, read back in UTC
    types = {
        r[0]: r[1]
        for r in rows(
            cfg.db,
            "select column_name, data_type from information_schema.columns where table_name = 'events'",
        )
    }
    assert types["collector_tstamp"] == "timestamp with time zone" and types["contexts"] == "jsonb"
