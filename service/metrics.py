"""Prometheus counters (text format served at /metrics)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

# Methods a client may send are unbounded; each label value is a time series kept for
# ever, so anything else is counted as OTHER.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def exposition_registry(own: CollectorRegistry) -> CollectorRegistry:
    """What /metrics serves: every gunicorn worker's metrics when running under
    `sealednotes serve` (multiprocess mode), else this process's own."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return own
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "sealednotes_http_requests_total",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sealednotes_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )
        self.key_releases = Counter(
            "sealednotes_key_releases_total",
            "Key release decisions",
            ["outcome"],
            registry=self.registry,
        )
        self.key_cache = Counter(
            "sealednotes_key_cache_total", "Key cache lookups", ["result"], registry=self.registry
        )
        self.suspensions = Counter(
            "sealednotes_suspensions_total",
            "Principals suspended",
            ["cause"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "sealednotes_alerts_total", "Security alerts emitted", ["kind"], registry=self.registry
        )
        self.vault_throttled = Counter(
            "sealednotes_vault_unwrap_throttled_total",
            "Unwraps refused by Vault's rate-limit quota (its own unwrap budget)",
            registry=self.registry,
        )
        self.dependency_errors = Counter(
            "sealednotes_dependency_errors_total",
            "Vault and database errors",
            ["dependency"],
            registry=self.registry,
        )
        # Labelled children by label values: prometheus_client's labels() validates
        # and locks on every call, and these are on every request.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._children: dict[tuple[int, str], Any] = {}

    def key_cache_lookup(self, result: str) -> None:
        """A key cache lookup: "hit" or "miss" (every read asks)."""
        self._child(self.key_cache, result).inc()

    def key_release(self, outcome: str) -> None:
        """A key release decision: "granted", "denied", "decoy" or "throttled"."""
        self._child(self.key_releases, outcome).inc()

    def _child(self, metric: Counter, value: str) -> Any:
        # One label, a handful of values: their children made once.
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(value)
        return child

    def observe_request(self, route: str, method: str, status: int, seconds: float | None) -> None:
        key = (route, method if method in KNOWN_METHODS else "OTHER", status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route=key[0], method=key[1], status=str(status)),
                self.latency.labels(route=key[0]),
            )
            self._request_children[key] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)
