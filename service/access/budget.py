"""The key-release budget: the windows a principal's and a tenant's releases are
counted in, and the charge of one new release (under the principal's and the
tenant's locks, so concurrent requests cannot over-release)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from service.access.caller import Caller
from service.clock import DAY, HOUR
from service.config import Budgets
from service.errors import AccountSuspended, BudgetExceeded, TenantCapReached
from service.models import BudgetUsage, Patient, Principal
from service.ports import UnitOfWork


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """What the RateLimit-* headers and /v1/me report (hourly window)."""

    limit: int
    remaining: int
    reset_seconds: int
    day_limit: int
    day_remaining: int


@dataclass(frozen=True, slots=True)
class Release:
    key: bytes | None  # None: the patient has no data key yet (no notes)
    patient: Patient
    via: str  # "care-team" | "break-glass"
    budget: BudgetStatus

    def __repr__(self) -> str:  # never print key material
        return f"Release(patient={self.patient.id!r}, via={self.via!r})"


def _seconds_until(when: datetime | None, now: datetime) -> int:
    if when is None:
        return 1
    return max(1, math.ceil((when - now).total_seconds()))


class BudgetPolicy:
    """Per-principal hourly and daily budgets (with overrides) and the tenant's cap."""

    def __init__(self, budgets: Budgets) -> None:
        self._budgets = budgets

    def limits_for(self, principal: Principal) -> tuple[int, int]:
        return (
            principal.release_per_hour or self._budgets.per_hour,
            principal.release_per_day or self._budgets.per_day,
        )

    def budget_status(
        self, principal: Principal, usage: BudgetUsage, now: datetime
    ) -> BudgetStatus:
        per_hour, per_day = self.limits_for(principal)
        reset = _seconds_until(usage.hour_oldest + HOUR, now) if usage.hour_oldest else 0
        return BudgetStatus(
            limit=per_hour,
            remaining=max(0, per_hour - usage.hour),
            reset_seconds=reset,
            day_limit=per_day,
            day_remaining=max(0, per_day - usage.day),
        )

    def charge(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient_id: str,
        now: datetime,
        seen: BudgetUsage,
        *,
        via: str = "care-team",
    ) -> tuple[BudgetUsage, BudgetExceeded | None]:
        # Releases are counted in windows that end "now" with no upper bound, so a
        # release committed by a request that started after this one still counts.
        p = caller.principal
        usage = seen
        if usage.patient_in_hour:
            return usage, None  # already released within the hour: free
        # A new distinct patient: serialise on the principal and the tenant budget,
        # then count again under the locks.
        locked = tx.principals.principal(p.id, for_update=True)
        if locked is None or locked.suspended:
            # Suspended while this request waited for the lock (a parallel request
            # tripped a decoy or the denial limit): nothing more is released.
            raise AccountSuspended()
        tx.ledger.lock_tenant_budget(p.tenant_id)
        usage = tx.ledger.budget_usage(p.id, p.tenant_id, patient_id, now)
        if usage.patient_in_hour:
            return usage, None
        per_hour, per_day = self.limits_for(p)
        # Break-glass has its own budget (charged when opened): only the tenant cap here.
        if via == "care-team" and usage.hour >= per_hour:
            return usage, BudgetExceeded(
                f"Hourly key-release budget of {per_hour} distinct patients is exhausted",
                retry_after=_seconds_until(
                    usage.hour_oldest + HOUR if usage.hour_oldest else None, now
                ),
                scope="principal-hour",
            )
        if via == "care-team" and not usage.patient_in_day and usage.day >= per_day:
            return usage, BudgetExceeded(
                f"Daily key-release budget of {per_day} distinct patients is exhausted",
                retry_after=_seconds_until(
                    usage.day_oldest + DAY if usage.day_oldest else None, now
                ),
                scope="principal-day",
            )
        tenant_cap = usage.tenant_cap or self._budgets.tenant_per_hour
        if usage.tenant_hour >= tenant_cap:
            return usage, BudgetExceeded(
                "The organisation's hourly key-release budget is exhausted",
                retry_after=_seconds_until(
                    usage.tenant_oldest + HOUR if usage.tenant_oldest else None, now
                ),
                scope="tenant-hour",
            )
        try:
            tx.ledger.record_release(p.id, p.tenant_id, patient_id, now, via=via)
        except TenantCapReached:
            # The database's own count of the tenant's releases (its clock) refused the
            # row: the transaction is aborted, start the denial afresh.
            tx.rollback()
            return usage, BudgetExceeded(
                "The organisation's hourly key-release budget is exhausted",
                retry_after=60,
                scope="tenant-hour",
            )
        if via == "break-glass":
            return usage, None
        return (
            BudgetUsage(
                hour=usage.hour + 1,
                day=usage.day + (0 if usage.patient_in_day else 1),
                tenant_hour=usage.tenant_hour + 1,
                patient_in_hour=True,
                patient_in_day=True,
                hour_oldest=usage.hour_oldest or now,
                day_oldest=usage.day_oldest or now,
                tenant_oldest=usage.tenant_oldest or now,
            ),
            None,
        )
