"""Incremental verification of the access log: it reads only the records since the
last checkpoint a verification found intact, still finds any change after that
checkpoint (and to its head records), ignores verification records it cannot
trust, and never reads more than its limit inside a request. What it cannot see
(an old record changed after it was verified) a full verification does."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask import Flask

from service.models import Role
from tests.helpers import Api, StackHelper, seed_patients
from tests.security.audit_log import superuser


def traffic(api: Api, stack: StackHelper, rounds: int = 1) -> dict[str, Any]:
    t = stack.tenant()
    drs = [stack.clinician(t), stack.clinician(t)]
    patients = seed_patients(stack, t, drs, 4)
    for _ in range(rounds):
        for dr in drs:
            for p in patients:
                assert (
                    api.get(f"/v1/patients/{p}/notes?include=content", dr.token).status_code == 200
                )
    return {"tenant": t, "drs": drs, "patients": patients}


@pytest.fixture
def verified(api: Api, stack: StackHelper, app: Flask) -> dict[str, Any]:
    """A log verified in full up to checkpoint 1, then more traffic and checkpoint 2."""
    svc = app.extensions["sealednotes"].audit_service
    first = traffic(api, stack)
    cp1 = svc.checkpoint()
    assert svc.verify().ok  # full, recorded as verified up to checkpoint 1
    traffic(api, stack)
    cp2 = svc.checkpoint()
    return {"svc": svc, "cp1": cp1, "cp2": cp2, "first": first}


def records_after(db_url: str, heads: dict[int, int]) -> int:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT shard, seq FROM audit_events").fetchall()
    return sum(1 for shard, seq in rows if seq > heads.get(shard, 0))


def first_record(db_url: str, heads: dict[int, int], *, after: bool) -> int:
    """The first record after (or before) the heads of its shard."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT id, shard, seq FROM audit_events ORDER BY id").fetchall()
    return next(
        rid
        for rid, shard, seq in rows
        if (seq > heads.get(shard, 0) if after else seq < heads.get(shard, 0))
    )


def heads_of(checkpoint: dict[str, Any]) -> dict[int, int]:
    from service.audit import chain as auditchain

    return {s: seq for s, (seq, _h) in auditchain.parse_payload(checkpoint["payload"]).items()}


def test_it_reads_only_the_records_after_the_verified_checkpoint(
    verified: dict[str, Any], db_url: str
) -> None:
    report = verified["svc"].verify(full=False)
    assert report.ok, report.problems
    assert (report.mode, report.from_checkpoint) == ("incremental", verified["cp1"]["id"])
    assert report.checked == records_after(db_url, heads_of(verified["cp1"]))
    with psycopg.connect(db_url) as conn:
        total = conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    assert report.checked < total
    # Recorded: the next one starts at checkpoint 2 and reads almost nothing.
    again = verified["svc"].verify(full=False)
    assert again.from_checkpoint == verified["cp2"]["id"]
    assert again.checked == records_after(db_url, heads_of(verified["cp2"]))


def test_a_change_after_the_verified_checkpoint_is_found(
    verified: dict[str, Any], db_url: str
) -> None:
    heads = heads_of(verified["cp1"])
    victim = first_record(db_url, heads, after=True)
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET reason = 'forged' WHERE id = %s", (victim,))
    report = verified["svc"].verify(full=False)
    assert report.mode == "incremental" and not report.ok
    assert report.first_bad["record_id"] == victim
    assert report.first_bad["kind"] == "hash-mismatch"


def test_a_rewritten_or_deleted_head_of_the_verified_checkpoint_is_found(
    verified: dict[str, Any], db_url: str
) -> None:
    shard, seq = next(iter(heads_of(verified["cp1"]).items()))
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET hash = sha256(hash) WHERE shard = %s AND seq = %s",
            (shard, seq),
        )
    report = verified["svc"].verify(full=False)
    assert not report.ok
    assert {p["kind"] for p in report.problems} >= {"checkpoint-mismatch"}
    with superuser(db_url) as conn:
        conn.execute("DELETE FROM audit_events WHERE shard = %s AND seq >= %s", (shard, seq))
    report = verified["svc"].verify(full=False)
    assert not report.ok


def test_a_record_numbered_below_1_is_found_though_it_sorts_before_the_verified_head(
    verified: dict[str, Any], db_url: str
) -> None:
    # The table has no CHECK on seq (migration 0030): only the owner or a superuser can
    # insert, and verify must see such a row even when it starts past the heads.
    shard = next(iter(heads_of(verified["cp1"])))
    with superuser(db_url) as conn:
        conn.execute(
            "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
            " VALUES (%s, 0, %s, %s, now(), 'note.read', 'granted')",
            (shard, b"\0" * 32, b"\1" * 32),
        )
    try:
        report = verified["svc"].verify(full=False)
        assert report.mode == "incremental" and not report.ok
        assert ("out-of-order", shard, 0) in {
            (p["kind"], p["shard"], p["seq"]) for p in report.problems
        }
    finally:
        with superuser(db_url) as conn:
            conn.execute("DELETE FROM audit_events WHERE seq = 0")


def test_a_verification_record_without_a_valid_signature_is_ignored(
    verified: dict[str, Any], db_url: str
) -> None:
    """A DBA who forges "verified up to checkpoint 2" (to hide a change made before it)
    gains nothing: the record's signature does not hold, so verification starts at
    the last genuine one."""
    cp2 = verified["cp2"]
    heads = heads_of(verified["cp1"])
    victim = first_record(db_url, heads, after=True)
    from service.audit import chain as auditchain

    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET reason = 'forged' WHERE id = %s", (victim,))
        forged = auditchain.verification_payload(
            cp2["id"],
            cp2["payload"],
            1,
            __import__("datetime").datetime.now(__import__("datetime").UTC),
        )
        conn.execute(
            "INSERT INTO audit_verifications (checkpoint_id, verified_at, checked, payload,"
            " signature) VALUES (%s, now(), 1, %s, %s)",
            (cp2["id"], forged, cp2["signature"]),  # a real signature, of something else
        )
    report = verified["svc"].verify(full=False)
    assert report.from_checkpoint == verified["cp1"]["id"]
    assert not report.ok and report.first_bad["record_id"] == victim


def test_what_incremental_cannot_see_a_full_verification_does(
    verified: dict[str, Any], db_url: str
) -> None:
    heads = heads_of(verified["cp1"])
    old = first_record(db_url, heads, after=False)
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET reason = 'forged' WHERE id = %s", (old,))
    assert verified["svc"].verify(full=False).ok  # before the verified head: not read
    full = verified["svc"].verify(full=True)
    assert not full.ok and full.first_bad["record_id"] == old


def test_the_service_role_cannot_rewrite_verification_records(
    verified: dict[str, Any], app_db_url: str
) -> None:
    with psycopg.connect(app_db_url) as conn:
        for statement in (
            "UPDATE audit_verifications SET checked = 0",
            "DELETE FROM audit_verifications",
            "TRUNCATE audit_verifications",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()


def test_an_auditor_request_never_reads_more_than_its_limit(make_app: Any, db_url: str) -> None:
    app = make_app(audit_verify_request_limit=40)
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    svc = app.extensions["sealednotes"].audit_service
    data = traffic(api, stack, rounds=3)
    auditor = stack.principal(data["tenant"], Role.AUDITOR)
    r = api.get("/v1/audit/verify", auditor.token)
    assert r.status_code == 503, r.get_json()  # more than 40 records, none verified yet
    assert r.get_json()["type"].endswith("/audit-verification-backlog")
    assert r.headers["Retry-After"]
    svc.checkpoint()
    assert svc.verify().ok  # the background verification (or an operator) catches up
    api.get(f"/v1/patients/{data['patients'][0]}/notes?include=content", data["drs"][0].token)
    r = api.get("/v1/audit/verify", auditor.token)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["ok"] and body["mode"] == "incremental" and body["from_checkpoint"] is None


def test_the_checkpointer_verifies_what_it_signed(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    traffic(api, stack)
    services = app.extensions["sealednotes"]
    assert services.checkpointer.tick()  # signs a checkpoint, then verifies up to it
    with psycopg.connect(db_url) as conn:
        verified = conn.execute("SELECT max(checkpoint_id) FROM audit_verifications").fetchone()
        latest = conn.execute("SELECT max(id) FROM audit_checkpoints").fetchone()
    assert verified == latest
    traffic(api, stack)
    report = services.audit_service.verify(full=False)
    assert report.ok and report.from_checkpoint == latest[0]
