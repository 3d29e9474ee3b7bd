"""Patient, care-team and break-glass use cases.

Registration belongs to the EHR: only the integration role registers patients, so
nobody can squat an identifier and be on its care team when the real patient
arrives. Every role has limits (service/access/limits.py); an admin's care-team grants
past the hourly threshold and clearing a decoy wait for a second admin
(service/access/approvals.py).
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service.access.approvals import ApprovalsService, Pending
from service.access.caller import Caller
from service.access.gate import KeyReleaseGate
from service.access.limits import ActionLimiter
from service.access.roles import Permission, require
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.clock import DAY, HOUR, Clock
from service.config import Budgets
from service.errors import AccountSuspended, BudgetExceeded, Conflict, Forbidden, NotFound
from service.models import Approval, Patient, Role
from service.ports import Database, KeyService, UnitOfWork

# Looked up in place of a patient that does not exist, so that "no such patient" and
# "not yours" take the same queries (and the same time) for a clinician.
NO_PATIENT = "00000000-0000-0000-0000-000000000000"


def normalize_external_id(value: str) -> str:
    # Blind-index lookups must not depend on Unicode form or stray whitespace.
    return unicodedata.normalize("NFKC", value).strip()


@dataclass(frozen=True, slots=True)
class BreakGlass:
    id: str
    patient_id: str
    expires_at: datetime
    remaining_today: int


class PatientsService:
    def __init__(
        self,
        *,
        store: Database,
        keys: KeyService,
        audit: AuditLog,
        alerts: Alerter,
        gate: KeyReleaseGate,
        clock: Clock,
        budgets: Budgets,
        limiter: ActionLimiter,
        approvals: ApprovalsService,
    ) -> None:
        self._store = store
        self._keys = keys
        self._audit = audit
        self._alerts = alerts
        self._gate = gate
        self._clock = clock
        self._budgets = budgets
        self._limiter = limiter
        self._approvals = approvals
        approvals.register("decoy-clear", self._approved_decoy_clear)
        approvals.register("care-team-grant", self._approved_care_team_grant)

    # -- registration and lookups --------------------------------------------------------

    def create(self, caller: Caller, external_id: str) -> Patient:
        p = caller.principal
        require(caller, Permission.PATIENT_REGISTER)
        index = self._keys.blind_index(
            tenant_id=p.tenant_id, value=normalize_external_id(external_id)
        )
        with self._store.transaction() as tx:
            now = self._clock.now()
            self._limiter.charge(tx, caller, self._limiter.lookup, now, action="patient.create")
            patient_id = tx.patients.insert_patient(str(uuid.uuid4()), p.tenant_id, index, now)
            if patient_id is None:
                existing = tx.patients.patient_by_index(p.tenant_id, index)
                self._audit.record(
                    tx,
                    action="patient.create",
                    outcome="denied",
                    caller=caller,
                    patient_id=existing.id if existing else None,
                    reason="duplicate",
                )
                tx.commit()
                extra = {"patient_id": existing.id} if existing else {}
                raise Conflict("A patient with this external id already exists", extra=extra)
            self._audit.record(
                tx,
                action="patient.create",
                outcome="granted",
                caller=caller,
                patient_id=patient_id,
            )
            patient = tx.patients.patient(p.tenant_id, patient_id)
            assert patient is not None
            return patient

    def find(self, caller: Caller, external_id: str) -> Patient:
        p = caller.principal
        require(caller, Permission.PATIENT_LOOKUP)
        index = self._keys.blind_index(
            tenant_id=p.tenant_id, value=normalize_external_id(external_id)
        )
        with self._store.transaction() as tx:
            now = self._clock.now()
            self._limiter.charge(tx, caller, self._limiter.lookup, now, action="patient.lookup")
            return self._visible(
                tx,
                caller,
                tx.patients.patient_by_index(p.tenant_id, index),
                now,
                action="patient.lookup",
            )

    def get(self, caller: Caller, patient_id: str) -> Patient:
        p = caller.principal
        require(caller, Permission.PATIENT_LOOKUP)
        with self._store.transaction() as tx:
            now = self._clock.now()
            self._limiter.charge(tx, caller, self._limiter.lookup, now, action="patient.read")
            return self._visible(
                tx, caller, tx.patients.patient(p.tenant_id, patient_id), now, action="patient.read"
            )

    def _visible(
        self, tx: UnitOfWork, caller: Caller, patient: Patient | None, now: datetime, *, action: str
    ) -> Patient:
        """An integration sees every patient of its tenant; a clinician only those on its
        care team or under its break-glass. Anything else is audited and answers 404,
        exactly like a patient that does not exist, by the same path."""
        p = caller.principal
        visible = patient is not None
        if p.role is Role.CLINICIAN:
            care, glass = tx.patients.access_to_patient(
                p.id, patient.id if patient else NO_PATIENT, now
            )
            visible = visible and (care or glass)
        self._audit.record(
            tx,
            action=action,
            outcome="granted" if visible else "denied",
            caller=caller,
            patient_id=patient.id if visible and patient else None,
            reason=None if visible else "not-found-or-not-on-care-team",
        )
        if not visible or patient is None:
            tx.commit()
            raise NotFound()
        return patient

    # -- care teams ------------------------------------------------------------------------

    def set_care_team(
        self, caller: Caller, patient_id: str, member_id: str, until: datetime | None
    ) -> bool | Pending:
        """Add or extend a membership; True when new. An integration's grants are limited
        per hour; an admin's grants past the hourly threshold wait for a second admin."""
        p = caller.principal
        require(caller, Permission.CARE_TEAM_MANAGE)
        with self._store.transaction() as tx:
            now = self._clock.now()
            if p.role is Role.ADMIN:
                self._limiter.charge(tx, caller, self._limiter.admin, now, action="care-team.add")
            patient = tx.patients.patient(p.tenant_id, patient_id)
            member = tx.principals.principal_in_tenant(p.tenant_id, member_id)
            if patient is None or member is None:
                raise NotFound()
            if member.role is not Role.CLINICIAN:
                raise Conflict("Only clinicians can be on a care team")
            if p.role is Role.ADMIN:
                granted = tx.ledger.count_actions(p.id, "care-team", now - HOUR)
                if granted >= self._budgets.admin_care_team_grants_per_hour:
                    return self._approvals.request(
                        tx,
                        caller,
                        "care-team-grant",
                        now,
                        target_principal_id=member.id,
                        target_patient_id=patient.id,
                        params={"until": until.isoformat() if until else None},
                    )
                tx.ledger.record_action(p.id, "care-team", now)
            else:
                self._limiter.charge(
                    tx, caller, self._limiter.care_team, now, action="care-team.add"
                )
            self._audit.attribute(tx, caller)  # the database records the change
            return tx.patients.upsert_care_team(patient.id, member.id, until, now)

    def _approved_care_team_grant(
        self, tx: UnitOfWork, approver: Caller, approval: Approval
    ) -> dict[str, Any]:
        assert approval.target_patient_id and approval.target_principal_id
        raw = approval.params.get("until")
        until = datetime.fromisoformat(raw) if raw else None
        tx.patients.upsert_care_team(
            approval.target_patient_id, approval.target_principal_id, until, self._clock.now()
        )
        return {
            "patient_id": approval.target_patient_id,
            "principal_id": approval.target_principal_id,
            "until": raw,
        }

    def remove_care_team(self, caller: Caller, patient_id: str, member_id: str) -> None:
        p = caller.principal
        require(caller, Permission.CARE_TEAM_MANAGE)
        with self._store.transaction() as tx:
            now = self._clock.now()
            limit = self._limiter.admin if p.role is Role.ADMIN else self._limiter.care_team
            self._limiter.charge(tx, caller, limit, now, action="care-team.remove")
            if tx.patients.patient(p.tenant_id, patient_id) is None:
                raise NotFound()
            self._audit.attribute(tx, caller)  # the database records the change
            if not tx.patients.delete_care_team(patient_id, member_id):
                raise NotFound()

    # -- break-glass -----------------------------------------------------------------------

    def break_glass(self, caller: Caller, patient_id: str, reason: str) -> BreakGlass:
        p = caller.principal
        require(caller, Permission.BREAK_GLASS)
        if self._budgets.break_glass_per_day <= 0:
            raise Forbidden("Break-glass is disabled for this deployment")
        with self._store.transaction() as tx:
            now = self._clock.now()
            current = tx.principals.principal(p.id, for_update=True)
            if current is None or current.suspended:
                raise AccountSuspended()
            patient = tx.patients.patient(p.tenant_id, patient_id)
            if patient is None:
                self._refuse(tx, caller, now, None, reason="no-such-patient")
                raise NotFound()
            care, _glass = tx.patients.access_to_patient(p.id, patient.id, now)
            if care:
                # Nothing to break: no slot used, nothing opened, not a denial.
                raise Conflict("The patient is on your care team: no break-glass is needed")
            opened = tx.patients.break_glass_opened_since(p.id, now - DAY)
            if len(opened) >= self._budgets.break_glass_per_day:
                self._refuse(tx, caller, now, patient.id, reason=reason, outcome="throttled")
                self._alerts.emit(
                    "break-glass-budget-exhausted",
                    tenant_id=p.tenant_id,
                    principal_id=p.id,
                    patient_id=patient.id,
                )
                retry = int((opened[0] + DAY - now).total_seconds()) + 1
                raise BudgetExceeded(
                    f"Break-glass is limited to {self._budgets.break_glass_per_day} per day",
                    retry_after=retry,
                    scope="break-glass-day",
                )
            bg_id = str(uuid.uuid4())
            expires = now + timedelta(hours=self._budgets.break_glass_hours)
            self._audit.attribute(tx, caller)  # the database records the grant
            tx.patients.insert_break_glass(
                bg_id, p.tenant_id, p.id, patient.id, reason, now, expires
            )
        self._alerts.emit(
            "break-glass-opened",
            tenant_id=p.tenant_id,
            principal_id=p.id,
            patient_id=patient.id,
            expires_at=expires.isoformat(),
        )
        return BreakGlass(
            bg_id, patient.id, expires, self._budgets.break_glass_per_day - len(opened) - 1
        )

    def _refuse(
        self,
        tx: UnitOfWork,
        caller: Caller,
        now: datetime,
        patient_id: str | None,
        *,
        reason: str,
        outcome: str = "denied",
    ) -> None:
        """A refused break-glass is a denial like any other: audited, counted towards
        suspension, kept (committed) although the request fails."""
        self._audit.record(
            tx,
            action="break-glass",
            outcome=outcome,
            caller=caller,
            patient_id=patient_id,
            reason=reason,
        )
        self._gate.count_denial(
            tx, caller, now, scope="break-glass", cause="repeated-break-glass-denials"
        )
        tx.commit()

    # -- decoys ----------------------------------------------------------------------------

    def set_decoy(self, caller: Caller, patient_id: str, decoy: bool) -> Pending | None:
        """Arming a decoy is immediate; disarming it waits for a second admin."""
        p = caller.principal
        require(caller, Permission.DECOY_MANAGE)
        with self._store.transaction() as tx:
            now = self._clock.now()
            self._limiter.charge(tx, caller, self._limiter.admin, now, action="patient.decoy")
            patient = tx.patients.patient(p.tenant_id, patient_id)
            if patient is None:
                raise NotFound()
            if not decoy:
                if not patient.is_decoy:
                    # Nothing to clear, so nothing written: an unconditional write could
                    # undo another admin's arming that raced this request.
                    return None
                return self._approvals.request(
                    tx, caller, "decoy-clear", now, target_patient_id=patient.id
                )
            self._audit.attribute(tx, caller)  # the database records the change
            tx.patients.set_decoy(p.tenant_id, patient_id, decoy)
            return None

    def _approved_decoy_clear(
        self, tx: UnitOfWork, approver: Caller, approval: Approval
    ) -> dict[str, Any]:
        assert approval.target_patient_id is not None
        tx.patients.set_decoy(approval.tenant_id, approval.target_patient_id, False)
        return {"patient_id": approval.target_patient_id, "decoy": False}
