"""Note use cases. Each reads as: open a transaction, check access (the gate),
act, audit, commit, and only then decrypt."""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from crypto import DecryptionError, note_aad, open_sealed, seal
from service.access.budget import BudgetStatus
from service.access.caller import Caller
from service.access.gate import KeyReleaseGate
from service.access.roles import Permission, require
from service.audit.service import AuditLog
from service.clock import Clock
from service.errors import Conflict, IntegrityFailure, NotFound, PreconditionFailed
from service.models import NewNote, NoteRow, NoteVersionRow, Patient, WriteGrant
from service.notes.sealing import (
    NoteContent,
    decode,
    encode,
    note_aad_for,
    request_digest,
)
from service.notes.views import DecryptedVersion, NotePage, NoteView
from service.ports import Database, UnitOfWork

if TYPE_CHECKING:
    from service.access.limits import ActionLimiter

log = logging.getLogger(__name__)


def _via_reason(via: str) -> str | None:
    # Writes outside the care team are flagged for the break-glass review.
    return "break-glass" if via == "break-glass" else None


class IdempotencyKeyReused(Conflict):
    slug = "idempotency-key-reused"
    title = "This Idempotency-Key was already used for a different request"


def _require_clinician(caller: Caller) -> None:
    require(caller, Permission.NOTE_CONTENT)


class NotesService:
    def __init__(
        self,
        *,
        store: Database,
        gate: KeyReleaseGate,
        audit: AuditLog,
        clock: Clock,
        limiter: ActionLimiter | None = None,
    ):
        self._store = store
        self._gate = gate
        self._audit = audit
        self._clock = clock
        self._limiter = limiter

    def _write_budget(
        self, tx: UnitOfWork, caller: Caller, action: str
    ) -> Callable[[datetime, str], None]:
        """Distinct patients a clinician writes to per hour: a hijacked account cannot
        amend or void notes across the practice (another author's notes included)."""

        def charge(now: datetime, patient_id: str) -> None:
            if self._limiter is not None:
                self._limiter.charge(
                    tx, caller, self._limiter.write, now, action=action, patient_id=patient_id
                )

        return charge

    def _decrypt(self, key: bytes | None, note: NoteRow, row: NoteVersionRow) -> NoteContent:
        if key is None:
            raise IntegrityFailure()
        try:
            return decode(open_sealed(key, row.sealed, aad=note_aad_for(note, row.version)))
        except DecryptionError as e:
            log.error("note %s version %s failed authentication", note.id, row.version)
            raise IntegrityFailure() from e

    def _note_or_404(self, tx: UnitOfWork, caller: Caller, note_id: str, action: str) -> NoteRow:
        note = tx.notes.note(caller.principal.tenant_id, note_id)
        if note is None:
            self._deny_missing_note(tx, caller, note_id, action)
        assert note is not None
        return note

    def _deny_missing_note(self, tx: UnitOfWork, caller: Caller, note_id: str, action: str) -> None:
        """Audit the attempt (kept: commit first), then answer 404."""
        self._audit.record(
            tx,
            action=action,
            outcome="denied",
            caller=caller,
            note_id=note_id,
            reason="no-such-note",
        )
        tx.commit()
        raise NotFound()

    # -- writes ------------------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        patient_id: str,
        *,
        kind: str,
        content: NoteContent,
        encounter_at: datetime | None,
        idempotency_key: str | None = None,
        confirm_token: bytes | None = None,
    ) -> tuple[NoteRow, bool]:
        """Create a note; returns (note, replayed). With an idempotency key, a retry
        of the same request returns the first note instead of a duplicate.
        `confirm_token`: a remembered caller, confirmed by the gate's first read."""
        _require_clinician(caller)
        note_id = str(uuid.uuid4())
        with self._store.transaction() as tx:
            grant = self._gate.grant_write(
                tx,
                caller,
                patient_id,
                action="note.create",
                note_id=note_id,
                confirm_token=confirm_token,
            )
            one_call = idempotency_key is None and self._limiter is not None
            held = self._gate.cached_key(grant) if one_call else None
            if held is not None:
                note = self._create_in_one_call(
                    tx, caller, grant, held, note_id, kind, content, encounter_at
                )
                if note is not None:
                    return note, False
            patient, key, via = self._gate.key_for_write(
                tx,
                caller,
                patient_id,
                action="note.create",
                note_id=note_id,
                charge=self._write_budget(tx, caller, "note.create"),
                confirm_token=confirm_token,
                # A call that wrote nothing may have waited (on a re-key, on the account's
                # lock): access is checked again, not taken from the earlier grant.
                grant=grant if held is None else None,
            )
            now = self._clock.now()
            if idempotency_key is not None:
                digest = request_digest(key, patient.id, kind, content, encounter_at)
                earlier = tx.notes.claim_idempotency_key(
                    caller.principal.id, idempotency_key, digest, note_id, now
                )
                if earlier is not None:
                    earlier_id, earlier_digest = earlier
                    if not hmac.compare_digest(earlier_digest, digest):
                        raise IdempotencyKeyReused()
                    replay = tx.notes.note(patient.tenant_id, earlier_id)
                    assert replay is not None
                    self._audit.record(
                        tx,
                        action="note.create",
                        outcome="noop",
                        caller=caller,
                        patient_id=patient.id,
                        note_id=earlier_id,
                        reason="idempotent-replay",
                    )
                    return replay, True
            note = tx.notes.insert_note(
                _new_note(caller, patient, note_id, kind, encounter_at, now, key, content)
            )
            self._audit.record(
                tx,
                action="note.create",
                outcome="granted",
                caller=caller,
                patient_id=patient.id,
                note_id=note.id,
                reason=_via_reason(via),
            )
            return note, False

    def _create_in_one_call(
        self,
        tx: UnitOfWork,
        caller: Caller,
        grant: WriteGrant,
        key: bytes,
        note_id: str,
        kind: str,
        content: NoteContent,
        encounter_at: datetime | None,
    ) -> NoteRow | None:
        """The common create, when this worker holds the patient's data key (`key`, no
        Vault call): charged to the write limit, written and recorded by one call. None
        when that call wrote nothing (a suspension or the limit to answer, the key
        changed, an error): the ordinary path then takes each step, and refuses and
        records what it must."""
        assert grant.key is not None and self._limiter is not None  # as `create` checked
        patient = grant.patient
        return tx.notes.insert_note_charged(
            _new_note(caller, patient, note_id, kind, encounter_at, grant.now, key, content),
            key=grant.key,
            write_limit=self._limiter.write.per_hour,
            record=self._audit.event(
                action="note.create",
                outcome="granted",
                caller=caller,
                patient_id=patient.id,
                note_id=note_id,
                reason=_via_reason(grant.via),
            ),
        )

    def amend(
        self,
        caller: Caller,
        note_id: str,
        *,
        expected_version: int,
        kind: str,
        content: NoteContent,
        encounter_at: datetime | None,
        expected_patient_id: str | None = None,
    ) -> NoteRow:
        _require_clinician(caller)
        with self._store.transaction() as tx:
            note = self._note_or_404(tx, caller, note_id, "note.amend")
            _patient, key, via = self._gate.key_for_write(
                tx,
                caller,
                note.patient_id,
                action="note.amend",
                note_id=note.id,
                charge=self._write_budget(tx, caller, "note.amend"),
            )
            if expected_patient_id is not None and expected_patient_id != note.patient_id:
                raise Conflict("A note cannot move to another patient")  # FHIR update subject
            if note.status != "current":
                raise Conflict("A note marked entered-in-error cannot be amended")
            now = self._clock.now()
            updated = tx.notes.bump_note_version(note.id, expected_version, kind, encounter_at, now)
            if updated is None:
                raise PreconditionFailed(
                    f"The note is at version {note.current_version}; re-read it and retry"
                )
            tx.notes.insert_note_version(
                note.id,
                updated.current_version,
                seal(key, encode(content), aad=note_aad_for(updated, updated.current_version)),
                caller.principal.id,
                now,
            )
            self._audit.record(
                tx,
                action="note.amend",
                outcome="granted",
                caller=caller,
                patient_id=note.patient_id,
                note_id=note.id,
                reason=_via_reason(via),
            )
            return updated

    def mark_entered_in_error(self, caller: Caller, note_id: str) -> NoteRow:
        _require_clinician(caller)
        with self._store.transaction() as tx:
            note = self._note_or_404(tx, caller, note_id, "note.delete")
            _patient, _key, via = self._gate.key_for_write(
                tx,
                caller,
                note.patient_id,
                action="note.delete",
                note_id=note.id,
                charge=self._write_budget(tx, caller, "note.delete"),
            )
            now = self._clock.now()
            tx.notes.mark_entered_in_error(note.id, now)
            self._audit.record(
                tx,
                action="note.delete",
                outcome="granted",
                caller=caller,
                patient_id=note.patient_id,
                note_id=note.id,
                reason="entered-in-error" + (" (break-glass)" if via == "break-glass" else ""),
            )
            found = tx.notes.note(note.tenant_id, note.id)
            assert found is not None
            return found

    # -- reads (every one through the key-release gate) ---------------------------------

    def read(
        self, caller: Caller, note_id: str, *, confirm_token: bytes | None = None
    ) -> tuple[NoteView, BudgetStatus]:
        """`confirm_token`: the caller is remembered; the gate confirms it in the
        read's own statement (KeyReleaseGate.release_note) or raises CallerChanged."""
        _require_clinician(caller)
        with self._store.transaction() as tx:
            found = self._gate.release_note(
                tx, caller, note_id, action="note.read", confirm_token=confirm_token
            )
            if found is None:
                self._deny_missing_note(tx, caller, note_id, "note.read")
            assert found is not None
            note, row, release = found
        if row is None:
            raise IntegrityFailure()
        return NoteView(note, self._decrypt(release.key, note, row)), release.budget

    def versions(
        self, caller: Caller, note_id: str
    ) -> tuple[NoteRow, list[DecryptedVersion], BudgetStatus]:
        _require_clinician(caller)
        with self._store.transaction() as tx:
            note = self._note_or_404(tx, caller, note_id, "note.versions")
            release = self._gate.release(
                tx, caller, note.patient_id, action="note.versions", note_id=note.id
            )
            rows = tx.notes.note_versions(note.id)
        return (
            note,
            [DecryptedVersion(r, self._decrypt(release.key, note, r)) for r in rows],
            release.budget,
        )

    def list_for_patient(
        self,
        caller: Caller,
        patient_id: str,
        *,
        include_content: bool,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> NotePage:
        _require_clinician(caller)
        with self._store.transaction() as tx:
            if include_content:
                release = self._gate.release(tx, caller, patient_id, action="note.list-content")
                budget: BudgetStatus | None = release.budget
            else:
                # Metadata only: access-checked and audited, no key release.
                self._gate.check_metadata_access(tx, caller, patient_id)
                release, budget = None, None
            notes = tx.notes.notes_for_patient(patient_id, limit=limit + 1, after=after)
            page, more = notes[:limit], len(notes) > limit
            rows = tx.notes.current_versions([n.id for n in page]) if include_content else {}
        views = []
        for n in page:
            content = None
            if release is not None:
                row = rows.get(n.id)
                if row is None:
                    raise IntegrityFailure()
                content = self._decrypt(release.key, n, row)
            views.append(NoteView(n, content))
        next_after = (page[-1].created_at, page[-1].id) if more and page else None
        return NotePage(views, next_after, budget)


def _new_note(
    caller: Caller,
    patient: Patient,
    note_id: str,
    kind: str,
    encounter_at: datetime | None,
    now: datetime,
    key: bytes,
    content: NoteContent,
) -> NewNote:
    """A new note, sealed before the insert (the AAD names only ids known already), so
    the note and its first version go in with one statement."""
    aad = note_aad(tenant_id=patient.tenant_id, patient_id=patient.id, note_id=note_id, version=1)
    return NewNote(
        note_id,
        patient.tenant_id,
        patient.id,
        kind,
        encounter_at,
        caller.principal.id,
        now,
        seal(key, encode(content), aad=aad),
    )
