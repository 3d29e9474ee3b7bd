"""The dependencies every key operation shares."""

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
from service.ports import KeyService


class KeyOperationsState:
    """What the key operations share (set by KeyOperations.__init__)."""

    _store: Database
    _keys: KeyService
    _audit: AuditLog
    _clock: Clock
    _cache: KeyCache
    _approvals: ApprovalsService | None
    _limiter: ActionLimiter | None
    _grace: timedelta
