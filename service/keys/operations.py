"""Key operations for ops and admins, every one audited: rotation (service/keys/rotation.py)
and a patient's key over its life (service/keys/erasure.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from service.access.keycache import KeyCache
from service.audit.service import AuditLog
from service.clock import Clock
from service.ports import Database

if TYPE_CHECKING:
    from service.access.approvals import ApprovalsService
    from service.access.limits import ActionLimiter
from service.keys.erasure import PatientKeyErasure
from service.keys.rotation import DEFAULT_BATCH, KeyRotation, RotationReport
from service.ports import KeyService

__all__ = ["DEFAULT_BATCH", "KeyOperations", "RotationReport"]


class KeyOperations(KeyRotation, PatientKeyErasure):
    def __init__(
        self,
        *,
        store: Database,
        keys: KeyService,
        audit: AuditLog,
        clock: Clock,
        cache: KeyCache,
        approvals: ApprovalsService | None = None,
        limiter: ActionLimiter | None = None,
        shred_grace: timedelta = timedelta(days=7),
    ) -> None:
        self._store = store
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self._cache = cache
        self._approvals = approvals
        self._limiter = limiter
        self._grace = shred_grace
        if approvals is not None:
            approvals.register("shred", self._approved_shred)
            approvals.register("shred-cancel", self._approved_shred_cancel)
