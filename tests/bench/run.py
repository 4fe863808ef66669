"""The benchmark in one run: collector vs bare aiohttp baseline vs nginx, then a store check.

    python -m tests.bench            # full mode, about 4 minutes on 2 cores
    python -m tests.bench --smoke    # about 10 seconds: every code path once (CI)
    python tests/bench/run.py --out /tmp/bench --profile 8

Run it with the project's venv python: the collector is started with the same interpreter.
Exit status 1 when the collector's store does not hold exactly the acknowledged events, a collector
does not exit 0 on SIGTERM, or a load generator fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python tests/bench/run.py`: make `tests.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import report
from tests.bench.drive import (
    Round,
    can_pin,
    describe_cpu_pinning,
    run_openloop,
    run_wrk,
    wrk_available,
)
from tests.bench.store import StoreCheck, check_store
from tests.bench.targets import BaselineTarget, CollectorTarget, NginxTarget, Target, tree_kib

ALL = ("collector", "baseline", "nginx")


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    seconds: float  # measured part of a wrk round
    drain: float  # extra wrk time in which connections finish their last request and idle
    warmup: float  # one warm-up round per (workload, target) before the first measured one; 0 = none
    matrix: dict[str, tuple[str, ...]]  # workload -> targets, in the order they alternate
    half_seconds: float  # open-loop run at half the collector's POST-10 saturation
    half_targets: tuple[str, ...]
    half_rounds: int  # windows per half-load target, interleaved like the saturated rounds
    flat_seconds: float  # long mix run with RSS sampling; 0 = skip
    threads: int = 2
    connections: int = 50


# wrk runs whole seconds: `seconds` is when the Lua script stops sending, the rest of the
# ceil(seconds + drain) lets the last requests finish (so the store check is exact).
SMOKE = Plan(
    "smoke",
    rounds=1,
    seconds=0.6,
    drain=0.4,
    warmup=0.0,
    matrix={
        "get": ALL,
        "post1": ("collector",),
        "post10": ("collector", "collector-pg"),
        "mix": ("collector",),
    },
    half_seconds=1.0,
    half_targets=("collector",),
    half_rounds=1,
    flat_seconds=0.0,
)
FULL = Plan(
    "full",
    rounds=3,
    seconds=4.0,
    drain=1.0,
    warmup=0.5,
    matrix={
        "get": (*ALL, "collector-pg"),
        "post1": (*ALL, "collector-pg"),
        "post10": (*ALL, "collector-w2", "collector-pg"),
        "mix": (*ALL, "collector-pg"),
    },
    half_seconds=5.0,
    half_targets=("collector", "collector-w2", "baseline", "nginx"),
    half_rounds=3,
    flat_seconds=180.0,
)


@dataclass
class Bench:
    plan: Plan
    tmp: Path
    pinned: bool
    targets: dict[str, Target] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)  # measured
    warmups: list[Round] = field(default_factory=list)
    extra: list[Round] = field(default_factory=list)  # half-load, flatness, profile: store-checked too
    notes: list[str] = field(default_factory=list)
    prefill: int = 0

    def start(self, names: set[str]) -> None:
        makers: dict[str, Any] = {
            "collector": lambda: CollectorTarget("collector", self.tmp / "collector.db"),
            "collector-w2": lambda: CollectorTarget(
                "collector-w2", self.tmp / "collector-w2.db", args=["--workers", "2"]
            ),
            "collector-prefilled": lambda: CollectorTarget(
                "collector-prefilled", self.tmp / "collector-prefilled.db", prefill=self.prefill
            ),
            "collector-normal": lambda: CollectorTarget(
                "collector-normal", self.tmp / "collector-normal.db", env={"COLLECTOR_SYNCHRONOUS": "NORMAL"}
            ),
            # PostgreSQL on this machine: it shares the two cores with the collector and wrk
            "collector-pg": lambda: CollectorTarget("collector-pg", "", postgres=True),
            "baseline": lambda: BaselineTarget("baseline", log=self.tmp / "baseline.log"),
            "nginx": lambda: NginxTarget("nginx", tmp=self.tmp / "nginx"),
        }
        for name, make in makers.items():
            if name in names:
                t = make()
                t.start()
                self.targets[name] = t
                print(f"started {name} at {t.url} (pid {t.root_pid()})", flush=True)

    def wrk(self, target: str, workload: str, seconds: float, rss_interval: float | None = None) -> Round:
        t = self.targets[target]
        return run_wrk(
            target,
            t.url,
            t.root_pid(),
            workload,
            seconds=seconds,
            drain=self.plan.drain,
            threads=self.plan.threads,
            connections=self.plan.connections,
            pinned=self.pinned,
            rss_interval=rss_interval,
        )

    def saturation(self) -> None:
        p = self.plan
        for workload, targets in p.matrix.items():
            for rnd in range(p.rounds):
                for target in targets:
                    if rnd == 0 and p.warmup:
                        self.warmups.append(self.wrk(target, workload, p.warmup))
                    r = self.wrk(target, workload, p.seconds)
                    self.rounds.append(r)
                    lat = r.result["latency_us"]
                    print(
                        f"{workload:7} {target:13} round {rnd + 1}: {r.rps:9,.0f} req/s "
                        f"p50 {lat['p50'] / 1000:6.2f} ms p99 {lat['p99'] / 1000:7.2f} ms "
                        f"non2xx {r.result['non2xx']} server CPU {r.server_cpu:.0%} "
                        f"others {r.other_cpu:.0%}",
                        flush=True,
                    )

    def half_load(self) -> list[dict[str, Any]]:
        """Open-loop windows at half the collector's POST-10 saturation, `half_rounds` per target,
        the targets alternating in each round (one window is one sample of the machine's hour: the
        same build gave 12 and 94 ms in windows of different runs)."""
        sat = [r.rps for r in self.rounds if r.target == "collector" and r.workload == "post10"]
        if not sat:
            return []
        rate = max(10.0, report.median(sat) / 2)
        out = []
        for rnd in range(self.plan.half_rounds):
            for target in self.plan.half_targets:
                t = self.targets[target]
                dirty, sync_s = settle_disk()
                r = run_openloop(
                    target,
                    t.url,
                    t.root_pid(),
                    "post10",
                    rate=rate,
                    seconds=self.plan.half_seconds,
                    pinned=self.pinned,
                )
                self.extra.append(r)
                lat = r.result["latency_us"]
                cpu_us = r.server_cpu / r.eps * 1e6 if r.eps else 0.0
                print(
                    f"half-load {target:13} round {rnd + 1}: {rate:8,.0f} req/s open loop: "
                    f"p50 {lat['p50'] / 1000:.2f} ms p99 {lat['p99'] / 1000:.2f} ms, "
                    f"{cpu_us:.0f} us CPU an event, others {r.other_cpu:.0%} "
                    f"(written back first: {dirty:,.0f} MiB in {sync_s:.1f} s)",
                    flush=True,
                )
                out.append(
                    {
                        "target": target,
                        "workload": "post10",
                        "round": rnd + 1,
                        **r.result,
                        "server_cpu": r.server_cpu,
                        "cpu_us_per_event": cpu_us,
                        "other_cpu": r.other_cpu,
                        "dirty_mib_before": dirty,
                        "sync_seconds_before": sync_s,
                    }
                )
        return out

    def flatness(self) -> dict[str, Any] | None:
        if not self.plan.flat_seconds:
            return None
        r = self.wrk("collector", "mix", self.plan.flat_seconds, rss_interval=1.0)
        self.extra.append(r)
        fl = report.flatness(r.rss_kib)
        print(f"flatness: {fl}", flush=True)
        return {**fl, "rss_kib": r.rss_kib, "rps": r.rps}

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for name, t in self.targets.items():
            try:
                codes[name] = t.stop()
            except Exception as exc:  # noqa: BLE001 - report and keep stopping the others
                self.notes.append(f"stopping {name} failed: {exc!r}")
                codes[name] = -999
        return codes

    def store_checks(self) -> list[StoreCheck]:
        out = []
        for name, t in self.targets.items():
            if isinstance(t, CollectorTarget):
                rounds = [r for r in (*self.warmups, *self.rounds, *self.extra) if r.target == name]
                after = t.prefilled.max_rowid if t.prefilled else 0
                out.append(check_store(name, t.db, rounds, t.deviceless, after))
                t.stop_server()
        return out


def dirty_mib() -> float:
    """The machine's dirty page cache (not yet written back to disk), in MiB."""
    with open("/proc/meminfo") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("Dirty:")) / 1024


def settle_disk() -> tuple[float, float]:
    """Write back every process's dirty pages before a latency window: (MiB dirty before, seconds).

    On ext4 a commit's fsync also waits for the writeback of other files' newly written data, so
    the saturated rounds just before (PostgreSQL's among them, and a prefilled store) would land in
    the window being measured: a collector started on a store of 1.5 million events just written
    had a p99 of 954 ms in its first 3 seconds at 640 req/s, and 6.3 ms after an os.sync() that
    took 0.9 s (2 GiB dirty). Each window then measures the target, not what ran before it."""
    before, started = dirty_mib(), time.monotonic()
    os.sync()
    time.sleep(1.0)  # and let the kernel's writeback threads go idle
    return before, time.monotonic() - started


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--smoke", action="store_true", help="about 10 s: one tiny round of everything")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for results.md / .json / .png (default tests/bench/results)",
    )
    ap.add_argument("--rounds", type=int, help="override the number of rounds")
    ap.add_argument("--seconds", type=float, help="override the measured seconds per round")
    ap.add_argument("--targets", default="", help="comma list to restrict targets (e.g. baseline,nginx)")
    ap.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also profile the collector with py-spy under POST-10 load for SECONDS",
    )
    ap.add_argument(
        "--with-normal",
        action="store_true",
        help="also measure POST-10 on a collector with COLLECTOR_SYNCHRONOUS=NORMAL (the cost of "
        "fsync per commit)",
    )
    ap.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="also measure POST-10 and the mix on a collector whose store holds N events before the "
        "run (collector-prefilled, SQLite; e.g. 8000000: about 9 GB and a few minutes to build)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    plan = SMOKE if ns.smoke else FULL
    overrides: dict[str, Any] = {}
    if ns.rounds:
        overrides["rounds"] = ns.rounds
    if ns.seconds:
        overrides["seconds"] = ns.seconds
    if ns.targets:
        keep = set(ns.targets.split(","))
        overrides["matrix"] = {w: tuple(t for t in ts if t in keep) for w, ts in plan.matrix.items()}
        overrides["half_targets"] = tuple(t for t in plan.half_targets if t in keep)
        if "collector" not in keep:
            overrides["flat_seconds"] = 0.0
    if ns.with_normal:
        matrix = dict(overrides.get("matrix", plan.matrix))
        matrix["post10"] = (*matrix.get("post10", ()), "collector-normal")
        overrides["matrix"] = matrix
    if ns.prefill:
        matrix = dict(overrides.get("matrix", plan.matrix))
        for w in ("post10", "mix"):
            matrix[w] = (*matrix.get(w, ()), "collector-prefilled")
        overrides["matrix"] = matrix
        overrides["half_targets"] = (*overrides.get("half_targets", plan.half_targets), "collector-prefilled")
    if overrides:
        plan = Plan(**{**plan.__dict__, **overrides})
    if not wrk_available():
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    pinned = can_pin()
    if pinned:
        os.sched_setaffinity(0, {0})  # every server started from here inherits core 0
    tmp = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    bench = Bench(plan, tmp, pinned, prefill=ns.prefill)
    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    names = {t for ts in plan.matrix.values() for t in ts} | set(plan.half_targets)
    if plan.flat_seconds:
        names.add("collector")
    failures: list[str] = []
    codes: dict[str, int] = {}
    half: list[dict[str, Any]] = []
    flat = None
    peak: dict[str, int] = {}
    profile: dict[str, Any] | None = None
    try:
        bench.start(names)
        bench.saturation()
        half = bench.half_load()
        flat = bench.flatness()
        if ns.profile and "collector" in bench.targets:
            from tests.bench.profile import profile_collector

            profile = profile_collector(bench, ns.profile, ns.out)
        peak = {name: tree_kib(t.root_pid(), "VmHWM") for name, t in bench.targets.items()}
    except Exception as exc:  # noqa: BLE001 - still stop the servers and report what we have
        failures.append(f"benchmark aborted: {exc!r}")
        import traceback

        traceback.print_exc()
    finally:
        codes = bench.stop_all()
    for name, code in codes.items():
        if name.startswith("collector") and code != 0:
            failures.append(f"{name} exited {code} on SIGTERM (log in {tmp})")
    checks = bench.store_checks() if not failures or bench.rounds else []
    for c in checks:
        if not c.ok:
            failures.append(f"store check failed for {c.target}")
    summary = report.summarise(bench.rounds)
    data: dict[str, Any] = {
        "mode": plan.mode,
        "started": started,
        "elapsed_seconds": round(time.monotonic() - t_start, 1),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "pinning": describe_cpu_pinning(pinned),
        "rounds": plan.rounds,
        "loadavg": [load_start, " ".join(f"{x:.2f}" for x in os.getloadavg())],
        "wrk": {
            "threads": plan.threads,
            "connections": plan.connections,
            "seconds": plan.seconds,
            "drain": plan.drain,
            "warmup": plan.warmup,
        },
        "collector_config": "defaults (durable acknowledgement: COLLECTOR_SYNCHRONOUS default, access log "
        "default), collector-w2 adds --workers 2 (both workers on the server core)",
        "summary": summary,
        "ratios": report.ratios(summary),
        "half_load": half,
        "half_load_summary": report.half_load_summary(half),
        "memory": {"peak_kib": peak, "flatness": flat, "flatness_workload": "mix"},
        "store": report.store_dicts(checks),
        "exit_codes": codes,
        "profile": profile,
        "rounds_raw": [r.__dict__ for r in (*bench.warmups, *bench.rounds, *bench.extra)],
        "failures": failures,
        "notes": bench.notes,
    }
    if "nginx" in bench.targets:
        data["notes"].append(
            "nginx and the baseline may be limited by the single wrk core (see wrk CPU);"
            " their numbers are lower bounds, so ratios against them are upper bounds."
        )
    md, js, chart_note = report.write(data, ns.out)
    print()
    print(md.read_text())
    png = "" if chart_note else f" {ns.out / 'results.png'}"
    print(f"results: {md} {js}{png}; elapsed {data['elapsed_seconds']} s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        print(f"temp dir kept: {tmp}", file=sys.stderr)
        return 1
    if not ns.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
