"""The warm read's remembered caller (service/access/remembered.py), on fakes: a
remembered caller is confirmed by the read's own statement, and any difference
stops the read before anything is decided or written."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from service.access.authentication import hash_token
from service.access.remembered import RememberedCallers, opaque_token_digest
from service.errors import CallerChanged, GateDisagreement, NotFound
from service.models import AuditEvent, NoteSnapshot, Principal, Role
from service.notes.sealing import NoteContent
from tests.fakes import T0, World, _copy
from tests.fakes.database import FakeAudit
from tests.fakes.ledger import FakeLedger
from tests.unit.test_use_cases_on_fakes import BUDGETS, notes_for

TOKEN = "snt_" + "a" * 43


@pytest.fixture
def w() -> World:
    world = World(BUDGETS)
    world.db.state.tokens[hash_token(TOKEN)] = ("doc", T0 + timedelta(days=1), None)
    world.db.committed = _copy(world.db.state)
    return world


def _note(w: World) -> str:
    note, _ = notes_for(w).create(
        w.caller(),
        w.patient("p1"),
        kind="progress",
        content=NoteContent("t", "body"),
        encounter_at=None,
    )
    return note.id


def test_a_confirmed_caller_reads_as_if_authenticated(w: World):
    note_id = _note(w)
    view, _ = notes_for(w).read(w.caller(), note_id, confirm_token=hash_token(TOKEN))
    assert view.content is not None and view.content.body == "body"


@pytest.mark.parametrize(
    "change",
    ["revoked", "expired", "suspended", "budget", "role", "another-principals-token"],
)
def test_any_change_stops_the_read_before_anything_is_decided_or_written(w: World, change: str):
    note_id = _note(w)
    remembered = w.caller()  # as authenticated earlier
    s = w.db.state
    digest = hash_token(TOKEN)
    if change == "revoked":
        s.tokens[digest] = ("doc", T0 + timedelta(days=1), T0)
    elif change == "expired":
        w.clock.advance(timedelta(days=1, seconds=1))
    elif change == "suspended":
        s.principals["doc"] = replace(s.principals["doc"], suspended_at=T0, suspended_reason="x")
    elif change == "budget":
        s.principals["doc"] = replace(s.principals["doc"], release_per_hour=1)
    elif change == "role":
        s.principals["doc"] = replace(s.principals["doc"], role=Role.AUDITOR)
    else:
        s.tokens[digest] = ("doc2", T0 + timedelta(days=1), None)
    w.db.committed = _copy(s)
    before = _copy(w.db.committed)
    with pytest.raises(CallerChanged):
        notes_for(w).read(remembered, note_id, confirm_token=digest)
    assert w.db.committed.audit == before.audit
    assert w.db.committed.releases == before.releases


def test_a_missing_note_is_not_answered_to_an_unconfirmed_caller(w: World):
    w.db.state.tokens[hash_token(TOKEN)] = ("doc", T0 + timedelta(days=1), T0)  # revoked
    w.db.committed = _copy(w.db.state)
    with pytest.raises(CallerChanged):
        notes_for(w).read(w.caller(), "no-such-note", confirm_token=hash_token(TOKEN))
    assert w.db.committed.audit == []


def test_only_opaque_bearer_tokens_are_remembered():
    assert opaque_token_digest("Bearer " + TOKEN) == hash_token(TOKEN)
    for header in (None, "", "Bearer", "Basic " + TOKEN, "Bearer eyJ.a.b", "Bearer " + "x" * 300):
        assert opaque_token_digest(header) is None


def test_the_memory_is_bounded_and_forgets_the_oldest_first():
    remembered = RememberedCallers(capacity=3)
    who = [Principal(f"p{i}", "t", f"p{i}", Role.CLINICIAN) for i in range(4)]
    for i, p in enumerate(who):
        remembered.remember(hash_token(f"snt_{i:043d}"), p)
    assert len(remembered) == 3
    assert remembered.caller(f"Bearer snt_{0:043d}", None, None) is None
    found = remembered.caller(f"Bearer snt_{3:043d}", "r", "1.2.3.4")
    assert found is not None and found[0].principal == who[3] and found[0].request_id == "r"
    remembered.forget(hash_token(f"snt_{3:043d}"))
    assert remembered.caller(f"Bearer snt_{3:043d}", None, None) is None


def test_a_grant_recorded_by_the_statement_that_the_gate_refuses_fails_closed(
    w: World, monkeypatch: pytest.MonkeyPatch
):
    """A defect in the statement's warm re-read condition: the gate, on the same
    snapshot, would charge a new patient. No content, nothing charged, an alert."""
    note_id = _note(w)  # written, never read: not released this hour
    recording = FakeLedger.note_gate_snapshot

    def always_recorded(self: FakeLedger, *args: Any, **kwargs: Any) -> NoteSnapshot:
        return replace(recording(self, *args, **kwargs), recorded=True)

    monkeypatch.setattr(FakeLedger, "note_gate_snapshot", always_recorded)
    with pytest.raises(GateDisagreement):
        notes_for(w).read(w.caller(), note_id, confirm_token=hash_token(TOKEN))
    assert w.db.committed.releases == []
    assert any(a["alert"] == "gate-disagreement" for a in w.alerts.sent)


@pytest.mark.parametrize("change", ["revoked", "suspended", "budget"])
def test_a_remembered_create_stops_before_anything_is_written(w: World, change: str):
    pid = w.patient("p1")
    remembered = w.caller()
    s = w.db.state
    digest = hash_token(TOKEN)
    if change == "revoked":
        s.tokens[digest] = ("doc", T0 + timedelta(days=1), T0)
    elif change == "suspended":
        s.principals["doc"] = replace(s.principals["doc"], suspended_at=T0, suspended_reason="x")
    else:
        s.principals["doc"] = replace(s.principals["doc"], release_per_hour=1)
    w.db.committed = _copy(s)
    before = _copy(w.db.committed)
    with pytest.raises(CallerChanged):
        notes_for(w).create(
            remembered,
            pid,
            kind="progress",
            content=NoteContent("t", "b"),
            encounter_at=None,
            confirm_token=digest,
        )
    assert w.db.committed.notes == before.notes
    assert w.db.committed.audit == before.audit
    assert w.db.committed.keys == before.keys


@pytest.mark.parametrize(("cache_ttl", "statement_records"), [(0.0, False), (60.0, True)])
def test_a_reread_that_will_call_vault_records_its_grant_with_the_unwrap(
    monkeypatch: pytest.MonkeyPatch, cache_ttl: float, statement_records: bool
):
    """The worker knows the note's patient (read once). Holding no key of it (keys live
    0 s here), the statement leaves the grant to the gate, which appends it with
    `key.unwrap` in one call; holding the key, the statement records it."""
    w = World(BUDGETS, cache_ttl=cache_ttl)
    w.db.state.tokens[hash_token(TOKEN)] = ("doc", T0 + timedelta(days=1), None)
    w.db.committed = _copy(w.db.state)
    note_id = _note(w)
    notes_for(w).read(w.caller(), note_id, confirm_token=hash_token(TOKEN))
    asked: list[bool] = []
    appends: list[list[tuple[str, str]]] = []
    snapshot = FakeLedger.note_gate_snapshot
    append = FakeAudit.insert_audit_event

    def spy_snapshot(self: FakeLedger, *args: Any, **kwargs: Any) -> NoteSnapshot:
        asked.append(kwargs["confirm"].record_grant)
        return snapshot(self, *args, **kwargs)

    def spy_append(self: FakeAudit, *events: AuditEvent) -> None:
        appends.append([(e.action, e.outcome) for e in events])
        append(self, *events)

    monkeypatch.setattr(FakeLedger, "note_gate_snapshot", spy_snapshot)
    monkeypatch.setattr(FakeAudit, "insert_audit_event", spy_append)
    before = len(w.db.committed.audit)
    view, _ = notes_for(w).read(w.caller(), note_id, confirm_token=hash_token(TOKEN))
    assert view.content is not None and view.content.body == "body"
    assert asked == [statement_records]
    recorded = [(e.action, e.outcome) for e in w.db.committed.audit[before:]]
    if statement_records:
        assert recorded == [("note.read", "granted")]  # by the statement, nothing else
        assert [a for a in appends if a] == []
    else:
        assert recorded == [("key.unwrap", "granted"), ("note.read", "granted")]
        assert [a for a in appends if a] == [recorded]  # one append: one commit


def test_only_a_granted_read_teaches_the_worker_a_notes_patient(monkeypatch: pytest.MonkeyPatch):
    """A caller the gate refuses (not on the care team) leaves no trace in the worker's
    hints: the next caller's read is decided as if the note had never been asked for."""
    w = World(BUDGETS)  # keys live 0 s: a known note always lacks its key
    w.db.state.tokens[hash_token(TOKEN)] = ("doc", T0 + timedelta(days=1), None)
    w.db.committed = _copy(w.db.state)
    note_id = _note(w)
    with pytest.raises(NotFound):
        notes_for(w).read(w.caller("doc2"), note_id)
    asked: list[bool] = []
    snapshot = FakeLedger.note_gate_snapshot

    def spy(self: FakeLedger, *args: Any, **kwargs: Any) -> NoteSnapshot:
        asked.append(kwargs["confirm"].record_grant)
        return snapshot(self, *args, **kwargs)

    monkeypatch.setattr(FakeLedger, "note_gate_snapshot", spy)
    notes_for(w).read(w.caller(), note_id, confirm_token=hash_token(TOKEN))
    notes_for(w).read(w.caller(), note_id, confirm_token=hash_token(TOKEN))
    assert asked == [True, False]  # unknown at first; known, key not held, afterwards
