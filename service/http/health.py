from __future__ import annotations

import hmac
from importlib import resources

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import NotFound, Unauthorized
from service.http import services
from service.metrics import exposition_registry

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness only: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    svc = services()
    try:
        with svc.store.autocommit() as tx:
            tx.ping()
        database = {"ok": True}
    except Exception:
        database = {"ok": False}
    vault = svc.keys.health()
    ready = database["ok"] and vault["ok"]
    body = {"status": "ready" if ready else "unavailable", "database": database, "vault": vault}
    return jsonify(body), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics span every tenant: on the API port only for a scraper that
    holds SEALEDNOTES_METRICS_TOKEN (the usual place is SEALEDNOTES_METRICS_BIND)."""
    svc = services()
    expected = svc.settings.metrics_token
    if not expected:
        raise NotFound("Metrics are served on the metrics address, not here")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise Unauthorized("Metrics need the metrics bearer token")
    registry = exposition_registry(svc.metrics.registry)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/openapi.yaml")
def openapi() -> Response:
    text = resources.files("service").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return Response(text, mimetype="application/yaml")
