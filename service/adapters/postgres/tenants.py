"""Tenants and their hourly release cap."""

from __future__ import annotations

import logging
from datetime import datetime

from service.adapters.postgres.base import (
    TENANT_COLUMNS,
    Repo,
    _tenant,
)
from service.models import (
    Tenant,
)

log = logging.getLogger(__name__)


class TenantsRepository(Repo):
    def insert_tenant(
        self, tenant_id: str, name: str, now: datetime, release_per_hour: int
    ) -> bool:
        row = self._one(
            "INSERT INTO tenants (id, name, created_at, release_per_hour) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING id",
            (tenant_id, name, now, release_per_hour),
        )
        return row is not None

    def tenant_by_name(self, name: str) -> Tenant | None:
        row = self._one(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = %s", (name,))
        return _tenant(row) if row else None

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        row = self._one(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = %s", (tenant_id,))
        return _tenant(row) if row else None

    def all_tenants(self) -> list[Tenant]:
        return [
            _tenant(r) for r in self._all(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name")
        ]

    def set_tenant_cap(self, tenant_id: str, release_per_hour: int) -> None:
        self.conn.execute(
            "UPDATE tenants SET release_per_hour = %s WHERE id = %s", (release_per_hour, tenant_id)
        )
