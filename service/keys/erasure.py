"""A patient's key over its life: crypto-shredding (two admins, a grace period, then
maintenance destroys the key), cancelling a shred, and re-keying one patient."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crypto import DecryptionError, WrappedKey, key_context, open_sealed, seal
from service.access.caller import OPERATOR, Actor, Caller
from service.access.roles import Permission, require
from service.errors import Conflict, IntegrityFailure, NotFound
from service.models import Approval, Patient
from service.notes.sealing import note_aad_for
from service.ports import UnitOfWork

if TYPE_CHECKING:
    from service.access.approvals import Pending

from service.keys.state import KeyOperationsState

log = logging.getLogger(__name__)


class PatientKeyErasure(KeyOperationsState):
    def _patient(self, patient_id: str, actor: Actor) -> Patient:
        with self._store.transaction() as tx:
            patient = tx.patients.patient_by_id(patient_id)
        if patient is None or (
            isinstance(actor, Caller) and patient.tenant_id != actor.principal.tenant_id
        ):
            raise NotFound("No such patient")
        return patient

    def shred(self, patient_id: str, reason: str, actor: Actor) -> Patient | Pending:
        """Crypto-shred a patient: it answers 410 at once, and its wrapped data key is
        destroyed when the grace period ends (`sealednotes maintenance run`), after
        which its notes can never be read again. An admin's shred waits for a second
        admin; the operator's (command line) is recorded as such."""
        caller = actor if isinstance(actor, Caller) else None
        if caller is not None:
            require(caller, Permission.PATIENT_SHRED)
        patient = self._patient(patient_id, actor)
        with self._store.transaction() as tx:
            now = self._clock.now()
            if caller is not None:
                assert self._approvals is not None and self._limiter is not None
                self._limiter.charge(tx, caller, self._limiter.admin, now, action="patient.shred")
                if patient.shredded_at is not None:
                    raise Conflict("The patient is already shredded")
                return self._approvals.request(
                    tx,
                    caller,
                    "shred",
                    now,
                    target_patient_id=patient.id,
                    params={"reason": reason},
                )
            # The database records the shred (a trigger on patients), with this reason.
            self._audit.attribute(tx, OPERATOR, reason=reason)
            if not tx.patients.shred_patient(patient.tenant_id, patient.id, now, now + self._grace):
                raise Conflict("The patient is already shredded")
            shredded = tx.patients.patient_by_id(patient.id)
        self._cache.clear()
        assert shredded is not None
        return shredded

    def _approved_shred(
        self, tx: UnitOfWork, approver: Caller, approval: Approval
    ) -> dict[str, Any]:
        assert approval.target_patient_id is not None
        now = self._clock.now()
        # The shred's record carries the requester's reason and the approval.
        self._audit.attribute(
            tx,
            approver,
            reason=f"{approval.params.get('reason', '')} approval={approval.id}"
            f" requested_by={approval.requested_by}",
        )
        if not tx.patients.shred_patient(
            approval.tenant_id, approval.target_patient_id, now, now + self._grace
        ):
            raise Conflict("The patient is already shredded")
        self._cache.clear()
        return {
            "patient_id": approval.target_patient_id,
            "shredded_at": now.isoformat(),
            "key_destroyed_after": (now + self._grace).isoformat(),
        }

    def cancel_shred(self, caller: Caller, patient_id: str) -> Pending:
        """Undo a shred before its key is destroyed: always needs two admins."""
        require(caller, Permission.PATIENT_SHRED)
        assert self._approvals is not None and self._limiter is not None
        patient = self._patient(patient_id, caller)
        with self._store.transaction() as tx:
            now = self._clock.now()
            self._limiter.charge(
                tx, caller, self._limiter.admin, now, action="patient.shred-cancel"
            )
            if patient.shredded_at is None:
                raise Conflict("The patient is not shredded")
            return self._approvals.request(
                tx, caller, "shred-cancel", now, target_patient_id=patient.id
            )

    def _approved_shred_cancel(
        self, tx: UnitOfWork, approver: Caller, approval: Approval
    ) -> dict[str, Any]:
        assert approval.target_patient_id is not None
        if not tx.patients.cancel_shred(approval.tenant_id, approval.target_patient_id):
            raise Conflict("The key is already destroyed, or the patient is not shredded")
        return {"patient_id": approval.target_patient_id, "shredded": False}

    def destroy_due_keys(self) -> int:
        """Maintenance: destroy the keys whose shred grace period has ended."""
        with self._store.transaction() as tx:
            n = tx.patients.destroy_due_keys()
        self._cache.clear()
        return n

    def rekey(self, patient_id: str, reason: str) -> dict[str, Any]:
        """A new data key for one patient; every note version re-encrypted under it."""
        patient = self._patient(patient_id, OPERATOR)
        if patient.shredded_at is not None:
            raise Conflict("The patient is shredded")
        context = key_context(tenant_id=patient.tenant_id, patient_id=patient.id)
        with self._store.transaction() as tx:
            now = self._clock.now()
            row = tx.keys.lock_patient_key(patient.id)
            if row is None:
                raise Conflict("The patient has no data key yet (no notes)")
            try:
                old_key = self._keys.unwrap(
                    WrappedKey(row.wrapped_key, row.key_version),
                    tenant_id=patient.tenant_id,
                    context=context,
                )
            except DecryptionError as e:
                raise IntegrityFailure() from e
            # Matched against Vault's own log of this unwrap by `audit reconcile`.
            self._audit.record(
                tx,
                action="key.unwrap",
                outcome="granted",
                tenant_id=patient.tenant_id,
                patient_id=patient.id,
                reason="rekey",
                request_id="cli",
            )
            new = self._keys.new_data_key(tenant_id=patient.tenant_id, context=context)
            versions = tx.notes.patient_versions_for_update(patient.id)
            for note, version in versions:
                aad = note_aad_for(note, version.version)
                try:
                    plaintext = open_sealed(old_key, version.sealed, aad=aad)
                except DecryptionError as e:
                    raise IntegrityFailure() from e
                tx.notes.reseal_version(
                    note.id, version.version, seal(new.plaintext, plaintext, aad=aad)
                )
            tx.keys.set_patient_key(
                patient.id, new.wrapped.ciphertext, new.wrapped.key_version, now
            )
            self._audit.record(
                tx,
                action="patient.rekey",
                outcome="granted",
                tenant_id=patient.tenant_id,
                patient_id=patient.id,
                reason=reason,
            )
        self._cache.clear()
        return {
            "patient_id": patient.id,
            "versions_resealed": len(versions),
            "key_version": new.wrapped.key_version,
        }
