from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api import services
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
    registry = exposition_registry(services().metrics.registry)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/openapi.yaml")
def openapi() -> Response:
    text = resources.files("service").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return Response(text, mimetype="application/yaml")
