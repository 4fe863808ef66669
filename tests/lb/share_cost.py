"""What sharing one SQLite file costs: events/s with 1, 2 and 3 collector processes on one database.

Not a test (no assertions on speed); a measurement the README quotes. Each process gets its own port
and its own `wrk` (one connection pool per process, like nginx's keep-alive pool per replica), or,
with --mode workers, one `collector serve --workers N` on one port and one `wrk`. Every request is a
POST of 10 page views with unique event ids, built by a wrk Lua script. Events/s is counted twice:
from wrk's 2xx answers (x10) and from the rows actually in the database afterwards.

    .venv/bin/python tests/lb/share_cost.py [--seconds 10] [--procs 1,2,3] [--mode ports|workers] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.procs import Collector, wait_http

TP2 = "/com.snowplowanalytics.snowplow/tp2"

# Per wrk thread: a counter; per wrk process: a prefix from the command line (`-- <hex>`), so event ids
# never repeat across processes, threads or requests (a repeated id would be deduplicated, not stored).
LUA = r"""
local prefix, tid, counter = 0, 0, 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
function init(args)
  prefix = tonumber(args[1], 16)
  tid = thread_id or 0  -- a global set in this thread's Lua state by setup()
end
local headers = {["Content-Type"] = "application/json; charset=UTF-8", ["Origin"] = "https://bench.example"}
local fmt = '{"e":"pv","eid":"%08x-%04x-4000-8000-%012x","tv":"js-4.10.1","p":"web","aid":"share-cost",' ..
            '"dtm":"1732270000000","stm":"1732270000100","url":"https://bench.example/page?n=%d",' ..
            '"page":"Share cost","refr":"https://search.example/","lang":"en-GB","res":"1920x1080"}'
request = function()
  local parts = {}
  for i = 1, 10 do
    counter = counter + 1
    parts[i] = string.format(fmt, prefix, tid, counter, counter)
  end
  local body = '{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[' ..
               table.concat(parts, ",") .. ']}'
  return wrk.format("POST", nil, headers, body)
end
"""


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    errors: int
    seconds: float

    @property
    def ok_requests(self) -> int:
        return self.requests - self.non_2xx


def parse_wrk(out: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(m.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        seconds=float(m.group(2)) * scale,
    )


@dataclass
class Run:
    procs: int
    acked: float  # events/s from wrk's 2xx answers
    stored: float  # events/s from the rows in the database
    bad: int  # non-2xx answers and socket errors
    exit_codes: list[int]


def run(
    n: int, *, mode: str, seconds: int, connections: int, env: dict[str, str], work: Path, tag: str
) -> Run:
    db = work / f"share-{mode}-{n}-{tag}.db"
    script = work / "post10.lua"
    script.write_text(LUA)
    if mode == "ports":
        procs = [Collector(db, env=env, log=work / f"share-{mode}-{n}-{tag}-{i}.log") for i in range(n)]
        wrk_conns = connections
    else:
        procs = [Collector(db, env=env, args=["--workers", str(n)], log=work / f"share-{mode}-{n}-{tag}.log")]
        wrk_conns = connections * n
    for p in procs:
        p.start(wait=False)
    for p in procs:
        wait_http(p.url + "/ready", timeout=30)
    try:
        wrks = [
            subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{wrk_conns}",
                    f"-d{seconds}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(script),
                    p.url + TP2,
                    "--",
                    f"{i + 1:08x}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i, p in enumerate(procs)
        ]
        results = [parse_wrk(w.communicate()[0]) for w in wrks]
    finally:
        codes = [p.stop() for p in procs]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        stored = con.execute("SELECT count(*) FROM events WHERE app_id = 'share-cost'").fetchone()[0]
    duration = max(r.seconds for r in results)
    ok = sum(r.ok_requests for r in results)
    return Run(n, ok * 10 / duration, stored / duration, sum(r.non_2xx + r.errors for r in results), codes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--procs", default="1,2,3")
    ap.add_argument("--mode", choices=("ports", "workers"), default="ports")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections per collector process")
    ap.add_argument("--repeat", type=int, default=3, help="runs per process count (median reported)")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = ap.parse_args()
    env = {
        "COLLECTOR_ACCESS_LOG": "false",
        "COLLECTOR_SYNCHRONOUS": args.synchronous,
        "COLLECTOR_COOKIE_SECRET": "share-cost-secret",
    }
    print(
        f"share cost: {args.seconds}s per run, mode={args.mode}, {args.connections} connections per "
        f"process, synchronous={args.synchronous}, {os.cpu_count()} CPUs, wrk on the same machine"
    )
    counts = [int(x) for x in args.procs.split(",")]
    runs: dict[int, list[Run]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="share-cost-") as tmp:
        # Interleaved (1,2,3,1,2,3,...) so a burst of other load on the machine hits every count alike.
        for rep in range(args.repeat):
            for n in counts:
                r = run(
                    n,
                    mode=args.mode,
                    seconds=args.seconds,
                    connections=args.connections,
                    env=env,
                    work=Path(tmp),
                    tag=str(rep),
                )
                runs[n].append(r)
                print(
                    f"  run {rep + 1}: {n} process(es) {r.acked:8.0f} events/s acknowledged, "
                    f"{r.stored:8.0f} stored, {r.bad} errors, exit codes {r.exit_codes}",
                    flush=True,
                )
                time.sleep(1)
    base = statistics.median(r.acked for r in runs[counts[0]])
    print("processes  events/s (median)  min..max         vs first  errors")
    for n in counts:
        acked = [r.acked for r in runs[n]]
        med = statistics.median(acked)
        print(
            f"{n:9d}  {med:17.0f}  {min(acked):6.0f}..{max(acked):<6.0f}  {med / base:8.2f}x"
            f"  {sum(r.bad for r in runs[n])}"
        )


if __name__ == "__main__":
    main()
