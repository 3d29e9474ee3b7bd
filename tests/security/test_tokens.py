"""P14: tokens are stored hashed, expire, can be revoked; suspension takes effect at once."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import psycopg
from flask import Flask

from service.clock import ManualClock
from service.models import Role
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper


def test_tokens_are_stored_only_as_hashes(stack: StackHelper, db_url: str) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT token_hash FROM tokens").fetchall()
        dump = str(conn.execute("SELECT * FROM tokens").fetchall())
    assert hashlib.sha256(dr.token.encode()).digest() in {bytes(r[0]) for r in rows}
    assert dr.token not in dump and dr.token.encode().hex() not in dump


def test_tokens_expire(make_app: AppFactory) -> None:
    clock = ManualClock()
    app = make_app(clock=clock)
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    issued = app.extensions["sealednotes"].principals.create_principal(
        t.name, "short-lived", Role.CLINICIAN, ttl_days=1
    )
    assert api.get("/v1/me", issued.token).status_code == 200
    clock.advance(timedelta(days=1, seconds=1))
    r = api.get("/v1/me", issued.token)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_tokens_are_refused_and_new_tokens_work(
    api: Api, stack: StackHelper, app: Flask
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    principals = app.extensions["sealednotes"].principals
    assert api.get("/v1/me", dr.token).status_code == 200
    assert principals.revoke_tokens(dr.id) == 1
    assert api.get("/v1/me", dr.token).status_code == 401
    fresh = principals.issue_token(dr.id)
    assert api.get("/v1/me", fresh.token).status_code == 200


def test_unknown_and_malformed_tokens(api: Api) -> None:
    for header in (None, "Bearer", "Basic abc", "Bearer snt_" + "x" * 43, "Bearer " + "x" * 500):
        headers = {"Authorization": header} if header else {}
        r = api.get("/v1/me", headers=headers)
        assert r.status_code == 401
        assert r.content_type == "application/problem+json"


def test_suspended_principal_is_refused_on_next_request(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid)
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    app.extensions["sealednotes"].principals.suspend(dr.id, "suspected hijack")
    r = api.get(f"/v1/notes/{note['id']}", dr.token, headers={"X-Request-Id": "after-suspend"})
    assert r.status_code == 403
    assert r.get_json()["type"].endswith("/account-suspended")
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT outcome FROM audit_events WHERE request_id = 'after-suspend'"
        ).fetchone()
    assert row == ("denied",)
