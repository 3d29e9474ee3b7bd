"""P16: the database keeps the gate's books, even against the service's own role.

Every attack here connects to PostgreSQL with exactly the credentials the service
runs with (what an SQL injection, a leaked password or a compromised worker has),
and tries the moves of the security review: rewrite the ledgers, lift a
suspension, raise a budget, mint a token, join care teams, clear a decoy, forge or
back-date audit records. Each is refused by PostgreSQL, or leaves a record that
the auditor API shows and `audit verify` accepts as genuine.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest
from click.testing import CliRunner
from flask import Flask

from service.cli import main as cli
from service.config import Budgets
from service.models import Role
from tests.conftest import MAINTENANCE_ROLE, AppFactory
from tests.helpers import Api, StackHelper, Tenant, Who, seed_patients


@contextmanager
def as_service_role(app_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(app_db_url, autocommit=True) as conn:
        yield conn


def refused(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> bool:
    try:
        conn.execute(statement, params)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation):
        return True
    return False


def events(api: Api, auditor: Who, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    r = api.get(f"/v1/audit/events?limit=1000&{qs}", auditor.token)
    assert r.status_code == 200, r.get_json()
    return list(r.get_json()["items"])


def verify_ok(app: Flask) -> dict[str, Any]:
    report = app.extensions["sealednotes"].audit_service.verify().as_dict()
    assert report["ok"], report["problems"]
    return report


@pytest.fixture
def world(stack: StackHelper, api: Api) -> dict[str, Any]:
    t = stack.tenant()
    dr = stack.clinician(t)
    other = stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid)
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200  # a release
    outsider = stack.patient(t)
    assert api.get(f"/v1/patients/{outsider}", dr.token).status_code == 404
    r = api.post(
        f"/v1/patients/{outsider}/break-glass",
        dr.token,
        {"reason": "Unconscious patient in the emergency department"},
    )
    assert r.status_code == 201
    return {"t": t, "dr": dr, "other": other, "auditor": auditor, "pid": pid}


def test_the_service_role_cannot_rewrite_the_books(world: dict[str, Any], app_db_url: str) -> None:
    t, dr = world["t"], world["dr"]
    attempts = [
        "DELETE FROM key_releases",
        "UPDATE key_releases SET released_at = released_at - interval '2 hours'",
        "TRUNCATE key_releases",
        "DELETE FROM release_denials",
        "UPDATE release_denials SET denied_at = denied_at - interval '2 hours'",
        "DELETE FROM break_glass",
        "UPDATE break_glass SET expires_at = now() + interval '10 years'",
        "DELETE FROM audit_events",
        "UPDATE audit_events SET reason = 'nothing to see'",
        "TRUNCATE audit_events",
        "DELETE FROM audit_checkpoints",
        "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome) VALUES"
        " (40, 1, sha256(''), sha256(''), now() - interval '1 day', 'note.read', 'granted')",
        f"UPDATE principals SET role = 'admin' WHERE id = '{dr.id}'",
        f"UPDATE principals SET tenant_id = tenant_id WHERE id = '{dr.id}'",
        "UPDATE patients SET tenant_id = tenant_id",
        "UPDATE tenants SET release_per_hour = 1000000",
        "DELETE FROM principals",
        "DELETE FROM tokens",
        "DELETE FROM patients",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DROP TRIGGER care_team_audit ON care_team",
        "SET session_replication_role = replica",
        "CREATE FUNCTION public.x() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SELECT sealednotes_prune(interval '0 days')",
        "SELECT sealednotes_audit_change(NULL, NULL, 'x', 'y')",
    ]
    with as_service_role(app_db_url) as conn:
        not_refused = [a for a in attempts if not refused(conn, a)]
        assert not_refused == []
        # The ledgers are still there.
        assert conn.execute("SELECT count(*) FROM key_releases").fetchone()[0] >= 1
        assert conn.execute("SELECT count(*) FROM release_denials").fetchone()[0] >= 0
    assert t  # (used by the fixture)


def test_rights_changes_by_direct_sql_are_in_the_log(
    world: dict[str, Any], app: Flask, api: Api, app_db_url: str
) -> None:
    t: Tenant = world["t"]
    dr: Who = world["dr"]
    auditor: Who = world["auditor"]
    decoy = StackHelper(app, api).patient(t)
    assert (
        api.put(f"/v1/admin/patients/{decoy}/decoy", t.admin.token, {"decoy": True}).status_code
        == 200
    )
    stolen = "snt_" + secrets.token_urlsafe(32)
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "UPDATE principals SET suspended_at = now(), suspended_reason = 'x' WHERE id = %s",
            (dr.id,),
        )
        conn.execute("UPDATE principals SET suspended_at = NULL WHERE id = %s", (dr.id,))
        conn.execute("UPDATE principals SET release_per_hour = 100000 WHERE id = %s", (dr.id,))
        conn.execute(
            "INSERT INTO tokens (token_hash, principal_id, created_at, expires_at)"
            " VALUES (%s, %s, now(), now() + interval '1 day')",
            (hashlib.sha256(stolen.encode()).digest(), dr.id),
        )
        conn.execute(
            "INSERT INTO care_team (patient_id, principal_id, added_at) VALUES (%s, %s, now())",
            (decoy, dr.id),
        )
        conn.execute("UPDATE patients SET is_decoy = false WHERE id = %s", (decoy,))
        conn.execute(
            "INSERT INTO break_glass (id, tenant_id, principal_id, patient_id, reason, opened_at,"
            " expires_at) VALUES (%s, %s, %s, %s, 'forged', now(), now() + interval '1 day')",
            (str(uuid.uuid4()), t.id, dr.id, decoy),
        )
        conn.execute("DELETE FROM care_team WHERE patient_id = %s", (decoy,))
        conn.execute("UPDATE tokens SET revoked_at = now() WHERE principal_id = %s", (dr.id,))

    expected = [
        "principal.suspend",
        "principal.unlock",
        "principal.budget",
        "token.issue",
        "care-team.add",
        "patient.decoy",
        "break-glass",
        "care-team.remove",
        "token.revoke",  # the clinician's own token...
        "token.revoke",  # ...and the minted one
    ]
    seen = [
        e for e in events(api, auditor) if e["role"] is None and "via=sql" in (e["reason"] or "")
    ]
    assert [e["action"] for e in seen] == expected
    for e in seen:
        assert e["tenant_id"] == t.id and e["outcome"] == "granted"
        assert e["reason"].endswith("db_user=sealednotes_app_test")
    assert any(f"target={dr.id}" in e["reason"] for e in seen if e["action"] == "token.issue")
    verify_ok(app)


def test_api_changes_are_recorded_once_with_their_actor(
    world: dict[str, Any], api: Api, app: Flask
) -> None:
    t: Tenant = world["t"]
    other: Who = world["other"]
    pid = world["pid"]
    r = api.put(f"/v1/patients/{pid}/care-team/{other.id}", t.integration.token, {})
    assert r.status_code == 201
    r = api.delete(f"/v1/patients/{pid}/care-team/{other.id}", t.admin.token)
    assert r.status_code == 204
    r = api.put(f"/v1/admin/principals/{other.id}/budget", t.admin.token, {"per_hour": 30})
    assert r.status_code == 200
    changes = [
        e
        for e in events(api, world["auditor"])
        if e["action"] in ("care-team.add", "care-team.remove", "principal.budget")
        and (e["patient_id"] == pid or f"target={other.id}" in (e["reason"] or ""))
        and f"{other.id}" in (e["reason"] or "")
    ]
    assert [(e["action"], e["principal_id"], e["role"]) for e in changes] == [
        ("care-team.add", t.integration.id, "integration"),
        ("care-team.remove", t.admin.id, "admin"),
        ("principal.budget", t.admin.id, "admin"),
    ]
    for e in changes:
        assert "via=sql" not in e["reason"] and e["request_id"]
    verify_ok(app)


def test_the_append_function_dates_and_places_every_record_itself(
    world: dict[str, Any], app: Flask, app_db_url: str, db_url: str
) -> None:
    t: Tenant = world["t"]
    with as_service_role(app_db_url) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT set_config('sealednotes.audit_shard', '40', true)")
        for shard in (40, -7, 2**31 - 1):
            conn.execute(
                "SELECT sealednotes_audit_append(%s, %s, NULL, 'clinician', NULL, NULL,"
                " 'note.read', 'granted', 'forged', 'req-forged', NULL)",
                (shard, t.id),
            )
        conn.execute("COMMIT")
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT shard, at FROM audit_events WHERE request_id = 'req-forged'"
        ).fetchall()
    assert len(rows) == 3
    now = datetime.now(UTC)
    for shard, at in rows:
        assert 0 <= shard < 16
        assert now - timedelta(seconds=30) < at <= now + timedelta(seconds=1)
    verify_ok(app)  # what went in through the function is a genuine, if odd, record


def test_verify_reports_unknown_shards_and_back_dated_records(
    world: dict[str, Any], app: Flask, db_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Only a superuser can still do this: a correctly chained record in shard 40.
        conn.execute("ALTER TABLE audit_events DROP CONSTRAINT audit_events_known_shard")
        try:
            conn.execute(
                "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
                " SELECT 40, 1, p, sha256(p || int4send(40) || int8send(1) ||"
                " sealednotes_audit_canonical(t, NULL, NULL, NULL, NULL, NULL, 'note.read',"
                " 'granted', NULL, NULL, NULL)), t, 'note.read', 'granted' FROM (SELECT"
                " '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea"
                " AS p, now() AS t) x"
            )
            # and a back-dated record at the end of a shard, chained correctly as well
            row = conn.execute(
                "SELECT shard, seq, hash FROM audit_events WHERE shard < 16"
                " ORDER BY shard, seq DESC LIMIT 1"
            ).fetchone()
            shard, seq, head = row
            conn.execute(
                "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
                " SELECT %(s)s, %(q)s, %(p)s, sha256(%(p)s || int4send(%(s)s) || int8send(%(q)s)"
                " || sealednotes_audit_canonical(%(t)s, NULL, NULL, NULL, NULL, NULL, 'note.read',"
                " 'granted', NULL, NULL, NULL)), %(t)s, 'note.read', 'granted'",
                {"s": shard, "q": seq + 1, "p": head, "t": datetime(2020, 1, 1, tzinfo=UTC)},
            )
            report = app.extensions["sealednotes"].audit_service.verify().as_dict()
        finally:
            conn.execute("SET session_replication_role = replica")  # past the append-only trigger
            conn.execute("DELETE FROM audit_events WHERE shard = 40 OR at < '2021-01-01'")
            conn.execute("SET session_replication_role = origin")
            conn.execute(
                "ALTER TABLE audit_events ADD CONSTRAINT audit_events_known_shard"
                " CHECK (shard BETWEEN 0 AND 15) NOT VALID"
            )
    kinds = {p["kind"] for p in report["problems"]}
    assert not report["ok"]
    assert {"unknown-shard", "time-regression"} <= kinds
    # The next checkpoint covers every shard that exists, the unknown one included.
    heads = app.extensions["sealednotes"].store
    with heads.transaction() as tx:
        assert set(tx.audit.audit_heads()) <= set(range(16))


def test_replayed_attack_releases_at_most_the_tenant_cap_and_leaves_every_change_logged(
    make_app: AppFactory, app_db_url: str
) -> None:
    cap = 25
    app = make_app(budgets=Budgets(tenant_per_hour=cap))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    colleague = stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    mine = seed_patients(stack, t, [dr], 5)
    theirs = seed_patients(stack, t, [colleague], 35)  # not on the attacker's care team
    token = "snt_" + secrets.token_urlsafe(32)
    forged_ok, forged_refused = 0, 0
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "UPDATE principals SET release_per_hour = 1000000,"
            " release_per_day = 1000000 WHERE id = %s",
            (dr.id,),
        )
        conn.execute(
            "INSERT INTO tokens (token_hash, principal_id, created_at, expires_at)"
            " VALUES (%s, %s, now(), now() + interval '1 day')",
            (hashlib.sha256(token.encode()).digest(), dr.id),
        )
        for pid in theirs:
            conn.execute(
                "INSERT INTO care_team (patient_id, principal_id, added_at) VALUES (%s, %s, now())",
                (pid, dr.id),
            )
        # Forged releases would make every read a "free re-read": the database counts
        # them against the tenant's cap, in its own clock, and refuses the rest.
        for pid in theirs + mine:
            try:
                conn.execute(
                    "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)"
                    " VALUES (%s, %s, %s, now())",
                    (dr.id, t.id, pid),
                )
                forged_ok += 1
            except psycopg.Error as e:
                assert e.sqlstate == "SN429", e
                forged_refused += 1
    assert forged_ok == cap and forged_refused == 40 - cap

    leaked = 0
    for pid in theirs + mine:
        r = api.get(f"/v1/patients/{pid}/notes?include=content", token)
        if r.status_code == 200 and any("body" in n for n in r.get_json()["items"]):
            leaked += 1
    assert leaked <= cap

    log = events(api, auditor)
    sql_changes = [e["action"] for e in log if "via=sql" in (e["reason"] or "")]
    assert sql_changes.count("care-team.add") == len(theirs)
    assert sql_changes.count("token.issue") == 1
    assert sql_changes.count("principal.budget") == 1
    verify_ok(app)


def test_pruning_is_for_the_maintenance_role_only_and_audited(
    world: dict[str, Any], app: Flask, api: Api, db_url: str, app_db_url: str
) -> None:
    from service.devtools.stack import url_with_user

    maintenance_url = url_with_user(db_url, MAINTENANCE_ROLE)
    run = CliRunner().invoke(
        cli,
        ["maintenance", "prune", "--older-than", "0d", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": app_db_url},
    )
    assert run.exit_code == 1 and "maintenance role" in run.output
    run = CliRunner().invoke(
        cli,
        ["maintenance", "prune", "--older-than", "1d", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": maintenance_url},
    )
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    # Nothing younger than two days goes, whatever was asked: budgets stay whole.
    assert out["deleted"] == {"key_releases": 0, "release_denials": 0, "break_glass": 0}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM key_releases").fetchone()[0] >= 1
        # Old rows do go (backdated here by the superuser).
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE key_releases SET recorded_at = recorded_at - interval '40 days'")
        conn.commit()
    run = CliRunner().invoke(
        cli,
        ["maintenance", "prune", "--older-than", "30d", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": maintenance_url},
    )
    assert json.loads(run.stdout)["deleted"]["key_releases"] >= 1
    with psycopg.connect(maintenance_url) as conn:
        assert refused(conn, "SELECT count(*) FROM key_releases")  # reads nothing else
    log = [e for e in events(api, world["auditor"]) if e["action"] == "maintenance.prune"]
    assert log == []  # tenant-less operator records stay out of a tenant's view
    with psycopg.connect(db_url) as conn:
        reasons = [
            r[0]
            for r in conn.execute(
                "SELECT reason FROM audit_events WHERE action = 'maintenance.prune' ORDER BY id"
            )
        ]
    assert len(reasons) == 2 and "key_releases=" in reasons[-1]
    assert f"db_user={MAINTENANCE_ROLE}" in reasons[-1]
    verify_ok(app)


@pytest.mark.parametrize(
    "reason",
    [
        "plain",
        'quotes " and \\ backslashes',
        "control \x01\x02\x1f\t\n\r\b\f and DEL \x7f",
        "unicode é ü ß 中文 🙂 \u2028\u2029",
        "",
        None,
        "/slashes/ and </script>",
    ],
)
def test_the_database_encodes_records_exactly_as_the_verifier(
    db_url: str, reason: str | None
) -> None:
    """The append function computes the canonical encoding in SQL; `audit verify`
    recomputes it in Python. They must agree byte for byte, whatever a field holds."""
    from service.audit import chain as auditchain

    at = datetime(2026, 11, 30, 18, 45, 1, 234567, tzinfo=UTC)
    fields = {
        "tenant_id": str(uuid.uuid4()),
        "principal_id": None,
        "role": "clinician",
        "patient_id": str(uuid.uuid4()),
        "note_id": None,
        "action": "note.read",
        "outcome": "granted",
        "reason": reason,
        "request_id": "req-1",
        "client_addr": "2001:db8::1",
    }
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT sealednotes_audit_canonical(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (at, *(fields[k] for k in auditchain.FIELDS)),
        ).fetchone()
    assert bytes(row[0]) == auditchain.canonical(at, fields)


def test_who_may_sign_in_as_whom_is_audited_too(
    world: dict[str, Any], api: Api, app_db_url: str
) -> None:
    """Trusting an issuer or linking a subject by SQL mints sign-ins like a token does:
    the database records it."""
    t: Tenant = world["t"]
    dr: Who = world["dr"]
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "INSERT INTO tenant_idps (tenant_id, issuer, jwks_url, audience, created_at,"
            " updated_at) VALUES (%s, 'https://evil.example', 'https://evil.example/jwks',"
            " 'sealednotes', now(), now())",
            (t.id,),
        )
        conn.execute(
            "INSERT INTO principal_identities (tenant_id, subject, principal_id, created_at)"
            " VALUES (%s, 'attacker', %s, now())",
            (t.id, dr.id),
        )
        conn.execute("DELETE FROM tenant_idps WHERE tenant_id = %s", (t.id,))
        assert refused(conn, "DELETE FROM principal_identities")
    log = [
        (e["action"], e["reason"])
        for e in events(api, world["auditor"])
        if e["action"] in ("tenant.idp", "principal.link")
    ]
    assert [a for a, _ in log] == ["tenant.idp", "principal.link", "tenant.idp"]
    assert all(r.endswith("via=sql db_user=sealednotes_app_test") for _, r in log)
    assert "issuer=https://evil.example" in log[0][1] and f"target={dr.id}" in log[1][1]


# -- regressions from the attack review -------------------------------------------------


def real_log_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])


def test_a_temporary_table_cannot_swallow_the_log_or_the_cap_count(
    make_app: AppFactory, app_db_url: str, db_url: str
) -> None:
    """PostgreSQL searches a session's temporary schema first unless told otherwise: a
    temp `audit_events` or `key_releases` must not capture what the database's own
    functions write and count."""
    app = make_app(budgets=Budgets(tenant_per_hour=3))
    stack = StackHelper(app, Api(app.test_client()))
    t = stack.tenant()
    dr = stack.clinician(t)
    pids = seed_patients(stack, t, [dr], 6, with_notes=False)
    before = real_log_count(db_url)
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "CREATE TEMP TABLE audit_events AS SELECT * FROM public.audit_events WITH NO DATA"
        )
        conn.execute("CREATE TEMP TABLE key_releases (tenant_id uuid, recorded_at timestamptz)")
        conn.execute("UPDATE principals SET release_per_hour = 1000000 WHERE id = %s", (dr.id,))
        assert conn.execute("SELECT count(*) FROM pg_temp.audit_events").fetchone() == (0,)
        booked = 0
        for pid in pids:
            try:
                conn.execute(
                    "INSERT INTO public.key_releases (principal_id, tenant_id, patient_id,"
                    " released_at) VALUES (%s, %s, %s, now())",
                    (dr.id, t.id, pid),
                )
                booked += 1
            except psycopg.Error as e:
                assert e.sqlstate == "SN429"
    assert booked == 3  # the cap, counted in the real ledger
    assert real_log_count(db_url) == before + 1  # the budget change, in the real log


def test_release_rows_are_booked_only_at_read_committed(
    make_app: AppFactory, app_db_url: str
) -> None:
    """A REPEATABLE READ snapshot would count none of the others' releases."""
    app = make_app(budgets=Budgets(tenant_per_hour=5))
    stack = StackHelper(app, Api(app.test_client()))
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1, with_notes=False)
    for level in ("REPEATABLE READ", "SERIALIZABLE"):
        with psycopg.connect(app_db_url) as conn:
            conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(
                    "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)"
                    " VALUES (%s, %s, %s, now())",
                    (dr.id, t.id, pid),
                )
            assert raised.value.sqlstate == "SN409"


def test_content_cannot_be_rolled_back_or_keys_mislabelled_in_place(
    world: dict[str, Any], app: Flask, api: Api, app_db_url: str, db_url: str
) -> None:
    t, dr = world["t"], world["dr"]
    stack = StackHelper(app, api)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="allergy: none known")
    r = api.put(
        f"/v1/notes/{note['id']}",
        dr.token,
        {"kind": "progress", "body": "ALLERGY: PENICILLIN"},
        headers={"If-Match": '"1"'},
    )
    assert r.status_code == 200
    voided = stack.note(dr, pid, body="written on the wrong patient")
    assert api.delete(f"/v1/notes/{voided['id']}", dr.token).status_code == 204
    with as_service_role(app_db_url) as conn:
        assert refused(conn, "UPDATE notes SET current_version = 1 WHERE id = %s", (note["id"],))
        assert refused(conn, "UPDATE notes SET status = 'current' WHERE id = %s", (voided["id"],))
        assert refused(conn, "DELETE FROM patient_keys WHERE patient_id = %s", (pid,))
        assert refused(conn, "DELETE FROM note_versions")
        assert refused(
            conn,
            "UPDATE patient_keys SET key_version = key_version + 1 WHERE patient_id = %s",
            (pid,),
        )
        # What is allowed in place leaves a record: a rewrap of a key (here a no-op).
        conn.execute("UPDATE patient_keys SET updated_at = now() WHERE patient_id = %s", (pid,))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).get_json()["body"] == "ALLERGY: PENICILLIN"
    with psycopg.connect(db_url) as conn:
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT action FROM audit_events WHERE tenant_id = %s"
                " AND action IN ('key.create', 'keys.rewrap') ORDER BY id",
                (t.id,),
            )
        ]
    assert actions[-1] == "keys.rewrap" and "key.create" in actions


def test_a_far_future_release_is_not_free_for_ever(
    make_app: AppFactory, app_db_url: str, db_url: str
) -> None:
    app = make_app(budgets=Budgets(tenant_per_hour=3))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    attacker = stack.clinician(t)
    mine = seed_patients(stack, t, [attacker], 1)
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)"
            " VALUES (%s, %s, %s, '2100-01-01')",
            (attacker.id, t.id, mine[0]),
        )
    with psycopg.connect(db_url) as conn:
        released_at, recorded_at = conn.execute(
            "SELECT released_at, recorded_at FROM key_releases WHERE patient_id = %s", (mine[0],)
        ).fetchone()
    assert released_at <= recorded_at + timedelta(minutes=5)  # clamped by the database


def test_every_function_of_the_schema_pins_its_search_path_with_pg_temp_last(
    db_url: str, clean_db: None
) -> None:
    """A function without a fixed search_path resolves relations in the caller's
    temporary schema first: a session could shadow what a guard reads."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT p.proname, p.proconfig FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND p.proname LIKE 'sealednotes%'"
        ).fetchall()
    assert len(rows) >= 10
    unpinned = [
        name
        for name, config in rows
        if not any(
            c.startswith("search_path=") and c.rstrip().endswith("pg_temp") for c in config or []
        )
    ]
    assert unpinned == []
