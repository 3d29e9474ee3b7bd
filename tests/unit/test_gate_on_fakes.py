"""The key-release gate's rules, on the in-memory repositories (tests/fakes/).

The same rules are proven against PostgreSQL and OpenBao in tests/security/; here
they run in milliseconds, so every edge (window boundaries, the order of the checks,
what is committed when a request fails) is cheap to pin down.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from service.config import Budgets
from service.errors import (
    AccountSuspended,
    BudgetExceeded,
    Gone,
    KeyServiceThrottled,
    NotFound,
)
from service.models import Patient, Principal, Role, Tenant
from tests.fakes import T0, World, _copy


@pytest.fixture
def w() -> World:
    return World()


def test_a_read_releases_the_key_written_and_audits_both_the_grant_and_the_unwrap(w: World):
    pid = w.patient("p1")
    key = w.write(pid)
    assert w.read(pid) == key
    assert len(w.audit(action="note.read", outcome="granted", patient_id=pid)) == 1
    assert len(w.audit(action="key.unwrap", patient_id=pid, reason="read")) == 1
    assert len(w.db.committed.releases) == 1


def test_a_write_is_not_charged_against_the_read_budget(w: World):
    for i in range(5):
        w.write(w.patient(f"p{i}"))
    assert w.db.committed.releases == []


def test_the_same_patient_twice_in_an_hour_is_charged_once(w: World):
    pid = w.patient("p1")
    w.write(pid)
    for _ in range(10):
        w.read(pid)
    assert len(w.db.committed.releases) == 1


def test_past_the_hourly_budget_the_next_distinct_patient_is_refused_audited_and_counted(
    w: World,
):
    pids = [w.patient(f"p{i}") for i in range(4)]
    for pid in pids:
        w.write(pid)
    for pid in pids[:3]:
        w.read(pid)
    with pytest.raises(BudgetExceeded) as refused:
        w.read(pids[3])
    assert refused.value.extra["scope"] == "principal-hour"
    assert 0 < refused.value.extra["retry_after"] <= 3600
    assert len(w.audit(outcome="throttled", patient_id=pids[3], reason="principal-hour")) == 1
    # The refusal is committed (a denial counts) though the request failed.
    assert [d[2] for d in w.db.committed.denials] == ["principal-hour"]
    # No key left: the refused patient was never unwrapped for a read.
    assert w.audit(action="key.unwrap", patient_id=pids[3], reason="read") == []
    # Patients already released this hour are still free.
    w.read(pids[0])


def test_the_hour_window_reopens_exactly_one_hour_after_the_oldest_release(w: World):
    pids = [w.patient(f"p{i}") for i in range(4)]
    for pid in pids:
        w.write(pid)
    for pid in pids[:3]:
        w.read(pid)
    w.clock.advance(timedelta(minutes=59, seconds=59))
    with pytest.raises(BudgetExceeded):
        w.read(pids[3])
    w.clock.advance(timedelta(seconds=2))
    w.read(pids[3])


def test_the_daily_budget_holds_across_hours(w: World):
    pids = [w.patient(f"p{i}") for i in range(6)]
    for pid in pids:
        w.write(pid)
    for pid in pids[:5]:
        w.clock.advance(timedelta(hours=1, seconds=1))
        w.read(pid)
    w.clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(BudgetExceeded) as refused:
        w.read(pids[5])
    assert refused.value.extra["scope"] == "principal-day"
    # A patient already released today costs nothing more from the day budget.
    w.read(pids[0])


def test_repeated_refusals_suspend_the_account_and_alert(w: World):
    pids = [w.patient(f"p{i}") for i in range(4)]
    for pid in pids:
        w.write(pid)
    for pid in pids[:3]:
        w.read(pid)
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            w.read(pids[3])
    assert w.db.committed.principals["doc"].suspended
    assert any(a["alert"] == "principal-suspended" for a in w.alerts.sent)
    # Suspended: even a patient already released this hour is refused.
    with pytest.raises(AccountSuspended):
        w.read(pids[0])


def test_not_on_the_care_team_and_nonexistent_look_the_same(w: World):
    pid = w.patient("p1", care=("doc2",))
    with pytest.raises(NotFound) as theirs:
        w.read(pid)
    with pytest.raises(NotFound) as nobody:
        w.read("no-such-patient")
    assert type(theirs.value) is type(nobody.value)
    assert str(theirs.value) == str(nobody.value)
    assert len(w.audit(outcome="denied", patient_id=pid, reason="not-on-care-team")) == 1
    # A nonexistent patient id is not written into the audit log.
    assert len(w.audit(outcome="denied", patient_id=None, reason="no-such-patient")) == 1
    assert w.db.committed.releases == []


def test_another_tenants_patient_is_nonexistent(w: World):
    s = w.db.state
    s.tenants["t2"] = Tenant("t2", "other", 1000)
    s.patients["q1"] = Patient("q1", "t2", False, None, T0)
    s.care_team[("q1", "doc")] = None  # even a stray grant does not cross tenants
    w.db.committed = _copy(s)
    with pytest.raises(NotFound):
        w.read("q1")


def test_a_decoy_suspends_the_reader_at_once_and_releases_nothing(w: World):
    decoy = w.patient("decoy", decoy=True)
    with pytest.raises(AccountSuspended):
        w.read(decoy)
    assert w.db.committed.principals["doc"].suspended_reason == "decoy-patient"
    assert len(w.audit(outcome="denied", reason="decoy-patient")) == 1
    assert any(a["alert"] == "decoy-accessed" for a in w.alerts.sent)
    assert w.keys.unwraps == 0 and w.db.committed.releases == []


def test_a_decoy_is_a_trap_for_writes_too(w: World):
    with pytest.raises(AccountSuspended):
        w.write(w.patient("decoy", decoy=True))
    assert w.db.committed.principals["doc"].suspended


def test_a_shredded_patient_is_gone_and_releases_nothing(w: World):
    pid = w.patient("p1")
    w.write(pid)
    s = w.db.state
    s.patients[pid] = Patient(pid, "t1", False, T0, T0)
    w.db.committed = _copy(s)
    with pytest.raises(Gone):
        w.read(pid)
    assert len(w.audit(outcome="denied", reason="patient-shredded")) == 1
    assert w.db.committed.releases == []


def test_the_tenant_cap_refusal_never_counts_towards_the_callers_suspension():
    w = World(Budgets(per_hour=50, per_day=50, tenant_per_hour=2, suspend_after_denials=1))
    w.db.state.tenants["t1"] = Tenant("t1", "clinic", 2)
    pids = [w.patient(f"p{i}", care=("doc", "doc2")) for i in range(4)]
    for pid in pids:
        w.write(pid)
    w.read(pids[0], who="doc2")
    w.read(pids[1], who="doc2")
    for _ in range(3):
        with pytest.raises(BudgetExceeded) as refused:
            w.read(pids[2])
        assert refused.value.extra["scope"] == "tenant-hour"
    assert not w.db.committed.principals["doc"].suspended
    assert w.db.committed.denials == []
    alert = next(a for a in w.alerts.sent if a["alert"] == "tenant-cap-exhausted")
    assert alert["top_accounts"] == [{"principal_id": "doc2", "releases": 2}]


def test_the_databases_own_tenant_cap_refuses_what_the_service_let_through():
    # The service believes the cap is 1000 (its default); the database's row says 1.
    w = World(Budgets(per_hour=50, per_day=50, tenant_per_hour=1000))
    w.db.state.tenants["t1"] = Tenant("t1", "clinic", 1)
    w.db.committed = _copy(w.db.state)
    a, b = w.patient("a", care=("doc", "doc2")), w.patient("b", care=("doc", "doc2"))
    w.write(a)
    w.write(b)
    w.read(a, who="doc2")
    with pytest.raises(BudgetExceeded) as refused:
        w.read(b)
    assert refused.value.extra["scope"] == "tenant-hour"
    assert len(w.db.committed.releases) == 1


def test_break_glass_is_not_charged_to_the_hourly_budget_but_the_tenant_cap_applies():
    w = World(Budgets(per_hour=1, per_day=1, tenant_per_hour=1000))
    w.db.state.tenants["t1"] = Tenant("t1", "clinic", 2)
    own = w.patient("own")
    w.write(own)
    w.read(own)
    others = [w.patient(f"er{i}", care=("doc2",)) for i in range(3)]
    for pid in others:
        w.write(pid, who="doc2")
    s = w.db.state
    for pid in others:
        s.break_glass.append(("doc", pid, T0, T0 + timedelta(hours=4)))
    w.db.committed = _copy(s)
    w.read(others[0])  # the hourly budget (1) is spent, break-glass still reads
    assert w.db.committed.releases[-1].via == "break-glass"
    assert len(w.audit(action="note.read", reason="break-glass")) == 1
    with pytest.raises(BudgetExceeded) as refused:
        w.read(others[1])  # the tenant's cap (2) is spent
    assert refused.value.extra["scope"] == "tenant-hour"


def test_vault_refusing_the_unwrap_releases_nothing_and_is_recorded():
    w = World()
    pid = w.patient("p1")
    w.write(pid)
    w.keys.throttle = True
    with pytest.raises(KeyServiceThrottled):
        w.read(pid)
    # The charge is rolled back (nothing was released) but the refusal is kept.
    assert w.db.committed.releases == []
    assert len(w.audit(outcome="unavailable", reason="vault-unwrap-quota")) == 1
    assert any(a["alert"] == "vault-unwrap-quota-exceeded" for a in w.alerts.sent)
    assert w.db.committed.denials == []  # Vault's refusal is not the caller's fault
    w.keys.throttle = False
    w.read(pid)
    assert len(w.db.committed.releases) == 1


def test_a_cached_key_is_still_charged_and_audited():
    w = World(cache_ttl=60.0)
    pids = [w.patient(f"p{i}") for i in range(4)]
    for pid in pids:
        w.write(pid)  # the write puts each key in the cache
    before = w.keys.unwraps
    for pid in pids[:3]:
        w.read(pid)
    assert w.keys.unwraps == before  # served from the cache...
    assert len(w.audit(action="note.read", outcome="granted")) == 3  # ...and audited
    assert len(w.db.committed.releases) == 3  # ...and charged
    with pytest.raises(BudgetExceeded):
        w.read(pids[3])  # a cached key does not bypass the budget


def test_an_audit_failure_releases_nothing():
    w = World()
    pid = w.patient("p1")
    w.write(pid)
    w.db.audit_fails = True
    with pytest.raises(Exception):  # noqa: B017 - AuditUnavailable, whatever the adapter
        w.read(pid)
    assert w.db.committed.releases == []


def test_a_suspended_account_gets_nothing_not_even_a_denial_count(w: World):
    pid = w.patient("p1")
    w.write(pid)
    s = w.db.state
    s.principals["doc"] = Principal("doc", "t1", "doc", Role.CLINICIAN, suspended_at=T0)
    w.db.committed = _copy(s)
    with pytest.raises(AccountSuspended):
        w.read(pid)
    with pytest.raises(AccountSuspended):
        w.write(pid)
    assert w.db.committed.releases == [] and w.keys.unwraps == 0


def test_budget_status_reports_what_is_left_and_when_it_resets(w: World):
    pids = [w.patient(f"p{i}") for i in range(2)]
    for pid in pids:
        w.write(pid)
    w.read(pids[0])
    w.clock.advance(timedelta(minutes=10))
    w.read(pids[1])
    with w.db.transaction() as tx:
        usage = tx.ledger.budget_usage("doc", "t1", None, w.clock.now())
    status = w.gate.budget_status(w.caller().principal, usage, w.clock.now())
    assert (status.limit, status.remaining) == (3, 1)
    assert status.reset_seconds == 50 * 60
    assert (status.day_limit, status.day_remaining) == (5, 3)


def _appends(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, str]]]:
    """Every call appending audit records, as (action, outcome) pairs, committed or not."""
    from tests.fakes.database import FakeAudit

    calls: list[list[tuple[str, str]]] = []
    insert = FakeAudit.insert_audit_event

    def spy(self: FakeAudit, *events: Any) -> None:
        calls.append([(e.action, e.outcome) for e in events])
        insert(self, *events)

    monkeypatch.setattr(FakeAudit, "insert_audit_event", spy)
    return calls


def test_a_cold_read_appends_its_unwrap_and_its_grant_together_in_that_order(
    w: World, monkeypatch: pytest.MonkeyPatch
):
    pid = w.patient("p1")
    w.write(pid)
    calls = _appends(monkeypatch)
    w.read(pid)
    assert calls == [[("key.unwrap", "granted"), ("note.read", "granted")]]


def test_a_cached_read_appends_its_grant_alone(monkeypatch: pytest.MonkeyPatch):
    w = World(cache_ttl=60.0)
    pid = w.patient("p1")
    w.write(pid)
    w.read(pid)
    calls = _appends(monkeypatch)
    w.read(pid)
    assert calls == [[("note.read", "granted")]]


def test_a_read_whose_unwrap_fails_appends_no_grant(w: World, monkeypatch: pytest.MonkeyPatch):
    from service.errors import KeyServiceUnavailable

    pid = w.patient("p1")
    w.write(pid)
    calls = _appends(monkeypatch)

    def down(*_args: Any, **_kwargs: Any) -> bytes:
        raise KeyServiceUnavailable()

    monkeypatch.setattr(w.keys, "unwrap", down)
    with pytest.raises(KeyServiceUnavailable):
        w.read(pid)
    assert ("note.read", "granted") not in [pair for call in calls for pair in call]
    assert w.audit(action="note.read", outcome="granted") == []


def test_a_new_patients_read_whose_unwrap_fails_charges_nothing_and_is_recorded(
    w: World, monkeypatch: pytest.MonkeyPatch
):
    """Nothing was released: the budget charge is dropped, the attempt recorded as
    `unavailable` (never `granted`)."""
    from service.errors import KeyServiceUnavailable

    pid = w.patient("p1")
    w.write(pid)

    def down(*_args: Any, **_kwargs: Any) -> bytes:
        raise KeyServiceUnavailable()

    monkeypatch.setattr(w.keys, "unwrap", down)
    with pytest.raises(KeyServiceUnavailable):
        w.read(pid)
    assert w.db.committed.releases == []
    recorded = w.audit(action="note.read")
    assert [(e.outcome, e.reason) for e in recorded] == [  # type: ignore[attr-defined]
        ("unavailable", "key-service-unavailable")
    ]
