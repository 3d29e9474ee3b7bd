"""`sealednotes migrate` upgrades an existing database: a log written by the old append
function still verifies, old ledger rows still count, and the new rules apply."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from service.adapters.postgres import AUDIT_LOCK_CLASS, Store
from service.audit import chain as auditchain
from service.devtools.stack import database_url, ensure_database, url_with_user

UPGRADE_APP_ROLE = "sealednotes_app_upgrade"


@pytest.fixture
def old_database(pg_admin_url: str) -> Iterator[str]:
    name = f"sealednotes_upgrade_{secrets.token_hex(4)}"
    ensure_database(pg_admin_url, name, drop=True)
    url = database_url(pg_admin_url, name)
    try:
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def old_append(conn: psycopg.Connection, at: datetime, **fields: str | None) -> None:
    """An audit record as the schema-3 service wrote it (canonical made by the client)."""
    values = {k: fields.get(k) for k in auditchain.FIELDS}
    conn.execute(
        "SELECT sealednotes_audit_append(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            AUDIT_LOCK_CLASS,
            0,
            auditchain.canonical(at, values),
            at,
            *(values[k] for k in auditchain.FIELDS),
        ),
    )


def test_migrate_upgrades_a_schema_3_database(old_database: str) -> None:
    store = Store(old_database)
    assert store.migrate(up_to=3) == [1, 2, 3]  # (the grants of the day are re-made below)
    tenant, dr, patient = (str(uuid.uuid4()) for _ in range(3))
    now = datetime.now(UTC)
    with psycopg.connect(old_database) as conn:
        conn.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (%s, 'old', %s)", (tenant, now)
        )
        conn.execute(
            "INSERT INTO principals (id, tenant_id, name, role, created_at)"
            " VALUES (%s, %s, 'dr-old', 'clinician', %s)",
            (dr, tenant, now),
        )
        conn.execute(
            "INSERT INTO patients (id, tenant_id, external_id_index, created_at)"
            " VALUES (%s, %s, 'hmac', %s)",
            (patient, tenant, now),
        )
        conn.execute(
            "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)"
            " VALUES (%s, %s, %s, %s)",
            (dr, tenant, patient, now - timedelta(minutes=10)),
        )
        for i in range(5):
            old_append(
                conn,
                now - timedelta(seconds=60 - i),
                tenant_id=tenant,
                principal_id=dr,
                role="clinician",
                patient_id=patient,
                action="note.read",
                outcome="granted",
                reason=f"old record {i}",
            )
        conn.commit()

    applied = store.migrate(
        app_role=UPGRADE_APP_ROLE, default_tenant_cap=700, maintenance_role=None
    )
    assert applied == [4, 5, *[v for v in applied if v > 5]]
    assert store.migrate(app_role=UPGRADE_APP_ROLE) == []  # idempotent

    with psycopg.connect(old_database) as conn:
        assert conn.execute("SELECT release_per_hour FROM tenants").fetchone() == (700,)
        recorded = conn.execute("SELECT recorded_at, released_at FROM key_releases").fetchone()
        assert recorded[0] == recorded[1]  # old releases keep counting in their hour

    # The service's role now appends through the new function only, and old and new
    # records verify as one log.
    app_url = url_with_user(old_database, UPGRADE_APP_ROLE)
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute(
            "SELECT sealednotes_audit_append(0, %s, %s, 'clinician', %s, NULL, 'note.read',"
            " 'granted', 'after the upgrade', NULL, NULL)",
            (tenant, dr, patient),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM key_releases")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
                " VALUES (0, 99, sha256(''), sha256(''), now(), 'x', 'granted')"
            )
    verifier = auditchain.ChainVerifier()
    with psycopg.connect(old_database, row_factory=psycopg.rows.dict_row) as conn:
        for row in conn.execute("SELECT * FROM audit_events ORDER BY shard, seq"):
            verifier.feed(row)
    assert verifier.problems == []
    # 5 old records, the one appended above, and the upgrade's own record of the cap
    # it gave the tenant (`tenant.cap`, by the migrating user).
    assert verifier.checked == 7
    store.close()
