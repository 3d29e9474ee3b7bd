"""Idempotency-Key on note creation: a retry never creates a duplicate."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
from flask import Flask

from tests.helpers import Api, StackHelper


def count_notes(db_url: str, patient_id: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM notes WHERE patient_id = %s", (patient_id,))
        return int(row.fetchone()[0])


def test_retry_returns_the_first_note(api: Api, stack: StackHelper, db_url: str) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    body = {"kind": "progress", "body": "retried after a timeout"}
    headers = {"Idempotency-Key": "visit-2026-11-23-001"}
    first = api.post(f"/v1/patients/{pid}/notes", dr.token, body, headers=headers)
    again = api.post(f"/v1/patients/{pid}/notes", dr.token, body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count_notes(db_url, pid) == 1

    changed = api.post(
        f"/v1/patients/{pid}/notes",
        dr.token,
        {**body, "body": "something else"},
        headers=headers,
    )
    assert changed.status_code == 409
    assert changed.get_json()["type"].endswith("/idempotency-key-reused")
    assert count_notes(db_url, pid) == 1

    # Keys are per principal: a colleague's identical key is a different note.
    colleague = stack.clinician(t)
    stack.add_to_care_team(t, pid, colleague)
    other = api.post(f"/v1/patients/{pid}/notes", colleague.token, body, headers=headers)
    assert other.status_code == 201 and other.get_json()["id"] != first.get_json()["id"]
    # Without a key every POST is a new note.
    api.post(f"/v1/patients/{pid}/notes", dr.token, body)
    assert count_notes(db_url, pid) == 3


def test_concurrent_retries_create_one_note(app: Flask, stack: StackHelper, db_url: str) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)

    def post(_: int) -> tuple[int, str]:
        client = Api(app.test_client())
        r = client.post(
            f"/v1/patients/{pid}/notes",
            dr.token,
            {"kind": "other", "body": "once"},
            headers={"Idempotency-Key": "same-key"},
        )
        return r.status_code, r.get_json()["id"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(16)))
    assert {status for status, _ in results} == {201}
    assert len({note_id for _, note_id in results}) == 1
    assert count_notes(db_url, pid) == 1


def test_malformed_idempotency_key(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    for bad in ("", "has space", "x" * 201, "é"):
        r = api.post(
            f"/v1/patients/{pid}/notes",
            dr.token,
            {"kind": "other", "body": "x"},
            headers={"Idempotency-Key": bad},
        )
        assert r.status_code == 400, bad
        assert r.content_type == "application/problem+json"
