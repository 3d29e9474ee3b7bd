"""Unwrapping a patient's data key for the gate: the key cache first, else one
Transit unwrap, recorded (`key.unwrap`, for `audit reconcile`); when Vault's own
quota refuses it, nothing is released and the refusal is audited and alerted."""

from __future__ import annotations

import logging
from datetime import datetime

from crypto import DecryptionError, WrappedKey, key_context
from crypto.keywrap import KeyWrapper
from service.access.caller import Caller
from service.access.keycache import KeyCache, cache_key
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.errors import IntegrityFailure, KeyServiceThrottled, ServiceError
from service.metrics import Metrics
from service.models import AuditEvent, GateSnapshot, Patient, PatientKeyRow
from service.ports import UnitOfWork

log = logging.getLogger(__name__)


class KeyUnwrapper:
    def __init__(
        self,
        *,
        keys: KeyWrapper,
        cache: KeyCache,
        audit: AuditLog,
        alerts: Alerter,
        metrics: Metrics,
    ) -> None:
        self._keys = keys
        self._cache = cache
        self._audit = audit
        self._alerts = alerts
        self._metrics = metrics

    def unwrap(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient: Patient,
        now: datetime,
        *,
        cause: str,
        action: str,
        note_id: str | None,
        for_write: bool = False,
        snapshot: GateSnapshot | None = None,
        granted_already: bool = False,
        grant: AuditEvent | None = None,
    ) -> bytes | None:
        """The patient's data key (None: it has none yet). `granted_already`: the read's
        grant is on record before the unwrap (a warm re-read, service/access/warmread.py),
        so a failure of the unwrap is recorded too: the log never shows a grant alone for
        a read that returned nothing. `grant`: the read's grant, recorded here once the
        key is in hand, in the same append as `key.unwrap` when Vault was asked (one
        round trip and one commit for both on a cold read, not two); if the unwrap fails,
        `unavailable` is recorded instead, the transaction's charge dropped."""
        row = snapshot.key if snapshot else tx.keys.patient_key(patient.id, for_share=for_write)
        if row is None:
            self._record(tx, grant)
            return None
        ckey = cache_key(patient.tenant_id, patient.id, row.key_version, row.wrapped_key)
        cached = self._cache.get(ckey)
        if cached is not None:
            self._metrics.key_cache_lookup("hit")
            self._record(tx, grant)
            return cached
        self._metrics.key_cache_lookup("miss")
        # A read (its grant on record, or to be recorded with the key) that comes to
        # nothing is recorded as `unavailable`; a write's failure is its own request's.
        read = granted_already or grant is not None
        try:
            key = self._keys.unwrap(
                WrappedKey(row.wrapped_key, row.key_version),
                tenant_id=patient.tenant_id,
                context=key_context(tenant_id=patient.tenant_id, patient_id=patient.id),
            )
        except KeyServiceThrottled:
            self._vault_throttled(tx, caller, patient, now, action=action, note_id=note_id)
            raise
        except DecryptionError as e:
            log.error("wrapped key failed to unwrap for patient %s", patient.id)
            if read:
                self._unavailable(
                    tx, caller, patient, action, note_id, reason=IntegrityFailure.slug
                )
            raise IntegrityFailure() from e
        except ServiceError as e:  # Vault unavailable, sealed, too slow
            if read:
                self._unavailable(tx, caller, patient, action, note_id, reason=e.slug)
            raise
        # Vault logs every unwrap with its derivation context; this record names the
        # request that caused it, so `audit reconcile` can match the two one to one.
        unwrapped = self._audit.event(
            action="key.unwrap",
            outcome="granted",
            caller=caller,
            patient_id=patient.id,
            note_id=note_id,
            reason=cause,
        )
        self._record(tx, unwrapped, grant)
        self._cache.put(ckey, key)
        return key

    def _record(self, tx: UnitOfWork, *events: AuditEvent | None) -> None:
        self._audit.append(tx, *(e for e in events if e is not None))

    def cached(self, patient: Patient, row: PatientKeyRow | None) -> bytes | None:
        """The key if this worker holds it (no Vault call, so nothing to record)."""
        if row is None:
            return None
        key = self._cache.get(
            cache_key(patient.tenant_id, patient.id, row.key_version, row.wrapped_key)
        )
        if key is not None:
            self._metrics.key_cache_lookup("hit")
        return key

    def for_write(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient: Patient,
        now: datetime,
        *,
        action: str,
        note_id: str | None,
    ) -> bytes:
        """The patient's key for a write, share-locked until commit (a re-key waits),
        created when the patient has none yet."""

        def held() -> bytes | None:
            return self.unwrap(
                tx,
                caller,
                patient,
                now,
                cause="write",
                action=action,
                note_id=note_id,
                for_write=True,
            )

        key = held()
        if key is not None:
            return key
        context = key_context(tenant_id=patient.tenant_id, patient_id=patient.id)
        new = self._keys.new_data_key(tenant_id=patient.tenant_id, context=context)
        # The database records the new key (`key.create`), matched by `audit reconcile`
        # to Vault's own record of the data-key creation.
        self._audit.attribute(tx, caller)
        if tx.keys.insert_patient_key(
            patient.id, patient.tenant_id, new.wrapped.ciphertext, new.wrapped.key_version, now
        ):
            self._cache.put(
                cache_key(
                    patient.tenant_id, patient.id, new.wrapped.key_version, new.wrapped.ciphertext
                ),
                new.plaintext,
            )
            return new.plaintext
        key = held()  # another writer created the key first: use theirs
        assert key is not None
        return key

    def _vault_throttled(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient: Patient,
        now: datetime,
        *,
        action: str,
        note_id: str | None,
    ) -> None:
        """Vault refused the unwrap (its quota for the tenant is spent): nothing is
        released; the refusal is recorded (and what this transaction charged dropped)."""
        self._unavailable(tx, caller, patient, action, note_id, reason="vault-unwrap-quota")
        self._metrics.vault_throttled.inc()
        self._alerts.emit(
            "vault-unwrap-quota-exceeded",
            tenant_id=patient.tenant_id,
            principal_id=caller.principal.id,
            patient_id=patient.id,
        )

    def _unavailable(
        self,
        tx: UnitOfWork,
        caller: Caller,
        patient: Patient,
        action: str,
        note_id: str | None,
        *,
        reason: str,
    ) -> None:
        """Record, and commit, that the read came to nothing: the key was not released, so
        what this transaction charged is dropped first (the budget counts releases)."""
        tx.rollback()
        self._audit.record(
            tx,
            action=action,
            outcome="unavailable",
            caller=caller,
            patient_id=patient.id,
            note_id=note_id,
            reason=reason,
        )
        tx.commit()
