"""Plain data records passed between the store, the use cases and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    CLINICIAN = "clinician"
    AUDITOR = "auditor"
    ADMIN = "admin"
    INTEGRATION = "integration"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    release_per_hour: int | None = None  # distinct patients released per hour, tenant-wide


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    tenant_id: str
    name: str
    role: Role
    suspended_at: datetime | None = None
    release_per_hour: int | None = None
    release_per_day: int | None = None
    suspended_reason: str | None = None
    last_unlocked_at: datetime | None = None  # denials before it no longer count

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None


@dataclass(frozen=True, slots=True)
class Patient:
    id: str
    tenant_id: str
    is_decoy: bool
    shredded_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PatientKeyRow:
    patient_id: str
    wrapped_key: str
    key_version: int


@dataclass(frozen=True, slots=True)
class NoteRow:
    id: str
    tenant_id: str
    patient_id: str
    kind: str
    status: str
    current_version: int
    encounter_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NoteVersionRow:
    note_id: str
    version: int
    sealed: bytes
    author_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str
    outcome: str
    tenant_id: str | None = None
    principal_id: str | None = None
    role: str | None = None
    patient_id: str | None = None
    note_id: str | None = None
    reason: str | None = None
    request_id: str | None = None
    client_addr: str | None = None


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """Everything the key-release gate needs, read in one statement."""

    principal_found: bool
    suspended: bool
    patient: Patient | None
    on_care_team: bool
    break_glass: bool
    usage: BudgetUsage
    key: PatientKeyRow | None
    # Asked with a token (a remembered caller): the principal as stored, and whether
    # the token is its live one.
    principal: Principal | None = None
    token_valid: bool = False

    def confirms(self, remembered: Principal) -> bool:
        """The remembered caller is exactly the stored one, and its token is live."""
        return self.token_valid and self.principal == remembered


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A remembered caller (service/access/remembered.py), for the warm read's one
    statement to confirm: the token still live and the account exactly as remembered.
    When it is, and the read is a warm re-read (care team, patient already released to
    this account within the hour, nothing else in the way), the same statement also
    appends and commits the read's `note.read granted` record, unless `record_grant` is
    False (the worker knows it holds no key of the note's patient: the gate records the
    grant with `key.unwrap`, in one commit)."""

    token_hash: bytes
    principal: Principal
    request_id: str | None
    client_addr: str | None
    # False when this worker knows it holds no key of the note's patient: the read will
    # call Vault, and its grant is recorded with `key.unwrap`, one commit for both.
    record_grant: bool = True


@dataclass(frozen=True, slots=True)
class NoteSnapshot:
    """A warm read's one statement: the note with its current version and the gate's
    snapshot for its patient (with the caller's principal and token as stored now, to
    confirm a remembered caller: service/access/remembered.py)."""

    note: NoteRow | None  # None: the tenant has no such note
    version: NoteVersionRow | None
    gate: GateSnapshot
    recorded: bool = False  # the statement appended and committed `note.read granted`


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """Distinct patients released in the sliding windows, before this request."""

    hour: int
    day: int
    tenant_hour: int
    patient_in_hour: bool
    patient_in_day: bool
    hour_oldest: datetime | None
    day_oldest: datetime | None
    tenant_oldest: datetime | None
    tenant_cap: int | None = None  # the tenant's hourly cap (read under the budget lock)


@dataclass(frozen=True, slots=True)
class ActionCharge:
    """A limited action counted, or refused, under the lock of the acting account."""

    suspended: bool  # the account is suspended (or not in its tenant): nothing counted
    allowed: bool  # counted (a repeat of a patient already in the window is free)
    oldest: datetime | None  # the window's oldest action: when room comes back


@dataclass(frozen=True, slots=True)
class Approval:
    """A weakening admin action waiting for a second admin (service/access/approvals.py)."""

    id: str
    tenant_id: str
    kind: str  # budget-raise | decoy-clear | unlock | shred | shred-cancel | care-team-grant
    target_principal_id: str | None
    target_patient_id: str | None
    params: dict[str, Any]
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    status: str = "pending"  # pending | approved | rejected
    decided_by: str | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TenantIdp:
    """A tenant's trusted token issuer. Nothing in it is secret."""

    tenant_id: str
    issuer: str
    jwks_url: str
    audience: str
    principal_claim: str
    role_claim: str | None
    role_map: dict[str, list[str]]
    allow_create: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "issuer": self.issuer,
            "jwks_url": self.jwks_url,
            "audience": self.audience,
            "principal_claim": self.principal_claim,
            "role_claim": self.role_claim,
            "role_map": self.role_map,
            "allow_create": self.allow_create,
        }


@dataclass(frozen=True, slots=True)
class OAuthClient:
    client_id: str
    principal: Principal
    jwks: dict[str, Any] | None
    jwks_url: str | None


@dataclass(frozen=True, slots=True)
class WriteGrant:
    """A write the gate allowed: to whom, how ("care-team" or "break-glass"), when,
    and the patient's wrapped key as read with the grant (None: no key yet)."""

    patient: Patient
    via: str
    now: datetime
    key: PatientKeyRow | None


@dataclass(frozen=True, slots=True)
class NewNote:
    """A note to write with its first version, sealed: what `insert_note` and
    `insert_note_charged` write, and what their callers build once."""

    id: str
    tenant_id: str
    patient_id: str
    kind: str
    encounter_at: datetime | None
    author_id: str
    at: datetime
    sealed: bytes = field(repr=False)
