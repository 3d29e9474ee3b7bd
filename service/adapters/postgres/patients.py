"""Patients, care teams, break-glass grants and shredding."""

from __future__ import annotations

import logging
from datetime import datetime

import psycopg
import psycopg.errors

from service.adapters.postgres.base import (
    Repo,
    _patient,
)
from service.errors import (
    Forbidden,
)
from service.models import (
    Patient,
)

log = logging.getLogger(__name__)


class PatientsRepository(Repo):
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
