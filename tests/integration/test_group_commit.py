"""Warm reads' records under concurrency, against PostgreSQL under gunicorn. A read by
a token the worker has not seen yet goes through authentication and the gate, and its
record is group-committed with those of concurrent requests; a read by a remembered
token is recorded by its own statement. Either way every answered read has exactly
its own record, committed, and the chain verifies."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from tests.conftest import LiveServer
from tests.helpers import StackHelper


@pytest.mark.parametrize("tokens", ["a-token-per-read", "one-remembered-token"])
def test_concurrent_warm_reads_are_each_recorded_once(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str, tokens: str
) -> None:
    server = live_server(workers=2, SEALEDNOTES_MAX_IN_FLIGHT="16")
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="group commit")
    url = f"{server.url}/v1/notes/{note['id']}"
    n = 400
    if tokens == "a-token-per-read":  # none remembered: each goes through the gate
        issue = stack.services.principals.issue_token
        bearer = [issue(dr.id).token for _ in range(n)]
    else:
        bearer = [dr.token] * n

    def read(i: int) -> tuple[int, str]:
        with requests.Session() as s:
            r = s.get(
                url,
                headers={"Authorization": f"Bearer {bearer[i]}", "X-Request-Id": f"gc-{i:04d}"},
                timeout=30,
            )
            return r.status_code, r.headers.get("X-Request-Id", "")

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(read, range(n)))
    assert {status for status, _ in answers} == {200}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, xmin::text FROM audit_events"
            " WHERE action = 'note.read' AND outcome = 'granted' AND request_id LIKE 'gc-%'"
        ).fetchall()
    recorded = [rid for rid, _ in rows]
    assert sorted(recorded) == sorted(rid for _, rid in answers)  # each read, once
    if tokens == "a-token-per-read":
        transactions = {xmin for _, xmin in rows}
        assert len(transactions) < len(rows)  # some records shared a commit
    report = stack.services.audit_service.verify().as_dict()
    assert report["ok"], report["problems"]
