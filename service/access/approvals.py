"""Two admins for actions that weaken protection.

Raising a budget above the defaults, clearing a decoy flag, unlocking an account
suspended by a decoy (or a second unlock within a day), crypto-shredding,
cancelling a shred, and an admin's care-team grants past the hourly threshold do
not happen when one admin asks: they become a request that another admin of the
same tenant must approve before it expires. The database refuses a requester
deciding its own request, and records every request and decision (migration 0006).
Operators approve from the CLI with their own admin token.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service.access.caller import Caller
from service.access.limits import ActionLimiter
from service.access.roles import Permission, require
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.clock import Clock
from service.errors import Conflict, Forbidden, NotFound
from service.models import Approval
from service.ports import Database, UnitOfWork

# kind -> how it is carried out once approved: (transaction, approving admin,
# the request) -> a JSON-able result. Registered by the use cases that own the action.
Executor = Callable[[UnitOfWork, Caller, Approval], dict[str, Any]]
KINDS = ("budget-raise", "decoy-clear", "unlock", "shred", "shred-cancel", "care-team-grant")


@dataclass(frozen=True, slots=True)
class Pending:
    """What a use case returns instead of acting: the request waiting for approval."""

    approval: Approval


class ApprovalsService:
    def __init__(
        self,
        *,
        store: Database,
        audit: AuditLog,
        alerts: Alerter,
        clock: Clock,
        limiter: ActionLimiter,
        hours: float,
    ) -> None:
        self._store = store
        self._audit = audit
        self._alerts = alerts
        self._clock = clock
        self._limiter = limiter
        self._ttl = timedelta(hours=hours)
        self._executors: dict[str, Executor] = {}

    def register(self, kind: str, executor: Executor) -> None:
        assert kind in KINDS
        self._executors[kind] = executor

    def request(
        self,
        tx: UnitOfWork,
        caller: Caller,
        kind: str,
        now: datetime,
        *,
        target_principal_id: str | None = None,
        target_patient_id: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Pending:
        """Record the request in the caller's transaction (the database audits it)."""
        p = caller.principal
        approval = Approval(
            id=str(uuid.uuid4()),
            tenant_id=p.tenant_id,
            kind=kind,
            target_principal_id=target_principal_id,
            target_patient_id=target_patient_id,
            params=params or {},
            requested_by=p.id,
            requested_at=now,
            expires_at=now + self._ttl,
        )
        self._audit.attribute(tx, caller)
        tx.approvals.insert_approval(approval)
        self._alerts.emit(
            "approval-requested",
            request=kind,
            approval_id=approval.id,
            tenant_id=p.tenant_id,
            principal_id=p.id,
            target_principal_id=target_principal_id,
        )
        return Pending(approval)

    def list(self, caller: Caller, status: str | None) -> list[Approval]:
        self._require_admin(caller)
        with self._store.transaction() as tx:
            return tx.approvals.approvals(caller.principal.tenant_id, status)

    def approve(self, caller: Caller, approval_id: str) -> tuple[Approval, dict[str, Any]]:
        return self._decide(caller, approval_id, approve=True)

    def reject(self, caller: Caller, approval_id: str) -> Approval:
        approval, _ = self._decide(caller, approval_id, approve=False)
        return approval

    def _decide(
        self, caller: Caller, approval_id: str, *, approve: bool
    ) -> tuple[Approval, dict[str, Any]]:
        self._require_admin(caller)
        p = caller.principal
        with self._store.transaction() as tx:
            now = self._clock.now()
            # Approving may change the account the request names (unlock, budget): the
            # charge locks it with the approver's. A request's target never changes (the
            # approval guard refuses it), so reading it before the lock is safe.
            unlocked = tx.approvals.approval(p.tenant_id, approval_id)
            self._limiter.charge(
                tx,
                caller,
                self._limiter.admin,
                now,
                action="approval.decide",
                target_principal_id=unlocked.target_principal_id if unlocked else None,
            )
            approval = tx.approvals.approval(p.tenant_id, approval_id, for_update=True)
            if approval is None:
                raise NotFound()
            if approval.requested_by == p.id:
                raise Forbidden("Another admin must decide this request: not its requester")
            if approval.status != "pending":
                raise Conflict(f"This request was already {approval.status}")
            if now > approval.expires_at:
                raise Conflict("This request has expired; ask again")
            status = "approved" if approve else "rejected"
            # The action is carried out by the approver, in the same transaction, and
            # the database's records of it name the request.
            self._audit.attribute(
                tx,
                caller,
                reason=f"approval={approval.id} requested_by={approval.requested_by}",
            )
            tx.approvals.decide_approval(approval.id, status, p.id, now)
            result = self._executors[approval.kind](tx, caller, approval) if approve else {}
            decided = tx.approvals.approval(p.tenant_id, approval.id)
        assert decided is not None
        self._alerts.emit(
            "approval-decided",
            request=approval.kind,
            approval_id=approval.id,
            status=status,
            tenant_id=p.tenant_id,
            principal_id=p.id,
            requested_by=approval.requested_by,
        )
        return decided, result

    @staticmethod
    def _require_admin(caller: Caller) -> None:
        require(caller, Permission.APPROVAL_DECIDE)
