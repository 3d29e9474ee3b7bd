"""P8: the access log is append-only for the app, tamper-evident against a superuser,
fails closed, carries no health data, and serves auditors (and only auditors)."""

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

from service.audit import chain as auditchain
from service.cli import main as cli
from service.config import Settings
from service.models import Role
from tests.helpers import Api, StackHelper, seed_patients


def superuser(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("SET session_replication_role = replica")  # bypass the append-only triggers
    return conn


def verify(app: Flask) -> dict[str, Any]:
    report: dict[str, Any] = app.extensions["sealednotes"].audit_service.verify().as_dict()
    return report


@pytest.fixture
def busy_log(api: Api, stack: StackHelper, app: Flask) -> dict[str, Any]:
    """Some real traffic from two clinicians, then a signed checkpoint."""
    t = stack.tenant()
    drs = [stack.clinician(t), stack.clinician(t)]
    patients = seed_patients(stack, t, drs, 6)
    for dr in drs:
        for p in patients:
            api.get(f"/v1/patients/{p}/notes?include=content", dr.token)
    api.get(f"/v1/patients/{patients[0]}/notes", t.integration.token)  # a denial
    svc = app.extensions["sealednotes"].audit_service
    svc.checkpoint()
    report = verify(app)
    assert report["ok"], report["problems"]
    assert report["checked"] > 30 and report["checkpoints"] == 1
    return {"tenant": t, "drs": drs, "patients": patients}


def shard_rows(db_url: str) -> dict[int, list[tuple[int, int]]]:
    """shard -> [(seq, id), ...] in chain order."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT shard, seq, id FROM audit_events ORDER BY shard, seq"
        ).fetchall()
    out: dict[int, list[tuple[int, int]]] = {}
    for shard, seq, rid in rows:
        out.setdefault(shard, []).append((seq, rid))
    return out


def longest_shard(db_url: str) -> tuple[int, list[tuple[int, int]]]:
    shard, rows = max(shard_rows(db_url).items(), key=lambda kv: len(kv[1]))
    assert len(rows) >= 5
    return shard, rows


def test_changed_field_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    _, rows = longest_shard(db_url)
    victim = rows[2][1]
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET outcome = 'granted', reason = 'forged-by-dba' WHERE id = %s",
            (victim,),
        )
    report = verify(app)
    assert not report["ok"]
    assert report["first_bad"]["record_id"] == victim
    assert report["first_bad"]["kind"] == "hash-mismatch"


def test_deleted_record_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    _, rows = longest_shard(db_url)
    victim, successor = rows[2][1], rows[3][1]
    with superuser(db_url) as conn:
        conn.execute("DELETE FROM audit_events WHERE id = %s", (victim,))
    report = verify(app)
    assert not report["ok"]
    assert report["first_bad"]["record_id"] == successor
    assert report["first_bad"]["kind"] == "missing-records"


def test_inserted_record_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    shard, rows = longest_shard(db_url)
    k = rows[2][0]  # insert a forged record at position k, renumbering the rest
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET seq = seq + 1000000 WHERE shard = %s AND seq >= %s",
            (shard, k),
        )
        conn.execute(
            "UPDATE audit_events SET seq = seq - 999999 WHERE shard = %s AND seq > 1000000",
            (shard,),
        )
        prev = conn.execute(
            "SELECT hash, at FROM audit_events WHERE shard = %s AND seq = %s", (shard, k - 1)
        ).fetchone()
        fields = {"action": "note.read", "outcome": "granted", "reason": None}
        forged_hash = auditchain.link(prev[0], shard, k, prev[1], fields)  # a well-formed fake
        forged = conn.execute(
            "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
            " VALUES (%s, %s, %s, %s, %s, 'note.read', 'granted') RETURNING id",
            (shard, k, prev[0], forged_hash, prev[1]),
        ).fetchone()[0]
    report = verify(app)
    assert not report["ok"]
    bad = report["first_bad"]
    # The chain breaks right after the forged record, and the report names it.
    assert bad["seq"] == k + 1 and bad["shard"] == shard
    assert f"previous record id {forged}" in bad["detail"]


def test_reordered_records_are_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    _shard, rows = longest_shard(db_url)
    (s1, id1), (s2, id2) = rows[1], rows[2]
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET seq = 9999999 WHERE id = %s", (id1,))
        conn.execute("UPDATE audit_events SET seq = %s WHERE id = %s", (s1, id2))
        conn.execute("UPDATE audit_events SET seq = %s WHERE id = %s", (s2, id1))
    report = verify(app)
    assert not report["ok"]
    assert report["first_bad"]["record_id"] in (id1, id2)
    assert report["first_bad"]["kind"] in ("broken-link", "hash-mismatch", "time-regression")


def test_truncated_tail_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    shard, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute("DELETE FROM audit_events WHERE shard = %s AND seq > %s", (shard, rows[-3][0]))
    report = verify(app)
    assert not report["ok"]
    kinds = {p["kind"] for p in report["problems"]}
    assert kinds == {"truncated"}
    assert report["first_bad"]["shard"] == shard
    assert report["first_bad"]["record_id"] == rows[-3][1]  # the last record left


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(
    busy_log: dict[str, Any], app: Flask, db_url: str
) -> None:
    """An attacker who recomputes every hash after a change still fails the checkpoint."""
    shard, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET reason = 'forged-by-dba' WHERE id = %s", (rows[1][1],)
        )
        prev = auditchain.GENESIS
        for row in conn.execute(
            "SELECT * FROM audit_events WHERE shard = %s ORDER BY seq", (shard,)
        ).fetchall():
            cols = [d.name for d in conn.execute("SELECT * FROM audit_events LIMIT 0").description]
            r = dict(zip(cols, row, strict=True))
            h = auditchain.link(prev, shard, r["seq"], r["at"], r)
            conn.execute(
                "UPDATE audit_events SET prev_hash = %s, hash = %s WHERE id = %s",
                (prev, h, r["id"]),
            )
            prev = h
    report = verify(app)
    assert not report["ok"]
    assert {p["kind"] for p in report["problems"]} == {"checkpoint-mismatch"}
    assert report["problems"][0]["shard"] == shard


def test_forged_checkpoint_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_checkpoints SET payload = replace(payload, '\"total\":', '\"total\":1')"
        )
    report = verify(app)
    assert not report["ok"]
    assert report["problems"][0]["kind"] == "bad-checkpoint-signature"


def test_verify_100k_records(app: Flask, db_url: str) -> None:
    """A large untampered log verifies; the rate is printed for the closing note."""
    n = 100_000
    heads: dict[int, tuple[int, bytes]] = {}
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with (
        superuser(db_url) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY audit_events (shard, seq, prev_hash, hash, at, tenant_id, principal_id, role,"
            " patient_id, note_id, action, outcome, reason, request_id, client_addr) FROM STDIN"
        ) as copy,
    ):
        tenant, principal = "11111111-1111-4111-8111-111111111111", secrets.token_hex(4)
        for i in range(n):
            shard = i % auditchain.SHARDS
            seq, prev = heads.get(shard, (0, auditchain.GENESIS))
            at = t0 + timedelta(milliseconds=i)
            fields = {
                "tenant_id": tenant,
                "principal_id": None,
                "role": "clinician",
                "patient_id": None,
                "note_id": None,
                "action": "note.read",
                "outcome": "granted",
                "reason": principal,
                "request_id": f"r{i}",
                "client_addr": "127.0.0.1",
            }
            h = auditchain.link(prev, shard, seq + 1, at, fields)
            copy.write_row(
                (
                    shard,
                    seq + 1,
                    prev,
                    h,
                    at,
                    tenant,
                    None,
                    "clinician",
                    None,
                    None,
                    "note.read",
                    "granted",
                    principal,
                    f"r{i}",
                    "127.0.0.1",
                )
            )
            heads[shard] = (seq + 1, h)
    app.extensions["sealednotes"].audit_service.checkpoint()
    report = verify(app)
    assert report["ok"] and report["checked"] == n
    print(f"\naudit verify: {n} records at {report['records_per_second']} records/s")


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

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"REVOKE EXECUTE ON FUNCTION {APPEND_FN} FROM {APP_ROLE}")
    try:
        yield
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"GRANT EXECUTE ON FUNCTION {APPEND_FN} TO {APP_ROLE}")


APPEND_FN = (
    "sealednotes_audit_append(integer, uuid, uuid, text, uuid, uuid, text, text, text, text, text)"
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
        conn.execute(f"REVOKE EXECUTE ON FUNCTION {APPEND_FN} FROM {APP_ROLE}")
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
            conn.execute(f"GRANT EXECUTE ON FUNCTION {APPEND_FN} TO {APP_ROLE}")
    with psycopg.connect(db_url) as conn:  # the failed write left nothing behind
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SEALEDNOTES_DATABASE_URL": settings.database_url,
        "VAULT_ADDR": settings.vault_addr,
        "VAULT_TOKEN": settings.vault_token or "",
    }


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


def test_cli_verify_and_checkpoint(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    runner = CliRunner()
    env = cli_env(app.extensions["sealednotes"].settings)
    r = runner.invoke(cli, ["audit", "checkpoint", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["total"] > 0
    r = runner.invoke(cli, ["audit", "verify", "--json"], env=env)
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["ok"] and report["checkpoints"] == 2
    _, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET action = 'note.list' WHERE id = %s", (rows[0][1],))
    r = runner.invoke(cli, ["audit", "verify", "--json"], env=env)
    assert r.exit_code == 1
    assert json.loads(r.stdout)["first_bad"]["record_id"] == rows[0][1]


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
