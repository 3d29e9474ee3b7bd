"""P8: the access log is append-only for the app, fails closed (no read without its record),
carries no health data, and serves auditors, and only auditors, who learn whether it is intact
but not where it is not."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from fhirclient.models.auditevent import AuditEvent
from flask import Flask

from service.cli import main as cli
from service.models import Role
from tests.helpers import Api, StackHelper
from tests.security.audit_log import cli_env, longest_shard, superuser


def test_app_role_cannot_update_delete_or_truncate(app_db_url: str, busy_log: Any) -> None:
    for statement in (
        "UPDATE audit_events SET outcome = 'granted'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "UPDATE audit_checkpoints SET signature = 'x'",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
    ):
        with (
            psycopg.connect(app_db_url) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement)
    with psycopg.connect(app_db_url) as conn:  # while reading and appending are allowed
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] > 0


@pytest.fixture
def revoked_insert(db_url: str) -> Iterator[None]:
    from tests.conftest import APP_ROLE

    # Both ways in: one record at a time, and group commit's batches.
    with psycopg.connect(db_url, autocommit=True) as conn:
        for fn in APPEND_FNS:
            conn.execute(f"REVOKE EXECUTE ON FUNCTION {fn} FROM {APP_ROLE}")
    try:
        yield
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for fn in APPEND_FNS:
                conn.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {APP_ROLE}")


APPEND_FNS = (
    "sealednotes_audit_append(integer, uuid, uuid, text, uuid, uuid, text, text, text, text, text)",
    "sealednotes_audit_append_batch(integer, uuid[], uuid[], text[], uuid[], uuid[], text[],"
    " text[], text[], text[], text[])",
)


def test_reads_fail_closed_when_the_audit_record_cannot_be_written(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="unaudited reads must not happen")
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200  # warm the key cache
    from tests.conftest import APP_ROLE

    with psycopg.connect(db_url, autocommit=True) as conn:
        for fn in APPEND_FNS:
            conn.execute(f"REVOKE EXECUTE ON FUNCTION {fn} FROM {APP_ROLE}")
    try:
        for path in (
            f"/v1/notes/{note['id']}",
            f"/v1/notes/{note['id']}/versions",
            f"/v1/patients/{pid}/notes?include=content",
        ):
            r = api.get(path, dr.token)
            assert r.status_code == 503, path
            assert r.headers["Retry-After"]
            assert r.get_json()["type"].endswith("/audit-unavailable")
            assert "unaudited" not in r.get_data(as_text=True)
        r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "other", "body": "x"})
        assert r.status_code == 503
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for fn in APPEND_FNS:
                conn.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {APP_ROLE}")
    with psycopg.connect(db_url) as conn:  # the failed write left nothing behind
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200


def test_auditor_api_export_and_no_health_data(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    t = stack.tenant()
    dr, other = stack.clinician(t), stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    canaries = [f"CANARY-{secrets.token_hex(6)}" for _ in range(3)]
    pid = stack.patient_for(t, dr, external_id=canaries[0])
    note = stack.note(dr, pid, title=canaries[1], body=canaries[2])
    api.get(f"/v1/notes/{note['id']}", dr.token)
    api.get(f"/v1/notes/{note['id']}", other.token)  # denied: not on the care team
    reason = "Covering colleague's ward, patient deteriorating"
    api.post(f"/v1/patients/{pid}/break-glass", other.token, {"reason": reason})
    api.get(f"/v1/notes/{note['id']}", other.token)

    # Who accessed this patient? (a patient's access request)
    r = api.get(f"/v1/audit/events?patient_id={pid}", auditor.token)
    assert r.status_code == 200
    items = r.get_json()["items"]
    seen = {(i["principal_id"], i["action"], i["outcome"], i["reason"]) for i in items}
    assert (dr.id, "note.read", "granted", None) in seen
    assert (other.id, "note.read", "denied", "not-on-care-team") in seen
    assert (other.id, "break-glass", "granted", reason) in seen
    assert (other.id, "note.read", "granted", "break-glass") in seen
    r = api.get(f"/v1/audit/events?patient_id={pid}&outcome=denied", auditor.token)
    assert {i["outcome"] for i in r.get_json()["items"]} == {"denied"}
    # Pagination walks every record once.
    ids, cursor = [], None
    while True:
        r = api.get(
            "/v1/audit/events?limit=3" + (f"&cursor={cursor}" if cursor else ""), auditor.token
        )
        ids += [i["id"] for i in r.get_json()["items"]]
        cursor = r.get_json()["next_cursor"]
        if not cursor:
            break
    assert ids == sorted(set(ids)) and len(ids) >= 8
    assert api.get("/v1/audit/verify", auditor.token).get_json()["ok"] is True

    for who in (dr, t.admin, t.integration):
        assert api.get("/v1/audit/events", who.token).status_code == 403
        assert api.get("/v1/audit/verify", who.token).status_code == 403
    assert api.get(f"/v1/notes/{note['id']}", auditor.token).status_code == 403

    runner = CliRunner()
    env = cli_env(app.extensions["sealednotes"].settings)
    jsonl = runner.invoke(
        cli, ["audit", "export", "--format", "jsonl", "--tenant", t.name], env=env
    )
    fhir = runner.invoke(cli, ["audit", "export", "--format", "fhir"], env=env)
    assert jsonl.exit_code == 0 and fhir.exit_code == 0, (jsonl.output, fhir.output)
    lines = [json.loads(x) for x in jsonl.stdout.splitlines()]
    resources = [json.loads(x) for x in fhir.stdout.splitlines()]
    assert len(lines) >= 8 and len(resources) >= len(lines)
    for res in resources:
        AuditEvent(res, strict=True)  # valid against the R4 AuditEvent structure
    assert any(
        e.get("what", {}).get("reference") == f"Patient/{pid}"
        for res in resources
        for e in res.get("entity", [])
    )
    assert any(res.get("purposeOfEvent") for res in resources)  # break-glass marked BTG

    with psycopg.connect(db_url) as conn:
        table = str(conn.execute("SELECT * FROM audit_events").fetchall())
    for c in canaries:
        for text in (table, jsonl.stdout, fhir.stdout):
            assert c not in text


def test_api_verify_tells_auditors_whether_not_where(
    busy_log: dict[str, Any], api: Api, stack: StackHelper, db_url: str
) -> None:
    auditor = stack.principal(busy_log["tenant"], Role.AUDITOR)
    _, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET reason = 'forged' WHERE id = %s", (rows[1][1],))
    report = api.get("/v1/audit/verify", auditor.token).get_json()
    assert report["ok"] is False
    assert report["first_bad"]["kind"] == "hash-mismatch"
    # The chains span tenants: no record location is disclosed through the API.
    assert report["first_bad"]["record_id"] is None and report["first_bad"]["shard"] is None
    assert all(p["record_id"] is None for p in report["problems"])
