"""Medians over rounds, the markdown table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.bench.drive import EVENTS_PER_REQUEST, Round
from tests.bench.store import StoreCheck

WORKLOAD_TITLES = {
    "get": "GET /i pixel (1 event)",
    "post1": "POST 1 event",
    "post10": "POST 10 events",
    "mix": "POST 3 events, 20% SP-Anonymous, ~1% anonymize",
}


def median(xs: Iterable[float]) -> float:
    values = list(xs)
    return float(statistics.median(values)) if values else 0.0


def summarise(rounds: list[Round]) -> list[dict[str, Any]]:
    """One row per (workload, target) with medians over the measured (non-warm-up) rounds."""
    rows: dict[tuple[str, str], list[Round]] = {}
    for r in rounds:
        rows.setdefault((r.workload, r.target), []).append(r)
    out = []
    for (workload, target), rs in rows.items():
        out.append(
            {
                "workload": workload,
                "target": target,
                "rounds": len(rs),
                "rps": median(r.rps for r in rs),
                "eps": median(r.eps for r in rs),
                "p50_ms": median(r.result["latency_us"]["p50"] / 1000 for r in rs),
                "p99_ms": median(r.result["latency_us"]["p99"] / 1000 for r in rs),
                "p999_ms": median(r.result["latency_us"]["p999"] / 1000 for r in rs),
                "non2xx": sum(int(r.result["non2xx"]) for r in rs),
                "server_cpu": median(r.server_cpu for r in rs),
                "client_cpu": median(r.client_cpu for r in rs),
                "other_cpu": median(r.other_cpu for r in rs),
                # the figure that holds on a noisy machine: server CPU time per stored event
                "cpu_us_per_event": median(r.server_cpu / r.eps * 1e6 if r.eps else 0.0 for r in rs),
                "events_per_request": EVENTS_PER_REQUEST[workload],
            }
        )
    return out


def ratios(summary: list[dict[str, Any]], collector: str = "collector") -> list[dict[str, Any]]:
    by = {(s["workload"], s["target"]): s for s in summary}
    out = []
    for workload in WORKLOAD_TITLES:
        c = by.get((workload, collector))
        if not c:
            continue
        row: dict[str, Any] = {"workload": workload}
        for ref in ("baseline", "nginx", "collector-normal"):
            r = by.get((workload, ref))
            if r and r["rps"]:
                row[f"{collector}/{ref}"] = c["rps"] / r["rps"]
        # the same collector, other conditions: how they compare to it (throughput and p99)
        for other in ("collector-prefilled", "collector-w2"):
            o = by.get((workload, other))
            if o and c["rps"] and c["p99_ms"]:
                row[f"{other}/{collector}"] = o["rps"] / c["rps"]
                row[f"p99 {other}/{collector}"] = o["p99_ms"] / c["p99_ms"]
        out.append(row)
    return out


def half_load_summary(windows: list[dict[str, Any]], collector: str = "collector") -> list[dict[str, Any]]:
    """One row per target over its half-load windows: medians, each window's p99, and the p99 and
    CPU an event against the one-worker collector's at the same rate (issue #14 compares `--workers
    2` with one worker at the same offered load)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for w in windows:
        by.setdefault(w["target"], []).append(w)
    out = []
    for target, ws in by.items():
        out.append(
            {
                "target": target,
                "windows": len(ws),
                "target_rate": median(w["target_rate"] for w in ws),
                "achieved_rate": median(w["achieved_rate"] for w in ws),
                "p50_ms": median(w["latency_us"]["p50"] / 1000 for w in ws),
                "p99_ms": median(w["latency_us"]["p99"] / 1000 for w in ws),
                "p99_each_ms": [w["latency_us"]["p99"] / 1000 for w in ws],
                # the machine's other load in each window: a window at half load leaves the collector
                # little spare core (per-commit costs rise as groups shrink), so others' load shows in p99
                "other_cpu_each": [w.get("other_cpu", 0.0) for w in ws],
                "p999_ms": median(w["latency_us"]["p999"] / 1000 for w in ws),
                "service_p99_ms": median(w["service_us"]["p99"] / 1000 for w in ws),
                "non2xx": sum(int(w["non2xx"]) for w in ws),
                "cpu_us_per_event": median(w.get("cpu_us_per_event", 0.0) for w in ws),
                "dirty_mib_max": max(w.get("dirty_mib_before", 0.0) for w in ws),
            }
        )
    one = next((o for o in out if o["target"] == collector), None)
    for o in out:
        if one and o["target"] != collector and o["target"].startswith("collector"):
            if one["p99_ms"]:
                o[f"p99/{collector}"] = o["p99_ms"] / one["p99_ms"]
            if one["cpu_us_per_event"]:
                o[f"cpu/{collector}"] = o["cpu_us_per_event"] / one["cpu_us_per_event"]
    return out


def flatness(samples: list[tuple[float, int]]) -> dict[str, Any]:
    """RSS over a long run: first sample after warm-up, last, max, and the slope of the second half."""
    if len(samples) < 4:
        return {"samples": len(samples)}
    warm = samples[len(samples) // 10 :]
    half = samples[len(samples) // 2 :]
    ts, vs = [t for t, _ in half], [v for _, v in half]
    tm, vm = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - tm) ** 2 for t in ts) or 1.0
    slope = sum((t - tm) * (v - vm) for t, v in zip(ts, vs, strict=True)) / den  # KiB per second
    return {
        "samples": len(samples),
        "seconds": samples[-1][0],
        "after_warmup_kib": warm[0][1],
        "last_kib": samples[-1][1],
        "max_kib": max(v for _, v in samples),
        "second_half_slope_kib_per_min": slope * 60,
    }


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Collector benchmark ({data['mode']} mode)",
        "",
        f"{data['started']} · {data['machine']} · {data['pinning']} · load average at start / end: "
        f"{data['loadavg'][0]} / {data['loadavg'][1]}",
        "CPU columns: cores busy (100% = one core) in the server process tree, in the load generator, "
        "and in everything else on the machine (noise).",
        f"wrk {data['wrk']['threads']} threads / {data['wrk']['connections']} connections, "
        f"{data['wrk']['seconds']} s per round (+{data['wrk']['drain']} s drain), "
        f"{data['rounds']} round(s), targets alternated; medians shown.",
        "",
        "| workload | target | req/s | events/s | p50 ms | p99 ms | p99.9 ms | non-2xx | server CPU "
        "| wrk CPU | other CPU | server CPU µs/event |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(data["summary"], key=lambda s: (list(WORKLOAD_TITLES).index(s["workload"]), s["target"])):
        lines.append(
            f"| {WORKLOAD_TITLES[s['workload']]} | {s['target']} | {_fmt(s['rps'])} | "
            f"{_fmt(s['eps'])} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['p999_ms']:.2f} | "
            f"{s['non2xx']} | {s['server_cpu']:.0%} | {s['client_cpu']:.0%} | "
            f"{s['other_cpu']:.0%} | {s.get('cpu_us_per_event', 0.0):.0f} |"
        )
    if data["ratios"]:
        refs = sorted({k for r in data["ratios"] for k in r if k != "workload"})
        lines += [
            "",
            "Throughput ratios (req/s):",
            "",
            "| workload | " + " | ".join(refs) + " |",
            "|---|" + "---:|" * len(refs),
        ]
        for r in data["ratios"]:
            lines.append(
                f"| {WORKLOAD_TITLES[r['workload']]} | "
                + " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in refs)
                + " |"
            )
    if data.get("half_load_summary"):
        rows = data["half_load_summary"]
        n = max(r["windows"] for r in rows)
        lines += [
            "",
            f"Open-loop latency at half the collector's POST-10 saturation rate, medians of {n} windows "
            "a target, the targets alternating (latency from the scheduled send time, i.e. corrected "
            "for coordinated omission; service = from actual send; each window starts after every "
            "dirty page on the machine is written back, the last column the most there was before "
            "one; others = the rest of the machine's CPU in each window, 100% = one core); the ratios "
            "are against the one-worker collector at the same rate:",
            "",
            "| target | rate req/s | achieved | p50 ms | p99 ms | p99 each window | others each window "
            "| p99.9 ms "
            "| service p99 ms | non-2xx | server CPU µs/event | p99 / collector | CPU / collector "
            "| dirty MiB before |",
            "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for h in rows:
            each = ", ".join(f"{v:.1f}" for v in h["p99_each_ms"])
            others = ", ".join(f"{v:.0%}" for v in h.get("other_cpu_each", []))
            p99r, cpur = h.get("p99/collector"), h.get("cpu/collector")
            lines.append(
                f"| {h['target']} | {_fmt(h['target_rate'])} | {_fmt(h['achieved_rate'])} | "
                f"{h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {each} | {others} | {h['p999_ms']:.2f} | "
                f"{h['service_p99_ms']:.2f} | {h['non2xx']} | {h['cpu_us_per_event']:.0f} | "
                + (f"{p99r:.2f}" if p99r is not None else "-")
                + " | "
                + (f"{cpur:.2f}" if cpur is not None else "-")
                + f" | {h['dirty_mib_max']:,.0f} |"
            )
    if data.get("memory"):
        lines += [
            "",
            "Peak RSS (VmHWM, summed over the process tree, end of run):",
            "",
            "| target | peak RSS MiB |",
            "|---|---:|",
        ]
        for name, kib in data["memory"]["peak_kib"].items():
            lines.append(f"| {name} | {kib / 1024:.1f} |")
        fl = data["memory"].get("flatness")
        if fl and "last_kib" in fl:
            lines += [
                "",
                f"Memory flatness ({data['memory']['flatness_workload']} for {fl['seconds']:.0f} s,"
                " "
                f"{fl['samples']} samples): after warm-up {fl['after_warmup_kib'] / 1024:.1f} MiB, "
                f"last {fl['last_kib'] / 1024:.1f} MiB, max {fl['max_kib'] / 1024:.1f} MiB, "
                f"second-half slope {fl['second_half_slope_kib_per_min'] / 1024:+.2f} MiB/min.",
            ]
    if data.get("store"):
        lines += [
            "",
            "Store check (per round: events stored == events acknowledged; anonymous and anonymize "
            "events likewise; no row from elsewhere; no bad rows; anonymous rows without IP and device "
            "id, the others with both):",
            "",
            "| target | rounds (exact) | acknowledged | stored | anonymous | anonymize | bad rows | result |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for sc in data["store"]:
            rs = sc["rounds"]
            anon = sum(r["stored_anonymous"] for r in rs)
            anz = sum(r["stored_anonymize"] for r in rs)
            problems = sc["problems"] + [p for r in rs for p in r["problems"]]
            result = "OK" if sc["ok"] else "FAIL: " + "; ".join(problems[:3])
            exact = sum(1 for r in rs if r["exact"])
            lines.append(
                f"| {sc['target']} | {len(rs)} ({exact}) | {sc['acknowledged']} | "
                f"{sc['total_rows']} | {anon} | {anz} | {sc['bad_rows']} | {result} |"
            )
    if data.get("profile"):
        lines.append(profile_text(data["profile"]))
    for note in data.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def profile_text(profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"profile: {profile['error']}"
    lines = []
    for name, title in (("busy", "samples of running threads"), ("gil", "samples holding the GIL")):
        p = profile.get(name)
        if not p:
            continue
        if p.get("threads"):
            share = ", ".join(f"{t} {100 * c / p['samples']:.0f}%" for t, c in p["threads"].items())
            lines += ["", f"Busy samples per thread: {share}."]
        lines += [
            "",
            f"Collector profile, POST 10 events, {profile['seconds']:.0f} s, {title} "
            f"({p['samples']} samples), top functions by self time:",
            "",
            "| self % | samples | function (file) |",
            "|---:|---:|---|",
        ]
        lines += [f"| {r['self_pct']:.1f} | {r['samples']} | {r['function']} |" for r in p["top"]]
    return "\n".join(lines) + "\n"


def chart(data: dict[str, Any], path: Path) -> str | None:
    """Throughput and p99 per workload and target; None when matplotlib is missing (the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e '.[bench]')"
    summary = data["summary"]
    workloads = [w for w in WORKLOAD_TITLES if any(s["workload"] == w for s in summary)]
    targets = sorted({s["target"] for s in summary})
    by = {(s["workload"], s["target"]): s for s in summary}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    panels = (
        ("rps", "requests/s (median, log)"),
        ("eps", "events/s (median, log)"),
        ("p99_ms", "p99 latency ms at saturation (log)"),
    )
    width = 0.8 / max(1, len(targets))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, target in enumerate(targets):
            xs = [w + i * width for w in range(len(workloads))]
            ax.bar(
                xs, [by[(w, target)][key] if (w, target) in by else 0 for w in workloads], width, label=target
            )
        ax.set_xticks([w + width * (len(targets) - 1) / 2 for w in range(len(workloads))])
        ax.set_xticklabels([WORKLOAD_TITLES[w].split(",")[0] for w in workloads], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    if targets:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(targets), fontsize=9)
    fig.suptitle(f"Collector benchmark, {data['mode']} mode, {data['started']}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(data: dict[str, Any], out: Path) -> tuple[Path, Path, str | None]:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    js = out / "results.json"
    js.write_text(json.dumps(data, indent=2, default=str))
    note = chart(data, out / "results.png")
    if note:
        data.setdefault("notes", []).append(note)
    md.write_text(markdown(data))
    return md, js, note


def store_dicts(checks: list[StoreCheck]) -> list[dict[str, Any]]:
    return [c.as_dict() for c in checks]
