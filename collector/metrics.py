"""Prometheus metrics: bounded enum labels only (route, status class, reason), never an IP, id or URL.

With several worker processes, PROMETHEUS_MULTIPROC_DIR is set by the supervisor and prometheus_client
keeps each process's values in files there; /metrics then merges them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

GROUP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the collector reports, on a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        self.requests = Counter(
            "collector_requests", "HTTP requests by route and status class", ["route", "status"], registry=reg
        )
        self.request_seconds = Histogram(
            "collector_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.events = Counter(
            "collector_events_stored", "Events committed to the store", ["anonymous"], registry=reg
        )
        self.duplicates = Counter(
            "collector_events_duplicate", "Events skipped as retries of stored ones", registry=reg
        )
        self.deviceless = Counter(
            "collector_events_deviceless",
            "Events kept without a device: their cookie belonged to a device that rotated away or opted out",
            registry=reg,
        )
        self.consents = Counter(
            "collector_consent_signals",
            "Requests a privacy signal decided (sp_anonymous, gpc, dnt, dnt_cookie), by mode",
            ["signal", "mode"],
            registry=reg,
        )
        self.removed = Counter(
            "collector_lifecycle_removed",
            "Rows the lifecycle removed: retention (events, bad_rows), culled devices, expired retired ids",
            ["kind"],
            registry=reg,
        )
        self.bad_rows = Counter("collector_bad_rows", "Refused inputs, by reason", ["reason"], registry=reg)
        self.rotations = Counter(
            "collector_rotations",
            "Anonymize events, by outcome (rotated; ignored: a second one for a device in one request)",
            ["outcome"],
            registry=reg,
        )
        self.cookies = Counter(
            "collector_device_cookies",
            "Device ids by source (verified, minted, invalid, expired)",
            ["outcome"],
            registry=reg,
        )
        self.overloaded = Counter(
            "collector_overloaded", "Requests answered 503 because the write queue was full", registry=reg
        )
        self.store_failures = Counter(
            "collector_store_failures", "Requests whose commit failed (503)", registry=reg
        )
        self.queue_depth = Gauge(
            "collector_write_queue_depth",
            "Events waiting for the writer",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.commit_seconds = Histogram(
            "collector_commit_seconds", "Time of one group commit", buckets=LATENCY_BUCKETS, registry=reg
        )
        self.group_events = Histogram(
            "collector_commit_group_events",
            "Events and bad rows in one group commit",
            buckets=GROUP_BUCKETS,
            registry=reg,
        )

        # labels() builds and looks up a key per call: keep the children of the hot metrics at hand
        self._requests: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}
        self._cookies: dict[str, Any] = {}
        self._stored = (self.events.labels("false"), self.events.labels("true"))

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """Count an answered request and its latency."""
        klass = status // 100
        child = self._requests.get((route, klass))
        if child is None:
            child = self._requests[(route, klass)] = self.requests.labels(route, f"{klass}xx")
        child.inc()
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = self.request_seconds.labels(route)
        hist.observe(seconds)

    def cookie(self, outcome: str) -> None:
        """Count a device-id outcome (minted, invalid, expired)."""
        child = self._cookies.get(outcome)
        if child is None:
            child = self._cookies[outcome] = self.cookies.labels(outcome)
        child.inc()

    def consent(self, signal: str, mode: str) -> None:
        """Count a request a privacy signal decided."""
        self.consents.labels(signal, mode).inc()

    def lifecycle(self, removed: Any) -> None:
        """Count what one lifecycle run removed."""
        for kind in ("events", "bad_rows", "devices", "retired"):
            self.removed.labels(kind).inc(getattr(removed, kind))

    def stored(self, anonymous: bool, count: int) -> None:
        """Count committed events."""
        self._stored[anonymous].inc(count)

    def observe_commit(self, size: int, seconds: float) -> None:
        """Called by the writer thread after each commit."""
        self.commit_seconds.observe(seconds)
        self.group_events.observe(size)

    def exposition(self, queue_depth: int) -> bytes:
        """The Prometheus text format of every metric (all workers' when several run)."""
        self.queue_depth.set(queue_depth)
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
