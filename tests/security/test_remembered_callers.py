"""P14 under the warm read's shortcut: a worker remembers which account an opaque
token authenticated, and the read confirms token and account in its own statement
(service/access/remembered.py). Every change made elsewhere (another replica, the
command line, SQL) must still take effect on the very next read: nothing is ever
decided on the remembered copy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from flask import Flask

from service.clock import ManualClock
from service.config import Budgets
from service.models import Role
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper, Who, request_records, seed_patients


def _records(db_url: str, request_id: str) -> list[tuple[Any, ...]]:
    return request_records(db_url, request_id, "action, outcome")


def _remembered(app: Flask) -> int:
    return len(app.extensions["sealednotes"].idp.remembered)


def test_a_token_revoked_elsewhere_is_refused_on_the_next_read(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    note = stack.note(dr, stack.patient_for(t, dr))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    assert _remembered(app) >= 1
    with psycopg.connect(db_url) as conn:  # another replica, or ops, revokes it
        conn.execute("UPDATE tokens SET revoked_at = now() WHERE principal_id = %s", (dr.id,))
    r = api.get(f"/v1/notes/{note['id']}", dr.token, headers={"X-Request-Id": "after-revoke"})
    assert r.status_code == 401
    assert "body" not in r.get_data(as_text=True)
    assert ("note.read", "granted") not in _records(db_url, "after-revoke")


def test_an_expired_token_is_refused_on_the_next_read(make_app: AppFactory) -> None:
    clock = ManualClock()
    app = make_app(clock=clock)
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    issued = app.extensions["sealednotes"].principals.create_principal(
        t.name, "short-lived", Role.CLINICIAN, ttl_days=1
    )
    dr = Who(issued.principal_id, issued.token, t.name)
    note = stack.note(dr, stack.patient_for(t, dr))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    clock.advance(timedelta(days=1, seconds=1))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 401


def test_a_budget_lowered_elsewhere_applies_to_the_next_read(
    make_app: AppFactory, db_url: str
) -> None:
    """The remembered account had 5 patients an hour; lowered to 1 by SQL (the change
    is audited by the database), the second patient's read is refused at once."""
    app = make_app(budgets=Budgets(per_hour=5))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    a, b = seed_patients(stack, t, [dr], 2)
    notes = {
        p: api.get(f"/v1/patients/{p}/notes", dr.token).get_json()["items"][0]["id"] for p in (a, b)
    }
    assert api.get(f"/v1/notes/{notes[a]}", dr.token).status_code == 200
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE principals SET release_per_hour = 1 WHERE id = %s", (dr.id,))
    r = api.get(f"/v1/notes/{notes[b]}", dr.token, headers={"X-Request-Id": "after-lowering"})
    assert r.status_code == 429
    assert _records(db_url, "after-lowering") == [("note.read", "throttled")]
    assert api.get(f"/v1/notes/{notes[a]}", dr.token).status_code == 200  # released this hour


def test_a_suspension_by_sql_is_audited_and_refused_on_the_next_read(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    note = stack.note(dr, stack.patient_for(t, dr))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE principals SET suspended_at = now(), suspended_reason = 'ops' WHERE id = %s",
            (dr.id,),
        )
    r = api.get(f"/v1/notes/{note['id']}", dr.token, headers={"X-Request-Id": "suspended-sql"})
    assert r.status_code == 403
    assert r.get_json()["type"].endswith("/account-suspended")
    assert _records(db_url, "suspended-sql") == [("request", "denied")]


def test_a_missing_note_with_a_revoked_token_answers_401_and_records_nothing_for_it(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    """The confirmation comes first: a revoked token does not learn whether a note
    exists, and no denial is recorded in its account's name."""
    t = stack.tenant()
    dr = stack.clinician(t)
    note = stack.note(dr, stack.patient_for(t, dr))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE tokens SET revoked_at = now() WHERE principal_id = %s", (dr.id,))
    missing = "00000000-0000-4000-8000-000000000001"
    r = api.get(f"/v1/notes/{missing}", dr.token, headers={"X-Request-Id": "revoked-missing"})
    assert r.status_code == 401
    assert _records(db_url, "revoked-missing") == []


def test_a_remembered_read_is_released_and_recorded_like_any_other(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    note = stack.note(dr, stack.patient_for(t, dr), body="remembered body")
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    r = api.get(f"/v1/notes/{note['id']}", dr.token, headers={"X-Request-Id": "remembered"})
    assert r.status_code == 200 and r.get_json()["body"] == "remembered body"
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT principal_id::text, action, outcome FROM audit_events"
            " WHERE request_id = 'remembered'"
        ).fetchone()
    assert row == (dr.id, "note.read", "granted")


def _notes_of(db_url: str, patient_id: str) -> int:
    with psycopg.connect(db_url) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM notes WHERE patient_id = %s", (patient_id,)
        ).fetchone()
    return int(n)


def test_a_remembered_create_is_refused_once_the_token_is_revoked_elsewhere(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    """Creates use the remembered caller too; the gate's first read confirms it before
    anything is written (no note, no record in the account's name)."""
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    stack.note(dr, pid)  # remembered from here on
    body = {"kind": "progress", "title": "t", "body": "second"}
    assert api.post(f"/v1/patients/{pid}/notes", dr.token, body).status_code == 201
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE tokens SET revoked_at = now() WHERE principal_id = %s", (dr.id,))
    r = api.post(
        f"/v1/patients/{pid}/notes", dr.token, body, headers={"X-Request-Id": "create-revoked"}
    )
    assert r.status_code == 401
    assert _notes_of(db_url, pid) == 2
    assert _records(db_url, "create-revoked") == []


def test_a_remembered_create_after_a_suspension_by_sql_is_refused_and_audited(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    stack.note(dr, pid)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE principals SET suspended_at = now(), suspended_reason = 'ops' WHERE id = %s",
            (dr.id,),
        )
    body = {"kind": "progress", "body": "after suspension"}
    r = api.post(
        f"/v1/patients/{pid}/notes", dr.token, body, headers={"X-Request-Id": "create-suspended"}
    )
    assert r.status_code == 403
    assert _notes_of(db_url, pid) == 1
    assert _records(db_url, "create-suspended") == [("request", "denied")]
