"""The unit of work: one database transaction, with a repository per aggregate.

Use cases open one with `Store.transaction()` and reach the data through its
repositories (`uow.notes`, `uow.ledger`, ...), which all run on its connection.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import psycopg

from service.adapters.postgres.approvals import ApprovalsRepository
from service.adapters.postgres.audit import AuditRepository
from service.adapters.postgres.groupcommit import AuditGroupCommit
from service.adapters.postgres.idp import IdpRepository
from service.adapters.postgres.keys import KeysRepository
from service.adapters.postgres.ledger import LedgerRepository
from service.adapters.postgres.notes import NotesRepository
from service.adapters.postgres.patients import PatientsRepository
from service.adapters.postgres.principals import PrincipalsRepository
from service.adapters.postgres.tenants import TenantsRepository


class UnitOfWork:
    # Each repository is made when first used: a warm read uses one of the nine.
    def __init__(
        self, conn: psycopg.Connection[dict[str, Any]], group: AuditGroupCommit | None = None
    ) -> None:
        self.conn = conn
        self._group = group

    @cached_property
    def tenants(self) -> TenantsRepository:
        return TenantsRepository(self.conn)

    @cached_property
    def principals(self) -> PrincipalsRepository:
        return PrincipalsRepository(self.conn)

    @cached_property
    def patients(self) -> PatientsRepository:
        return PatientsRepository(self.conn)

    @cached_property
    def keys(self) -> KeysRepository:
        return KeysRepository(self.conn)

    @cached_property
    def ledger(self) -> LedgerRepository:
        return LedgerRepository(self.conn)

    @cached_property
    def approvals(self) -> ApprovalsRepository:
        return ApprovalsRepository(self.conn)

    @cached_property
    def notes(self) -> NotesRepository:
        return NotesRepository(self.conn)

    @cached_property
    def audit(self) -> AuditRepository:
        return AuditRepository(self.conn, self._group)

    @cached_property
    def idp(self) -> IdpRepository:
        return IdpRepository(self.conn)

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def ping(self) -> None:
        self.conn.execute("SELECT 1")
