"""Group commit against PostgreSQL under gunicorn: concurrent warm reads share
audit statements, yet every answered read has exactly its own record, committed,
and the chain verifies."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from tests.conftest import LiveServer
from tests.helpers import StackHelper


def test_concurrent_warm_reads_are_each_recorded_once_in_shared_commits(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    server = live_server(workers=2, SEALEDNOTES_MAX_IN_FLIGHT="16")
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="group commit")
    url = f"{server.url}/v1/notes/{note['id']}"
    headers = {"Authorization": f"Bearer {dr.token}"}

    def read(i: int) -> tuple[int, str]:
        with requests.Session() as s:
            r = s.get(url, headers={**headers, "X-Request-Id": f"gc-{i:04d}"}, timeout=30)
            return r.status_code, r.headers.get("X-Request-Id", "")

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(read, range(400)))
    assert {status for status, _ in answers} == {200}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, xmin::text FROM audit_events"
            " WHERE action = 'note.read' AND outcome = 'granted' AND request_id LIKE 'gc-%'"
        ).fetchall()
    recorded = [rid for rid, _ in rows]
    assert sorted(recorded) == sorted(rid for _, rid in answers)  # each read, once
    transactions = {xmin for _, xmin in rows}
    assert len(transactions) < len(rows)  # some records shared a commit
    report = stack.services.audit_service.verify().as_dict()
    assert report["ok"], report["problems"]
