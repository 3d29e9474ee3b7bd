"""PostgreSQL store: the only module that speaks SQL.

A `Store` owns a psycopg connection pool, opened lazily in the process that
uses it (so gunicorn workers each open their own after fork). Use cases run
inside `store.transaction()`, which yields a `Tx` with one method per query.
Database failures are translated into `DatabaseUnavailable`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service import auditchain, deadline
from service.errors import (
    AuditUnavailable,
    DatabaseUnavailable,
    Forbidden,
    ServiceError,
    TenantCapReached,
)
from service.models import (
    Approval,
    AuditEvent,
    BudgetUsage,
    GateSnapshot,
    NoteRow,
    NoteVersionRow,
    Patient,
    PatientKeyRow,
    Principal,
    Role,
    Tenant,
)

log = logging.getLogger(__name__)

# One pass over a principal's releases of the last day: the sliding-hour and
# sliding-day distinct-patient counts, whether %(pt)s is already released, and
# when the oldest releases leave the windows. Shared by the gate snapshot and
# the re-count under lock, so both always count the same way.
# Only care-team releases count against the principal's own budget (break-glass has
# its own); every release counts against the tenant's cap and makes re-reads free.
# Rows dated past the horizon (a few minutes ahead, for clock skew between workers)
# are ignored: a forged far-future row cannot make a patient free for ever.
PRINCIPAL_USAGE_SQL = """
  SELECT
    count(DISTINCT patient_id) FILTER (WHERE released_at > %(hour_ago)s AND via = 'care-team')
      AS hour,
    count(DISTINCT patient_id) FILTER (WHERE via = 'care-team') AS day,
    coalesce(bool_or(patient_id = %(pt)s AND released_at > %(hour_ago)s), false)
      AS patient_in_hour,
    coalesce(bool_or(patient_id = %(pt)s AND via = 'care-team'), false) AS patient_in_day,
    min(released_at) FILTER (WHERE released_at > %(hour_ago)s AND via = 'care-team')
      AS hour_oldest,
    min(released_at) FILTER (WHERE via = 'care-team') AS day_oldest
  FROM key_releases
  WHERE principal_id = %(p)s AND released_at > %(day_ago)s AND released_at <= %(horizon)s
"""
CLOCK_SKEW = timedelta(minutes=5)
_NO_USAGE = BudgetUsage(0, 0, 0, False, False, None, None, None)
IDLE_CHECK_SECONDS = 2.0
AUDIT_LOCK_CLASS = 0x5EA1  # advisory-lock namespace of the audit shards
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


TENANT_COLUMNS = "id, name, release_per_hour"


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(str(row["id"]), row["name"], row["release_per_hour"])


def _principal(row: dict[str, Any]) -> Principal:
    return Principal(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        name=row["name"],
        role=Role(row["role"]),
        suspended_at=row["suspended_at"],
        release_per_hour=row["release_per_hour"],
        release_per_day=row["release_per_day"],
        suspended_reason=row["suspended_reason"],
        last_unlocked_at=row["denials_since"],
    )


def _approval(row: dict[str, Any]) -> Approval:
    return Approval(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        kind=row["kind"],
        target_principal_id=str(row["target_principal_id"]) if row["target_principal_id"] else None,
        target_patient_id=str(row["target_patient_id"]) if row["target_patient_id"] else None,
        params=dict(row["params"]),
        requested_by=str(row["requested_by"]),
        requested_at=row["requested_at"],
        expires_at=row["expires_at"],
        status=row["status"],
        decided_by=str(row["decided_by"]) if row["decided_by"] else None,
        decided_at=row["decided_at"],
    )


def _patient(row: dict[str, Any]) -> Patient:
    return Patient(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        is_decoy=row["is_decoy"],
        shredded_at=row["shredded_at"],
        created_at=row["created_at"],
    )


def _note(row: dict[str, Any]) -> NoteRow:
    return NoteRow(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        patient_id=str(row["patient_id"]),
        kind=row["kind"],
        status=row["status"],
        current_version=row["current_version"],
        encounter_at=row["encounter_at"],
        created_by=str(row["created_by"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _version(row: dict[str, Any]) -> NoteVersionRow:
    return NoteVersionRow(
        note_id=str(row["note_id"]),
        version=row["version"],
        sealed=bytes(row["sealed"]),
        author_id=str(row["author_id"]),
        created_at=row["created_at"],
    )


PRINCIPAL_COLUMNS = (
    "p.id, p.tenant_id, p.name, p.role, p.suspended_at, p.release_per_hour, p.release_per_day,"
    " p.suspended_reason, p.denials_since"
)
NOTE_COLUMNS = (
    "id, tenant_id, patient_id, kind, status, current_version, encounter_at, "
    "created_by, created_at, updated_at"
)


class Tx:
    """One database transaction. Every method is one statement."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self.conn = conn

    def _one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        return self.conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self.conn.execute(sql, params).fetchall()

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    # -- tenants -------------------------------------------------------------------

    def insert_tenant(
        self, tenant_id: str, name: str, now: datetime, release_per_hour: int
    ) -> bool:
        row = self._one(
            "INSERT INTO tenants (id, name, created_at, release_per_hour) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING id",
            (tenant_id, name, now, release_per_hour),
        )
        return row is not None

    def tenant_by_name(self, name: str) -> Tenant | None:
        row = self._one(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = %s", (name,))
        return _tenant(row) if row else None

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        row = self._one(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = %s", (tenant_id,))
        return _tenant(row) if row else None

    def all_tenants(self) -> list[Tenant]:
        return [
            _tenant(r) for r in self._all(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name")
        ]

    def set_tenant_cap(self, tenant_id: str, release_per_hour: int) -> None:
        self.conn.execute(
            "UPDATE tenants SET release_per_hour = %s WHERE id = %s", (release_per_hour, tenant_id)
        )

    # -- principals and tokens -------------------------------------------------------

    def insert_principal(
        self, principal_id: str, tenant_id: str, name: str, role: Role, now: datetime
    ) -> bool:
        row = self._one(
            "INSERT INTO principals (id, tenant_id, name, role, created_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant_id, name) DO NOTHING RETURNING id",
            (principal_id, tenant_id, name, role.value, now),
        )
        return row is not None

    def principal(self, principal_id: str, *, for_update: bool = False) -> Principal | None:
        lock = " FOR NO KEY UPDATE" if for_update else ""
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.id = %s{lock}",
            (principal_id,),
        )
        return _principal(row) if row else None

    def principal_by_name(self, tenant_id: str, name: str) -> Principal | None:
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.tenant_id = %s AND p.name = %s",
            (tenant_id, name),
        )
        return _principal(row) if row else None

    def principal_in_tenant(self, tenant_id: str, principal_id: str) -> Principal | None:
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.id = %s AND p.tenant_id = %s",
            (principal_id, tenant_id),
        )
        return _principal(row) if row else None

    def principal_by_token(self, token_hash: bytes, now: datetime) -> Principal | None:
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM tokens t JOIN principals p ON p.id = t.principal_id "
            "WHERE t.token_hash = %s AND t.revoked_at IS NULL AND t.expires_at > %s",
            (token_hash, now),
        )
        return _principal(row) if row else None

    def insert_token(
        self, token_hash: bytes, principal_id: str, now: datetime, expires_at: datetime
    ) -> None:
        self.conn.execute(
            "INSERT INTO tokens (token_hash, principal_id, created_at, expires_at) "
            "VALUES (%s, %s, %s, %s)",
            (token_hash, principal_id, now, expires_at),
        )

    def revoke_tokens(self, principal_id: str, now: datetime) -> int:
        cur = self.conn.execute(
            "UPDATE tokens SET revoked_at = %s WHERE principal_id = %s AND revoked_at IS NULL",
            (now, principal_id),
        )
        return cur.rowcount

    def revoke_token(self, token_hash: bytes, now: datetime) -> bool:
        cur = self.conn.execute(
            "UPDATE tokens SET revoked_at = %s WHERE token_hash = %s AND revoked_at IS NULL",
            (now, token_hash),
        )
        return cur.rowcount == 1

    def suspend_principal(self, principal_id: str, reason: str, now: datetime) -> bool:
        row = self._one(
            "UPDATE principals SET suspended_at = %s, suspended_reason = %s "
            "WHERE id = %s AND suspended_at IS NULL RETURNING id",
            (now, reason, principal_id),
        )
        return row is not None

    def unlock_principal(self, principal_id: str, now: datetime) -> bool:
        # Denials before the unlock no longer count towards a new suspension (the
        # denial ledger itself is append-only).
        cur = self.conn.execute(
            "UPDATE principals SET suspended_at = NULL, suspended_reason = NULL,"
            " denials_since = %s WHERE id = %s AND suspended_at IS NOT NULL",
            (now, principal_id),
        )
        return cur.rowcount == 1

    def set_principal_budget(
        self, principal_id: str, per_hour: int | None, per_day: int | None
    ) -> bool:
        cur = self.conn.execute(
            "UPDATE principals SET release_per_hour = %s, release_per_day = %s WHERE id = %s",
            (per_hour, per_day, principal_id),
        )
        return cur.rowcount == 1

    # -- patients ------------------------------------------------------------------

    def insert_patient(
        self, patient_id: str, tenant_id: str, external_id_index: str, now: datetime
    ) -> str | None:
        """Insert; on a duplicate external id return None."""
        row = self._one(
            "INSERT INTO patients (id, tenant_id, external_id_index, created_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, external_id_index) DO NOTHING "
            "RETURNING id",
            (patient_id, tenant_id, external_id_index, now),
        )
        return str(row["id"]) if row else None

    def patient_by_index(self, tenant_id: str, external_id_index: str) -> Patient | None:
        row = self._one(
            "SELECT * FROM patients WHERE tenant_id = %s AND external_id_index = %s",
            (tenant_id, external_id_index),
        )
        return _patient(row) if row else None

    def patient(self, tenant_id: str, patient_id: str) -> Patient | None:
        row = self._one(
            "SELECT * FROM patients WHERE tenant_id = %s AND id = %s", (tenant_id, patient_id)
        )
        return _patient(row) if row else None

    def patient_by_id(self, patient_id: str) -> Patient | None:
        """Ops lookup across tenants (CLI only; the API always scopes by tenant)."""
        row = self._one("SELECT * FROM patients WHERE id = %s", (patient_id,))
        return _patient(row) if row else None

    def set_decoy(self, tenant_id: str, patient_id: str, decoy: bool) -> bool:
        cur = self.conn.execute(
            "UPDATE patients SET is_decoy = %s WHERE tenant_id = %s AND id = %s",
            (decoy, tenant_id, patient_id),
        )
        return cur.rowcount == 1

    # -- access --------------------------------------------------------------------

    def access_to_patient(
        self, principal_id: str, patient_id: str, now: datetime
    ) -> tuple[bool, bool]:
        """(on the care team now, under an active break-glass now)."""
        row = self._one(
            "SELECT "
            " EXISTS (SELECT 1 FROM care_team WHERE patient_id = %(pt)s AND principal_id = %(p)s"
            "         AND (until IS NULL OR until > %(now)s)) AS care,"
            " EXISTS (SELECT 1 FROM break_glass WHERE patient_id = %(pt)s AND principal_id = %(p)s"
            "         AND opened_at <= %(now)s AND expires_at > %(now)s) AS glass",
            {"pt": patient_id, "p": principal_id, "now": now},
        )
        assert row is not None
        return bool(row["care"]), bool(row["glass"])

    def upsert_care_team(
        self, patient_id: str, principal_id: str, until: datetime | None, now: datetime
    ) -> bool:
        """Returns True when the membership is new."""
        row = self._one(
            "INSERT INTO care_team (patient_id, principal_id, until, added_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (patient_id, principal_id) "
            "DO UPDATE SET until = EXCLUDED.until RETURNING (xmax = 0) AS inserted",
            (patient_id, principal_id, until, now),
        )
        return bool(row and row["inserted"])

    def delete_care_team(self, patient_id: str, principal_id: str) -> bool:
        cur = self.conn.execute(
            "DELETE FROM care_team WHERE patient_id = %s AND principal_id = %s",
            (patient_id, principal_id),
        )
        return cur.rowcount == 1

    def insert_break_glass(
        self,
        bg_id: str,
        tenant_id: str,
        principal_id: str,
        patient_id: str,
        reason: str,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        self.conn.execute(
            "INSERT INTO break_glass (id, tenant_id, principal_id, patient_id, reason, opened_at,"
            " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (bg_id, tenant_id, principal_id, patient_id, reason, now, expires_at),
        )

    def break_glass_opened_since(self, principal_id: str, since: datetime) -> list[datetime]:
        rows = self._all(
            "SELECT opened_at FROM break_glass WHERE principal_id = %s AND opened_at > %s "
            "ORDER BY opened_at",
            (principal_id, since),
        )
        return [r["opened_at"] for r in rows]

    # -- key-release budget -----------------------------------------------------------

    def gate_snapshot(
        self, principal_id: str, tenant_id: str, patient_id: str, now: datetime
    ) -> GateSnapshot:
        """Suspension, patient, care team, break-glass, this principal's budget usage and
        the wrapped key: one round trip for the common (warm) read. The tenant-wide
        count is left out: it is only needed, under lock, for a new release."""
        row = self._one(
            """
            SELECT
              pr.suspended_at,
              pt.id AS pt_id, pt.tenant_id AS pt_tenant, pt.is_decoy, pt.shredded_at,
              pt.created_at AS pt_created,
              EXISTS (SELECT 1 FROM care_team c WHERE c.patient_id = %(pt)s
                        AND c.principal_id = %(p)s AND (c.until IS NULL OR c.until > %(now)s))
                AS care,
              EXISTS (SELECT 1 FROM break_glass b WHERE b.patient_id = %(pt)s
                        AND b.principal_id = %(p)s AND b.opened_at <= %(now)s
                        AND b.expires_at > %(now)s) AS glass,
              k.wrapped_key, k.key_version,
              u.hour, u.day, u.patient_in_hour, u.patient_in_day, u.hour_oldest, u.day_oldest
            FROM principals pr
            LEFT JOIN patients pt ON pt.tenant_id = %(t)s AND pt.id = %(pt)s
            LEFT JOIN patient_keys k ON k.patient_id = pt.id
            CROSS JOIN LATERAL ("""
            + PRINCIPAL_USAGE_SQL
            + """) u
            WHERE pr.id = %(p)s
            """,
            {
                "p": principal_id,
                "t": tenant_id,
                "pt": patient_id,
                "now": now,
                "hour_ago": now - HOUR,
                "day_ago": now - DAY,
                "horizon": now + CLOCK_SKEW,
            },
        )
        if row is None:
            return GateSnapshot(False, True, None, False, False, _NO_USAGE, None)
        patient = (
            Patient(
                id=str(row["pt_id"]),
                tenant_id=str(row["pt_tenant"]),
                is_decoy=row["is_decoy"],
                shredded_at=row["shredded_at"],
                created_at=row["pt_created"],
            )
            if row["pt_id"] is not None
            else None
        )
        key = (
            PatientKeyRow(str(row["pt_id"]), row["wrapped_key"], row["key_version"])
            if row["wrapped_key"] is not None
            else None
        )
        return GateSnapshot(
            principal_found=True,
            suspended=row["suspended_at"] is not None,
            patient=patient,
            on_care_team=bool(row["care"]) and patient is not None,
            break_glass=bool(row["glass"]) and patient is not None,
            usage=BudgetUsage(
                hour=row["hour"],
                day=row["day"],
                tenant_hour=0,
                patient_in_hour=row["patient_in_hour"],
                patient_in_day=row["patient_in_day"],
                hour_oldest=row["hour_oldest"],
                day_oldest=row["day_oldest"],
                tenant_oldest=None,
            ),
            key=key,
        )

    def lock_tenant_budget(self, tenant_id: str) -> None:
        # Serialises new releases within a tenant so the tenant cap is exact.
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('sealednotes-tenant-budget:' || %s, 0))",
            (tenant_id,),
        )

    def budget_usage(
        self, principal_id: str, tenant_id: str, patient_id: str | None, now: datetime
    ) -> BudgetUsage:
        row = self._one(
            "SELECT u.*, t.tenant_hour, t.tenant_oldest,"
            " (SELECT release_per_hour FROM tenants WHERE id = %(t)s) AS tenant_cap FROM ("
            + PRINCIPAL_USAGE_SQL
            + """) u, (
              SELECT count(*) AS tenant_hour, min(released_at) AS tenant_oldest
              FROM key_releases WHERE tenant_id = %(t)s AND released_at > %(hour_ago)s
                AND released_at <= %(horizon)s
            ) t
            """,
            {
                "p": principal_id,
                "t": tenant_id,
                "pt": patient_id,
                "hour_ago": now - HOUR,
                "day_ago": now - DAY,
                "horizon": now + CLOCK_SKEW,
            },
        )
        assert row is not None
        return BudgetUsage(
            hour=row["hour"],
            day=row["day"],
            tenant_hour=row["tenant_hour"],
            patient_in_hour=row["patient_in_hour"],
            patient_in_day=row["patient_in_day"],
            hour_oldest=row["hour_oldest"],
            day_oldest=row["day_oldest"],
            tenant_oldest=row["tenant_oldest"],
            tenant_cap=row["tenant_cap"],
        )

    def record_release(
        self,
        principal_id: str,
        tenant_id: str,
        patient_id: str,
        now: datetime,
        *,
        via: str = "care-team",
    ) -> None:
        """Book a release. The database itself refuses it past the tenant's hourly
        cap (TenantCapReached: the transaction is then aborted)."""
        try:
            self.conn.execute(
                "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at, via)"
                " VALUES (%s, %s, %s, %s, %s)",
                (principal_id, tenant_id, patient_id, now, via),
            )
        except psycopg.Error as e:
            if e.sqlstate == "SN429":
                raise TenantCapReached() from e
            raise

    def record_denial(self, principal_id: str, scope: str, now: datetime) -> int:
        """Record a denial; return the denials within the last hour, this one included."""
        self.conn.execute(
            "INSERT INTO release_denials (principal_id, denied_at, scope) VALUES (%s, %s, %s)",
            (principal_id, now, scope),
        )
        row = self._one(
            "SELECT count(*) AS n FROM release_denials d WHERE d.principal_id = %(p)s"
            " AND d.denied_at > greatest(%(since)s::timestamptz, (SELECT denials_since"
            " FROM principals WHERE id = %(p)s))",
            {"p": principal_id, "since": now - HOUR},
        )
        assert row is not None
        return int(row["n"])

    # -- keys ------------------------------------------------------------------------

    def patient_key(self, patient_id: str, *, for_share: bool = False) -> PatientKeyRow | None:
        # Writers take a share lock so a concurrent re-key (FOR UPDATE) cannot
        # swap the key between their read and their commit.
        lock = " FOR SHARE" if for_share else ""
        row = self._one(
            "SELECT patient_id, wrapped_key, key_version FROM patient_keys "
            f"WHERE patient_id = %s{lock}",
            (patient_id,),
        )
        if row is None:
            return None
        return PatientKeyRow(str(row["patient_id"]), row["wrapped_key"], row["key_version"])

    def insert_patient_key(
        self, patient_id: str, tenant_id: str, wrapped_key: str, key_version: int, now: datetime
    ) -> bool:
        """Insert the first key of a patient; False if one already exists (a race)."""
        row = self._one(
            "INSERT INTO patient_keys (patient_id, tenant_id, wrapped_key, key_version,"
            " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (patient_id) DO NOTHING RETURNING patient_id",
            (patient_id, tenant_id, wrapped_key, key_version, now, now),
        )
        return row is not None

    def wrapped_keys_below(
        self, tenant_id: str, version: int, *, after: str | None, limit: int
    ) -> list[PatientKeyRow]:
        """Wrapped keys older than `version`, in patient-id order (keyset pagination)."""
        rows = self._all(
            "SELECT patient_id, wrapped_key, key_version FROM patient_keys "
            "WHERE tenant_id = %s AND key_version < %s AND patient_id > %s "
            "ORDER BY patient_id LIMIT %s",
            (tenant_id, version, after or "00000000-0000-0000-0000-000000000000", limit),
        )
        return [
            PatientKeyRow(str(r["patient_id"]), r["wrapped_key"], r["key_version"]) for r in rows
        ]

    def replace_wrapped_keys(self, updates: list[tuple[str, str, str, int]], now: datetime) -> int:
        """Conditional batch update of (patient_id, old wrapped, new wrapped, new version).

        A row changed since it was read (rewrapped, re-keyed or shredded concurrently)
        is left alone, so no update is ever lost or applied twice.
        """
        if not updates:
            return 0
        pids, olds, news, versions = (list(x) for x in zip(*updates, strict=True))
        cur = self.conn.execute(
            "UPDATE patient_keys k SET wrapped_key = v.new, key_version = v.ver, updated_at = %s "
            "FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[]) AS v(pid, old, new, ver) "
            "WHERE k.patient_id = v.pid AND k.wrapped_key = v.old",
            (now, pids, olds, news, versions),
        )
        return cur.rowcount

    def key_version_counts(self, tenant_id: str) -> dict[int, int]:
        rows = self._all(
            "SELECT key_version, count(*) AS n FROM patient_keys WHERE tenant_id = %s "
            "GROUP BY key_version ORDER BY key_version",
            (tenant_id,),
        )
        return {int(r["key_version"]): int(r["n"]) for r in rows}

    def lock_patient_key(self, patient_id: str) -> PatientKeyRow | None:
        row = self._one(
            "SELECT patient_id, wrapped_key, key_version FROM patient_keys "
            "WHERE patient_id = %s FOR UPDATE",
            (patient_id,),
        )
        if row is None:
            return None
        return PatientKeyRow(str(row["patient_id"]), row["wrapped_key"], row["key_version"])

    def set_patient_key(
        self, patient_id: str, wrapped_key: str, key_version: int, now: datetime
    ) -> None:
        self.conn.execute(
            "UPDATE patient_keys SET wrapped_key = %s, key_version = %s, updated_at = %s "
            "WHERE patient_id = %s",
            (wrapped_key, key_version, now, patient_id),
        )

    def shred_patient(self, tenant_id: str, patient_id: str, now: datetime, due: datetime) -> bool:
        """Mark the patient shredded (410 at once); its wrapped key is destroyed at
        `due` by maintenance (`destroy_due_keys`)."""
        cur = self.conn.execute(
            "UPDATE patients SET shredded_at = %s, shred_due_at = %s WHERE tenant_id = %s"
            " AND id = %s AND shredded_at IS NULL",
            (now, due, tenant_id, patient_id),
        )
        return cur.rowcount == 1

    def cancel_shred(self, tenant_id: str, patient_id: str) -> bool:
        """Undo a shred whose key still exists; False if there is nothing to cancel."""
        try:
            cur = self.conn.execute(
                "UPDATE patients SET shredded_at = NULL, shred_due_at = NULL WHERE tenant_id = %s"
                " AND id = %s AND shredded_at IS NOT NULL AND key_destroyed_at IS NULL",
                (tenant_id, patient_id),
            )
        except psycopg.errors.CheckViolation:
            return False
        return cur.rowcount == 1

    def destroy_due_keys(self) -> int:
        """Maintenance: destroy the wrapped keys of patients whose shred is due."""
        try:
            row = self._one("SELECT sealednotes_destroy_due_keys() AS n")
        except psycopg.errors.InsufficientPrivilege as e:
            raise Forbidden(
                "This database role may not destroy keys: use the maintenance role"
            ) from e
        assert row is not None
        return int(row["n"])

    # -- limits and approvals --------------------------------------------------------------

    def charge_action(
        self,
        principal_id: str,
        kind: str,
        now: datetime,
        *,
        limit: int,
        patient_id: str | None = None,
    ) -> tuple[bool, datetime | None]:
        """Count one limited action in the principal's last hour: (allowed, oldest).
        With a patient, only distinct patients count and a repeat is free."""
        row = self._one(
            "WITH w AS (SELECT patient_id, at FROM principal_actions WHERE principal_id = %(p)s"
            " AND kind = %(k)s AND at > %(since)s AND at <= %(horizon)s),"
            " s AS (SELECT CASE WHEN %(pt)s::uuid IS NULL THEN (SELECT count(*) FROM w)"
            "   ELSE (SELECT count(DISTINCT patient_id) FROM w) END AS used,"
            "   coalesce((SELECT bool_or(patient_id = %(pt)s) FROM w), false) AS repeat,"
            "   (SELECT min(at) FROM w) AS oldest),"
            " ins AS (INSERT INTO principal_actions (principal_id, kind, patient_id, at)"
            "   SELECT %(p)s, %(k)s, %(pt)s, %(now)s FROM s WHERE s.repeat OR s.used < %(limit)s"
            "   RETURNING 1)"
            " SELECT s.used, s.repeat, s.oldest, (SELECT count(*) FROM ins) AS charged FROM s",
            {
                "p": principal_id,
                "k": kind,
                "pt": patient_id,
                "now": now,
                "since": now - HOUR,
                "horizon": now + CLOCK_SKEW,
                "limit": limit,
            },
        )
        assert row is not None
        return bool(row["charged"]), row["oldest"]

    def record_action(self, principal_id: str, kind: str, now: datetime) -> None:
        self.conn.execute(
            "INSERT INTO principal_actions (principal_id, kind, at) VALUES (%s, %s, %s)",
            (principal_id, kind, now),
        )

    def count_actions(self, principal_id: str, kind: str, since: datetime) -> int:
        row = self._one(
            "SELECT count(*) AS n FROM principal_actions WHERE principal_id = %s AND kind = %s"
            " AND at > %s",
            (principal_id, kind, since),
        )
        assert row is not None
        return int(row["n"])

    def top_releasers(
        self, tenant_id: str, since: datetime, limit: int = 5
    ) -> list[tuple[str, int]]:
        rows = self._all(
            "SELECT principal_id, count(*) AS n FROM key_releases WHERE tenant_id = %s"
            " AND recorded_at > %s GROUP BY principal_id ORDER BY n DESC LIMIT %s",
            (tenant_id, since, limit),
        )
        return [(str(r["principal_id"]), int(r["n"])) for r in rows]

    def insert_approval(self, approval: Approval) -> None:
        self.conn.execute(
            "INSERT INTO approvals (id, tenant_id, kind, target_principal_id, target_patient_id,"
            " params, requested_by, requested_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                approval.id,
                approval.tenant_id,
                approval.kind,
                approval.target_principal_id,
                approval.target_patient_id,
                Jsonb(approval.params),
                approval.requested_by,
                approval.requested_at,
                approval.expires_at,
            ),
        )

    def approval(
        self, tenant_id: str, approval_id: str, *, for_update: bool = False
    ) -> Approval | None:
        lock = " FOR UPDATE" if for_update else ""
        row = self._one(
            f"SELECT * FROM approvals WHERE tenant_id = %s AND id = %s{lock}",
            (tenant_id, approval_id),
        )
        return _approval(row) if row else None

    def approvals(self, tenant_id: str, status: str | None, limit: int = 200) -> list[Approval]:
        rows = self._all(
            "SELECT * FROM approvals WHERE tenant_id = %s AND (%s::text IS NULL OR status = %s)"
            " ORDER BY requested_at DESC LIMIT %s",
            (tenant_id, status, status, limit),
        )
        return [_approval(r) for r in rows]

    def decide_approval(
        self, approval_id: str, status: str, decided_by: str, now: datetime
    ) -> None:
        self.conn.execute(
            "UPDATE approvals SET status = %s, decided_by = %s, decided_at = %s WHERE id = %s",
            (status, decided_by, now, approval_id),
        )

    def patient_versions_for_update(self, patient_id: str) -> list[tuple[NoteRow, NoteVersionRow]]:
        rows = self._all(
            "SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,"
            " n.encounter_at, n.created_by, n.created_at, n.updated_at,"
            " v.note_id, v.version, v.sealed, v.author_id, v.created_at AS v_created_at "
            "FROM notes n JOIN note_versions v ON v.note_id = n.id WHERE n.patient_id = %s "
            "ORDER BY n.id, v.version FOR UPDATE OF v",
            (patient_id,),
        )
        out = []
        for r in rows:
            note = _note(r)
            version = NoteVersionRow(
                note_id=str(r["note_id"]),
                version=r["version"],
                sealed=bytes(r["sealed"]),
                author_id=str(r["author_id"]),
                created_at=r["v_created_at"],
            )
            out.append((note, version))
        return out

    def reseal_version(self, note_id: str, version: int, sealed: bytes) -> None:
        self.conn.execute(
            "UPDATE note_versions SET sealed = %s WHERE note_id = %s AND version = %s",
            (sealed, note_id, version),
        )

    # -- notes -----------------------------------------------------------------------

    def insert_note(
        self,
        note_id: str,
        tenant_id: str,
        patient_id: str,
        kind: str,
        encounter_at: datetime | None,
        author_id: str,
        now: datetime,
    ) -> NoteRow:
        row = self._one(
            "INSERT INTO notes (id, tenant_id, patient_id, kind, current_version, encounter_at,"
            f" created_by, created_at, updated_at) VALUES (%s, %s, %s, %s, 1, %s, %s, %s, %s) "
            f"RETURNING {NOTE_COLUMNS}",
            (note_id, tenant_id, patient_id, kind, encounter_at, author_id, now, now),
        )
        assert row is not None
        return _note(row)

    def insert_note_version(
        self, note_id: str, version: int, sealed: bytes, author_id: str, now: datetime
    ) -> None:
        self.conn.execute(
            "INSERT INTO note_versions (note_id, version, sealed, author_id, created_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            (note_id, version, sealed, author_id, now),
        )

    def claim_idempotency_key(
        self, principal_id: str, key: str, digest: bytes, note_id: str, now: datetime
    ) -> tuple[str, bytes] | None:
        """Claim `key` for a new note. None if claimed now; else the earlier
        (note_id, digest). A concurrent claim waits for the other transaction."""
        self.conn.execute(
            "DELETE FROM idempotency_keys WHERE principal_id = %s AND key = %s AND created_at < %s",
            (principal_id, key, now - DAY),
        )
        row = self._one(
            "INSERT INTO idempotency_keys (principal_id, key, request_digest, note_id,"
            " created_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (principal_id, key)"
            " DO NOTHING RETURNING note_id",
            (principal_id, key, digest, note_id, now),
        )
        if row is not None:
            return None
        existing = self._one(
            "SELECT note_id, request_digest FROM idempotency_keys "
            "WHERE principal_id = %s AND key = %s",
            (principal_id, key),
        )
        assert existing is not None
        return str(existing["note_id"]), bytes(existing["request_digest"])

    def note(self, tenant_id: str, note_id: str) -> NoteRow | None:
        row = self._one(
            f"SELECT {NOTE_COLUMNS} FROM notes WHERE tenant_id = %s AND id = %s",
            (tenant_id, note_id),
        )
        return _note(row) if row else None

    def notes_for_patient(
        self,
        patient_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[NoteRow]:
        if after is None:
            rows = self._all(
                f"SELECT {NOTE_COLUMNS} FROM notes WHERE patient_id = %s "
                "ORDER BY created_at, id LIMIT %s",
                (patient_id, limit),
            )
        else:
            rows = self._all(
                f"SELECT {NOTE_COLUMNS} FROM notes WHERE patient_id = %s "
                "AND (created_at, id) > (%s, %s) ORDER BY created_at, id LIMIT %s",
                (patient_id, after[0], after[1], limit),
            )
        return [_note(r) for r in rows]

    def bump_note_version(
        self,
        note_id: str,
        expected_version: int,
        kind: str,
        encounter_at: datetime | None,
        now: datetime,
    ) -> NoteRow | None:
        """Conditional update: None when the note moved past expected_version."""
        row = self._one(
            "UPDATE notes SET current_version = current_version + 1, kind = %s,"
            " encounter_at = %s, updated_at = %s "
            f"WHERE id = %s AND current_version = %s AND status = 'current' "
            f"RETURNING {NOTE_COLUMNS}",
            (kind, encounter_at, now, note_id, expected_version),
        )
        return _note(row) if row else None

    def mark_entered_in_error(self, note_id: str, now: datetime) -> bool:
        cur = self.conn.execute(
            "UPDATE notes SET status = 'entered-in-error', updated_at = %s "
            "WHERE id = %s AND status = 'current'",
            (now, note_id),
        )
        return cur.rowcount == 1

    def note_with_current_version(
        self, tenant_id: str, note_id: str
    ) -> tuple[NoteRow, NoteVersionRow | None] | None:
        row = self._one(
            "SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,"
            " n.encounter_at, n.created_by, n.created_at, n.updated_at,"
            " v.note_id, v.version, v.sealed, v.author_id, v.created_at AS v_created_at "
            "FROM notes n LEFT JOIN note_versions v ON v.note_id = n.id"
            " AND v.version = n.current_version WHERE n.tenant_id = %s AND n.id = %s",
            (tenant_id, note_id),
        )
        if row is None:
            return None
        version = (
            NoteVersionRow(
                note_id=str(row["note_id"]),
                version=row["version"],
                sealed=bytes(row["sealed"]),
                author_id=str(row["author_id"]),
                created_at=row["v_created_at"],
            )
            if row["note_id"] is not None
            else None
        )
        return _note(row), version

    def note_version(self, note_id: str, version: int) -> NoteVersionRow | None:
        row = self._one(
            "SELECT note_id, version, sealed, author_id, created_at FROM note_versions "
            "WHERE note_id = %s AND version = %s",
            (note_id, version),
        )
        return _version(row) if row else None

    def current_versions(self, note_ids: list[str]) -> dict[str, NoteVersionRow]:
        rows = self._all(
            "SELECT v.note_id, v.version, v.sealed, v.author_id, v.created_at FROM notes n "
            "JOIN note_versions v ON v.note_id = n.id AND v.version = n.current_version "
            "WHERE n.id = ANY(%s)",
            (note_ids,),
        )
        return {str(r["note_id"]): _version(r) for r in rows}

    def note_versions(self, note_id: str) -> list[NoteVersionRow]:
        rows = self._all(
            "SELECT note_id, version, sealed, author_id, created_at FROM note_versions "
            "WHERE note_id = %s ORDER BY version",
            (note_id,),
        )
        return [_version(r) for r in rows]

    # -- audit -----------------------------------------------------------------------

    def insert_audit_event(self, event: AuditEvent) -> None:
        """Append to an audit chain. Fails closed: AuditUnavailable."""
        preferred = self.conn.info.backend_pid % auditchain.SHARDS
        try:
            # One round trip: the function takes the shard's lock (held until commit,
            # so committed records of a shard are always a gapless prefix), dates the
            # record by the database clock, chains and inserts it.
            self.conn.execute(
                "SELECT sealednotes_audit_append(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (preferred, *(getattr(event, k) for k in auditchain.FIELDS)),
            )
        except psycopg.Error as e:
            log.error("audit write failed: %s", type(e).__name__)
            raise AuditUnavailable() from e

    def set_actor(
        self,
        *,
        principal_id: str | None,
        role: str,
        request_id: str | None,
        client_addr: str | None,
        reason: str | None = None,
    ) -> None:
        """Name who is acting in this transaction, for the records the database's
        triggers write when access rights change (same transaction only)."""
        self.conn.execute(
            "SELECT set_config('sealednotes.actor_id', %s, true),"
            " set_config('sealednotes.actor_role', %s, true),"
            " set_config('sealednotes.request_id', %s, true),"
            " set_config('sealednotes.client_addr', %s, true),"
            " set_config('sealednotes.reason', %s, true)",
            (principal_id or "", role, request_id or "", client_addr or "", reason or ""),
        )

    def try_lock_checkpointer(self) -> bool:
        row = self._one("SELECT pg_try_advisory_xact_lock(%s, -1) AS ok", (AUDIT_LOCK_CLASS,))
        return bool(row and row["ok"])

    def audit_heads(self) -> dict[int, tuple[int, bytes]]:
        # Every shard that exists, known or not: a checkpoint covers them all.
        rows = self._all(
            "WITH RECURSIVE s(shard) AS ("
            "  (SELECT shard FROM audit_events ORDER BY shard LIMIT 1)"
            "  UNION ALL SELECT (SELECT e.shard FROM audit_events e WHERE e.shard > s.shard"
            "   ORDER BY e.shard LIMIT 1) FROM s WHERE s.shard IS NOT NULL) "
            "SELECT s.shard, h.seq, h.hash FROM s CROSS JOIN LATERAL (SELECT seq, hash"
            " FROM audit_events e WHERE e.shard = s.shard ORDER BY seq DESC LIMIT 1) h"
            " WHERE s.shard IS NOT NULL"
        )
        return {int(r["shard"]): (int(r["seq"]), bytes(r["hash"])) for r in rows}

    def last_checkpoint(self) -> dict[str, Any] | None:
        return self._one(
            "SELECT id, created_at, total, payload, signature FROM audit_checkpoints "
            "ORDER BY id DESC LIMIT 1"
        )

    def insert_checkpoint(
        self, created_at: datetime, total: int, payload: str, signature: str
    ) -> int:
        row = self._one(
            "INSERT INTO audit_checkpoints (created_at, total, payload, signature) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (created_at, total, payload, signature),
        )
        assert row is not None
        return int(row["id"])

    def checkpoints(self) -> list[dict[str, Any]]:
        return self._all(
            "SELECT id, created_at, total, payload, signature FROM audit_checkpoints ORDER BY id"
        )

    def iter_audit_chain(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every record in (shard, seq) order, streamed with a server-side cursor."""
        with self.conn.cursor(name="audit_chain_scan", row_factory=dict_row) as cur:
            cur.itersize = batch
            cur.execute(
                "SELECT id, shard, seq, prev_hash, hash, at, tenant_id, principal_id, role,"
                " patient_id, note_id, action, outcome, reason, request_id, client_addr"
                " FROM audit_events ORDER BY shard, seq"
            )
            yield from cur

    def audit_query(
        self,
        *,
        tenant_id: str,
        patient_id: str | None = None,
        principal_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where = ["tenant_id = %(tenant)s"]
        if patient_id is not None:
            # Asking for a patient's records must not tell whether it is a decoy.
            where.append(
                "NOT (action = 'patient.decoy'"
                " OR (action LIKE 'approval.%%' AND reason LIKE 'decoy-clear %%'))"
            )
        params: dict[str, Any] = {"tenant": tenant_id, "limit": limit}
        for column, value in (
            ("patient_id", patient_id),
            ("principal_id", principal_id),
            ("action", action),
            ("outcome", outcome),
        ):
            if value is not None:
                where.append(f"{column} = %({column})s")
                params[column] = value
        if since is not None:
            where.append("at >= %(since)s")
            params["since"] = since
        if until is not None:
            where.append("at < %(until)s")
            params["until"] = until
        if after_id is not None:
            where.append("id > %(after)s")
            params["after"] = after_id
        return self._all(
            "SELECT id, at, tenant_id, principal_id, role, patient_id, note_id, action, outcome,"
            f" reason, request_id, client_addr FROM audit_events WHERE {' AND '.join(where)}"
            " ORDER BY id LIMIT %(limit)s",
            params,
        )

    def iter_audit_export(
        self, *, since: datetime | None, tenant_id: str | None, batch: int = 5000
    ) -> Iterator[dict[str, Any]]:
        with self.conn.cursor(name="audit_export", row_factory=dict_row) as cur:
            cur.itersize = batch
            cur.execute(
                "SELECT id, at, tenant_id, principal_id, role, patient_id, note_id, action,"
                " outcome, reason, request_id, client_addr FROM audit_events"
                " WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
                " AND (%(tenant)s::uuid IS NULL OR tenant_id = %(tenant)s) ORDER BY at, id",
                {"since": since, "tenant": tenant_id},
            )
            yield from cur

    def prune_ledgers(self, older_than: timedelta) -> dict[str, int]:
        """Maintenance: drop ledger rows older than `older_than` (never younger than
        two days), through the audited database function."""
        try:
            rows = self._all("SELECT ledger, deleted FROM sealednotes_prune(%s)", (older_than,))
        except psycopg.errors.InsufficientPrivilege as e:
            raise Forbidden("This database role may not prune: use the maintenance role") from e
        return {r["ledger"]: int(r["deleted"]) for r in rows}

    def count_audit_events(self, tenant_id: str) -> int:
        row = self._one("SELECT count(*) AS n FROM audit_events WHERE tenant_id = %s", (tenant_id,))
        assert row is not None
        return int(row["n"])

    def iter_unwrap_records(self, since: datetime | None) -> Iterator[dict[str, Any]]:
        """The service's `key.unwrap` records (what caused each Vault unwrap)."""
        with self.conn.cursor(name="audit_unwraps", row_factory=dict_row) as cur:
            cur.itersize = 5000
            cur.execute(
                "SELECT at, tenant_id, patient_id, action, principal_id, request_id, reason"
                " FROM audit_events WHERE action IN ('key.unwrap', 'key.create')"
                " AND (%(since)s::timestamptz IS NULL OR at >= %(since)s) ORDER BY at",
                {"since": since},
            )
            yield from cur

    # -- health ------------------------------------------------------------------------

    def ping(self) -> None:
        self.conn.execute("SELECT 1")


class Store:
    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 2.0,
    ) -> None:
        self._conninfo = conninfo
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[dict[str, Any]]] | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._returned_at: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return "Store(<conninfo hidden>)"

    def _connect_kwargs(self) -> dict[str, Any]:
        statement_ms = int(self._timeout * 1000)
        return {
            "row_factory": dict_row,
            "connect_timeout": max(1, int(self._timeout)),
            "options": f"-c statement_timeout={statement_ms} "
            f"-c lock_timeout={statement_ms} "
            f"-c idle_in_transaction_session_timeout={statement_ms * 5}",
            "application_name": "sealednotes",
        }

    def pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[dict[str, Any]]]:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = psycopg_pool.ConnectionPool(
                    self._conninfo,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    kwargs=self._connect_kwargs(),
                    check=self._check_if_idle,
                    reset=self._mark_returned,
                    open=False,
                    name="sealednotes",
                )
                self._pool.open(wait=False)
                self._pid = os.getpid()
            return self._pool

    def _mark_returned(self, conn: psycopg.Connection[Any]) -> None:
        self._returned_at[conn] = time.monotonic()

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        # A connection used moments ago is healthy enough to try; one that sat idle
        # (perhaps across a database restart) is checked before it is handed out.
        # A broken busy connection still fails its query, answers 503, and is
        # discarded by the pool.
        if time.monotonic() - self._returned_at.get(conn, 0.0) > IDLE_CHECK_SECONDS:
            psycopg_pool.ConnectionPool.check_connection(conn)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction: committed at the end of the block, rolled back on error
        (unless the use case called `tx.commit()` first, e.g. to keep a denial)."""
        with self._connection() as conn:
            yield Tx(conn)

    @contextmanager
    def autocommit(self) -> Iterator[Tx]:
        """For a single read-only statement: one round trip, no BEGIN/COMMIT."""
        with self._connection() as conn:
            conn.autocommit = True
            try:
                yield Tx(conn)
            finally:
                conn.autocommit = False

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        deadline.check()
        try:
            with self.pool().connection() as conn:
                yield conn
        except ServiceError:
            raise
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            log.warning("database unavailable: %s", type(e).__name__)
            raise DatabaseUnavailable() from e
        except psycopg.errors.QueryCanceled as e:
            log.warning("database statement timed out")
            raise DatabaseUnavailable() from e

    # -- schema --------------------------------------------------------------------

    def migrate(
        self,
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
        with psycopg.connect(self._conninfo, autocommit=False) as conn:
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
    "schema_migrations": ("SELECT",),
    # Identity providers and SMART clients (migration 0020; SQL in service/store_idp.py).
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
)
MAINTENANCE_FUNCTIONS = ("sealednotes_prune(interval)", "sealednotes_destroy_due_keys()")


def _ensure_login_role(conn: psycopg.Connection[Any], role: str) -> sql.Identifier:
    ident = sql.Identifier(role)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
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
