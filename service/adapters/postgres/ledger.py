"""The key-release budget ledger and the limits on every role (append-only
for the service; the database checks the tenant cap itself, migration 0005)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors

from service.adapters.postgres.base import (
    CLOCK_SKEW,
    DAY,
    HOUR,
    PRINCIPAL_USAGE_SQL,
    Repo,
    StatementRows,
    outside_transaction,
)
from service.adapters.postgres.prepared import OwnStatement
from service.adapters.postgres.snapshots import (
    GATE_SNAPSHOT_CONFIRMING_SQL,
    GATE_SNAPSHOT_SQL,
    NOTE_SNAPSHOT_RECORDING_SQL,
    NOTE_SNAPSHOT_SQL,
    gate_snapshot_from_row,
    note_snapshot_from_row,
    remembered_params,
)
from service.audit import chain as auditchain
from service.errors import (
    AuditUnavailable,
    Forbidden,
    TenantCapReached,
)
from service.models import (
    ActionCharge,
    BudgetUsage,
    Confirmation,
    GateSnapshot,
    NoteSnapshot,
)

log = logging.getLogger(__name__)
_SNAPSHOT_ROWS = StatementRows()
# The hot path's statements, each on its own, run on libpq directly (prepared.py): a
# remembered caller's warm re-read, and the snapshot a remembered caller's create
# starts with.
_RECORDING = OwnStatement("sealednotes_warm_read", NOTE_SNAPSHOT_RECORDING_SQL)
_CONFIRMING = OwnStatement("sealednotes_write_snapshot", GATE_SNAPSHOT_CONFIRMING_SQL)


class LedgerRepository(Repo):
    def gate_snapshot(
        self,
        principal_id: str,
        tenant_id: str,
        patient_id: str,
        now: datetime,
        *,
        token_hash: bytes | None = None,
    ) -> GateSnapshot:
        """Suspension, patient, care team, break-glass, this principal's budget usage and
        the wrapped key: one round trip for the common (warm) read. The tenant-wide
        count is left out: it is only needed, under lock, for a new release. With
        `token_hash` (a remembered caller), also the principal as stored and whether
        the token is its live one."""
        confirm = token_hash is not None
        params = self._window(principal_id, tenant_id, now, pt=patient_id) | {"token": token_hash}
        if confirm and outside_transaction(self.conn):
            # A remembered caller's create starts here: a statement on its own.
            row = _CONFIRMING.fetch_one(self.conn, params)
        else:
            row = self._read_one(
                GATE_SNAPSHOT_CONFIRMING_SQL if confirm else GATE_SNAPSHOT_SQL, params
            )
        return gate_snapshot_from_row(row, with_principal=confirm)

    def note_gate_snapshot(
        self,
        principal_id: str,
        tenant_id: str,
        note_id: str,
        now: datetime,
        *,
        confirm: Confirmation | None = None,
    ) -> NoteSnapshot:
        """A note with its current version, the gate's snapshot for its patient and the
        principal as stored, in one statement: a warm read's only read. Always one row:
        the principal's columns are null when there is no such principal, the note's
        when the tenant has no such note.

        With `confirm` (a remembered caller), the statement also says whether its token
        is live, and, when the account is exactly as remembered, the read is a warm
        re-read (WARM_REREAD) and the worker may hold the key (`record_grant`: it does
        not know that it holds none), appends the read's `note.read granted` record through
        sealednotes_audit_append: one round trip for the whole read, the record
        committed with the statement (it runs outside a transaction) before any content
        is decrypted. The gate then checks the same snapshot (release_note).

        The row comes in binary format: its ~45 columns (timestamps, uuids, the note's
        ciphertext) cost PostgreSQL about 12 % of the read's work to print as text
        (callgrind, per warm read: 1.22 million instructions as text, 1.07 as binary)."""
        params = self._window(principal_id, tenant_id, now, note=note_id)
        if confirm is None or not confirm.record_grant or not outside_transaction(self.conn):
            # Inside a transaction the record would commit only with it (and vanish
            # with a rollback); a read that will call Vault records its grant with
            # `key.unwrap`, in one commit: confirm the caller, leave the record to the gate.
            token = confirm.token_hash if confirm is not None else None
            row = self._read_one(
                NOTE_SNAPSHOT_SQL, params | {"token": token}, binary=True, rows=_SNAPSHOT_ROWS
            )
            assert row is not None  # one row, whatever matched
            return note_snapshot_from_row(row, recorded=False)
        params.update(remembered_params(confirm.principal))
        params |= {
            "token": confirm.token_hash,
            "shard": self.conn.info.backend_pid % auditchain.SHARDS,
            "request_id": confirm.request_id,
            "client_addr": confirm.client_addr,
        }
        try:
            # Outside a transaction: the statement is its own, committed with its record.
            row = _RECORDING.fetch_one(self.conn, params)
        except psycopg.OperationalError:
            raise  # the database is unreachable or timed out: the store answers 503
        except psycopg.Error as e:  # the append refused (or failed): fail closed
            log.error("audit write failed: %s", type(e).__name__)
            raise AuditUnavailable() from e
        assert row is not None
        return note_snapshot_from_row(row, recorded=row["recorded_seq"] is not None)

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
        tenant_id: str,
        principal_id: str,
        kind: str,
        now: datetime,
        *,
        limit: int,
        patient_id: str | None = None,
        also_lock: Sequence[str] = (),
    ) -> ActionCharge:
        """Lock, then count, in one call (migration 0028).
        With a patient, only distinct patients count and a repeat is free."""
        row = self._one(
            "SELECT * FROM sealednotes_charge_action(%s, %s::uuid[], %s, %s, %s, %s, %s, %s, %s)",
            (
                tenant_id,
                [principal_id, *also_lock],
                principal_id,
                kind,
                patient_id,
                now,
                now - HOUR,
                now + CLOCK_SKEW,
                limit,
            ),
        )
        assert row is not None
        return ActionCharge(
            suspended=row["suspended"], allowed=row["charged"], oldest=row["oldest"]
        )

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
