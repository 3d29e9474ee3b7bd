"""Principals (accounts) and their bearer tokens: suspension, unlock, budgets."""

from __future__ import annotations

import logging
from datetime import datetime

from service.adapters.postgres.base import (
    PRINCIPAL_COLUMNS,
    Repo,
    _principal,
)
from service.models import (
    Principal,
    Role,
)

log = logging.getLogger(__name__)


class PrincipalsRepository(Repo):
    def insert_principal(
        self, principal_id: str, tenant_id: str, name: str, role: Role, now: datetime
    ) -> bool:
        row = self._one(
            "INSERT INTO principals (id, tenant_id, name, role, created_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant_id, name) DO NOTHING RETURNING id",
            (principal_id, tenant_id, name, role.value, now),
        )
        return row is not None

    def principal(self, principal_id: str, *, for_update: bool = False) -> Principal | None:
        lock = " FOR NO KEY UPDATE" if for_update else ""
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.id = %s{lock}",
            (principal_id,),
        )
        return _principal(row) if row else None

    def principal_by_name(self, tenant_id: str, name: str) -> Principal | None:
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.tenant_id = %s AND p.name = %s",
            (tenant_id, name),
        )
        return _principal(row) if row else None

    def principal_in_tenant(
        self, tenant_id: str, principal_id: str, *, for_update: bool = False
    ) -> Principal | None:
        lock = " FOR NO KEY UPDATE" if for_update else ""
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.id = %s AND p.tenant_id = %s"
            f"{lock}",
            (principal_id, tenant_id),
        )
        return _principal(row) if row else None

    def principal_by_token(self, token_hash: bytes, now: datetime) -> Principal | None:
        row = self._one(
            f"SELECT {PRINCIPAL_COLUMNS} FROM tokens t JOIN principals p ON p.id = t.principal_id "
            "WHERE t.token_hash = %s AND t.revoked_at IS NULL AND t.expires_at > %s",
            (token_hash, now),
        )
        return _principal(row) if row else None

    def insert_token(
        self, token_hash: bytes, principal_id: str, now: datetime, expires_at: datetime
    ) -> None:
        self.conn.execute(
            "INSERT INTO tokens (token_hash, principal_id, created_at, expires_at) "
            "VALUES (%s, %s, %s, %s)",
            (token_hash, principal_id, now, expires_at),
        )

    def revoke_tokens(self, principal_id: str, now: datetime) -> int:
        cur = self.conn.execute(
            "UPDATE tokens SET revoked_at = %s WHERE principal_id = %s AND revoked_at IS NULL",
            (now, principal_id),
        )
        return cur.rowcount

    def revoke_token(self, token_hash: bytes, now: datetime) -> bool:
        cur = self.conn.execute(
            "UPDATE tokens SET revoked_at = %s WHERE token_hash = %s AND revoked_at IS NULL",
            (now, token_hash),
        )
        return cur.rowcount == 1

    def suspend_principal(self, principal_id: str, reason: str, now: datetime) -> bool:
        row = self._one(
            "UPDATE principals SET suspended_at = %s, suspended_reason = %s "
            "WHERE id = %s AND suspended_at IS NULL RETURNING id",
            (now, reason, principal_id),
        )
        return row is not None

    def unlock_principal(self, principal_id: str, now: datetime) -> bool:
        # Denials before the unlock no longer count towards a new suspension (the
        # denial ledger itself is append-only).
        cur = self.conn.execute(
            "UPDATE principals SET suspended_at = NULL, suspended_reason = NULL,"
            " denials_since = %s WHERE id = %s AND suspended_at IS NOT NULL",
            (now, principal_id),
        )
        return cur.rowcount == 1

    def set_principal_budget(
        self, principal_id: str, per_hour: int | None, per_day: int | None
    ) -> bool:
        cur = self.conn.execute(
            "UPDATE principals SET release_per_hour = %s, release_per_day = %s WHERE id = %s",
            (per_hour, per_day, principal_id),
        )
        return cur.rowcount == 1
