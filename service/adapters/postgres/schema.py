"""The schema: migrations in order, and what each database role may do.

Run as the schema owner (`sealednotes migrate`). The service's own role gets only
what the use cases need (APP_GRANTS); the maintenance role only the pruning and
key-destruction functions. See docs/operations.md, 1.1.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
from psycopg import sql


def migrate(
    conninfo: str,
    app_role: str | None = None,
    *,
    default_tenant_cap: int = 1000,
    maintenance_role: str | None = None,
    up_to: int | None = None,
) -> list[int]:
    """Apply pending migrations in order; return the versions applied.

    With `app_role`, also (re)grant that role exactly what the service needs:
    read/write on operational tables, but only INSERT and SELECT on the audit
    log, and no TRUNCATE anywhere. Run this as the schema owner; run the
    service as the app role.
    """
    applied: list[int] = []
    with psycopg.connect(conninfo, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('sealednotes-migrate', 0))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, script in _migrations():
            if version in done or (up_to is not None and version > up_to):
                continue
            conn.execute(script.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (version, name),
            )
            applied.append(version)
        if up_to is None or up_to >= 4:
            # Tenants from before per-tenant caps get the configured default.
            conn.execute(
                "UPDATE tenants SET release_per_hour = %s WHERE release_per_hour IS NULL",
                (default_tenant_cap,),
            )
        if app_role:
            _grant_app_role(conn, app_role)
        if maintenance_role:
            _grant_maintenance_role(conn, maintenance_role)
        conn.commit()
    return applied


# What the service's own role may do, table by table. Everything not listed is
# refused by PostgreSQL: no DELETE on the ledgers or the log, no UPDATE of a
# principal's role or tenant, no direct INSERT into the audit log (only through
# sealednotes_audit_append), no TRUNCATE anywhere. Column lists keep UPDATE to
# what the use cases change; triggers record every change of access rights.
APP_GRANTS: dict[str, tuple[str, ...]] = {
    "tenants": ("SELECT", "INSERT"),
    "principals": (
        "SELECT",
        "INSERT",
        "UPDATE (suspended_at, suspended_reason, release_per_hour, release_per_day, denials_since)",
    ),
    "tokens": ("SELECT", "INSERT", "UPDATE (revoked_at)"),
    "patients": ("SELECT", "INSERT", "UPDATE (is_decoy, shredded_at, shred_due_at)"),
    # No DELETE: only maintenance destroys a shredded patient's key, after the grace period.
    "patient_keys": ("SELECT", "INSERT", "UPDATE (wrapped_key, key_version, updated_at)"),
    "notes": (
        "SELECT",
        "INSERT",
        "UPDATE (status, current_version, kind, encounter_at, updated_at)",
    ),
    "note_versions": ("SELECT", "INSERT", "UPDATE (sealed)"),
    "care_team": ("SELECT", "INSERT", "UPDATE (until)", "DELETE"),
    "break_glass": ("SELECT", "INSERT"),
    "approvals": ("SELECT", "INSERT", "UPDATE (status, decided_by, decided_at)"),
    "principal_actions": ("SELECT", "INSERT"),
    "key_releases": ("SELECT", "INSERT"),
    "release_denials": ("SELECT", "INSERT"),
    "idempotency_keys": ("SELECT", "INSERT", "DELETE"),
    "audit_events": ("SELECT",),
    "audit_checkpoints": ("SELECT", "INSERT"),
    "audit_verifications": ("SELECT", "INSERT"),
    "schema_migrations": ("SELECT",),
    # Identity providers and SMART clients (migration 0020; SQL in adapters/postgres/idp.py).
    # Changes to the first three are access-rights changes, audited by triggers (0021).
    "tenant_idps": (
        "SELECT",
        "INSERT",
        "UPDATE (issuer, jwks_url, audience, principal_claim, role_claim, role_map,"
        " allow_create, updated_at)",
        "DELETE",
    ),
    "principal_identities": ("SELECT", "INSERT"),
    "oauth_clients": ("SELECT", "INSERT", "UPDATE (client_id, jwks, jwks_url, updated_at)"),
    "oauth_assertion_jtis": ("SELECT", "INSERT", "DELETE"),
}
APP_FUNCTIONS = (
    "sealednotes_audit_append(integer, uuid, uuid, text, uuid, uuid, text, text, text, text, text)",
    "sealednotes_audit_append_batch(integer, uuid[], uuid[], text[], uuid[], uuid[], text[],"
    " text[], text[], text[], text[])",
    "sealednotes_charge_action(uuid, uuid[], uuid, text, uuid, timestamptz, timestamptz,"
    " timestamptz, integer)",
    "sealednotes_create_note(uuid, uuid, uuid, uuid, text, timestamptz, timestamptz, bytea,"
    " text, integer, timestamptz, timestamptz, integer,"
    " integer, uuid, uuid, text, uuid, uuid, text, text, text, text, text)",
)
MAINTENANCE_FUNCTIONS = ("sealednotes_prune(interval)", "sealednotes_destroy_due_keys()")


def _ensure_login_role(conn: psycopg.Connection[Any], role: str) -> sql.Identifier:
    ident = sql.Identifier(role)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        # Roles are cluster-wide: a migration of another database may create it at the
        # same moment (two environments, or parallel test workers sharing a server).
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
    db = conn.execute("SELECT current_database()").fetchone()
    assert db is not None
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db[0]), ident))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    if tables:
        conn.execute(
            sql.SQL("REVOKE ALL ON {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(t[0]) for t in tables), ident
            )
        )
    return ident


def _grant_app_role(conn: psycopg.Connection[Any], role: str) -> None:
    ident = _ensure_login_role(conn, role)
    for table, privileges in APP_GRANTS.items():
        for privilege in privileges:
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(privilege), sql.Identifier(table), ident
                )
            )
    for fn in APP_FUNCTIONS:
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(fn), ident))
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))


def _grant_maintenance_role(conn: psycopg.Connection[Any], role: str) -> None:
    """The maintenance role prunes old ledger rows through sealednotes_prune (which
    audits itself) and reads nothing else."""
    ident = _ensure_login_role(conn, role)
    for fn in MAINTENANCE_FUNCTIONS:
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(fn), ident))


def _migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("service.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)
