"""P6/P7 on the one-round-trip warm read: for a remembered caller, the statement that
reads the gate's snapshot also records the grant when the read is a warm re-read
(care team, released to this account within the hour). Every other state must leave
the decision, and its one record, to the gate: never a grant recorded for a read the
gate refuses, never two records for one read."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask import Flask

from service.access.authentication import hash_token
from service.access.caller import Caller
from service.errors import KeyServiceThrottled, KeyServiceUnavailable
from service.models import Confirmation
from tests.helpers import Api, StackHelper, request_records, seed_patients


def _records(db_url: str, request_id: str) -> list[tuple[Any, ...]]:
    return request_records(db_url, request_id)


@pytest.fixture
def warm(api: Api, stack: StackHelper) -> dict[str, Any]:
    """A clinician who has read a note of its patient once (released this hour, caller
    remembered), and a second patient on its care team it has not read yet."""
    t = stack.tenant()
    dr = stack.clinician(t)
    first, second = seed_patients(stack, t, [dr], 2)
    notes = {
        p: api.get(f"/v1/patients/{p}/notes", dr.token).get_json()["items"][0]["id"]
        for p in (first, second)
    }
    assert api.get(f"/v1/notes/{notes[first]}", dr.token).status_code == 200
    return {"t": t, "dr": dr, "pid": first, "note": notes[first], "unread": notes[second]}


def _read(api: Api, warm: dict[str, Any], request_id: str, note: str | None = None) -> int:
    r = api.get(
        f"/v1/notes/{note or warm['note']}", warm["dr"].token, headers={"X-Request-Id": request_id}
    )
    return r.status_code


def test_a_warm_reread_has_exactly_one_record(api: Api, warm: dict[str, Any], db_url: str):
    assert _read(api, warm, "warm-1") == 200
    assert _records(db_url, "warm-1") == [("note.read", "granted", None)]


def test_a_new_patient_is_charged_and_recorded_once_by_the_gate(
    api: Api, warm: dict[str, Any], db_url: str
):
    assert _read(api, warm, "new-patient", warm["unread"]) == 200
    reads = [r for r in _records(db_url, "new-patient") if r[0] == "note.read"]
    assert reads == [("note.read", "granted", None)]
    with psycopg.connect(db_url) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM key_releases WHERE principal_id = %s", (warm["dr"].id,)
        ).fetchone()
    assert n == 2  # the new patient was charged: the statement did not record it


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ("UPDATE patients SET is_decoy = true WHERE id = %(pid)s", 403, "decoy-patient"),
        ("UPDATE patients SET shredded_at = now() WHERE id = %(pid)s", 410, "patient-shredded"),
        ("DELETE FROM care_team WHERE patient_id = %(pid)s", 404, "not-on-care-team"),
        (
            "UPDATE care_team SET until = now() - interval '1 second' WHERE patient_id = %(pid)s",
            404,
            "not-on-care-team",
        ),
    ],
    ids=["decoy", "shredded", "removed-from-care-team", "care-team-ended"],
)
def test_a_refused_reread_is_recorded_only_as_refused(
    api: Api, warm: dict[str, Any], db_url: str, change: str, status: int, reason: str
):
    with psycopg.connect(db_url) as conn:
        conn.execute(change, {"pid": warm["pid"]})
    assert _read(api, warm, "refused") == status
    records = _records(db_url, "refused")
    assert ("note.read", "denied", reason) in records
    assert ("note.read", "granted", None) not in records


def test_a_break_glass_reread_is_left_to_the_gate(
    api: Api, stack: StackHelper, warm: dict[str, Any], db_url: str
):
    outsider = stack.patient(warm["t"])
    body = {"reason": "Unconscious patient in the emergency department"}
    dr = warm["dr"]
    assert api.post(f"/v1/patients/{outsider}/break-glass", dr.token, body).status_code == 201
    note = stack.note(dr, outsider)
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200
    assert _read(api, warm, "glass-again", note["id"]) == 200
    assert _records(db_url, "glass-again") == [("note.read", "granted", "break-glass")]


def test_the_statement_records_only_a_warm_reread_of_the_remembered_account(
    app: Flask, warm: dict[str, Any], db_url: str
):
    """At the adapter: `recorded` for the warm re-read, not for a stale account, a
    revoked token or another account's token."""
    svc = app.extensions["sealednotes"]
    dr = warm["dr"]
    digest = hash_token(dr.token)
    with svc.store.autocommit() as tx:
        principal = tx.principals.principal(dr.id)
    assert principal is not None
    caller = Caller(principal, "adapter-check", "127.0.0.1")

    def recorded(confirm: Confirmation, note: str | None = None) -> bool:
        with svc.store.transaction() as tx:
            found = tx.ledger.note_gate_snapshot(
                principal.id,
                principal.tenant_id,
                note or warm["note"],
                svc.clock.now(),
                confirm=confirm,
            )
        return found.recorded

    fresh = Confirmation(digest, principal, caller.request_id, caller.client_addr)
    with svc.store.transaction() as tx:  # inside a transaction: confirmed, never recorded
        tx.ledger.lock_tenant_budget(principal.tenant_id)
        found = tx.ledger.note_gate_snapshot(
            principal.id, principal.tenant_id, warm["note"], svc.clock.now(), confirm=fresh
        )
    assert found.gate.token_valid and found.gate.principal == principal and not found.recorded
    assert recorded(fresh)
    assert not recorded(fresh, warm["unread"])  # not released this hour
    stale = Confirmation(
        digest, principal.__class__(**{**_fields(principal), "name": "x"}), "adapter-check", None
    )
    assert not recorded(stale)
    other = Confirmation(hash_token("snt_" + "b" * 43), principal, "adapter-check", None)
    assert not recorded(other)
    with psycopg.connect(db_url) as conn:  # suspended, its other columns unchanged
        conn.execute("UPDATE principals SET suspended_at = now() WHERE id = %s", (dr.id,))
    assert not recorded(fresh)
    assert [r for r in _records(db_url, "adapter-check")] == [("note.read", "granted", None)]


def _fields(principal: Any) -> dict[str, Any]:
    return {f: getattr(principal, f) for f in principal.__slots__}


@pytest.mark.parametrize(
    "change",
    [
        "release_per_hour = 7",
        "release_per_day = 9",
        "name = name || '-renamed'",
        "denials_since = now()",
        "suspended_reason = 'kept from an earlier suspension'",
    ],
)
def test_an_account_changed_elsewhere_rereads_through_the_gate_once(
    api: Api, warm: dict[str, Any], db_url: str, change: str
):
    """The statement compares every column of the remembered account: any change sends
    the read back through authentication and the gate, which record it once."""
    with psycopg.connect(db_url) as conn:
        conn.execute(f"UPDATE principals SET {change} WHERE id = %s", (warm["dr"].id,))
    assert _read(api, warm, "changed") == 200
    assert _records(db_url, "changed") == [("note.read", "granted", None)]


@pytest.mark.parametrize("failure", [KeyServiceThrottled, KeyServiceUnavailable])
def test_a_key_service_failure_after_a_recorded_grant_is_recorded_too(
    app: Flask,
    api: Api,
    warm: dict[str, Any],
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    failure: type[Exception],
):
    """The statement records the grant before the key is unwrapped; when the key has
    left the worker's cache (60 s) and Vault then fails, the log must not show the grant
    alone: an `unavailable` record of the same request says nothing was returned."""
    svc = app.extensions["sealednotes"]
    svc.cache.clear()

    def refuse(*_args: Any, **_kwargs: Any) -> bytes:
        raise failure()

    monkeypatch.setattr(svc.keys, "unwrap", refuse)
    r = api.get(f"/v1/notes/{warm['note']}", warm["dr"].token, headers={"X-Request-Id": "vault"})
    assert r.status_code == 503 and "body" not in r.get_json()
    records = _records(db_url, "vault")
    assert records[0] == ("note.read", "granted", None)
    assert [x[1] for x in records[1:]] == ["unavailable"]


def test_fhir_read_refuses_an_unknown_token_before_its_parameters(api: Api):
    """An unauthenticated caller learns nothing about the request's other checks."""
    r = api.get(
        "/fhir/R4/DocumentReference/00000000-0000-4000-8000-000000000001?foo=1",
        headers={"Authorization": "Bearer snt_" + "c" * 43},
    )
    assert r.status_code == 401
