"""The unit of work: one database transaction, with a repository per aggregate.

Use cases open one with `Store.transaction()` and reach the data through its
repositories (`uow.notes`, `uow.ledger`, ...), which all run on its connection.
"""

from __future__ import annotations

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
    def __init__(
        self, conn: psycopg.Connection[dict[str, Any]], group: AuditGroupCommit | None = None
    ) -> None:
        self.conn = conn
        self.tenants = TenantsRepository(conn)
        self.principals = PrincipalsRepository(conn)
        self.patients = PatientsRepository(conn)
        self.keys = KeysRepository(conn)
        self.ledger = LedgerRepository(conn)
        self.approvals = ApprovalsRepository(conn)
        self.notes = NotesRepository(conn)
        self.audit = AuditRepository(conn, group)
        self.idp = IdpRepository(conn)

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def ping(self) -> None:
        self.conn.execute("SELECT 1")
