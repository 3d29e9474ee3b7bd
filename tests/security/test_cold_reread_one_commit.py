"""P6/P7 on a remembered caller's cold re-read: when the worker knows the note's patient
and holds no live key of it (the key left its cache), the read's statement only
confirms the caller, and the gate records the grant with `key.unwrap` once Vault has
answered: one commit for both. The worker's knowledge is a hint: it never skips a
check, and a read it gets wrong is recorded as before."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask import Flask

from crypto import DecryptionError
from service.errors import KeyServiceThrottled, KeyServiceUnavailable
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper, request_records, seed_patients

COLUMNS = "action, outcome, reason, xmin::text"


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    # Keys live 0 s in the worker's cache: every read calls Vault, as one does once
    # the key has expired (60 s at most).
    return make_app(key_cache_ttl=0.0)


@pytest.fixture
def read_once(api: Api, stack: StackHelper) -> dict[str, Any]:
    """A clinician who has read a note of its patient once: released this hour, the
    caller remembered, the note's patient known to the worker."""
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1)
    note = api.get(f"/v1/patients/{pid}/notes", dr.token).get_json()["items"][0]["id"]
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200
    return {"dr": dr, "note": note}


def _read(api: Api, read_once: dict[str, Any], request_id: str) -> Any:
    return api.get(
        f"/v1/notes/{read_once['note']}",
        read_once["dr"].token,
        headers={"X-Request-Id": request_id},
    )


def test_the_grant_and_the_unwrap_are_recorded_in_one_commit(
    api: Api, read_once: dict[str, Any], db_url: str
):
    r = _read(api, read_once, "cold")
    assert r.status_code == 200 and r.get_json()["body"]
    records = request_records(db_url, "cold", COLUMNS)
    assert sorted(x[:3] for x in records) == [
        ("key.unwrap", "granted", "read"),
        ("note.read", "granted", None),
    ]
    assert len({x[3] for x in records}) == 1  # one transaction wrote both


def test_a_worker_that_does_not_know_the_note_records_the_grant_first(
    app: Flask, api: Api, read_once: dict[str, Any], db_url: str
):
    """The other path, unchanged: a worker that has forgotten the note's patient lets
    the statement commit the grant, then `key.unwrap` follows in a second commit."""
    app.extensions["sealednotes"].cache.clear()
    assert _read(api, read_once, "forgotten").status_code == 200
    records = request_records(db_url, "forgotten", COLUMNS)
    assert [x[:3] for x in records] == [
        ("note.read", "granted", None),
        ("key.unwrap", "granted", "read"),
    ]
    assert len({x[3] for x in records}) == 2


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        (KeyServiceUnavailable, 503, "key-service-unavailable"),
        (KeyServiceThrottled, 503, "vault-unwrap-quota"),
        (DecryptionError, 500, "integrity-failure"),  # a tampered wrapped key
    ],
)
def test_a_failed_unwrap_is_recorded_as_unavailable_and_never_as_granted(
    app: Flask,
    api: Api,
    read_once: dict[str, Any],
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    failure: type[Exception],
    status: int,
    reason: str,
):
    """Nothing was released, so nothing says it was; the attempt is on record."""
    svc = app.extensions["sealednotes"]

    def refuse(*_args: Any, **_kwargs: Any) -> bytes:
        raise failure()

    monkeypatch.setattr(svc.keys, "unwrap", refuse)
    r = _read(api, read_once, "vault-down")
    assert r.status_code == status and "body" not in r.get_json()
    assert request_records(db_url, "vault-down") == [("note.read", "unavailable", reason)]


_CHANGES = {
    "suspended": "UPDATE principals SET suspended_at = now(), suspended_reason = 'test'"
    " WHERE id = %(p)s",
    "revoked": "UPDATE tokens SET revoked_at = now() WHERE principal_id = %(p)s",
    "off-care-team": "DELETE FROM care_team WHERE principal_id = %(p)s",
}


@pytest.mark.parametrize(
    ("change", "status"), [("suspended", 403), ("revoked", 401), ("off-care-team", 404)]
)
def test_a_change_by_sql_still_stops_the_next_read(
    api: Api, read_once: dict[str, Any], db_url: str, change: str, status: int
):
    """The statement that leaves the record to the gate still confirms the account and
    its token, and the gate still checks the care team."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(_CHANGES[change], {"p": read_once["dr"].id})
    r = _read(api, read_once, change)
    assert r.status_code == status
    assert "body" not in r.get_json()
    assert not [x for x in request_records(db_url, change) if x[1] == "granted"]
