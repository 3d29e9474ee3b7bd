"""The tamper-evident log: appends (through the database's function), checkpoints,
chain scans, the auditor's queries."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import dict_row, tuple_row

from service.adapters.postgres.base import (
    AUDIT_LOCK_CLASS,
    Repo,
    outside_transaction,
)
from service.adapters.postgres.groupcommit import AuditGroupCommit
from service.audit import chain as auditchain
from service.errors import (
    AuditUnavailable,
)
from service.models import (
    AuditEvent,
)

log = logging.getLogger(__name__)


APPEND = "SELECT sealednotes_audit_append(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


def append_params(conn: psycopg.Connection[Any], event: AuditEvent) -> tuple[Any, ...]:
    """sealednotes_audit_append's arguments: the shard this connection prefers (spreads
    concurrent writers over the shards' locks), then the record's fields."""
    preferred = conn.info.backend_pid % auditchain.SHARDS
    return (preferred, *(getattr(event, k) for k in auditchain.FIELDS))


class AuditRepository(Repo):
    def __init__(
        self, conn: psycopg.Connection[dict[str, Any]], group: AuditGroupCommit | None = None
    ) -> None:
        super().__init__(conn)
        self._group = group

    def insert_audit_event(self, *events: AuditEvent) -> None:
        """Append to an audit chain, in this order. Fails closed: AuditUnavailable."""
        if not events:
            return
        if self._group is not None and outside_transaction(self.conn):
            # The unit of work has written nothing (a warm read): the records commit
            # on their own, together with those of concurrent requests, before this
            # returns; no BEGIN or COMMIT of its own.
            self._group.append(self.conn, list(events))
            return
        for event in events:
            params = append_params(self.conn, event)
            try:
                # One round trip: the function takes the shard's lock (held until
                # commit, so committed records of a shard are always a gapless prefix),
                # dates the record by the database clock, chains and inserts it.
                self.conn.execute(APPEND, params)
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

    def iter_chain_records(
        self, after: dict[int, int] | None = None, batch: int = 10000
    ) -> Iterator[tuple[Any, ...]]:
        """Records in (shard, seq) order as (id, shard, seq, prev_hash, hash, at, the
        FIELDS...), with `at` and the ids as text exactly as the canonical encoding has
        them (so the verifier converts nothing). `after`: shard -> the last seq already
        verified; only later records of those shards are read (an index range each),
        and every record of any other shard. Also any record numbered below 1 in those
        shards: the append functions never write one, the table does not refuse one
        (migration 0030), and it would sit before the verified head, unread."""
        with self.conn.cursor(name="audit_chain_records", row_factory=tuple_row) as cur:
            cur.itersize = batch
            if after:
                shards = sorted(after)
                cur.execute(
                    f"SELECT {_CHAIN_COLUMNS} FROM unnest(%s::int[], %s::bigint[]) AS h(shard, seq)"
                    f" CROSS JOIN LATERAL (SELECT * FROM audit_events e WHERE e.shard = h.shard"
                    f"   AND e.seq > h.seq UNION ALL SELECT * FROM audit_events e"
                    f"   WHERE e.shard = h.shard AND e.seq < 1) e"
                    f" UNION ALL SELECT {_CHAIN_COLUMNS} FROM audit_events e"
                    f"   WHERE e.shard <> ALL(%s::int[])"
                    f" ORDER BY 2, 3",
                    (shards, [after[s] for s in shards], shards),
                )
            else:
                cur.execute(f"SELECT {_CHAIN_COLUMNS} FROM audit_events e ORDER BY shard, seq")
            yield from _read_ahead(cur, batch)

    def records_at(
        self, positions: list[tuple[int, int]]
    ) -> dict[tuple[int, int], tuple[bytes, str]]:
        """(shard, seq) -> (hash, at as in the canonical encoding) of those records."""
        if not positions:
            return {}
        rows = self.conn.execute(
            "SELECT e.shard, e.seq, e.hash, to_char(e.at AT TIME ZONE 'UTC',"
            " 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00' AS at"
            " FROM unnest(%s::int[], %s::bigint[]) AS p(shard, seq)"
            " JOIN audit_events e ON e.shard = p.shard AND e.seq = p.seq",
            ([s for s, _ in positions], [q for _, q in positions]),
        ).fetchall()
        return {(int(r["shard"]), int(r["seq"])): (bytes(r["hash"]), r["at"]) for r in rows}

    def verifications(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest verification records first."""
        return self._all(
            "SELECT id, checkpoint_id, verified_at, checked, payload, signature"
            " FROM audit_verifications ORDER BY id DESC LIMIT %s",
            (limit,),
        )

    def insert_verification(
        self, checkpoint_id: int, verified_at: datetime, checked: int, payload: str, signature: str
    ) -> None:
        self.conn.execute(
            "INSERT INTO audit_verifications (checkpoint_id, verified_at, checked, payload,"
            " signature) VALUES (%s, %s, %s, %s, %s)",
            (checkpoint_id, verified_at, checked, payload, signature),
        )

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


def _read_ahead(cur: psycopg.ServerCursor[Any], batch: int) -> Iterator[Any]:
    """The cursor's rows, each batch fetched by a helper thread while the caller works
    through the one before: PostgreSQL reads and prints the next records (on another
    core) while the verifier hashes these. Only the helper uses the connection until
    the last fetch has returned, even when the caller stops early (the executor waits
    for it on exit)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-read-ahead") as helper:
        pending = helper.submit(cur.fetchmany, batch)
        while rows := pending.result():
            pending = helper.submit(cur.fetchmany, batch)
            yield from rows


# The verifier's columns: ids and time as text exactly as the canonical encoding has them.
_CHAIN_COLUMNS = (
    "e.id, e.shard, e.seq, e.prev_hash, e.hash,"
    " to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00',"
    " e.tenant_id::text, e.principal_id::text, e.role, e.patient_id::text, e.note_id::text,"
    " e.action, e.outcome, e.reason, e.request_id, e.client_addr"
)
