"""Server CPU per request, split by thread: `python -m tests.bench.threads [--workload get] [--rounds 3]`.

A real collector (its own SQLite store, default settings) and the bare baseline, each pinned to core 0
as in `make bench`, take wrk's load from core 1 in alternating rounds. For every round it reads each
of the collector's threads' CPU time from /proc before and after, so the per-request cost splits into
the event loop's thread (HTTP, the handler, building rows), the SQLite writer's (group logic, SQLite,
WAL and fsync; the busiest thread after the main one) and the rest (the log flusher, executors). With
it, the group commit's average size and wall time from the collector's own /metrics.

Where `make bench` gives one figure per request, this says which thread a cut has to come from.
`--no-store` adds a third target to each round: the same server on a store that answers every append
at once and stores nothing (tests/bench/nostore.py), so the event loop's CPU splits once more, into
HTTP and the handler (that round) and what waiting on the real store adds (the difference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from tests.bench.drive import can_pin, run_wrk
from tests.bench.targets import BaselineTarget, CollectorTarget

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of a process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def commit_stats(url: str) -> tuple[float, float, float]:
    """(commits, events committed, seconds committing) so far, from /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    v = {
        ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("collector_commit_")
    }
    return (
        v["collector_commit_group_events_count"],
        v["collector_commit_group_events_sum"],
        v["collector_commit_seconds_sum"],
    )


def split(before: dict[int, float], after: dict[int, float], main: int, requests: float) -> dict[str, float]:
    """Microseconds of CPU a request in the main thread, the busiest other one and all the rest."""
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    others = sorted((c, t) for t, c in used.items() if t != main)
    writer = others[-1][0] if others else 0.0
    rest = sum(c for c, _ in others[:-1])
    us = 1e6 / requests if requests else 0.0
    return {"main": used.get(main, 0.0) * us, "writer": writer * us, "rest": rest * us}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.threads", description=__doc__)
    ap.add_argument("--workload", default="get", choices=("get", "post1", "post10", "mix"))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--no-store", action="store_true", help="also a round on a store that stores nothing")
    ns = ap.parse_args(argv)
    pinned = can_pin()
    if pinned:
        os.sched_setaffinity(0, {0})  # the servers inherit core 0; wrk runs on core 1
    tmp = Path(tempfile.mkdtemp(prefix="collector-threads-"))
    collector = CollectorTarget("collector", tmp / "events.db")
    baseline = BaselineTarget("baseline", log=tmp / "baseline.log")
    nostore = CollectorTarget("nostore", tmp / "nostore.db", module="tests.bench.nostore")
    collector.start()
    baseline.start()
    if ns.no_store:
        nostore.start()

    def wrk(url: str, pid: int, seconds: float) -> Any:
        return run_wrk(
            "t",
            url,
            pid,
            ns.workload,
            seconds=seconds,
            drain=0.5,
            threads=1,
            connections=ns.connections,
            pinned=pinned,
        )

    rows: list[dict[str, float]] = []
    try:
        for t in (collector, baseline, *([nostore] if ns.no_store else [])):
            wrk(t.url, t.root_pid(), 2.0)  # warm up
        pid = collector.root_pid()
        for _ in range(ns.rounds):
            c0, t0 = commit_stats(collector.url), thread_cpu(pid)
            r = wrk(collector.url, pid, ns.seconds)
            t1, c1 = thread_cpu(pid), commit_stats(collector.url)
            b = wrk(baseline.url, baseline.root_pid(), ns.seconds)
            loop_only: dict[str, float] = {}
            if ns.no_store:
                npid = nostore.root_pid()
                n0 = thread_cpu(npid)
                n = wrk(nostore.url, npid, ns.seconds)
                n1 = thread_cpu(npid)
                nreq = n.rps * float(n.result["active_seconds"])
                loop_only = {
                    "nostore_main": split(n0, n1, npid, nreq)["main"],
                    "nostore_us": n.server_cpu / n.rps * 1e6,
                    "nostore_rps": n.rps,
                }
            requests = r.rps * float(r.result["active_seconds"])
            commits = c1[0] - c0[0]
            row = {
                **split(t0, t1, pid, requests),
                "collector_rps": r.rps,
                "collector_us": r.server_cpu / r.rps * 1e6,
                "baseline_us": b.server_cpu / b.rps * 1e6,
                "group_events": (c1[1] - c0[1]) / commits if commits else 0.0,
                "commit_ms": 1000 * (c1[2] - c0[2]) / commits if commits else 0.0,
                "other_cpu": r.other_cpu,
                **loop_only,
            }
            rows.append(row)
            print(json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)
    finally:
        collector.stop()
        baseline.stop()
        if nostore.proc is not None:
            nostore.stop()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    events = {"get": 1, "post1": 1, "post10": 10, "mix": 3}[ns.workload]
    print(f"\nmedians of {len(rows)} rounds, {ns.workload} ({events} event(s) a request), CPU µs a request:")
    print("| thread | collector | baseline |\n|---|---:|---:|")
    print(f"| event loop (main) | {med['main']:.0f} | |")
    if ns.no_store:
        print(f"| of which HTTP and the handler (no-store round) | {med['nostore_main']:.0f} | |")
        print(f"| of which waiting on the store | {med['main'] - med['nostore_main']:.0f} | |")
    print(f"| SQLite writer | {med['writer']:.0f} | |")
    print(f"| the rest (log flush, executors) | {med['rest']:.0f} | |")
    print(f"| whole process | {med['collector_us']:.0f} | {med['baseline_us']:.0f} |")
    print(
        f"\ncollector {med['collector_rps']:,.0f} req/s; groups of {med['group_events']:.1f} events, "
        f"{med['commit_ms']:.2f} ms a commit; other processes {100 * med['other_cpu']:.0f}% of a core"
    )
    if ns.no_store:
        print(
            f"no-store round {med['nostore_rps']:,.0f} req/s, {med['nostore_us']:.0f} µs a request "
            f"({med['baseline_us'] / med['nostore_us']:.2f}x the baseline's events/s a core; the real store "
            f"{med['baseline_us'] / med['collector_us']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
