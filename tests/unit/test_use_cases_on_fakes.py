"""Use cases over the in-memory unit of work (tests/fakes/): notes through the
gate and the write limit, and two-admin approvals. The PostgreSQL-backed versions
of these properties live in tests/security/ and tests/api/."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from service.access.approvals import ApprovalsService
from service.access.limits import ActionLimiter
from service.config import Budgets
from service.errors import (
    AccountSuspended,
    AuditUnavailable,
    BudgetExceeded,
    Conflict,
    Forbidden,
    NotFound,
)
from service.models import Approval, Principal, Role
from service.notes.sealing import NoteContent
from service.notes.service import NotesService
from tests.fakes import World, _copy
from tests.fakes.database import FakeNotes
from tests.fakes.world import T0

BUDGETS = Budgets(per_hour=3, per_day=5, writes_per_hour=2, admin_actions_per_hour=50)


@pytest.fixture
def w() -> World:
    return World(BUDGETS)


def notes_for(w: World) -> NotesService:
    limiter = ActionLimiter(budgets=BUDGETS, gate=w.gate, audit=w.gate._audit, alerts=w.alerts)
    return NotesService(
        store=w.db, gate=w.gate, audit=w.gate._audit, clock=w.clock, limiter=limiter
    )


def test_a_note_round_trips_sealed_and_its_read_is_charged(w: World):
    notes = notes_for(w)
    pid = w.patient("p1")
    note, replayed = notes.create(
        w.caller(), pid, kind="progress", content=NoteContent("t", "body"), encounter_at=None
    )
    assert not replayed
    sealed = w.db.committed.versions[(note.id, 1)].sealed
    assert b"body" not in sealed
    view, budget = notes.read(w.caller(), note.id)
    assert view.content.body == "body"
    assert budget.remaining == 2
    assert len(w.db.committed.releases) == 1


def test_the_write_limit_counts_distinct_patients_and_repeats_are_free(w: World):
    notes = notes_for(w)
    a, b, c = w.patient("a"), w.patient("b"), w.patient("c")
    content = NoteContent(None, "x")
    for pid in (a, b, a, b, a):
        notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    with pytest.raises(BudgetExceeded) as refused:
        notes.create(w.caller(), c, kind="progress", content=content, encounter_at=None)
    assert refused.value.extra["scope"] == "write-hour"
    # Refused before any key for `c` left Vault: no key was even created.
    assert "c" not in w.db.committed.keys
    assert len(w.audit(outcome="throttled", reason="write-hour", patient_id=c)) == 1
    w.clock.advance(timedelta(hours=1, seconds=1))
    notes.create(w.caller(), c, kind="progress", content=content, encounter_at=None)


def test_reading_a_note_of_another_tenant_is_a_missing_note(w: World):
    notes = notes_for(w)
    pid = w.patient("p1")
    note, _ = notes.create(
        w.caller(), pid, kind="progress", content=NoteContent(None, "x"), encounter_at=None
    )
    s = w.db.state
    s.principals["out"] = Principal("out", "t2", "out", Role.CLINICIAN)
    w.db.committed = _copy(s)
    with pytest.raises(NotFound):
        notes.read(w.caller("out"), note.id)
    assert len(w.audit(principal_id="out", reason="no-such-note")) == 1


# -- two admins ------------------------------------------------------------------------


def approvals_for(w: World) -> tuple[ApprovalsService, list[Approval]]:
    s = w.db.state
    s.principals["adm1"] = Principal("adm1", "t1", "adm1", Role.ADMIN)
    s.principals["adm2"] = Principal("adm2", "t1", "adm2", Role.ADMIN)
    w.db.committed = _copy(s)
    limiter = ActionLimiter(budgets=BUDGETS, gate=w.gate, audit=w.gate._audit, alerts=w.alerts)
    service = ApprovalsService(
        store=w.db,
        audit=w.gate._audit,
        alerts=w.alerts,
        clock=w.clock,
        limiter=limiter,
        hours=24,
    )
    executed: list[Approval] = []

    def unlock(tx, caller, approval):  # type: ignore[no-untyped-def]
        executed.append(approval)
        tx.principals.unlock_principal(approval.target_principal_id, w.clock.now())
        return {"unlocked": approval.target_principal_id}

    service.register("unlock", unlock)
    return service, executed


def ask(w: World, service: ApprovalsService, who: str = "adm1") -> str:
    with w.db.transaction() as tx:
        pending = service.request(
            tx, w.caller(who), "unlock", w.clock.now(), target_principal_id="doc"
        )
    return pending.approval.id


def test_the_requester_cannot_approve_its_own_request(w: World):
    service, executed = approvals_for(w)
    aid = ask(w, service)
    with pytest.raises(Forbidden):
        service.approve(w.caller("adm1"), aid)
    assert executed == []
    assert w.db.committed.approvals[aid].status == "pending"


def test_a_second_admin_approves_and_the_action_runs_once(w: World):
    service, executed = approvals_for(w)
    w.db.state.principals["doc"] = Principal(
        "doc", "t1", "doc", Role.CLINICIAN, suspended_at=w.clock.now()
    )
    w.db.committed = _copy(w.db.state)
    aid = ask(w, service)
    decided, result = service.approve(w.caller("adm2"), aid)
    assert (decided.status, decided.decided_by) == ("approved", "adm2")
    assert result == {"unlocked": "doc"}
    assert not w.db.committed.principals["doc"].suspended
    with pytest.raises(Conflict):
        service.approve(w.caller("adm2"), aid)
    assert len(executed) == 1
    # The database's triggers attribute the action to the approver, naming the request.
    assert w.db.committed.actor["principal_id"] == "adm2"
    assert aid in w.db.committed.actor["reason"]


def test_approving_locks_approver_and_target_together_in_one_call(w: World):
    # One call, so that the adapter can take both row locks in a fixed order: the charge
    # would otherwise lock the approver and the action then the target, and two admins
    # approving actions on each other would deadlock.
    service, _ = approvals_for(w)
    w.db.state.principals["doc"] = Principal("doc", "t1", "doc", Role.CLINICIAN)
    w.db.committed = _copy(w.db.state)
    aid = ask(w, service)
    service.approve(w.caller("adm2"), aid)
    assert w.db.committed.locked_principals == [["adm2", "doc"]]


def test_an_expired_request_cannot_be_approved(w: World):
    service, executed = approvals_for(w)
    aid = ask(w, service)
    w.clock.advance(timedelta(hours=24, seconds=1))
    with pytest.raises(Conflict):
        service.approve(w.caller("adm2"), aid)
    assert executed == []


def test_only_admins_decide_and_only_in_their_own_tenant(w: World):
    service, executed = approvals_for(w)
    aid = ask(w, service)
    with pytest.raises(Forbidden):
        service.approve(w.caller("doc2"), aid)
    s = w.db.state
    s.principals["adm9"] = Principal("adm9", "t2", "adm9", Role.ADMIN)
    w.db.committed = _copy(s)
    with pytest.raises(NotFound):
        service.approve(w.caller("adm9"), aid)
    assert executed == []


def test_a_rejected_request_never_runs(w: World):
    service, executed = approvals_for(w)
    aid = ask(w, service)
    assert service.reject(w.caller("adm2"), aid).status == "rejected"
    with pytest.raises(Conflict):
        service.approve(w.caller("adm2"), aid)
    assert executed == []


def test_the_operator_is_recorded_as_the_operator(w: World):
    from service.access.caller import OPERATOR
    from service.audit.service import AuditLog

    with w.db.transaction() as tx:
        AuditLog().attribute(tx, OPERATOR, reason="ticket 42")
        AuditLog().record(tx, action="principal.unlock", outcome="noop", caller=OPERATOR)
    assert w.db.committed.actor == {
        "principal_id": None,
        "role": "operator",
        "request_id": "cli",
        "client_addr": None,
        "reason": "ticket 42",
    }
    event = w.db.committed.audit[-1]
    assert (event.role, event.request_id, event.principal_id) == ("operator", "cli", None)


# -- the one-call create (the worker holds the patient's key) -----------------------


def _cached_world() -> World:
    return World(BUDGETS, cache_ttl=60.0)


def test_a_create_whose_key_the_worker_holds_is_one_call_with_the_same_record():
    w = _cached_world()
    notes = notes_for(w)
    pid = w.patient("p1")
    content = NoteContent("t", "body")
    first, _ = notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    assert w.db.one_call_creates == 0  # no key yet: created on the ordinary path
    second, _ = notes.create(w.caller(), pid, kind="consult", content=content, encounter_at=None)
    assert w.db.one_call_creates == 1
    assert w.db.committed.notes[second.id] == second
    view, _ = notes.read(w.caller(), second.id)
    assert view.content == content
    # The one call's record says what the ordinary path's says, for its own note.
    ordinary, one_call = w.audit(action="note.create", outcome="granted")
    assert one_call == replace(ordinary, note_id=second.id)
    assert ordinary.note_id == first.id
    # Both charged to the write limit (a repeat of the same patient is free).
    assert [a[2] for a in w.db.committed.actions if a[1] == "write"] == [pid, pid]


def test_a_one_call_create_refused_by_the_limit_writes_nothing_and_the_ordinary_path_refuses():
    w = _cached_world()
    notes = notes_for(w)
    a, b = w.patient("a"), w.patient("b")
    c = w.patient("c", care=("doc", "doc2"))
    content = NoteContent(None, "x")
    # doc2's write gives c a key this worker holds; doc then spends its limit of 2.
    notes.create(w.caller("doc2"), c, kind="progress", content=content, encounter_at=None)
    for pid in (a, b):
        notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    notes_before = set(w.db.committed.notes)
    attempts = w.db.one_call_creates
    with pytest.raises(BudgetExceeded) as refused:
        notes.create(w.caller(), c, kind="progress", content=content, encounter_at=None)
    assert w.db.one_call_creates == attempts + 1  # tried, wrote nothing
    assert refused.value.extra["scope"] == "write-hour"
    assert set(w.db.committed.notes) == notes_before
    assert len(w.audit(principal_id="doc", outcome="throttled", reason="write-hour")) == 1


def test_a_one_call_create_for_an_account_suspended_meanwhile_writes_nothing(monkeypatch):
    w = _cached_world()
    notes = notes_for(w)
    pid = w.patient("p1")
    content = NoteContent(None, "x")
    notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    one_call = FakeNotes.insert_note_charged

    def suspended_meanwhile(repo: FakeNotes, *args: object, **kwargs: object) -> object:
        # Suspended after the access check read the account, before the call locks it.
        doc = repo.s.principals["doc"]
        repo.s.principals["doc"] = replace(doc, suspended_at=T0)
        return one_call(repo, *args, **kwargs)

    monkeypatch.setattr(FakeNotes, "insert_note_charged", suspended_meanwhile)
    notes_before = set(w.db.committed.notes)
    with pytest.raises(AccountSuspended):
        notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    assert w.db.one_call_creates == 1
    assert set(w.db.committed.notes) == notes_before


def test_a_one_call_create_whose_record_cannot_be_written_writes_nothing():
    w = _cached_world()
    notes = notes_for(w)
    pid = w.patient("p1")
    content = NoteContent(None, "x")
    notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    before = _copy(w.db.committed)
    w.db.audit_fails = True
    with pytest.raises(AuditUnavailable):
        notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    assert w.db.one_call_creates == 1
    assert w.db.committed.notes == before.notes
    assert w.db.committed.actions == before.actions


def test_a_create_whose_one_call_wrote_nothing_checks_access_again(monkeypatch):
    """The call may have waited (on a re-key, on the account's lock) before writing
    nothing: what the access check saw then may no longer hold."""
    w = _cached_world()
    notes = notes_for(w)
    pid = w.patient("p1")
    content = NoteContent(None, "x")
    notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)

    def key_replaced_meanwhile(repo: FakeNotes, *args: object, **kwargs: object) -> None:
        # Meanwhile (say, while it waited on a re-key), doc left the care team.
        del repo.s.care_team[(pid, "doc")]
        return None

    monkeypatch.setattr(FakeNotes, "insert_note_charged", key_replaced_meanwhile)
    notes_before = set(w.db.committed.notes)
    with pytest.raises(NotFound):
        notes.create(w.caller(), pid, kind="progress", content=content, encounter_at=None)
    assert set(w.db.committed.notes) == notes_before
    assert len(w.audit(principal_id="doc", outcome="denied", reason="not-on-care-team")) == 1
