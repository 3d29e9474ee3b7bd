"""The access log. Every access decision is written through `AuditLog.record`.

Records carry identifiers, actions and outcomes only: no note content and no
external identifiers. The write happens in the same transaction as the access
it records, so an access that cannot be audited does not happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.models import AuditEvent, Principal
from service.store import Tx


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, and from where: everything an audit record needs."""

    principal: Principal
    request_id: str | None = None
    client_addr: str | None = None


class AuditLog:
    def record(
        self,
        tx: Tx,
        now: datetime,
        *,
        action: str,
        outcome: str,
        caller: Caller | None = None,
        tenant_id: str | None = None,
        patient_id: str | None = None,
        note_id: str | None = None,
        reason: str | None = None,
        principal_id: str | None = None,
    ) -> None:
        p = caller.principal if caller else None
        tx.insert_audit_event(
            AuditEvent(
                action=action,
                outcome=outcome,
                tenant_id=tenant_id or (p.tenant_id if p else None),
                principal_id=principal_id or (p.id if p else None),
                role=p.role.value if p else None,
                patient_id=patient_id,
                note_id=note_id,
                reason=reason,
                request_id=caller.request_id if caller else None,
                client_addr=caller.client_addr if caller else None,
            ),
            now,
        )
