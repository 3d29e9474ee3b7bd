"""In-memory approvals, notes and audit; the unit of work and the database."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from service.models import (
    Approval,
    AuditEvent,
    NewNote,
    NoteRow,
    NoteVersionRow,
    PatientKeyRow,
)
from tests.fakes.ledger import FakeLedger
from tests.fakes.repositories import (
    FakeKeysRepo,
    FakePatients,
    FakePrincipals,
    FakeTenants,
    State,
    _Repo,
)


class FakeApprovals(_Repo):
    def insert_approval(self, approval: Approval) -> None:
        self.s.approvals[approval.id] = approval

    def approval(
        self, tenant_id: str, approval_id: str, *, for_update: bool = False
    ) -> Approval | None:
        a = self.s.approvals.get(approval_id)
        return a if a and a.tenant_id == tenant_id else None

    def approvals(self, tenant_id: str, status: str | None, limit: int = 200) -> list[Approval]:
        return [
            a
            for a in self.s.approvals.values()
            if a.tenant_id == tenant_id and status in (None, a.status)
        ]

    def decide_approval(
        self, approval_id: str, status: str, decided_by: str, now: datetime
    ) -> None:
        a = self.s.approvals[approval_id]
        assert decided_by != a.requested_by  # the database's own CHECK
        self.s.approvals[approval_id] = replace(
            a, status=status, decided_by=decided_by, decided_at=now
        )


class FakeNotes(_Repo):
    def insert_note(self, new: NewNote) -> NoteRow:
        note = NoteRow(
            new.id,
            new.tenant_id,
            new.patient_id,
            new.kind,
            "current",
            1,
            new.encounter_at,
            new.author_id,
            new.at,
            new.at,
        )
        self.s.notes[new.id] = note
        self.insert_note_version(new.id, 1, new.sealed, new.author_id, new.at)
        return note

    def insert_note_charged(
        self, new: NewNote, *, key: PatientKeyRow, write_limit: int, record: AuditEvent
    ) -> NoteRow | None:
        """All or nothing, as the database's one statement: charged, key checked, the
        note and its record written; otherwise the state as it was."""
        self.db.one_call_creates += 1
        before = copy.deepcopy(self.db.state)
        charge = FakeLedger(self.db).charge_action(
            new.tenant_id,
            new.author_id,
            "write",
            new.at,
            limit=write_limit,
            patient_id=new.patient_id,
        )
        try:
            if charge.suspended or not charge.allowed or self.s.keys.get(new.patient_id) != key:
                self.db.state = before
                return None
            note = self.insert_note(new)
            FakeAudit(self.db).insert_audit_event(record)
        except Exception:
            self.db.state = before
            return None
        return note

    def insert_note_version(
        self, note_id: str, version: int, sealed: bytes, author_id: str, now: datetime
    ) -> None:
        self.s.versions[(note_id, version)] = NoteVersionRow(
            note_id, version, sealed, author_id, now
        )

    def note(self, tenant_id: str, note_id: str) -> NoteRow | None:
        n = self.s.notes.get(note_id)
        return n if n and n.tenant_id == tenant_id else None

    def note_with_current_version(
        self, tenant_id: str, note_id: str
    ) -> tuple[NoteRow, NoteVersionRow | None] | None:
        n = self.note(tenant_id, note_id)
        return (n, self.s.versions.get((n.id, n.current_version))) if n else None

    def bump_note_version(
        self,
        note_id: str,
        expected_version: int,
        kind: str,
        encounter_at: datetime | None,
        now: datetime,
    ) -> NoteRow | None:
        n = self.s.notes[note_id]
        if n.current_version != expected_version or n.status != "current":
            return None
        self.s.notes[note_id] = replace(
            n,
            current_version=n.current_version + 1,
            kind=kind,
            encounter_at=encounter_at,
            updated_at=now,
        )
        return self.s.notes[note_id]

    def mark_entered_in_error(self, note_id: str, now: datetime) -> bool:
        n = self.s.notes[note_id]
        if n.status != "current":
            return False
        self.s.notes[note_id] = replace(n, status="entered-in-error", updated_at=now)
        return True

    def note_versions(self, note_id: str) -> list[NoteVersionRow]:
        return sorted(
            (v for (nid, _), v in self.s.versions.items() if nid == note_id),
            key=lambda v: v.version,
        )


class FakeAudit(_Repo):
    def insert_audit_event(self, *events: AuditEvent) -> None:
        if self.db.audit_fails:
            from service.errors import AuditUnavailable

            raise AuditUnavailable()
        self.s.audit.extend(events)

    def set_actor(self, **actor: Any) -> None:
        self.s.actor = actor


class FakeUnitOfWork:
    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self.tenants = FakeTenants(db)
        self.principals = FakePrincipals(db)
        self.patients = FakePatients(db)
        self.keys = FakeKeysRepo(db)
        self.ledger = FakeLedger(db)
        self.approvals = FakeApprovals(db)
        self.notes = FakeNotes(db)
        self.audit = FakeAudit(db)
        self.idp = None

    def commit(self) -> None:
        self.db.committed = copy.deepcopy(self.db.state)

    def rollback(self) -> None:
        self.db.state = copy.deepcopy(self.db.committed)

    def ping(self) -> None:
        return None


class FakeDatabase:
    """A transaction sees the state; a failure rolls back to the last commit."""

    def __init__(self) -> None:
        self.state = State()
        self.committed = State()
        self.audit_fails = False
        self.one_call_creates = 0  # attempts of NotesRepository.insert_note_charged

    @contextmanager
    def transaction(self) -> Iterator[FakeUnitOfWork]:
        uow = FakeUnitOfWork(self)
        try:
            yield uow
        except BaseException:
            uow.rollback()
            raise
        uow.commit()

    autocommit = transaction

    def close(self) -> None:
        return None
