"""Tenants, principals and tokens (CLI and admin API)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.access.authentication import hash_token, new_token
from service.access.budget import BudgetPolicy, BudgetStatus
from service.access.caller import OPERATOR, Actor, Caller
from service.access.roles import Permission, require
from service.audit.service import AuditLog
from service.clock import DAY, Clock
from service.config import Budgets
from service.errors import Conflict, NotFound
from service.models import Approval, Principal, Role, Tenant
from service.ports import Database, UnitOfWork

if TYPE_CHECKING:
    from service.access.approvals import ApprovalsService, Pending
    from service.access.limits import ActionLimiter
from service.ports import KeyService

# Vault keeps a rate-limit bucket per client address in memory and drops it once the
# start of its current interval is more than three minutes old (OpenBao's stale age),
# so an hour-long interval would quietly refill every few minutes. The quota therefore
# works in three-minute windows: the hourly figure spread over twenty of them.
QUOTA_WINDOW_MINUTES = 3
WINDOWS_PER_HOUR = 60 // QUOTA_WINDOW_MINUTES
# However small the tenant, one clinician's burst (a ward round) fits in a window.
MIN_UNWRAPS_PER_WINDOW = 30


def unwrap_quota_per_hour(release_per_hour: int, headroom: float) -> int:
    """The hourly bound Vault enforces, per client address and Vault node."""
    return unwrap_quota_rate(release_per_hour, headroom) * WINDOWS_PER_HOUR


def unwrap_quota_rate(release_per_hour: int, headroom: float) -> int:
    """Unwraps allowed per three-minute window."""
    return max(MIN_UNWRAPS_PER_WINDOW, math.ceil(release_per_hour * headroom / WINDOWS_PER_HOUR))


@dataclass(frozen=True, slots=True)
class IssuedToken:
    principal_id: str
    token: str
    expires_at: str

    def __repr__(self) -> str:
        return f"IssuedToken(principal_id={self.principal_id!r}, token=<hidden>)"


class PrincipalsService:
    def __init__(
        self,
        *,
        store: Database,
        keys: KeyService,
        audit: AuditLog,
        clock: Clock,
        token_ttl_days: int,
        tenant_cap: int = 1000,
        unwrap_headroom: float = 10.0,
        budgets: Budgets | None = None,
        limiter: ActionLimiter | None = None,
        approvals: ApprovalsService | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self._token_ttl = timedelta(days=token_ttl_days)
        self._tenant_cap = tenant_cap
        self._unwrap_headroom = unwrap_headroom
        self._budgets = budgets or Budgets()
        self._limiter = limiter
        self._approvals = approvals
        if approvals is not None:
            approvals.register("budget-raise", self._approved_budget)
            approvals.register("unlock", self._approved_unlock)

    def unwrap_quota_rate(self, tenant: Tenant) -> int:
        """Vault's unwrap budget for a tenant, per three-minute window: its hourly
        release cap times the headroom for key-cache misses (re-reads after the cache
        expires, writes, several workers each with its own cache) and for bursts,
        spread over the hour's twenty windows."""
        return unwrap_quota_rate(tenant.release_per_hour or self._tenant_cap, self._unwrap_headroom)

    def ensure_vault_quota(self, tenant: Tenant) -> int:
        rate = self.unwrap_quota_rate(tenant)
        self._keys.ensure_unwrap_quota(tenant.id, rate=rate, interval=f"{QUOTA_WINDOW_MINUTES}m")
        return rate

    # Every change below is an access-rights change: the database's triggers write
    # its audit record in the same transaction (service/migrations/0005), attributed
    # to the actor named by `AuditLog.attribute` (an admin, or the CLI operator).

    def create_tenant(self, name: str) -> Tenant:
        tenant_id = str(uuid.uuid4())
        with self._store.transaction() as tx:
            existing = tx.tenants.tenant_by_name(name)
            if existing is not None:
                raise Conflict(f"Tenant {name!r} already exists", extra={"id": existing.id})
        tenant = Tenant(tenant_id, name, self._tenant_cap)
        # Keys and Vault's unwrap quota first: a tenant row never exists without them.
        self._keys.ensure_tenant_keys(tenant_id)
        self.ensure_vault_quota(tenant)
        with self._store.transaction() as tx:
            self._audit.attribute(tx, OPERATOR)
            if not tx.tenants.insert_tenant(tenant_id, name, self._clock.now(), self._tenant_cap):
                raise Conflict(f"Tenant {name!r} already exists")
        return tenant

    def set_tenant_cap(self, name: str, release_per_hour: int) -> Tenant:
        """Change a tenant's hourly release cap and Vault's unwrap quota with it
        (operators, with the schema owner's database credentials)."""
        tenant = self.tenant(name)
        updated = Tenant(tenant.id, tenant.name, release_per_hour)
        with self._store.transaction() as tx:
            self._audit.attribute(tx, OPERATOR)
            tx.tenants.set_tenant_cap(tenant.id, release_per_hour)
            # Vault follows inside the transaction: if Vault refuses, the cap stays.
            self.ensure_vault_quota(updated)
        return updated

    def tenant(self, name: str) -> Tenant:
        with self._store.transaction() as tx:
            tenant = tx.tenants.tenant_by_name(name)
        if tenant is None:
            raise NotFound(f"No tenant named {name!r}")
        return tenant

    def principal_by_name(self, tenant_name: str, name: str) -> Principal:
        tenant = self.tenant(tenant_name)
        with self._store.transaction() as tx:
            principal = tx.principals.principal_by_name(tenant.id, name)
        if principal is None:
            raise NotFound(f"No principal named {name!r} in {tenant_name!r}")
        return principal

    def create_principal(
        self, tenant_name: str, name: str, role: Role, *, ttl_days: int | None = None
    ) -> IssuedToken:
        principal_id = str(uuid.uuid4())
        with self._store.transaction() as tx:
            now = self._clock.now()
            tenant = tx.tenants.tenant_by_name(tenant_name)
            if tenant is None:
                raise NotFound(f"No tenant named {tenant_name!r}")
            self._audit.attribute(tx, OPERATOR)
            if not tx.principals.insert_principal(principal_id, tenant.id, name, role, now):
                raise Conflict(f"A principal named {name!r} already exists in {tenant_name!r}")
            return self._issue(tx, principal_id, ttl_days)

    def _issue(self, tx: UnitOfWork, principal_id: str, ttl_days: int | None) -> IssuedToken:
        now = self._clock.now()
        token = new_token()
        expires = now + (timedelta(days=ttl_days) if ttl_days else self._token_ttl)
        tx.principals.insert_token(hash_token(token), principal_id, now, expires)
        return IssuedToken(principal_id, token, expires.isoformat())

    def issue_token(self, principal_id: str, *, ttl_days: int | None = None) -> IssuedToken:
        with self._store.transaction() as tx:
            if tx.principals.principal(principal_id) is None:
                raise NotFound("No such principal")
            self._audit.attribute(tx, OPERATOR)
            return self._issue(tx, principal_id, ttl_days)

    def revoke_tokens(self, principal_id: str) -> int:
        with self._store.transaction() as tx:
            if tx.principals.principal(principal_id) is None:
                raise NotFound("No such principal")
            self._audit.attribute(tx, OPERATOR)
            return tx.principals.revoke_tokens(principal_id, self._clock.now())

    def me(self, caller: Caller) -> tuple[Principal, BudgetStatus]:
        """The caller's own account and what is left of its key-release budget."""
        p = caller.principal
        with self._store.transaction() as tx:
            now = self._clock.now()
            usage = tx.ledger.budget_usage(p.id, p.tenant_id, None, now)
        return p, BudgetPolicy(self._budgets).budget_status(p, usage, now)

    def unlock(self, principal_id: str, actor: Actor) -> Principal | Pending:
        """Lift a suspension. An admin's unlock of an account suspended by a decoy, or
        unlocked already within the last day, waits for a second admin. The operator at
        the command line unlocks at once, and is recorded as such."""
        caller = actor if isinstance(actor, Caller) else None
        with self._store.transaction() as tx:
            now = self._clock.now()
            # Decided under the target's row lock: a read taken before waiting could be
            # stale (a decoy's suspension or an unlock since) and lift what needs two.
            if caller is not None:
                self._admin_action(tx, caller, now, "principal.unlock", principal_id)
                target = tx.principals.principal_in_tenant(
                    caller.principal.tenant_id, principal_id, for_update=True
                )
                if target is None:
                    raise NotFound()
            else:
                target = tx.principals.principal(principal_id, for_update=True)
            if target is None:
                raise NotFound("No such principal")
            if (
                caller is not None
                and target.suspended
                and self._unlock_needs_second_admin(target, now)
            ):
                assert self._approvals is not None
                return self._approvals.request(
                    tx, caller, "unlock", now, target_principal_id=target.id
                )
            self._audit.attribute(tx, actor)
            self._unlock(tx, actor, target, now)
            after = tx.principals.principal(principal_id)
        assert after is not None
        return after

    @staticmethod
    def _unlock_needs_second_admin(target: Principal, now: datetime) -> bool:
        by_decoy = (target.suspended_reason or "") == "decoy-patient"
        again = target.last_unlocked_at is not None and now - target.last_unlocked_at < DAY
        return by_decoy or again

    def _unlock(self, tx: UnitOfWork, actor: Actor, target: Principal, now: datetime) -> None:
        if not tx.principals.unlock_principal(target.id, now):
            # Nothing changed, so no trigger fired: record the attempt itself.
            self._audit.record(
                tx,
                action="principal.unlock",
                outcome="noop",
                caller=actor,
                tenant_id=target.tenant_id,
                reason=f"target={target.id} not suspended",
            )

    def _approved_unlock(
        self, tx: UnitOfWork, approver: Caller, approval: Approval
    ) -> dict[str, Any]:
        assert approval.target_principal_id is not None
        target = tx.principals.principal(approval.target_principal_id)
        assert target is not None
        self._unlock(tx, approver, target, self._clock.now())
        return {"principal_id": target.id, "suspended": False}

    def suspend(self, principal_id: str, reason: str) -> None:
        with self._store.transaction() as tx:
            if tx.principals.principal(principal_id) is None:
                raise NotFound("No such principal")
            self._audit.attribute(tx, OPERATOR)
            tx.principals.suspend_principal(principal_id, f"operator: {reason}", self._clock.now())

    def set_budget(
        self, caller: Caller, principal_id: str, per_hour: int | None, per_day: int | None
    ) -> Principal | Pending:
        """Set a principal's budget. Lowering it, or going back to the defaults, is
        immediate; raising it above the defaults waits for a second admin."""
        with self._store.transaction() as tx:
            now = self._clock.now()
            self._admin_action(tx, caller, now, "principal.budget", principal_id)
            target = tx.principals.principal_in_tenant(caller.principal.tenant_id, principal_id)
            if target is None:
                raise NotFound()
            raises = (per_hour or 0) > self._budgets.per_hour or (
                per_day or 0
            ) > self._budgets.per_day
            if raises:
                assert self._approvals is not None
                return self._approvals.request(
                    tx,
                    caller,
                    "budget-raise",
                    now,
                    target_principal_id=target.id,
                    params={"per_hour": per_hour, "per_day": per_day},
                )
            self._audit.attribute(tx, caller)
            tx.principals.set_principal_budget(principal_id, per_hour, per_day)
            after = tx.principals.principal(principal_id)
        assert after is not None
        return after

    def _approved_budget(
        self, tx: UnitOfWork, approver: Caller, approval: Approval
    ) -> dict[str, Any]:
        assert approval.target_principal_id is not None
        per_hour, per_day = approval.params.get("per_hour"), approval.params.get("per_day")
        tx.principals.set_principal_budget(approval.target_principal_id, per_hour, per_day)
        return {
            "principal_id": approval.target_principal_id,
            "release_per_hour": per_hour,
            "release_per_day": per_day,
        }

    def _admin_action(
        self, tx: UnitOfWork, caller: Caller, now: datetime, action: str, target_id: str
    ) -> None:
        require(caller, Permission.PRINCIPAL_MANAGE)
        if self._limiter is not None:
            self._limiter.charge(
                tx, caller, self._limiter.admin, now, action=action, target_principal_id=target_id
            )
