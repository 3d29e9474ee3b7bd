"""Patients' wrapped data keys: first key, rotation's rewrap batches, re-key."""

from __future__ import annotations

import logging
from datetime import datetime

from service.adapters.postgres.base import (
    Repo,
)
from service.models import (
    PatientKeyRow,
)

log = logging.getLogger(__name__)


class KeysRepository(Repo):
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
