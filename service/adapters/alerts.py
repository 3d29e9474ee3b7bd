"""Security alerts: a structured log line, a counter, and an optional webhook.

Alerts carry identifiers only (tenant, principal, patient ids, counts), never
note content or external identifiers.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from typing import Any

from service.metrics import Metrics

log = logging.getLogger("sealednotes.alert")


class Alerter:
    def __init__(self, metrics: Metrics, webhook_url: str | None = None) -> None:
        self._metrics = metrics
        self._webhook_url = webhook_url
        self.sent: list[
            dict[str, Any]
        ] = []  # last alerts of this process, for /metrics-less checks

    def emit(self, kind: str, **fields: Any) -> None:
        payload = {"alert": kind, **{k: v for k, v in fields.items() if v is not None}}
        self._metrics.alerts.labels(kind=kind).inc()
        log.warning(json.dumps(payload, sort_keys=True, default=str))
        self.sent.append(payload)
        del self.sent[:-100]
        if self._webhook_url:
            threading.Thread(target=self._post, args=(payload,), daemon=True).start()

    def _post(self, payload: dict[str, Any]) -> None:
        assert self._webhook_url is not None
        req = urllib.request.Request(  # noqa: S310 - operator-configured URL
            self._webhook_url,
            data=json.dumps(payload, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=2):  # noqa: S310
                pass
        except Exception as e:
            log.error("alert webhook failed: %s", type(e).__name__)
