"""A cold read (the patient's key no longer in the worker's cache) that has written
nothing else: its `key.unwrap` record and its grant are appended together, in one
statement and one commit after Vault answered, not one commit each; the same two
records, in the same order, and the chain verifies. Against PostgreSQL and OpenBao."""

from __future__ import annotations

from typing import Any

from flask import Flask

from tests.helpers import Api, StackHelper, request_records, seed_patients


def _records(db_url: str, request_id: str) -> list[tuple[Any, ...]]:
    # xmin: records appended in one transaction share it
    return request_records(db_url, request_id, "action, outcome, reason, xmin::text")


def test_a_cold_reread_appends_the_unwrap_and_the_grant_in_one_commit(
    app: Flask, api: Api, stack: StackHelper, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1)
    note = api.get(f"/v1/patients/{pid}/notes", dr.token).get_json()["items"][0]["id"]
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200  # released this hour
    app.extensions["sealednotes"].cache.clear()
    # A token this worker has not seen: the read goes through authentication and the
    # gate (a remembered caller's statement would record the grant itself).
    token = stack.services.principals.issue_token(dr.id).token
    r = api.get(f"/v1/notes/{note}", token, headers={"X-Request-Id": "cold-1"})
    assert r.status_code == 200 and r.get_json()["body"]

    records = _records(db_url, "cold-1")
    assert [(a, o, why) for a, o, why, _ in records] == [
        ("key.unwrap", "granted", "read"),
        ("note.read", "granted", None),
    ]
    assert len({xmin for *_, xmin in records}) == 1  # one transaction: one commit
    report = stack.services.audit_service.verify().as_dict()
    assert report["ok"], report["problems"]


def test_a_warm_read_through_the_gate_still_has_its_grant_alone(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1)
    note = api.get(f"/v1/patients/{pid}/notes", dr.token).get_json()["items"][0]["id"]
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200
    token = stack.services.principals.issue_token(dr.id).token
    assert (
        api.get(f"/v1/notes/{note}", token, headers={"X-Request-Id": "warm-1"}).status_code == 200
    )
    assert [(a, o) for a, o, *_ in _records(db_url, "warm-1")] == [("note.read", "granted")]
