"""The benchmark's own arithmetic: the store check's bounds, profile folding, payloads, flatness.

The harness itself runs real servers in `make bench` / `make bench-smoke`; these are the pure parts
whose mistakes would make a broken collector look correct (or a correct one look broken).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from tests.bench import handler
from tests.bench.drive import Round
from tests.bench.payloads import EventIds, get_path, post_body
from tests.bench.profile import top_self
from tests.bench.report import flatness, half_load_summary
from tests.bench.store import _check_round
from tests.bench.threads import split


def wrk_round(workload: str, **counts: Any) -> Round:
    result = {
        "sent": 0,
        "ok2xx": 0,
        "non2xx": 0,
        "events_sent": 0,
        "anon_events": 0,
        "anonymize_events": 0,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        "active_seconds": 1.0,
        **counts,
    }
    return Round("collector", workload, "0a0b0c0d", "wrk", result, 1.0, 1.0, 0.0)


def test_exact_round_passes_only_with_exactly_the_acknowledged_events() -> None:
    rnd = wrk_round("post10", sent=5, ok2xx=5, events_sent=50)
    ok = _check_round(rnd, stored=50, s_anon=0, s_anonymize=0)
    assert ok.exact and ok.ok
    for stored in (49, 51):
        bad = _check_round(rnd, stored=stored, s_anon=0, s_anonymize=0)
        assert not bad.ok, stored
        assert "stored" in bad.problems[0]


def test_refused_requests_must_not_be_stored() -> None:
    rnd = wrk_round("post10", sent=5, ok2xx=4, non2xx=1, events_sent=50)
    assert _check_round(rnd, stored=40, s_anon=0, s_anonymize=0).ok
    assert not _check_round(rnd, stored=50, s_anon=0, s_anonymize=0).ok


def test_unanswered_requests_widen_the_range_and_mark_the_round_inexact() -> None:
    rnd = wrk_round("post1", sent=10, ok2xx=8, events_sent=10)  # two answers never read
    for stored in (8, 9, 10):
        check = _check_round(rnd, stored=stored, s_anon=0, s_anonymize=0)
        assert check.ok and not check.exact and check.notes
    assert not _check_round(rnd, stored=7, s_anon=0, s_anonymize=0).ok
    assert not _check_round(rnd, stored=11, s_anon=0, s_anonymize=0).ok


def test_anonymous_and_anonymize_counts_are_checked_in_the_mix() -> None:
    rnd = wrk_round("mix", sent=10, ok2xx=10, events_sent=30, anon_events=6, anonymize_events=1)
    assert _check_round(rnd, stored=30, s_anon=6, s_anonymize=1).ok
    assert not _check_round(rnd, stored=30, s_anon=5, s_anonymize=1).ok
    assert not _check_round(rnd, stored=30, s_anon=6, s_anonymize=0).ok


def test_top_self_merges_line_numbers_and_counts_only_leaves() -> None:
    collapsed = "\n".join(
        [
            "main (app.py:1);handle (h.py:10);parse (p.py:5) 6",
            "main (app.py:1);handle (h.py:12);parse (p.py:7) 2",
            "main (app.py:1);handle (h.py:10) 2",
        ]
    )
    rows, total, threads = top_self(collapsed)
    assert total == 10 and threads == {}
    assert rows[0] == {"function": "parse (p.py)", "samples": 8, "self_pct": 80.0}
    assert rows[1]["function"] == "handle (h.py)" and rows[1]["samples"] == 2
    assert all("main" not in r["function"] for r in rows)
    per_thread, _, threads = top_self(
        "thread (12): MainThread;main (a.py:1) 3\nthread (13): sqlite-writer;w (b.py:2) 1"
    )
    assert threads == {"MainThread": 3, "sqlite-writer": 1}
    assert per_thread[0]["function"] == "main (a.py)"


def test_payloads_are_valid_batches_with_unique_run_tagged_uuids() -> None:
    ids = EventIds("0a0b0c0d")
    body = json.loads(post_body(ids, 10))
    assert body["schema"].startswith("iglu:com.snowplowanalytics.snowplow/payload_data/")
    eids = [ev["eid"] for ev in body["data"]]
    eids.append(get_path(ids).split("eid=")[1].split("&")[0])
    assert len(set(eids)) == 11
    for eid in eids:
        assert str(uuid.UUID(eid)) == eid and eid.startswith("0a0b0c0d-")
    assert all(isinstance(v, str) for ev in body["data"] for v in ev.values())


def test_flatness_slope() -> None:
    flat = flatness([(float(t), 1000) for t in range(20)])
    growing = flatness([(float(t), 1000 + 10 * t) for t in range(20)])
    assert flat["second_half_slope_kib_per_min"] == 0
    assert round(growing["second_half_slope_kib_per_min"]) == 600


def test_thread_split_names_the_busiest_other_thread_the_writer() -> None:
    before = {1: 1.0, 2: 0.5, 3: 0.25, 4: 0.0}
    after = {1: 3.0, 2: 0.75, 3: 1.25, 4: 0.0, 5: 0.5}  # 5: a thread started during the round
    got = split(before, after, main=1, requests=1_000_000)
    assert got == {"main": 2.0, "writer": 1.0, "rest": 0.75}


def test_handler_tool_answers_every_mocked_get_with_the_pixel() -> None:
    got = asyncio.run(handler.run(400, 1))  # asserts each app answered 200
    assert got["collector"] > 0 and got["baseline"] > 0


def window(target: str, p99_ms: float, cpu_us: float, other: float = 0.0) -> dict[str, Any]:
    lat = {"p50": 1000.0, "p99": p99_ms * 1000, "p999": p99_ms * 2000}
    return {
        "target": target,
        "target_rate": 800.0,
        "achieved_rate": 799.0,
        "latency_us": lat,
        "service_us": lat,
        "non2xx": 1,
        "cpu_us_per_event": cpu_us,
        "dirty_mib_before": 3.0,
        "other_cpu": other,
    }


def test_half_load_summary_takes_medians_and_compares_with_one_worker_at_the_same_rate() -> None:
    windows = [
        window("collector", 10.0, 50.0),
        window("collector-w2", 30.0, 60.0),
        window("baseline", 1.0, 6.0),
        window("collector", 20.0, 40.0),
        window("collector-w2", 12.0, 66.0),
        window("collector", 90.0, 45.0, other=0.4),  # one slow window does not set the median
        window("collector-w2", 15.0, 54.0),
    ]
    rows = {r["target"]: r for r in half_load_summary(windows)}
    one, w2 = rows["collector"], rows["collector-w2"]
    assert (one["windows"], one["p99_ms"], one["cpu_us_per_event"]) == (3, 20.0, 45.0)
    assert one["p99_each_ms"] == [10.0, 20.0, 90.0] and one["non2xx"] == 3
    assert one["other_cpu_each"] == [0.0, 0.0, 0.4]  # what else ran on the machine, window by window
    assert (w2["p99_ms"], w2["cpu_us_per_event"]) == (15.0, 60.0)
    assert w2["p99/collector"] == 15.0 / 20.0 and w2["cpu/collector"] == 60.0 / 45.0
    assert "p99/collector" not in one and "cpu/collector" not in rows["baseline"]
