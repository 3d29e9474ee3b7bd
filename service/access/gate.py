"""The key-release gate: the one place where a patient's data key leaves Vault.

Every path that returns note content goes through `KeyReleaseGate.release`:

    identity -> not suspended -> care team or break-glass -> decoy trap
             -> budget -> unwrap (or cache) -> audit record

and decrypts only after the transaction carrying the audit record commits.
Writes go through `KeyReleaseGate.grant_write` and `key_for_write`: same identity,
access and decoy checks, audited, but no charge against the distinct-patient
budget (a write returns no content; the write limit charges it instead).

Budgets are counted in PostgreSQL (`key_releases`), so every worker and replica
shares them. A release of a patient already released to the same principal
within the last hour is free. New releases take a row lock on the principal and
an advisory lock on the tenant's budget, so concurrent requests cannot
over-release.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from crypto.keywrap import KeyWrapper
from service.access.budget import BudgetPolicy, BudgetStatus, Release
from service.access.caller import Caller
from service.access.incidents import TenantIncidents
from service.access.keycache import KeyCache
from service.access.unwrap import KeyUnwrapper
from service.access.warmread import is_warm_reread
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.clock import Clock
from service.config import Budgets
from service.errors import (
    AccountSuspended,
    BudgetExceeded,
    CallerChanged,
    GateDisagreement,
    Gone,
    NotFound,
)
from service.metrics import Metrics
from service.models import (
    BudgetUsage,
    Confirmation,
    GateSnapshot,
    NoteRow,
    NoteVersionRow,
    Patient,
    Principal,
    WriteGrant,
)
from service.ports import UnitOfWork

log = logging.getLogger(__name__)


class KeyReleaseGate:
    def __init__(
        self,
        *,
        keys: KeyWrapper,
        cache: KeyCache,
        audit: AuditLog,
        alerts: Alerter,
        metrics: Metrics,
        budgets: Budgets,
        clock: Clock,
    ) -> None:
        self._keys = keys
        self._cache = cache
        self._audit = audit
        self._alerts = alerts
        self._metrics = metrics
        self._budgets = budgets
        self._clock = clock
        self._incidents = TenantIncidents(alerts)
        self.policy = BudgetPolicy(budgets)
        self._unwrapper = KeyUnwrapper(
            keys=keys, cache=cache, audit=audit, alerts=alerts, metrics=metrics
        )

    def limits_for(self, principal: Principal) -> tuple[int, int]:
        return self.policy.limits_for(principal)

    def budget_status(
        self, principal: Principal, usage: BudgetUsage, now: datetime
    ) -> BudgetStatus:
        return self.policy.budget_status(principal, usage, now)

    # -- shared checks ------------------------------------------------------------------

    def _deny_and_commit(self, tx: UnitOfWork, exc: Exception) -> None:
        # Denials must be recorded even though the request fails.
        tx.commit()
        raise exc

    def _suspend(
        self, tx: UnitOfWork, caller: Caller, now: datetime, *, cause: str, patient_id: str | None
    ) -> None:
        p = caller.principal
        # The database records the suspension itself (a trigger on principals).
        self._audit.attribute(tx, caller)
        if tx.principals.suspend_principal(p.id, cause, now):
            self._metrics.suspensions.labels(cause=cause).inc()
            self._alerts.emit(
                "principal-suspended",
                cause=cause,
                tenant_id=p.tenant_id,
                principal_id=p.id,
                patient_id=patient_id,
            )

    def _access(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient_id: str,
        now: datetime,
        *,
        action: str,
        note_id: str | None,
        snapshot: GateSnapshot | None = None,
        confirm_token: bytes | None = None,
    ) -> tuple[Patient, str, GateSnapshot]:
        """Identity (a remembered caller's token and account confirmed by the same read:
        CallerChanged before anything is written), suspension, access, decoy trap."""
        p = caller.principal
        snap = snapshot or tx.ledger.gate_snapshot(
            p.id, p.tenant_id, patient_id, now, token_hash=confirm_token
        )
        if confirm_token is not None and not snap.confirms(p):
            raise CallerChanged()
        if not snap.principal_found or snap.suspended:
            raise AccountSuspended()
        patient, care, glass = snap.patient, snap.on_care_team, snap.break_glass
        if patient is None or not (care or glass):
            # A forbidden patient and a nonexistent one look the same to the caller.
            self._audit.record(
                tx,
                action=action,
                outcome="denied",
                caller=caller,
                patient_id=patient_id if patient else None,
                note_id=note_id,
                reason="not-on-care-team" if patient else "no-such-patient",
            )
            self._metrics.key_release("denied")
            self._deny_and_commit(tx, NotFound())
        assert patient is not None
        if patient.is_decoy:
            # Suspend (principal row lock) before auditing (shard lock): the same lock
            # order as the release path, so the two never deadlock.
            self._suspend(tx, caller, now, cause="decoy-patient", patient_id=patient.id)
            self._audit.record(
                tx,
                action=action,
                outcome="denied",
                caller=caller,
                patient_id=patient.id,
                note_id=note_id,
                reason="decoy-patient",
            )
            self._alerts.emit(
                "decoy-accessed", tenant_id=p.tenant_id, principal_id=p.id, patient_id=patient.id
            )
            self._metrics.key_release("decoy")
            self._deny_and_commit(tx, AccountSuspended())
        if patient.shredded_at is not None:
            self._audit.record(
                tx,
                action=action,
                outcome="denied",
                caller=caller,
                patient_id=patient.id,
                note_id=note_id,
                reason="patient-shredded",
            )
            self._deny_and_commit(tx, Gone())
        return patient, ("care-team" if care else "break-glass"), snap

    # -- budget -----------------------------------------------------------------------

    def _throttle(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient_id: str,
        note_id: str | None,
        action: str,
        exc: BudgetExceeded,
        now: datetime,
    ) -> None:
        p = caller.principal
        scope = str(exc.extra.get("scope"))
        self._audit.record(
            tx,
            action=action,
            outcome="throttled",
            caller=caller,
            patient_id=patient_id,
            note_id=note_id,
            reason=scope,
        )
        self._metrics.key_release("throttled")
        if scope == "tenant-hour":
            # Someone else's exhaustion of the tenant cap is not this caller's fault: it
            # never counts towards the caller's suspension. It is a tenant incident.
            self._incidents.report(tx, p.tenant_id, now)
            self._deny_and_commit(tx, exc)
        if self.count_denial(tx, caller, now, scope=scope, cause="repeated-budget-denials") == 1:
            self._alerts.emit(
                "budget-exhausted", scope=scope, tenant_id=p.tenant_id, principal_id=p.id
            )
        self._deny_and_commit(tx, exc)

    def count_denial(
        self, tx: UnitOfWork, caller: Caller, now: datetime, *, scope: str, cause: str
    ) -> int:
        """Count a denial against the principal; suspend it (audited, alerted) when the
        denials of the last hour reach the limit. Returns that count."""
        denials = tx.ledger.record_denial(caller.principal.id, scope, now)
        if denials >= self._budgets.suspend_after_denials:
            self._suspend(tx, caller, now, cause=cause, patient_id=None)
        return denials

    # -- the gate ---------------------------------------------------------------------

    def release_note(
        self,
        tx: UnitOfWork,
        caller: Caller,
        note_id: str,
        *,
        action: str,
        confirm_token: bytes | None = None,
    ) -> tuple[NoteRow, NoteVersionRow | None, Release] | None:
        """Release the key of a note's patient for reading it: note, current version and
        gate snapshot in one statement. None: the tenant has no such note.

        `confirm_token`: the caller was remembered (service/access/remembered.py). The
        statement re-reads principal and token; unless both are as remembered, nothing
        is decided or written: CallerChanged. On a warm re-read it also recorded the
        grant (service/access/warmread.py)."""
        now = self._clock.now()
        p = caller.principal
        confirm = None
        if confirm_token is not None:
            # A read that will call Vault records its grant with `key.unwrap` (one commit).
            held = not self._cache.lacks_note_key(p.tenant_id, note_id)
            confirm = Confirmation(confirm_token, p, caller.request_id, caller.client_addr, held)
        found = tx.ledger.note_gate_snapshot(p.id, p.tenant_id, note_id, now, confirm=confirm)
        if confirm is not None and not found.gate.confirms(p):
            if found.recorded:
                self._disagree(caller, "caller")
            raise CallerChanged()
        if found.note is None:
            return None
        note = found.note
        release = self.release(
            tx,
            caller,
            note.patient_id,
            action=action,
            note_id=note.id,
            _seen=(now, found.gate, found.recorded),
        )
        self._cache.remember_note(note.tenant_id, note.id, note.patient_id)  # granted
        return note, found.version, release

    def _disagree(self, caller: Caller, what: str) -> None:
        p = caller.principal
        log.error("the warm read's statement recorded a grant the gate refuses (%s)", what)
        self._alerts.emit("gate-disagreement", tenant_id=p.tenant_id, principal_id=p.id)
        raise GateDisagreement()

    def release(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient_id: str,
        *,
        action: str,
        note_id: str | None = None,
        _seen: tuple[datetime, GateSnapshot, bool] | None = None,
    ) -> Release:
        """Release a patient's data key for reading, or raise (after auditing). `_seen`:
        time and snapshot already read, and whether the grant is recorded already."""
        now, snapshot, recorded = _seen if _seen is not None else (self._clock.now(), None, False)
        if recorded and not is_warm_reread(snapshot):
            # Stop before the checks below could write a refusal beside the grant.
            self._disagree(caller, "snapshot")
        patient, via, snap = self._access(
            tx, caller, patient_id, now, action=action, note_id=note_id, snapshot=snapshot
        )
        # Care team: the principal's budget and the tenant cap. Break-glass: its own
        # budget was charged when it was opened; the tenant cap still applies.
        usage, exceeded = self.policy.charge(tx, caller, patient.id, now, snap.usage, via=via)
        if exceeded is not None:
            self._throttle(tx, caller, patient.id, note_id, action, exceeded, now)
        # The grant is recorded once the key is in hand (with `key.unwrap` when Vault
        # was asked), unless the read's statement recorded it already.
        grant = None
        if not recorded:
            grant = self._audit.event(
                action=action,
                outcome="granted",
                caller=caller,
                patient_id=patient.id,
                note_id=note_id,
                reason="break-glass" if via == "break-glass" else None,
            )
        key = self._unwrapper.unwrap(
            tx,
            caller,
            patient,
            now,
            cause="read",
            action=action,
            note_id=note_id,
            snapshot=snap,
            granted_already=recorded,
            grant=grant,
        )
        self._metrics.key_release("granted")
        return Release(key, patient, via, self.budget_status(caller.principal, usage, now))

    def grant_write(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient_id: str,
        *,
        action: str,
        note_id: str | None = None,
        confirm_token: bytes | None = None,
    ) -> WriteGrant:
        """A write's identity, access and decoy checks; a denial is audited, committed
        and raised. Nothing is charged or unwrapped yet."""
        now = self._clock.now()
        patient, via, snap = self._access(
            tx, caller, patient_id, now, action=action, note_id=note_id, confirm_token=confirm_token
        )
        return WriteGrant(patient, via, now, snap.key)

    def cached_key(self, grant: WriteGrant) -> bytes | None:
        """The granted patient's data key if this worker holds it already: no key leaves
        Vault for it, so the write may be charged and made in one call (NotesService)."""
        return self._unwrapper.cached(grant.patient, grant.key)

    def key_for_write(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient_id: str,
        *,
        action: str,
        note_id: str | None = None,
        charge: Callable[[datetime, str], None] | None = None,
        confirm_token: bytes | None = None,
        grant: WriteGrant | None = None,
    ) -> tuple[Patient, bytes, str]:
        """Access-check a write (unless `grant`: checked already); return the patient,
        its data key (created if needed) and how access was granted ("care-team" or
        "break-glass"). The caller audits the write itself, once it knows the note id.
        `charge` (the write limit) runs after the access check and before any key
        leaves Vault."""
        if grant is None:
            grant = self.grant_write(
                tx, caller, patient_id, action=action, note_id=note_id, confirm_token=confirm_token
            )
        if charge is not None:
            charge(grant.now, grant.patient.id)
        key = self._unwrapper.for_write(
            tx, caller, grant.patient, grant.now, action=action, note_id=note_id
        )
        return grant.patient, key, grant.via

    def check_metadata_access(self, tx: UnitOfWork, caller: Caller, patient_id: str) -> Patient:
        """Access check for metadata-only reads: audited, no key release, no budget."""
        now = self._clock.now()
        patient, via, _snap = self._access(
            tx, caller, patient_id, now, action="note.list", note_id=None
        )
        self._audit.record(
            tx,
            action="note.list",
            outcome="granted",
            caller=caller,
            patient_id=patient.id,
            reason="break-glass" if via == "break-glass" else None,
        )
        return patient

    @staticmethod
    def break_glass_window(hours: float) -> timedelta:
        return timedelta(hours=hours)
