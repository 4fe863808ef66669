"""Where the collector's CPU goes under POST-10 load: py-spy samples, summed per function by self time.

py-spy (PyPI) samples the running process from outside, so the collector runs unmodified and
unslowed by instrumentation; `--format raw` writes collapsed stacks ("f1;f2;...;leaf count"), which
speedscope and flamegraph.pl also read. Idle samples (the event loop waiting in epoll) are left out
by py-spy, so percentages are of the time the collector was busy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench.drive import CLIENT_CPU

if TYPE_CHECKING:
    from tests.bench.run import Bench

LINE_NO = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


THREAD = re.compile(r"^thread \(\d+\): ?(.*)$")


def top_self(collapsed: str, n: int = 15) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """Functions by self time (samples where they are the innermost frame), line numbers merged,
    and samples per thread when the stacks start with py-spy's `--threads` frame."""
    self_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        m = THREAD.match(frames[0])
        if m:
            threads[m.group(1) or "?"] += int(count)
        self_time[LINE_NO.sub(")", frames[-1])] += int(count)
        total += int(count)
    rows = [
        {"function": f, "samples": c, "self_pct": 100 * c / total if total else 0.0}
        for f, c in self_time.most_common(n)
    ]
    return rows, total, dict(threads.most_common())


def _record(bench: Bench, spy: str, seconds: float, raw: Path, mode: list[str]) -> str:
    """py-spy on the collector while wrk sends POST-10 batches; the collapsed stacks, or an error."""
    target = bench.targets["collector"]
    cmd = [
        spy,
        "record",
        "--pid",
        str(target.root_pid()),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(raw),
        *mode,
    ]
    if bench.pinned:
        cmd = ["taskset", "-c", CLIENT_CPU, *cmd]  # the sampler must not steal the server's core
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # let py-spy attach before the load starts
    bench.extra.append(bench.wrk("collector", "post10", seconds))
    _, err = spy_proc.communicate(timeout=seconds + 30)
    if spy_proc.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy exited {spy_proc.returncode}: {err.decode()[-500:]}")
    return raw.read_text()


# busy: every sample of a thread that is running, per thread. --nonblocking, because in the default
# mode py-spy pauses the process to sample and then counts idle threads (an executor thread blocked
# in queue.get, the writer waiting on its condition) as busy. The C work of SQLite shows as self
# time of the Python function that called it (executemany in write_group, COMMIT in _transaction).
# gil: only samples holding the GIL: the Python work of the event loop and the writer, the part an
# optimisation of the ingest code itself can shrink.
MODES = {"busy": ["--nonblocking", "--threads"], "gil": ["--gil"]}


def profile_collector(bench: Bench, seconds: float, out: Path) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"workload": "post10", "seconds": seconds}
    for name, mode in MODES.items():
        raw = out / f"profile-{name}.collapsed.txt"
        try:
            collapsed = _record(bench, spy, seconds, raw, mode)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return {**result, "error": str(exc)}
        rows, total, threads = top_self(collapsed)
        result[name] = {"samples": total, "top": rows, "threads": threads, "collapsed": str(raw)}
    return result
