"""gunicorn settings derived from Settings.

Timeouts are ordered: Vault and database calls (2 s) < request deadline (5 s)
< gunicorn worker timeout, so a hung dependency yields a 503, not a killed worker.
"""

from __future__ import annotations

import math
from typing import Any

from service.config import Settings


def gunicorn_options(settings: Settings, workers: int | None = None) -> dict[str, Any]:
    return {
        "bind": settings.bind,
        "workers": workers or settings.workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": max(10, math.ceil(settings.request_timeout * 2)),
        "graceful_timeout": 10,
        "keepalive": 5,
        "preload_app": False,  # pools and Vault clients open per worker, after fork
        "accesslog": "-",
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s',
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
    }
