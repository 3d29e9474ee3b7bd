"""In-memory implementations of service/ports/, for unit tests of the gate and the
use cases: the same rules as the PostgreSQL repositories (windows, distinct patients,
append-only ledgers, the database's own tenant cap), none of the I/O.

Only what the gate, notes, patients, principals, approvals and limits use is here;
the rest raises NotImplementedError, so a test never passes by accident on a stub.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from crypto import DecryptionError, NewDataKey, WrappedKey
from service.access.caller import Caller
from service.access.gate import KeyReleaseGate
from service.access.keycache import KeyCache
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.clock import DAY, HOUR, ManualClock
from service.config import Budgets
from service.errors import TenantCapReached
from service.metrics import Metrics
from service.models import (
    Approval,
    AuditEvent,
    BudgetUsage,
    GateSnapshot,
    NoteRow,
    NoteVersionRow,
    Patient,
    PatientKeyRow,
    Principal,
    Role,
    Tenant,
)

SKEW = timedelta(minutes=5)


@dataclass
class Release:
    principal_id: str
    tenant_id: str
    patient_id: str
    released_at: datetime
    via: str


@dataclass
class State:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)
    tokens: dict[bytes, tuple[str, datetime, datetime | None]] = field(default_factory=dict)
    patients: dict[str, Patient] = field(default_factory=dict)
    care_team: dict[tuple[str, str], datetime | None] = field(default_factory=dict)
    break_glass: list[tuple[str, str, datetime, datetime]] = field(default_factory=list)
    keys: dict[str, PatientKeyRow] = field(default_factory=dict)
    releases: list[Release] = field(default_factory=list)
    denials: list[tuple[str, datetime, str]] = field(default_factory=list)
    actions: list[tuple[str, str, str | None, datetime]] = field(default_factory=list)
    notes: dict[str, NoteRow] = field(default_factory=dict)
    versions: dict[tuple[str, int], NoteVersionRow] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    actor: dict[str, Any] = field(default_factory=dict)


class _Repo:
    def __init__(self, db: FakeDatabase) -> None:
        self.db = db

    @property
    def s(self) -> State:
        return self.db.state


class FakeTenants(_Repo):
    def insert_tenant(
        self, tenant_id: str, name: str, now: datetime, release_per_hour: int
    ) -> bool:
        if any(t.name == name for t in self.s.tenants.values()):
            return False
        self.s.tenants[tenant_id] = Tenant(tenant_id, name, release_per_hour)
        return True

    def tenant_by_name(self, name: str) -> Tenant | None:
        return next((t for t in self.s.tenants.values() if t.name == name), None)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.s.tenants.get(tenant_id)

    def all_tenants(self) -> list[Tenant]:
        return sorted(self.s.tenants.values(), key=lambda t: t.name)

    def set_tenant_cap(self, tenant_id: str, release_per_hour: int) -> None:
        self.s.tenants[tenant_id] = replace(
            self.s.tenants[tenant_id], release_per_hour=release_per_hour
        )


class FakePrincipals(_Repo):
    def insert_principal(
        self, principal_id: str, tenant_id: str, name: str, role: Role, now: datetime
    ) -> bool:
        self.s.principals[principal_id] = Principal(principal_id, tenant_id, name, role)
        return True

    def principal(self, principal_id: str, *, for_update: bool = False) -> Principal | None:
        return self.s.principals.get(principal_id)

    def principal_in_tenant(self, tenant_id: str, principal_id: str) -> Principal | None:
        p = self.s.principals.get(principal_id)
        return p if p and p.tenant_id == tenant_id else None

    def principal_by_name(self, tenant_id: str, name: str) -> Principal | None:
        return next(
            (p for p in self.s.principals.values() if p.tenant_id == tenant_id and p.name == name),
            None,
        )

    def principal_by_token(self, token_hash: bytes, now: datetime) -> Principal | None:
        row = self.s.tokens.get(token_hash)
        if row is None or row[2] is not None or row[1] <= now:
            return None
        return self.s.principals.get(row[0])

    def insert_token(
        self, token_hash: bytes, principal_id: str, now: datetime, expires_at: datetime
    ) -> None:
        self.s.tokens[token_hash] = (principal_id, expires_at, None)

    def suspend_principal(self, principal_id: str, reason: str, now: datetime) -> bool:
        p = self.s.principals[principal_id]
        if p.suspended:
            return False
        self.s.principals[principal_id] = replace(p, suspended_at=now, suspended_reason=reason)
        return True

    def unlock_principal(self, principal_id: str, now: datetime) -> bool:
        p = self.s.principals[principal_id]
        if not p.suspended:
            return False
        self.s.principals[principal_id] = replace(
            p, suspended_at=None, suspended_reason=None, last_unlocked_at=now
        )
        return True

    def set_principal_budget(
        self, principal_id: str, per_hour: int | None, per_day: int | None
    ) -> bool:
        p = self.s.principals[principal_id]
        self.s.principals[principal_id] = replace(
            p, release_per_hour=per_hour, release_per_day=per_day
        )
        return True


class FakePatients(_Repo):
    def patient(self, tenant_id: str, patient_id: str) -> Patient | None:
        p = self.s.patients.get(patient_id)
        return p if p and p.tenant_id == tenant_id else None

    def patient_by_id(self, patient_id: str) -> Patient | None:
        return self.s.patients.get(patient_id)

    def access_to_patient(
        self, principal_id: str, patient_id: str, now: datetime
    ) -> tuple[bool, bool]:
        until = self.s.care_team.get((patient_id, principal_id), "absent")
        care = until != "absent" and (until is None or until > now)  # type: ignore[operator]
        glass = any(
            pr == principal_id and pt == patient_id and opened <= now < expires
            for pr, pt, opened, expires in self.s.break_glass
        )
        return care, glass

    def upsert_care_team(
        self, patient_id: str, principal_id: str, until: datetime | None, now: datetime
    ) -> bool:
        new = (patient_id, principal_id) not in self.s.care_team
        self.s.care_team[(patient_id, principal_id)] = until
        return new

    def set_decoy(self, tenant_id: str, patient_id: str, decoy: bool) -> bool:
        p = self.patient(tenant_id, patient_id)
        if p is None:
            return False
        self.s.patients[patient_id] = replace(p, is_decoy=decoy)
        return True

    def break_glass_opened_since(self, principal_id: str, since: datetime) -> list[datetime]:
        return sorted(
            o for pr, _pt, o, _e in self.s.break_glass if pr == principal_id and o > since
        )


class FakeKeysRepo(_Repo):
    def patient_key(self, patient_id: str, *, for_share: bool = False) -> PatientKeyRow | None:
        return self.s.keys.get(patient_id)

    def insert_patient_key(
        self, patient_id: str, tenant_id: str, wrapped_key: str, key_version: int, now: datetime
    ) -> bool:
        if patient_id in self.s.keys:
            return False
        self.s.keys[patient_id] = PatientKeyRow(patient_id, wrapped_key, key_version)
        return True


class FakeLedger(_Repo):
    """The release ledger and the limits, with the database's own tenant-cap check."""

    def _usage(self, p: str, t: str, pt: str | None, now: datetime) -> BudgetUsage:
        rows = [
            r
            for r in self.s.releases
            if r.principal_id == p and now - DAY < r.released_at <= now + SKEW
        ]
        care = [r for r in rows if r.via == "care-team"]
        hour = [r for r in care if r.released_at > now - HOUR]
        tenant = [
            r
            for r in self.s.releases
            if r.tenant_id == t and now - HOUR < r.released_at <= now + SKEW
        ]
        tenant_row = self.s.tenants.get(t)
        return BudgetUsage(
            hour=len({r.patient_id for r in hour}),
            day=len({r.patient_id for r in care}),
            tenant_hour=len(tenant),
            patient_in_hour=any(r.patient_id == pt and r.released_at > now - HOUR for r in rows),
            patient_in_day=any(r.patient_id == pt for r in care),
            hour_oldest=min((r.released_at for r in hour), default=None),
            day_oldest=min((r.released_at for r in care), default=None),
            tenant_oldest=min((r.released_at for r in tenant), default=None),
            tenant_cap=tenant_row.release_per_hour if tenant_row else None,
        )

    def gate_snapshot(
        self, principal_id: str, tenant_id: str, patient_id: str, now: datetime
    ) -> GateSnapshot:
        pr = self.s.principals.get(principal_id)
        if pr is None:
            return GateSnapshot(
                False,
                True,
                None,
                False,
                False,
                BudgetUsage(0, 0, 0, False, False, None, None, None),
                None,
            )
        patient = self.s.patients.get(patient_id)
        if patient is not None and patient.tenant_id != tenant_id:
            patient = None
        care, glass = FakePatients(self.db).access_to_patient(principal_id, patient_id, now)
        usage = replace(
            self._usage(principal_id, tenant_id, patient_id, now),
            tenant_hour=0,
            tenant_oldest=None,
            tenant_cap=None,
        )
        return GateSnapshot(
            principal_found=True,
            suspended=pr.suspended,
            patient=patient,
            on_care_team=care and patient is not None,
            break_glass=glass and patient is not None,
            usage=usage,
            key=self.s.keys.get(patient_id) if patient else None,
        )

    def note_gate_snapshot(
        self, principal_id: str, tenant_id: str, note_id: str, now: datetime
    ) -> tuple[NoteRow, NoteVersionRow | None, GateSnapshot] | None:
        note = self.s.notes.get(note_id)
        if note is None or note.tenant_id != tenant_id:
            return None
        version = self.s.versions.get((note.id, note.current_version))
        return note, version, self.gate_snapshot(principal_id, tenant_id, note.patient_id, now)

    def lock_tenant_budget(self, tenant_id: str) -> None:
        return None

    def budget_usage(
        self, principal_id: str, tenant_id: str, patient_id: str | None, now: datetime
    ) -> BudgetUsage:
        return self._usage(principal_id, tenant_id, patient_id, now)

    def record_release(
        self,
        principal_id: str,
        tenant_id: str,
        patient_id: str,
        now: datetime,
        *,
        via: str = "care-team",
    ) -> None:
        # The database counts the tenant's releases itself (migration 0005).
        cap = self.s.tenants[tenant_id].release_per_hour or 1000
        recent = [
            r for r in self.s.releases if r.tenant_id == tenant_id and r.released_at > now - HOUR
        ]
        if len(recent) >= cap:
            raise TenantCapReached()
        self.s.releases.append(Release(principal_id, tenant_id, patient_id, now, via))

    def record_denial(self, principal_id: str, scope: str, now: datetime) -> int:
        self.s.denials.append((principal_id, now, scope))
        since = max(now - HOUR, self.s.principals[principal_id].last_unlocked_at or now - HOUR)
        return sum(1 for p, at, _ in self.s.denials if p == principal_id and at > since)

    def charge_action(
        self,
        principal_id: str,
        kind: str,
        now: datetime,
        *,
        limit: int,
        patient_id: str | None = None,
    ) -> tuple[bool, datetime | None]:
        window = [
            a
            for a in self.s.actions
            if a[0] == principal_id and a[1] == kind and now - HOUR < a[3] <= now + SKEW
        ]
        used = len({a[2] for a in window}) if patient_id else len(window)
        repeat = patient_id is not None and any(a[2] == patient_id for a in window)
        oldest = min((a[3] for a in window), default=None)
        if repeat or used < limit:
            self.s.actions.append((principal_id, kind, patient_id, now))
            return True, oldest
        return False, oldest

    def record_action(self, principal_id: str, kind: str, now: datetime) -> None:
        self.s.actions.append((principal_id, kind, None, now))

    def count_actions(self, principal_id: str, kind: str, since: datetime) -> int:
        return sum(
            1 for a in self.s.actions if a[0] == principal_id and a[1] == kind and a[3] > since
        )

    def top_releasers(
        self, tenant_id: str, since: datetime, limit: int = 5
    ) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for r in self.s.releases:
            if r.tenant_id == tenant_id and r.released_at > since:
                counts[r.principal_id] = counts.get(r.principal_id, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]


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
    def insert_note(
        self,
        note_id: str,
        tenant_id: str,
        patient_id: str,
        kind: str,
        encounter_at: datetime | None,
        created_by: str,
        now: datetime,
    ) -> NoteRow:
        note = NoteRow(
            note_id, tenant_id, patient_id, kind, "current", 1, encounter_at, created_by, now, now
        )
        self.s.notes[note_id] = note
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
    def insert_audit_event(self, event: AuditEvent) -> None:
        if self.db.audit_fails:
            from service.errors import AuditUnavailable

            raise AuditUnavailable()
        self.s.audit.append(event)

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


class FakeKeys:
    """Transit stand-in: wraps a data key under a secret bound to its context."""

    mount = "transit"

    def __init__(self) -> None:
        self._secret = os.urandom(32)
        self._wrapped: dict[str, tuple[bytes, bytes]] = {}
        self.unwraps = 0
        self.throttle = False

    def new_data_key(self, *, tenant_id: str, context: bytes) -> NewDataKey:
        key = os.urandom(32)
        ct = "vault:v1:" + hashlib.sha256(key + context).hexdigest()
        self._wrapped[ct] = (key, context)
        return NewDataKey(plaintext=key, wrapped=WrappedKey(ct, 1))

    def unwrap(self, wrapped: WrappedKey, *, tenant_id: str, context: bytes) -> bytes:
        if self.throttle:
            from service.errors import KeyServiceThrottled

            raise KeyServiceThrottled()
        self.unwraps += 1
        key, ctx = self._wrapped.get(wrapped.ciphertext, (b"", b""))
        if ctx != context:
            raise DecryptionError()
        return key

    def blind_index(self, *, tenant_id: str, value: str) -> str:
        return hmac.new(self._secret, f"{tenant_id}:{value}".encode(), "sha256").hexdigest()

    def sign(self, message: bytes) -> str:
        return hmac.new(self._secret, message, "sha256").hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)

    def health(self) -> dict[str, Any]:
        return {"ok": True, "sealed": False}


# -- a small world for the gate and the use cases ----------------------------------

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
GATE_BUDGETS = Budgets(per_hour=3, per_day=5, tenant_per_hour=1000, suspend_after_denials=3)


class World:
    """One tenant (t1), two clinicians (doc, doc2), the gate on fakes and a manual clock."""

    def __init__(self, budgets: Budgets = GATE_BUDGETS, cache_ttl: float = 0.0) -> None:
        self.db = FakeDatabase()
        self.keys = FakeKeys()
        self.clock = ManualClock(T0)
        metrics = Metrics()
        self.alerts = Alerter(metrics)
        self.gate = KeyReleaseGate(
            keys=self.keys,
            cache=KeyCache(ttl_seconds=cache_ttl),
            audit=AuditLog(),
            alerts=self.alerts,
            metrics=metrics,
            budgets=budgets,
            clock=self.clock,
        )
        s = self.db.state
        s.tenants["t1"] = Tenant("t1", "clinic", 1000)
        s.principals["doc"] = Principal("doc", "t1", "doc", Role.CLINICIAN)
        s.principals["doc2"] = Principal("doc2", "t1", "doc2", Role.CLINICIAN)
        self.db.committed = _copy(s)

    def patient(self, pid: str, *, care: tuple[str, ...] = ("doc",), decoy: bool = False) -> str:
        s = self.db.state
        s.patients[pid] = Patient(pid, "t1", decoy, None, T0)
        for who in care:
            s.care_team[(pid, who)] = None
        self.db.committed = _copy(s)
        return pid

    def caller(self, who: str = "doc") -> Caller:
        return Caller(self.db.state.principals[who], request_id=f"req-{who}")

    def read(self, pid: str, who: str = "doc") -> bytes | None:
        """One read request: its own transaction, committed on success."""
        with self.db.transaction() as tx:
            return self.gate.release(tx, self.caller(who), pid, action="note.read").key

    def write(self, pid: str, who: str = "doc") -> bytes:
        with self.db.transaction() as tx:
            _patient, key, _via = self.gate.key_for_write(
                tx, self.caller(who), pid, action="note.create"
            )
            return key

    def audit(self, **match: object) -> list[object]:
        return [
            e for e in self.db.committed.audit if all(getattr(e, k) == v for k, v in match.items())
        ]


def _copy(state: State) -> State:
    return copy.deepcopy(state)
