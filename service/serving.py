"""gunicorn settings derived from Settings.

Timeouts are ordered: Vault and database calls (2 s) < request deadline (5 s)
< gunicorn worker timeout, so a hung dependency yields a 503, not a killed worker.
"""

from __future__ import annotations

import math
import os
from typing import Any

from gunicorn import glogging

from service.config import Settings
from service.logs import gunicorn_logconfig


def _child_exit(server: Any, worker: Any) -> None:
    # Multiprocess Prometheus metrics: drop a dead worker's live gauges.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class AccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger with a lean access line: `addr "METHOD /path" status bytes
    Nms rid=request-id` (never the query string). gunicorn's own builds a dict of
    every header and environment variable per request, to use six of them."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        rid = next((v for k, v in resp.headers if k.lower() == "x-request-id"), "-")
        millis = request_time.seconds * 1000 + request_time.microseconds // 1000
        self.access_log.info(
            '%s "%s %s" %s %s %sms rid=%s',
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD", "-"),
            environ.get("PATH_INFO", "-"),
            status,
            "-" if sent is None else sent,
            millis,
            rid,
        )


def _metrics_listener(bind: str) -> Any:
    """In the gunicorn master: serve every worker's metrics on their own address,
    away from the public API port."""

    def when_ready(server: Any) -> None:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        host, _, port = bind.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        server.log.info("metrics on http://%s/metrics", bind)

    return when_ready


def gunicorn_options(settings: Settings, workers: int | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if settings.metrics_bind and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        extra["when_ready"] = _metrics_listener(settings.metrics_bind)
    return extra | {
        "bind": settings.bind,
        "workers": workers or settings.workers,
        "worker_class": "gthread",
        # More threads than in-flight slots: the extra threads answer 503
        # "overloaded" at once instead of letting clients queue without bound.
        "threads": settings.threads,
        "timeout": max(10, math.ceil(settings.request_timeout * 2)),
        "graceful_timeout": 10,
        "keepalive": 5,
        "preload_app": False,  # pools and Vault clients open per worker, after fork
        "accesslog": "-",
        "logger_class": AccessLogger,
        "logconfig_dict": gunicorn_logconfig(),
        "child_exit": _child_exit,
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
    }
