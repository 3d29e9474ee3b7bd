"""The key-release budget ledger and the limits on every role (append-only
for the service; the database checks the tenant cap itself, migration 0005)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors

from service.adapters.postgres.base import (
    _NO_USAGE,
    CLOCK_SKEW,
    DAY,
    HOUR,
    PRINCIPAL_USAGE_SQL,
    Repo,
    _note,
    _principal,
)
from service.errors import (
    Forbidden,
    TenantCapReached,
)
from service.models import (
    BudgetUsage,
    GateSnapshot,
    NoteSnapshot,
    NoteVersionRow,
    Patient,
    PatientKeyRow,
    Principal,
)

log = logging.getLogger(__name__)


class LedgerRepository(Repo):
    def gate_snapshot(
        self, principal_id: str, tenant_id: str, patient_id: str, now: datetime
    ) -> GateSnapshot:
        """Suspension, patient, care team, break-glass, this principal's budget usage and
        the wrapped key: one round trip for the common (warm) read. The tenant-wide
        count is left out: it is only needed, under lock, for a new release."""
        row = self._read_one(
            "SELECT " + _SNAPSHOT_COLUMNS + " FROM principals pr"
            " LEFT JOIN patients pt ON pt.tenant_id = %(t)s AND pt.id = %(pt)s"
            + _SNAPSHOT_JOINS.format(patient="%(pt)s")
            + " WHERE pr.id = %(p)s",
            self._window(principal_id, tenant_id, now, pt=patient_id),
        )
        return _snapshot(row)

    def note_gate_snapshot(
        self,
        principal_id: str,
        tenant_id: str,
        note_id: str,
        now: datetime,
        *,
        token_hash: bytes | None = None,
    ) -> NoteSnapshot:
        """A note with its current version, the gate's snapshot for its patient and the
        principal as stored (with whether `token_hash` is its live token), in one
        statement: a warm read's only read. Always one row: the principal's columns
        are null when there is no such principal, the note's when the tenant has no
        such note."""
        row = self._read_one(
            "SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,"
            " n.encounter_at, n.created_by, n.created_at, n.updated_at,"
            " v.version AS v_version, v.sealed, v.author_id, v.created_at AS v_created_at,"
            " pr.id IS NOT NULL AS principal_found, " + _PRINCIPAL_AS_PR + ","
            " EXISTS (SELECT 1 FROM tokens tk WHERE tk.token_hash = %(token)s"
            "   AND tk.principal_id = pr.id AND tk.revoked_at IS NULL"
            "   AND tk.expires_at > %(now)s) AS token_valid, "
            + _SNAPSHOT_COLUMNS
            + " FROM (SELECT) one"
            " LEFT JOIN principals pr ON pr.id = %(p)s"
            " LEFT JOIN notes n ON n.tenant_id = %(t)s AND n.id = %(note)s"
            " LEFT JOIN note_versions v ON v.note_id = n.id AND v.version = n.current_version"
            " LEFT JOIN patients pt ON pt.tenant_id = %(t)s AND pt.id = n.patient_id"
            + _SNAPSHOT_JOINS.format(patient="n.patient_id"),
            self._window(principal_id, tenant_id, now, note=note_id) | {"token": token_hash},
        )
        assert row is not None  # one row, whatever matched
        principal = _principal_as_pr(row) if row["principal_found"] else None
        gate = _snapshot(row if row["principal_found"] else None)
        if row["id"] is None:
            return NoteSnapshot(None, None, gate, principal, row["token_valid"])
        note = _note(row)
        version = (
            NoteVersionRow(
                note_id=note.id,
                version=row["v_version"],
                sealed=bytes(row["sealed"]),
                author_id=str(row["author_id"]),
                created_at=row["v_created_at"],
            )
            if row["v_version"] is not None
            else None
        )
        return NoteSnapshot(note, version, gate, principal, row["token_valid"])

    @staticmethod
    def _window(principal_id: str, tenant_id: str, now: datetime, **extra: str) -> dict[str, Any]:
        return {
            "p": principal_id,
            "t": tenant_id,
            "now": now,
            "hour_ago": now - HOUR,
            "day_ago": now - DAY,
            "horizon": now + CLOCK_SKEW,
            **extra,
        }

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
        # A repeat (this patient already in the window) is answered from an index and
        # never counts the window; only a new patient, or an action without one, does.
        row = self._one(
            "WITH r AS (SELECT %(pt)s::uuid IS NOT NULL AND EXISTS (SELECT 1"
            "   FROM principal_actions WHERE principal_id = %(p)s AND kind = %(k)s"
            "   AND patient_id = %(pt)s AND at > %(since)s AND at <= %(horizon)s) AS repeat),"
            " s AS (SELECT r.repeat, CASE WHEN r.repeat THEN 0"
            "   WHEN %(pt)s::uuid IS NULL THEN (SELECT count(*) FROM principal_actions"
            "     WHERE principal_id = %(p)s AND kind = %(k)s"
            "     AND at > %(since)s AND at <= %(horizon)s)"
            "   ELSE (SELECT count(DISTINCT patient_id) FROM principal_actions"
            "     WHERE principal_id = %(p)s AND kind = %(k)s"
            "     AND at > %(since)s AND at <= %(horizon)s) END AS used,"
            "   (SELECT min(at) FROM principal_actions WHERE principal_id = %(p)s"
            "     AND kind = %(k)s AND at > %(since)s AND at <= %(horizon)s) AS oldest FROM r),"
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

    def prune_ledgers(self, older_than: timedelta) -> dict[str, int]:
        """Maintenance: drop ledger rows older than `older_than` (never younger than
        two days), through the audited database function."""
        try:
            rows = self._all("SELECT ledger, deleted FROM sealednotes_prune(%s)", (older_than,))
        except psycopg.errors.InsufficientPrivilege as e:
            raise Forbidden("This database role may not prune: use the maintenance role") from e
        return {r["ledger"]: int(r["deleted"]) for r in rows}


# The gate's snapshot: the principal's suspension, the patient, care team and
# break-glass, the wrapped key and the principal's usage (service/access/gate.py).
# The principal's columns under their own names (the note's share id, tenant_id, ...).
_PRINCIPAL_AS_PR = (
    "pr.id AS pr_id, pr.tenant_id AS pr_tenant_id, pr.name AS pr_name, pr.role AS pr_role,"
    " pr.release_per_hour AS pr_release_per_hour, pr.release_per_day AS pr_release_per_day,"
    " pr.suspended_reason AS pr_suspended_reason, pr.denials_since AS pr_denials_since"
)


def _principal_as_pr(row: dict[str, Any]) -> Principal:
    return _principal(
        {
            "id": row["pr_id"],
            "tenant_id": row["pr_tenant_id"],
            "name": row["pr_name"],
            "role": row["pr_role"],
            "suspended_at": row["suspended_at"],
            "release_per_hour": row["pr_release_per_hour"],
            "release_per_day": row["pr_release_per_day"],
            "suspended_reason": row["pr_suspended_reason"],
            "denials_since": row["pr_denials_since"],
        }
    )


_SNAPSHOT_COLUMNS = (
    "pr.suspended_at,"
    " pt.id AS pt_id, pt.tenant_id AS pt_tenant, pt.is_decoy, pt.shredded_at,"
    " pt.created_at AS pt_created, ca.care, gl.glass,"
    " k.wrapped_key, k.key_version,"
    " u.hour, u.day, u.patient_in_hour, u.patient_in_day, u.hour_oldest, u.day_oldest"
)
_SNAPSHOT_JOINS = (
    " LEFT JOIN patient_keys k ON k.patient_id = pt.id"
    " CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM care_team c"
    "   WHERE c.patient_id = {patient} AND c.principal_id = %(p)s"
    "   AND (c.until IS NULL OR c.until > %(now)s)) AS care) ca"
    " CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM break_glass b"
    "   WHERE b.patient_id = {patient} AND b.principal_id = %(p)s"
    "   AND b.opened_at <= %(now)s AND b.expires_at > %(now)s) AS glass) gl"
    " CROSS JOIN LATERAL (" + PRINCIPAL_USAGE_SQL.replace("%(pt)s", "{patient}") + ") u"
)


def _snapshot(row: dict[str, Any] | None) -> GateSnapshot:
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
