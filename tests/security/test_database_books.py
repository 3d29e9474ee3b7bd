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
import secrets
import uuid
from typing import Any

import psycopg
import psycopg.errors
from flask import Flask

from service.config import Budgets
from service.models import Role
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper, Tenant, Who, seed_patients
from tests.security.database_books import as_service_role, events, refused, verify_ok


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
