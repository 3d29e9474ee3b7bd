"""The in-memory release ledger and limits, with the database's own tenant-cap check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from service.clock import DAY, HOUR
from service.errors import TenantCapReached
from service.models import (
    ActionCharge,
    AuditEvent,
    BudgetUsage,
    Confirmation,
    GateSnapshot,
    NoteSnapshot,
)
from tests.fakes.repositories import SKEW, FakePatients, Release, _Repo


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
        self,
        principal_id: str,
        tenant_id: str,
        patient_id: str,
        now: datetime,
        *,
        token_hash: bytes | None = None,
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
            principal=pr if token_hash is not None else None,
            token_valid=self._token_valid(token_hash, principal_id, now),
        )

    def _token_valid(self, token_hash: bytes | None, principal_id: str, now: datetime) -> bool:
        token = self.s.tokens.get(token_hash) if token_hash is not None else None
        return (
            token is not None and token[0] == principal_id and token[2] is None and token[1] > now
        )

    def note_gate_snapshot(
        self,
        principal_id: str,
        tenant_id: str,
        note_id: str,
        now: datetime,
        *,
        confirm: Confirmation | None = None,
    ) -> NoteSnapshot:
        principal = self.s.principals.get(principal_id)
        token = confirm.token_hash if confirm is not None else None
        note = self.s.notes.get(note_id)
        if note is None or note.tenant_id != tenant_id:
            patient_id = "00000000-0000-0000-0000-000000000000"  # no such patient
            gate = self.gate_snapshot(principal_id, tenant_id, patient_id, now, token_hash=token)
            return NoteSnapshot(None, None, gate)
        version = self.s.versions.get((note.id, note.current_version))
        gate = self.gate_snapshot(principal_id, tenant_id, note.patient_id, now, token_hash=token)
        # The database's own test of a warm re-read (the adapter's WARM_REREAD), written
        # out again here rather than borrowed from the gate: the two must agree.
        recorded = (
            confirm is not None
            and confirm.record_grant
            and gate.token_valid
            and principal == confirm.principal
            and principal is not None
            and not principal.suspended
            and version is not None
            and gate.patient is not None
            and not gate.patient.is_decoy
            and gate.patient.shredded_at is None
            and gate.on_care_team
            and gate.usage.patient_in_hour
        )
        if recorded:
            assert confirm is not None and principal is not None
            record = AuditEvent(
                action="note.read",
                outcome="granted",
                tenant_id=principal.tenant_id,
                principal_id=principal.id,
                role=principal.role.value,
                patient_id=note.patient_id,
                note_id=note.id,
                request_id=confirm.request_id,
                client_addr=confirm.client_addr,
            )
            # Committed by the statement itself (it runs outside a transaction).
            self.s.audit.append(record)
            if self.db.committed is not self.s:
                self.db.committed.audit.append(record)
        return NoteSnapshot(note, version, gate, recorded)

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
        tenant_id: str,
        principal_id: str,
        kind: str,
        now: datetime,
        *,
        limit: int,
        patient_id: str | None = None,
        also_lock: Sequence[str] = (),
    ) -> ActionCharge:
        # One lock, in one order, as the database takes it (tenant only).
        locked = sorted(
            i
            for i in {principal_id, *also_lock}
            if (p := self.s.principals.get(i)) is not None and p.tenant_id == tenant_id
        )
        self.s.locked_principals.append(locked)
        principal = self.s.principals.get(principal_id)
        if principal_id not in locked or principal is None or principal.suspended:
            return ActionCharge(suspended=True, allowed=False, oldest=None)
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
            return ActionCharge(suspended=False, allowed=True, oldest=oldest)
        return ActionCharge(suspended=False, allowed=False, oldest=oldest)

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
