"""The database's side of the ports: one repository per aggregate. The PostgreSQL
adapter (service/adapters/postgres/) implements each; tests/fakes/ in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from service.models import (
    ActionCharge,
    Approval,
    AuditEvent,
    BudgetUsage,
    Confirmation,
    GateSnapshot,
    NewNote,
    NoteRow,
    NoteSnapshot,
    NoteVersionRow,
    OAuthClient,
    Patient,
    PatientKeyRow,
    Principal,
    Role,
    Tenant,
    TenantIdp,
)

# -- the database: one repository per aggregate, behind a unit of work -----------------


class TenantsRepository(Protocol):
    def insert_tenant(
        self, tenant_id: str, name: str, now: datetime, release_per_hour: int
    ) -> bool: ...

    def tenant_by_name(self, name: str) -> Tenant | None: ...

    def tenant_by_id(self, tenant_id: str) -> Tenant | None: ...

    def all_tenants(self) -> list[Tenant]: ...

    def set_tenant_cap(self, tenant_id: str, release_per_hour: int) -> None: ...


class PrincipalsRepository(Protocol):
    def insert_principal(
        self, principal_id: str, tenant_id: str, name: str, role: Role, now: datetime
    ) -> bool: ...

    def principal(self, principal_id: str, *, for_update: bool = False) -> Principal | None: ...

    def principal_by_name(self, tenant_id: str, name: str) -> Principal | None: ...

    def principal_in_tenant(
        self, tenant_id: str, principal_id: str, *, for_update: bool = False
    ) -> Principal | None: ...

    def principal_by_token(self, token_hash: bytes, now: datetime) -> Principal | None: ...

    def insert_token(
        self, token_hash: bytes, principal_id: str, now: datetime, expires_at: datetime
    ) -> None: ...

    def revoke_tokens(self, principal_id: str, now: datetime) -> int: ...

    def revoke_token(self, token_hash: bytes, now: datetime) -> bool: ...

    def suspend_principal(self, principal_id: str, reason: str, now: datetime) -> bool: ...

    def unlock_principal(self, principal_id: str, now: datetime) -> bool: ...

    def set_principal_budget(
        self, principal_id: str, per_hour: int | None, per_day: int | None
    ) -> bool: ...


class PatientsRepository(Protocol):
    def insert_patient(
        self, patient_id: str, tenant_id: str, external_id_index: str, now: datetime
    ) -> str | None: ...

    def patient_by_index(self, tenant_id: str, external_id_index: str) -> Patient | None: ...

    def patient(self, tenant_id: str, patient_id: str) -> Patient | None: ...

    def patient_by_id(self, patient_id: str) -> Patient | None: ...

    def set_decoy(self, tenant_id: str, patient_id: str, decoy: bool) -> bool: ...

    def access_to_patient(
        self, principal_id: str, patient_id: str, now: datetime
    ) -> tuple[bool, bool]: ...

    def upsert_care_team(
        self, patient_id: str, principal_id: str, until: datetime | None, now: datetime
    ) -> bool: ...

    def delete_care_team(self, patient_id: str, principal_id: str) -> bool: ...

    def insert_break_glass(
        self,
        bg_id: str,
        tenant_id: str,
        principal_id: str,
        patient_id: str,
        reason: str,
        now: datetime,
        expires_at: datetime,
    ) -> None: ...

    def break_glass_opened_since(self, principal_id: str, since: datetime) -> list[datetime]: ...

    def shred_patient(
        self, tenant_id: str, patient_id: str, now: datetime, due: datetime
    ) -> bool: ...

    def cancel_shred(self, tenant_id: str, patient_id: str) -> bool: ...

    def destroy_due_keys(self) -> int: ...


class KeysRepository(Protocol):
    def patient_key(self, patient_id: str, *, for_share: bool = False) -> PatientKeyRow | None: ...

    def insert_patient_key(
        self, patient_id: str, tenant_id: str, wrapped_key: str, key_version: int, now: datetime
    ) -> bool: ...

    def wrapped_keys_below(
        self, tenant_id: str, version: int, *, after: str | None, limit: int
    ) -> list[PatientKeyRow]: ...

    def replace_wrapped_keys(
        self, updates: list[tuple[str, str, str, int]], now: datetime
    ) -> int: ...

    def key_version_counts(self, tenant_id: str) -> dict[int, int]: ...

    def lock_patient_key(self, patient_id: str) -> PatientKeyRow | None: ...

    def set_patient_key(
        self, patient_id: str, wrapped_key: str, key_version: int, now: datetime
    ) -> None: ...


class LedgerRepository(Protocol):
    def gate_snapshot(
        self,
        principal_id: str,
        tenant_id: str,
        patient_id: str,
        now: datetime,
        *,
        token_hash: bytes | None = None,
    ) -> GateSnapshot: ...

    def note_gate_snapshot(
        self,
        principal_id: str,
        tenant_id: str,
        note_id: str,
        now: datetime,
        *,
        confirm: Confirmation | None = None,
    ) -> NoteSnapshot: ...

    def lock_tenant_budget(self, tenant_id: str) -> None: ...

    def budget_usage(
        self, principal_id: str, tenant_id: str, patient_id: str | None, now: datetime
    ) -> BudgetUsage: ...

    def record_release(
        self,
        principal_id: str,
        tenant_id: str,
        patient_id: str,
        now: datetime,
        *,
        via: str = "care-team",
    ) -> None: ...

    def record_denial(self, principal_id: str, scope: str, now: datetime) -> int: ...

    def charge_action(
        self,
        tenant_id: str,
        principal_id: str,
        kind: str,
        now: datetime,
        *,
        limit: int,
        patient_id: str | None = None,
        also_lock: Sequence[str] = (),
    ) -> ActionCharge:
        """Lock the acting account (with `also_lock`, in one id order, tenant only),
        then count the action in its last hour, or refuse it past `limit`."""
        ...

    def record_action(self, principal_id: str, kind: str, now: datetime) -> None: ...

    def count_actions(self, principal_id: str, kind: str, since: datetime) -> int: ...

    def top_releasers(
        self, tenant_id: str, since: datetime, limit: int = 5
    ) -> list[tuple[str, int]]: ...

    def prune_ledgers(self, older_than: timedelta) -> dict[str, int]: ...


class ApprovalsRepository(Protocol):
    def insert_approval(self, approval: Approval) -> None: ...

    def approval(
        self, tenant_id: str, approval_id: str, *, for_update: bool = False
    ) -> Approval | None: ...

    def approvals(self, tenant_id: str, status: str | None, limit: int = 200) -> list[Approval]: ...

    def decide_approval(
        self, approval_id: str, status: str, decided_by: str, now: datetime
    ) -> None: ...


class NotesRepository(Protocol):
    def patient_versions_for_update(
        self, patient_id: str
    ) -> list[tuple[NoteRow, NoteVersionRow]]: ...

    def reseal_version(self, note_id: str, version: int, sealed: bytes) -> None: ...

    def insert_note(self, new: NewNote) -> NoteRow:
        """The note and its first version, together."""
        ...

    def insert_note_charged(
        self, new: NewNote, *, key: PatientKeyRow, write_limit: int, record: AuditEvent
    ) -> NoteRow | None:
        """`insert_note`, charged to the author's hourly write limit (`write_limit`
        distinct patients), sealed under `key`, with its audit record: all in one call,
        or nothing. Returns the note as stored; None when nothing was written: the
        author is suspended or at the limit, or `key` is no longer the patient's key.
        The caller then takes its ordinary path."""
        ...

    def insert_note_version(
        self, note_id: str, version: int, sealed: bytes, author_id: str, now: datetime
    ) -> None: ...

    def claim_idempotency_key(
        self, principal_id: str, key: str, digest: bytes, note_id: str, now: datetime
    ) -> tuple[str, bytes] | None: ...

    def note(self, tenant_id: str, note_id: str) -> NoteRow | None: ...

    def notes_for_patient(
        self, patient_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[NoteRow]: ...

    def bump_note_version(
        self,
        note_id: str,
        expected_version: int,
        kind: str,
        encounter_at: datetime | None,
        now: datetime,
    ) -> NoteRow | None: ...

    def mark_entered_in_error(self, note_id: str, now: datetime) -> bool: ...

    def note_with_current_version(
        self, tenant_id: str, note_id: str
    ) -> tuple[NoteRow, NoteVersionRow | None] | None: ...

    def note_version(self, note_id: str, version: int) -> NoteVersionRow | None: ...

    def current_versions(self, note_ids: list[str]) -> dict[str, NoteVersionRow]: ...

    def note_versions(self, note_id: str) -> list[NoteVersionRow]: ...


class AuditRepository(Protocol):
    def insert_audit_event(self, *events: AuditEvent) -> None: ...

    def set_actor(
        self,
        *,
        principal_id: str | None,
        role: str,
        request_id: str | None,
        client_addr: str | None,
        reason: str | None = None,
    ) -> None: ...

    def try_lock_checkpointer(self) -> bool: ...

    def audit_heads(self) -> dict[int, tuple[int, bytes]]: ...

    def last_checkpoint(self) -> dict[str, Any] | None: ...

    def insert_checkpoint(
        self, created_at: datetime, total: int, payload: str, signature: str
    ) -> int: ...

    def checkpoints(self) -> list[dict[str, Any]]: ...

    def iter_audit_chain(self, batch: int = 5000) -> Iterator[dict[str, Any]]: ...

    def iter_chain_records(
        self, after: dict[int, int] | None = None, batch: int = 10000
    ) -> Iterator[tuple[Any, ...]]: ...

    def records_at(
        self, positions: list[tuple[int, int]]
    ) -> dict[tuple[int, int], tuple[bytes, str]]: ...

    def verifications(self, limit: int = 20) -> list[dict[str, Any]]: ...

    def insert_verification(
        self, checkpoint_id: int, verified_at: datetime, checked: int, payload: str, signature: str
    ) -> None: ...

    def audit_query(
        self,
        *,
        tenant_id: str,
        patient_id: str | None = None,
        principal_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...

    def iter_audit_export(
        self, *, since: datetime | None, tenant_id: str | None, batch: int = 5000
    ) -> Iterator[dict[str, Any]]: ...

    def count_audit_events(self, tenant_id: str) -> int: ...

    def iter_unwrap_records(self, since: datetime | None) -> Iterator[dict[str, Any]]: ...


class IdpRepository(Protocol):
    def tenant_using_issuer(self, issuer: str) -> str | None: ...

    def upsert_tenant_idp(self, idp: TenantIdp, now: datetime) -> None: ...

    def tenant_idp(self, tenant_id: str) -> TenantIdp | None: ...

    def tenant_idp_by_issuer(self, issuer: str) -> TenantIdp | None: ...

    def delete_tenant_idp(self, tenant_id: str) -> bool: ...

    def principal_by_subject(self, tenant_id: str, subject: str) -> Principal | None: ...

    def insert_identity(
        self, tenant_id: str, subject: str, principal_id: str, now: datetime
    ) -> bool: ...

    def subjects_of(self, principal_id: str) -> list[str]: ...

    def upsert_oauth_client(
        self,
        client_id: str,
        principal_id: str,
        jwks: dict[str, Any] | None,
        jwks_url: str | None,
        now: datetime,
    ) -> None: ...

    def oauth_client_owner(self, client_id: str) -> str | None: ...

    def oauth_client(self, client_id: str) -> OAuthClient | None: ...

    def claim_assertion_jti(
        self, client_id: str, jti: str, expires_at: datetime, now: datetime
    ) -> bool: ...
