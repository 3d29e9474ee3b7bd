"""Requests for a second admin (two-person rule, migration 0006)."""

from __future__ import annotations

import logging
from datetime import datetime

from psycopg.types.json import Jsonb

from service.adapters.postgres.base import (
    Repo,
    _approval,
)
from service.models import (
    Approval,
)

log = logging.getLogger(__name__)


class ApprovalsRepository(Repo):
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
