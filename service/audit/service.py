"""The access log. Every access decision is written through `AuditLog.record`.

Records carry identifiers, actions and outcomes only: no note content and no
external identifiers. The write happens in the same transaction as the access
it records, so an access that cannot be audited does not happen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol, TypedDict, Unpack

from service.access.caller import Actor, Caller, Operator
from service.access.roles import Permission, require
from service.audit import chain as auditchain
from service.audit.reconcile import (
    CREATE,
    UNWRAP,
    ReconcileReport,
    ServiceUnwrap,
    read_vault_unwraps,
    reconcile,
)
from service.audit.verify import VerifyReport, verify_log
from service.clock import Clock
from service.models import AuditEvent
from service.ports import Database, UnitOfWork

log = logging.getLogger(__name__)


class EventFields(TypedDict, total=False):
    """What an audit record is about, besides its action and outcome."""

    caller: Caller | Operator | None
    tenant_id: str | None
    patient_id: str | None
    note_id: str | None
    reason: str | None
    principal_id: str | None
    request_id: str | None


class AuditLog:
    def record(
        self, tx: UnitOfWork, *, action: str, outcome: str, **about: Unpack[EventFields]
    ) -> None:
        tx.audit.insert_audit_event(self.event(action=action, outcome=outcome, **about))

    @staticmethod
    def append(tx: UnitOfWork, *events: AuditEvent) -> None:
        """Records made with `event`, appended together (one round trip when the unit
        of work has written nothing: service/adapters/postgres/groupcommit.py)."""
        tx.audit.insert_audit_event(*events)

    @staticmethod
    def event(*, action: str, outcome: str, **about: Unpack[EventFields]) -> AuditEvent:
        """The record `record` appends, for a repository that appends it together with
        the change it records (NotesRepository.insert_note_charged)."""
        caller = about.get("caller")
        p = caller.principal if isinstance(caller, Caller) else None
        operator = isinstance(caller, Operator)
        return AuditEvent(
            action=action,
            outcome=outcome,
            tenant_id=about.get("tenant_id") or (p.tenant_id if p else None),
            principal_id=about.get("principal_id") or (p.id if p else None),
            role=p.role.value if p else ("operator" if operator else None),
            patient_id=about.get("patient_id"),
            note_id=about.get("note_id"),
            reason=about.get("reason"),
            request_id=caller.request_id if caller else about.get("request_id"),
            client_addr=caller.client_addr if caller else None,
        )

    def attribute(self, tx: UnitOfWork, actor: Actor, *, reason: str | None = None) -> None:
        """Name the actor of this transaction's access-rights changes: the database's
        triggers write those records (service/migrations/0005), whoever changes what."""
        p = actor.principal if isinstance(actor, Caller) else None
        tx.audit.set_actor(
            principal_id=p.id if p else None,
            role=p.role.value if p else "operator",
            request_id=actor.request_id,
            client_addr=actor.client_addr,
            reason=reason,
        )


class AuditService:
    """Checkpoints, verification, and the auditor's queries."""

    def __init__(
        self,
        *,
        store: Database,
        signer: CheckpointSigner,
        audit: AuditLog,
        clock: Clock,
        request_limit: int = 500_000,
    ) -> None:
        self._store = store
        self._signer = signer
        self._audit = audit
        self._clock = clock
        self._request_limit = request_limit

    @property
    def request_limit(self) -> int:
        return self._request_limit

    def checkpoint(self) -> dict[str, Any]:
        """Sign the current head of every chain."""
        with self._store.transaction() as tx:
            heads = tx.audit.audit_heads()
            last = tx.audit.last_checkpoint()
        now = self._clock.now()
        payload = auditchain.checkpoint_payload(now, heads, last["payload"] if last else None)
        signature = self._signer.sign(payload.encode())
        total = sum(seq for seq, _ in heads.values())
        with self._store.transaction() as tx:
            cid = tx.audit.insert_checkpoint(now, total, payload, signature)
        # The signed payload holds only hashes: publish it (log, WORM store) so that a
        # database administrator cannot quietly delete the latest checkpoints.
        log.info(
            "audit checkpoint %s signed: %s records payload=%s signature=%s",
            cid,
            total,
            payload,
            signature,
        )
        return {
            "id": cid,
            "created_at": now.isoformat(),
            "total": total,
            "payload": payload,
            "signature": signature,
        }

    def verify(
        self,
        *,
        full: bool = True,
        record: bool = True,
        max_records: int | None = None,
        full_up_to: int | None = None,
    ) -> VerifyReport:
        """Verify the log (service/audit/verify.py): every record, or (not `full`) from
        the last verified checkpoint. An intact log up to a checkpoint is recorded as
        verified (signed), so an incremental verification can start there."""
        with self._store.transaction() as tx:
            report, latest = verify_log(
                tx,
                self._signer,
                full=full,
                max_records=max_records,
                full_up_to=full_up_to,
            )
            if report.ok and latest is not None and record:
                now = self._clock.now()
                payload = auditchain.verification_payload(
                    int(latest["id"]), latest["payload"], report.checked, now
                )
                tx.audit.insert_verification(
                    int(latest["id"]),
                    now,
                    report.checked,
                    payload,
                    self._signer.sign(payload.encode()),
                )
        if not report.ok:
            log.error("audit log verification found %d problem(s)", len(report.problems))
        return report

    def events(
        self,
        caller: Caller,
        *,
        limit: int,
        after_id: int | None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        require(caller, Permission.AUDIT_READ)
        with self._store.transaction() as tx:
            rows = tx.audit.audit_query(
                tenant_id=caller.principal.tenant_id, limit=limit, after_id=after_id, **filters
            )
            # Reading the access log is itself an access worth recording.
            self._audit.record(
                tx,
                action="audit.query",
                outcome="granted",
                caller=caller,
                patient_id=filters.get("patient_id"),
                reason=_describe_filters(filters),
            )
        return [_without_decoy_identity(r) for r in rows]

    def verify_as(self, caller: Caller) -> VerifyReport:
        require(caller, Permission.AUDIT_READ)
        # Never a scan of the whole log inside a request: from the last verified
        # checkpoint, and refused (503, retry) past `request_limit` records.
        report = self.verify(
            full=False, max_records=self._request_limit, full_up_to=self._request_limit
        )
        tenant_id = caller.principal.tenant_id
        with self._store.transaction() as tx:
            own = tx.audit.count_audit_events(tenant_id)
            self._audit.record(
                tx,
                action="audit.verify",
                outcome="granted",
                caller=caller,
                reason=f"ok={report.ok} checked={own}",
            )
        # The chains span every tenant: a tenant's auditor learns whether the log is
        # intact and how many of its own records it holds, not how large other
        # tenants' logs are or where their records sit. Operators get the full report
        # from `sealednotes audit verify`.
        return dataclasses.replace(
            report,
            checked=own,
            last_checkpoint=None,
            from_checkpoint=None,
            first_bad=_without_location(report.first_bad),
            problems=[p for p in (_without_location(x) for x in report.problems) if p],
        )

    def reconcile_vault(
        self,
        vault_log_lines: Iterator[str],
        *,
        mount: str,
        since: datetime | None,
        tolerance: timedelta,
    ) -> ReconcileReport:
        """Match every data-key unwrap in Vault's audit log to the service record
        of its cause; record the check itself in the access log."""
        unwraps, unreadable = read_vault_unwraps(vault_log_lines, mount=mount, since=since)
        window_start = since - tolerance if since else None
        with self._store.transaction() as tx:
            records = [
                ServiceUnwrap(
                    r["at"],
                    str(r["tenant_id"]),
                    str(r["patient_id"]),
                    UNWRAP if r["action"] == "key.unwrap" else CREATE,
                )
                for r in tx.audit.iter_unwrap_records(window_start)
                if _explains_an_unwrap(r)
            ]
        report = reconcile(unwraps, records, tolerance=tolerance, unreadable_lines=unreadable)
        with self._store.transaction() as tx:
            self._audit.record(
                tx,
                action="audit.reconcile",
                outcome="granted" if report.ok else "alert",
                reason=f"vault_unwraps={report.vault_unwraps} unmatched={report.unmatched}",
            )
        return report

    def export(
        self, *, since: datetime | None = None, tenant_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        with self._store.transaction() as tx:
            yield from tx.audit.iter_audit_export(since=since, tenant_id=tenant_id)


def _explains_an_unwrap(record: dict[str, Any]) -> bool:
    """A service record that can explain a Vault unwrap or key creation names its
    patient and the request that caused it (a request id; the CLI's re-key says "cli").
    Records appended by other means without them are not trusted as explanations."""
    return (
        record["tenant_id"] is not None
        and record["patient_id"] is not None
        and bool(record["request_id"])
    )


def _without_decoy_identity(row: dict[str, Any]) -> dict[str, Any]:
    """Decoys stay secret: a tenant's auditors see that decoys were armed, disarmed or
    approved, never which patients they are (operators' `audit export` has them). A
    decoy that was touched is still fully visible, in the denied read's record."""
    reason = row.get("reason") or ""
    if row["action"] == "patient.decoy" or (
        row["action"].startswith("approval.") and reason.startswith("decoy-clear ")
    ):
        return {**row, "patient_id": None}
    return row


def _without_location(problem: dict[str, Any] | None) -> dict[str, Any] | None:
    if problem is None:
        return None
    return {
        "kind": problem["kind"],
        "detail": "The access log failed verification; operators have the location "
        "(sealednotes audit verify).",
        "record_id": None,
        "shard": None,
        "seq": None,
        "at": None,
    }


def _describe_filters(filters: dict[str, Any]) -> str:
    parts = []
    for k, v in sorted(filters.items()):
        if v is not None:
            parts.append(f"{k}={v.isoformat() if isinstance(v, datetime) else v}")
    return " ".join(parts) or "all"


class CheckpointSigner(Protocol):
    def sign(self, message: bytes) -> str: ...

    def verify(self, message: bytes, signature: str) -> bool: ...


class AuditCheckpointer:
    """Signs a checkpoint every `interval` seconds when the log has grown.

    One daemon thread per worker process; a PostgreSQL advisory lock makes
    workers and replicas take turns instead of signing the same heads.
    """

    def __init__(self, service: AuditService, store: Database, interval: float) -> None:
        self._service = service
        self._store = store
        self._interval = interval
        self._started_pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def ensure_started(self) -> None:
        if self._interval <= 0 or self._started_pid == os.getpid():
            return
        with self._lock:
            if self._started_pid == os.getpid():
                return
            self._started_pid = os.getpid()
            self._stop.clear()
            threading.Thread(target=self._run, name="audit-checkpointer", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception as e:  # keep the thread alive; the next tick retries
                log.warning("audit checkpoint failed: %s", type(e).__name__)

    def tick(self) -> bool:
        with self._store.transaction() as tx:
            if not tx.audit.try_lock_checkpointer():
                return False
            heads = tx.audit.audit_heads()
            last = tx.audit.last_checkpoint()
            total = sum(seq for seq, _ in heads.values())
            if last is not None and int(last["total"]) == total:
                return False
            self._service.checkpoint()
        # Verify what the new checkpoint covers, from the last verified one (a tamper
        # shows in the logs within one interval), and record it: an auditor's request
        # then reads only the records since.
        report = self._service.verify(full=False, full_up_to=self._service.request_limit)
        if not report.ok:
            log.error("audit log tampered: %s", report.first_bad)
        return True
