"""Patient, care-team and break-glass use cases."""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.alerts import Alerter
from service.audit import AuditLog, Caller
from service.clock import Clock
from service.config import Budgets
from service.errors import AccountSuspended, BudgetExceeded, Conflict, Forbidden, NotFound
from service.keyrelease import KeyReleaseGate
from service.models import Patient, Role
from service.store import DAY, Store, Tx
from service.vault import VaultKeyService


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
        store: Store,
        keys: VaultKeyService,
        audit: AuditLog,
        alerts: Alerter,
        gate: KeyReleaseGate,
        clock: Clock,
        budgets: Budgets,
    ) -> None:
        self._store = store
        self._keys = keys
        self._audit = audit
        self._alerts = alerts
        self._gate = gate
        self._clock = clock
        self._budgets = budgets

    def create(self, caller: Caller, external_id: str) -> Patient:
        p = caller.principal
        if p.role not in (Role.INTEGRATION, Role.CLINICIAN):
            raise Forbidden("Only integrations and clinicians register patients")
        index = self._keys.blind_index(
            tenant_id=p.tenant_id, value=normalize_external_id(external_id)
        )
        with self._store.transaction() as tx:
            now = self._clock.now()
            patient_id = tx.insert_patient(str(uuid.uuid4()), p.tenant_id, index, now)
            if patient_id is None:
                existing = tx.patient_by_index(p.tenant_id, index)
                if p.role is Role.CLINICIAN:
                    # A 409 tells a clinician that an identifier exists in the tenant:
                    # probing for identifiers counts like any other denial (and, like
                    # every suspension, locks the principal before any audit shard).
                    self._gate.count_denial(
                        tx,
                        caller,
                        now,
                        scope="duplicate-registration",
                        cause="repeated-duplicate-registrations",
                    )
                self._audit.record(
                    tx,
                    action="patient.create",
                    outcome="denied",
                    caller=caller,
                    patient_id=existing.id if existing else None,
                    reason="duplicate",
                )
                tx.commit()
                extra = (
                    {"patient_id": existing.id} if existing and p.role is Role.INTEGRATION else {}
                )
                raise Conflict("A patient with this external id already exists", extra=extra)
            if p.role is Role.CLINICIAN:
                # A clinician who registers a patient is treating them.
                self._audit.attribute(tx, caller)
                tx.upsert_care_team(patient_id, p.id, None, now)
            self._audit.record(
                tx,
                action="patient.create",
                outcome="granted",
                caller=caller,
                patient_id=patient_id,
            )
            patient = tx.patient(p.tenant_id, patient_id)
            assert patient is not None
            return patient

    def find(self, caller: Caller, external_id: str) -> Patient:
        p = caller.principal
        if p.role not in (Role.INTEGRATION, Role.CLINICIAN):
            raise Forbidden("Only integrations and clinicians look up patients")
        index = self._keys.blind_index(
            tenant_id=p.tenant_id, value=normalize_external_id(external_id)
        )
        with self._store.transaction() as tx:
            return self._visible(
                tx, caller, tx.patient_by_index(p.tenant_id, index), action="patient.lookup"
            )

    def get(self, caller: Caller, patient_id: str) -> Patient:
        p = caller.principal
        if p.role not in (Role.INTEGRATION, Role.CLINICIAN):
            raise Forbidden("Only integrations and clinicians read patient records")
        with self._store.transaction() as tx:
            return self._visible(
                tx, caller, tx.patient(p.tenant_id, patient_id), action="patient.read"
            )

    def _visible(self, tx: Tx, caller: Caller, patient: Patient | None, *, action: str) -> Patient:
        """An integration sees every patient of its tenant; a clinician only those on its
        care team or under its break-glass. Anything else is audited and answers 404,
        exactly like a patient that does not exist."""
        p = caller.principal
        now = self._clock.now()
        visible = patient is not None
        if patient is not None and p.role is Role.CLINICIAN:
            care, glass = tx.access_to_patient(p.id, patient.id, now)
            visible = care or glass
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

    def set_care_team(
        self, caller: Caller, patient_id: str, member_id: str, until: datetime | None
    ) -> bool:
        p = caller.principal
        if p.role not in (Role.INTEGRATION, Role.ADMIN):
            raise Forbidden("Only integrations and admins manage care teams")
        with self._store.transaction() as tx:
            now = self._clock.now()
            patient = tx.patient(p.tenant_id, patient_id)
            member = tx.principal_in_tenant(p.tenant_id, member_id)
            if patient is None or member is None:
                raise NotFound()
            if member.role is not Role.CLINICIAN:
                raise Conflict("Only clinicians can be on a care team")
            self._audit.attribute(tx, caller)  # the database records the change
            return tx.upsert_care_team(patient.id, member.id, until, now)

    def remove_care_team(self, caller: Caller, patient_id: str, member_id: str) -> None:
        p = caller.principal
        if p.role not in (Role.INTEGRATION, Role.ADMIN):
            raise Forbidden("Only integrations and admins manage care teams")
        with self._store.transaction() as tx:
            if tx.patient(p.tenant_id, patient_id) is None:
                raise NotFound()
            self._audit.attribute(tx, caller)  # the database records the change
            if not tx.delete_care_team(patient_id, member_id):
                raise NotFound()

    def break_glass(self, caller: Caller, patient_id: str, reason: str) -> BreakGlass:
        p = caller.principal
        if p.role is not Role.CLINICIAN:
            raise Forbidden("Only clinicians may break the glass")
        if self._budgets.break_glass_per_day <= 0:
            raise Forbidden("Break-glass is disabled for this deployment")
        with self._store.transaction() as tx:
            now = self._clock.now()
            current = tx.principal(p.id, for_update=True)
            if current is None or current.suspended:
                raise AccountSuspended()
            patient = tx.patient(p.tenant_id, patient_id)
            if patient is None:
                self._audit.record(
                    tx,
                    action="break-glass",
                    outcome="denied",
                    caller=caller,
                    reason="no-such-patient",
                )
                tx.commit()
                raise NotFound()
            opened = tx.break_glass_opened_since(p.id, now - DAY)
            if len(opened) >= self._budgets.break_glass_per_day:
                self._audit.record(
                    tx,
                    action="break-glass",
                    outcome="throttled",
                    caller=caller,
                    patient_id=patient.id,
                    reason=reason,
                )
                tx.commit()
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
            tx.insert_break_glass(bg_id, p.tenant_id, p.id, patient.id, reason, now, expires)
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

    def set_decoy(self, caller: Caller, patient_id: str, decoy: bool) -> None:
        p = caller.principal
        if p.role is not Role.ADMIN:
            raise Forbidden("Only admins mark decoy patients")
        with self._store.transaction() as tx:
            self._audit.attribute(tx, caller)  # the database records the change
            if not tx.set_decoy(p.tenant_id, patient_id, decoy):
                raise NotFound()
