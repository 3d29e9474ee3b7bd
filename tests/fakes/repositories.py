"""In-memory repositories: state, tenants, principals, patients, keys (rows)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.models import (
    Approval,
    AuditEvent,
    NoteRow,
    NoteVersionRow,
    Patient,
    PatientKeyRow,
    Principal,
    Role,
    Tenant,
)

if TYPE_CHECKING:
    from tests.fakes.database import FakeDatabase

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
    locked_principals: list[list[str]] = field(default_factory=list)  # each charge_action lock


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

    def principal_in_tenant(
        self, tenant_id: str, principal_id: str, *, for_update: bool = False
    ) -> Principal | None:
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
