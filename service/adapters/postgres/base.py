"""Shared by the PostgreSQL repositories: row mappers, the budget-usage query, and
the `Repo` base (a repository runs its statements on its unit of work's connection).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import RowMaker

from service.models import (
    Approval,
    BudgetUsage,
    NoteRow,
    NoteVersionRow,
    Patient,
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


class StatementRows:
    """A row factory for one statement of fixed columns: dict rows whose keys are read
    from the result once, not again on every execution as psycopg's dict_row does (the
    warm read's ~45 column names were decoded afresh on each read). Read again when
    the column count changes (a schema change re-planned the statement)."""

    def __init__(self) -> None:
        self._names: tuple[str, ...] = ()

    def __call__(self, cursor: psycopg.Cursor[Any]) -> RowMaker[dict[str, Any]]:
        names = self._names
        result = cursor.pgresult
        if result is None or result.nfields != len(names):
            names = self._names = tuple(column.name for column in cursor.description or ())

        def make(values: Any) -> dict[str, Any]:
            return dict(zip(names, values, strict=True))

        return make


class Repo:
    """One aggregate's statements, each one round trip, on the unit of work's
    connection (so every repository of a unit of work shares its transaction)."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self.conn = conn

    def _one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        return self.conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self.conn.execute(sql, params).fetchall()

    def _read_one(
        self,
        sql: str,
        params: Any = None,
        *,
        binary: bool = False,
        rows: StatementRows | None = None,
    ) -> dict[str, Any] | None:
        """A read that needs no transaction of its own: when none is open yet, run it
        on its own (no BEGIN round trip). Reads at READ COMMITTED see a fresh snapshot
        per statement either way; anything that writes or locks opens the transaction.
        `binary`: the row comes in PostgreSQL's binary format (see LedgerRepository.
        note_gate_snapshot); the values loaded are the same. `rows`: the statement's
        own row factory (StatementRows)."""
        if outside_transaction(self.conn):
            with self._on_its_own():
                return self._fetch_one(sql, params, binary, rows)
        return self._fetch_one(sql, params, binary, rows)

    def _fetch_one(
        self, sql: str, params: Any, binary: bool, rows: StatementRows | None
    ) -> dict[str, Any] | None:
        cursor = self.conn.cursor() if rows is None else self.conn.cursor(row_factory=rows)
        return cursor.execute(sql, params, binary=binary).fetchone()

    @contextmanager
    def _on_its_own(self) -> Iterator[None]:
        """Each statement of the block is its own transaction (no BEGIN or COMMIT round
        trip). Only where no transaction is open: see `outside_transaction`."""
        self.conn.autocommit = True
        try:
            yield
        finally:
            self.conn.autocommit = False


def outside_transaction(conn: psycopg.Connection[Any]) -> bool:
    """No transaction open on this (non-autocommit) connection yet."""
    return not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
