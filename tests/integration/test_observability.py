"""Metrics, health endpoints and structured logs."""

from __future__ import annotations

import json
from collections.abc import Callable

import requests

from service.config import Budgets
from tests.conftest import METRICS_TOKEN, AppFactory, LiveServer
from tests.helpers import Api, StackHelper, seed_patients


def test_metrics_cover_requests_releases_cache_and_suspensions(make_app: AppFactory) -> None:
    app = make_app(budgets=Budgets(per_hour=1, suspend_after_denials=2))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    a, b = seed_patients(stack, t, [dr], 2)
    note = api.get(f"/v1/patients/{a}/notes", dr.token).get_json()["items"][0]["id"]
    for _ in range(3):
        api.get(f"/v1/notes/{note}", dr.token)
    for _ in range(2):
        api.get(f"/v1/patients/{b}/notes?include=content", dr.token)  # throttled, suspended
    text = api.get("/metrics", METRICS_TOKEN).get_data(as_text=True)
    for expected in (
        'sealednotes_http_requests_total{method="GET",route="/v1/notes/<uuid:note_id>",'
        'status="200"} 3.0',
        "sealednotes_http_request_seconds_bucket",
        'sealednotes_key_releases_total{outcome="granted"}',
        'sealednotes_key_releases_total{outcome="throttled"} 2.0',
        'sealednotes_key_cache_total{result="hit"}',
        'sealednotes_suspensions_total{cause="repeated-budget-denials"} 1.0',
        'sealednotes_alerts_total{kind="principal-suspended"} 1.0',
    ):
        assert expected in text, expected


def test_unknown_methods_share_one_metrics_label(make_app: AppFactory) -> None:
    """Each label value is a time series kept for ever: a client inventing methods must
    not grow the metrics without bound."""
    app = make_app()
    client = app.test_client()
    for i in range(5):
        assert client.open("/v1/me", method=f"BREW{i}").status_code in (401, 405)
    text = Api(client).get("/metrics", METRICS_TOKEN).get_data(as_text=True)
    assert "BREW" not in text
    assert 'method="OTHER"' in text


def test_gunicorn_logs_are_json_with_request_ids_and_metrics_span_workers(
    stack: StackHelper, live_server: Callable[..., LiveServer]
) -> None:
    server = live_server(workers=2)
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid)
    headers = {"Authorization": f"Bearer {dr.token}", "X-Request-Id": "trace-me-123"}
    for _ in range(20):
        r = requests.get(f"{server.url}/v1/notes/{note['id']}", headers=headers, timeout=10)
        assert r.status_code == 200 and r.headers["X-Request-Id"] == "trace-me-123"
    r = requests.get(
        f"{server.url}/v1/patients?external_id=SECRET-MRN-1", headers=headers, timeout=10
    )
    assert r.status_code == 404
    # Metrics span every tenant: not on the API port, on their own listener.
    assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 404
    metrics = requests.get(server.metrics_url, timeout=10).text
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("sealednotes_http_requests_total")
        and "note_id" in x
        and 'status="200"' in x
    )
    assert float(line.rsplit(" ", 1)[1]) == 20.0  # all workers' requests, not one worker's
    server.stop()
    lines = server.log_text().splitlines()
    entries = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(entries) == len([x for x in lines if x.strip()])  # every line is JSON
    access = [e for e in entries if e["logger"] == "gunicorn.access"]
    assert any("trace-me-123" in e["msg"] for e in access)
    assert not any("SECRET-MRN-1" in x for x in lines)  # no query strings in access logs
    assert not any(dr.token in x for x in lines)
