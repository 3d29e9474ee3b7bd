"""Budgets hold under `gunicorn -w 4` with concurrent requests, new tokens and spoofed
X-Forwarded-For: counts live in PostgreSQL, shared by every worker."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from tests.conftest import LiveServer
from tests.helpers import StackHelper, seed_patients


def test_no_over_release_across_workers_tokens_and_addresses(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    server = live_server(
        workers=4, SEALEDNOTES_SUSPEND_AFTER_DENIALS="1000", SEALEDNOTES_MAX_IN_FLIGHT="16"
    )
    t = stack.tenant()
    dr = stack.clinician(t)
    patients = seed_patients(stack, t, [dr], 120)
    principals = stack.services.principals
    tokens = [dr.token] + [principals.issue_token(dr.id).token for _ in range(5)]
    rng = random.Random(7)

    def read(patient_id: str) -> tuple[str, int, str]:
        headers = {
            "Authorization": f"Bearer {rng.choice(tokens)}",
            "X-Forwarded-For": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.1",
        }
        with requests.Session() as s:
            r = s.get(
                f"{server.url}/v1/patients/{patient_id}/notes?include=content",
                headers=headers,
                timeout=30,
            )
        return patient_id, r.status_code, r.text

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(read, patients))

    granted = {p for p, status, _ in results if status == 200}
    statuses = sorted({status for _, status, _ in results})
    assert statuses == [200, 429], results[:3]
    assert len(granted) == 60  # never 61, whatever the interleaving
    with psycopg.connect(db_url) as conn:
        (released,) = conn.execute(
            "SELECT count(DISTINCT patient_id) FROM key_releases WHERE principal_id = %s", (dr.id,)
        ).fetchone()
        (worker_pids,) = conn.execute(
            "SELECT count(*) FROM audit_events WHERE principal_id = %s", (dr.id,)
        ).fetchone()
    assert released == 60
    assert worker_pids >= 120
    assert "body of patient" not in server.log_text()
