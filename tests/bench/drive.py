"""Run one load round (wrk + snowplow.lua, or the open-loop client) and measure the server meanwhile."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.bench.targets import BENCH, process_tree, tree_kib
from tests.procs import ROOT

LUA = BENCH / "snowplow.lua"
EVENTS_PER_REQUEST = {"get": 1, "post1": 1, "post10": 10, "mix": 3}
CLIENT_CPU = "1"  # the load generator's core; servers inherit the runner's core 0
TICKS = os.sysconf("SC_CLK_TCK")


def can_pin() -> bool:
    """taskset exists and this process may use cores 0 and 1 (else: run unpinned and say so)."""
    try:
        return shutil.which("taskset") is not None and {0, 1} <= os.sched_getaffinity(0)
    except OSError:
        return False


def pin_prefix(pinned: bool) -> list[str]:
    return ["taskset", "-c", CLIENT_CPU] if pinned else []


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants (the --workers children), from /proc."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def busy_cpu_seconds() -> float:
    """CPU seconds spent by everything on the machine (first line of /proc/stat, minus idle/iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


class RssSampler:
    """Samples the server's total RSS (all processes of the tree) every `interval` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, tree_kib(self.pid, "VmRSS")))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Round:
    """One load round against one target: what the client counted and what the server used."""

    target: str
    workload: str
    runtag: str
    client: str  # "wrk" or "openloop"
    result: dict[str, Any]
    server_cpu: float  # server CPU seconds per second of load (1.0 = one core busy)
    client_cpu: float  # the load generator's, likewise
    other_cpu: float  # everything else on the machine meanwhile, per wall second: noise
    rss_kib: list[tuple[float, int]] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return int(self.result["ok2xx"] + self.result["non2xx"])

    @property
    def inflight(self) -> int:
        """Requests sent whose answer the client never read: must be 0 for an exact store check."""
        return int(self.result["sent"]) - self.answered

    @property
    def socket_errors(self) -> int:
        e = self.result.get("errors", {})
        return int(e["connect"] + e["read"] + e["write"]) if isinstance(e, dict) else int(e)

    @property
    def rps(self) -> float:
        r = self.result
        if self.client == "openloop":
            return float(r["achieved_rate"]) * int(r["ok2xx"]) / max(1, int(r["sent"]))
        active = float(r["active_seconds"])
        return int(r["ok2xx"]) / active if active else 0.0

    @property
    def eps(self) -> float:
        return self.rps * EVENTS_PER_REQUEST[self.workload]


def new_runtag() -> str:
    return secrets.token_hex(4)


Cpu = tuple[float, float, float, float]  # CPU seconds of server, client, all others; wall seconds


def _run_client(
    cmd: list[str], server_pid: int, rss_interval: float | None
) -> tuple[str, Cpu, list[tuple[float, int]]]:
    cpu0, busy0, t0 = cpu_seconds(server_pid), busy_cpu_seconds(), time.monotonic()
    sampler = RssSampler(server_pid, rss_interval) if rss_interval else None
    if sampler:
        sampler.__enter__()
    try:
        # files, not pipes: nobody reads a pipe while we block in wait4 (which gives the client's rusage)
        with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fout, stderr=ferr)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            fout.seek(0)
            ferr.seek(0)
            out, err = fout.read().decode(), ferr.read().decode()
    finally:
        if sampler:
            sampler.__exit__()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0:4]}... exited {proc.returncode}: {err[-2000:]}")
    server_s = cpu_seconds(server_pid) - cpu0
    client_s = rusage.ru_utime + rusage.ru_stime
    other_s = max(0.0, busy_cpu_seconds() - busy0 - server_s - client_s)
    return out, (server_s, client_s, other_s, wall), sampler.samples if sampler else []


def run_wrk(
    target: str,
    url: str,
    server_pid: int,
    workload: str,
    *,
    seconds: float,
    drain: float,
    threads: int,
    connections: int,
    pinned: bool,
    rss_interval: float | None = None,
) -> Round:
    """wrk for seconds + drain: the Lua script stops sending at `seconds`, so nothing is in flight at exit.

    wrk only takes whole seconds (-d1 at least); the rest of the last second is drain too."""
    runtag = new_runtag()
    duration = max(1, math.ceil(seconds + drain))
    cmd = [
        *pin_prefix(pinned),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        workload,
        runtag,
        f"{seconds:.3f}",
    ]
    out, cpu, rss = _run_client(cmd, server_pid, rss_interval)
    lines = [ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")]
    if not lines:
        raise RuntimeError(f"wrk printed no BENCHJSON line:\n{out[-2000:]}")
    result = json.loads(lines[-1][len("BENCHJSON ") :])
    server_s, client_s, other_s, wall = cpu
    # the server and wrk work during the active window only (the drain is idle): per active second
    active = float(result["active_seconds"]) or wall
    return Round(
        target, workload, runtag, "wrk", result, server_s / active, client_s / active, other_s / wall, rss
    )


def run_openloop(
    target: str, url: str, server_pid: int, workload: str, *, rate: float, seconds: float, pinned: bool
) -> Round:
    runtag = new_runtag()
    cmd = [
        *pin_prefix(pinned),
        sys.executable,
        "-m",
        "tests.bench.openloop",
        "--url",
        url,
        "--rate",
        f"{rate:.1f}",
        "--seconds",
        f"{seconds:.2f}",
        "--workload",
        workload,
        "--runtag",
        runtag,
    ]
    out, (server_s, client_s, other_s, wall), _ = _run_client(cmd, server_pid, None)
    return Round(
        target,
        workload,
        runtag,
        "openloop",
        json.loads(out),
        server_s / wall,
        client_s / wall,
        other_s / wall,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def describe_cpu_pinning(pinned: bool) -> str:
    if pinned:
        return "servers on core 0 (runner affinity inherited), load generator on core 1 (taskset -c 1)"
    return f"not pinned: taskset missing or affinity {sorted(os.sched_getaffinity(0))} lacks cores 0 and 1"
