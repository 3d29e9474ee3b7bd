"""The unit of work: one database transaction, with a repository per aggregate.

Use cases open one with `Store.transaction()` and reach the data through its
repositories (`uow.notes`, `uow.ledger`, ...), which all run on its connection.
"""

from __future__ import annotations

from collections.abc import Callable
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
    # Each repository is made when first used (a warm read uses one of the nine):
    # __getattr__ runs only for a name the instance does not hold yet, then it does.
    tenants: TenantsRepository
    principals: PrincipalsRepository
    patients: PatientsRepository
    keys: KeysRepository
    ledger: LedgerRepository
    approvals: ApprovalsRepository
    notes: NotesRepository
    audit: AuditRepository
    idp: IdpRepository

    def __init__(
        self, conn: psycopg.Connection[dict[str, Any]], group: AuditGroupCommit | None = None
    ) -> None:
        self.conn = conn
        self._group = group

    def __getattr__(self, name: str) -> Any:
        make = _REPOSITORIES.get(name)
        if make is None:
            raise AttributeError(name)
        repository = make(self)
        self.__dict__[name] = repository
        return repository

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def ping(self) -> None:
        self.conn.execute("SELECT 1")


_REPOSITORIES: dict[str, Callable[[UnitOfWork], Any]] = {
    "tenants": lambda uow: TenantsRepository(uow.conn),
    "principals": lambda uow: PrincipalsRepository(uow.conn),
    "patients": lambda uow: PatientsRepository(uow.conn),
    "keys": lambda uow: KeysRepository(uow.conn),
    "ledger": lambda uow: LedgerRepository(uow.conn),
    "approvals": lambda uow: ApprovalsRepository(uow.conn),
    "notes": lambda uow: NotesRepository(uow.conn),
    "audit": lambda uow: AuditRepository(uow.conn, uow._group),
    "idp": lambda uow: IdpRepository(uow.conn),
}
