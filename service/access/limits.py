"""Limits on every role, not only on clinicians' key releases.

Per principal per hour, counted in PostgreSQL (`principal_actions`, append-only for
the service): admin actions, care-team grants by an integration, patient lookups
and registrations, and the distinct patients a clinician writes to. Past a limit
the caller gets the same treatment as past a key-release budget: 429 with
Retry-After, an audited denial that counts towards suspension, and an alert on
the first one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from service.access.caller import Caller
from service.access.gate import KeyReleaseGate
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.clock import HOUR
from service.config import Budgets
from service.errors import AccountSuspended, BudgetExceeded
from service.ports import UnitOfWork


@dataclass(frozen=True, slots=True)
class Limit:
    kind: str  # the ledger kind: admin | care-team | lookup | write
    per_hour: int
    what: str  # for the message: "admin actions", "distinct patients written"...


class ActionLimiter:
    def __init__(
        self, *, budgets: Budgets, gate: KeyReleaseGate, audit: AuditLog, alerts: Alerter
    ) -> None:
        self._gate = gate
        self._audit = audit
        self._alerts = alerts
        self.admin = Limit("admin", budgets.admin_actions_per_hour, "admin actions")
        self.care_team = Limit("care-team", budgets.care_team_grants_per_hour, "care-team grants")
        self.lookup = Limit("lookup", budgets.lookups_per_hour, "patient lookups")
        self.write = Limit("write", budgets.writes_per_hour, "distinct patients written to")

    def charge(
        self,
        tx: UnitOfWork,
        caller: Caller,
        limit: Limit,
        now: datetime,
        *,
        action: str,
        patient_id: str | None = None,
        target_principal_id: str | None = None,
    ) -> None:
        """Count one action, or refuse it (audited, a denial, committed) with 429.

        `target_principal_id`: the account the action will change (an unlock, a budget),
        locked here together with the caller's."""
        p = caller.principal
        # Serialise one principal's limited actions so the count is exact: without the
        # lock, N concurrent requests could each see room for one more (and an admin's
        # care-team grants, counted under this lock too, pass the second-admin
        # threshold). Suspension is re-checked once the lock is held. An action on another
        # account locks both rows in one call, in one order: locked one by one (own row
        # here, the target's by the action), admin A acting on B while B acts on A
        # would deadlock. Lock and count go to the database as one call.
        charge = tx.ledger.charge_action(
            p.tenant_id,
            p.id,
            limit.kind,
            now,
            limit=limit.per_hour,
            patient_id=patient_id,
            also_lock=[target_principal_id] if target_principal_id else (),
        )
        if charge.suspended:
            raise AccountSuspended()
        if charge.allowed:
            return
        scope = f"{limit.kind}-hour"
        self._audit.record(
            tx,
            action=action,
            outcome="throttled",
            caller=caller,
            patient_id=patient_id,
            reason=scope,
        )
        if (
            self._gate.count_denial(tx, caller, now, scope=scope, cause="repeated-limit-denials")
            == 1
        ):
            self._alerts.emit(
                "action-limit-exceeded",
                scope=scope,
                role=p.role.value,
                tenant_id=p.tenant_id,
                principal_id=p.id,
            )
        tx.commit()
        oldest = charge.oldest
        retry = math.ceil(((oldest + HOUR) - now).total_seconds()) if oldest else 60
        raise BudgetExceeded(
            f"The hourly limit of {limit.per_hour} {limit.what} is reached",
            retry_after=max(1, retry),
            scope=scope,
        )
