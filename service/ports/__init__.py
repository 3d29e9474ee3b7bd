"""The interfaces the use cases and the gate depend on (PEP 544 protocols):
repositories behind a unit of work (repositories.py, here) and Vault (vault.py).

The PostgreSQL adapter (service/adapters/postgres/) and the Vault adapter
(service/adapters/vault/) implement them; tests/fakes/ implements them in memory,
so the gate's and the use cases' rules are tested in milliseconds. Wiring happens in
one place: service/app.py.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from service.ports.repositories import (
    ApprovalsRepository,
    AuditRepository,
    IdpRepository,
    KeysRepository,
    LedgerRepository,
    NotesRepository,
    PatientsRepository,
    PrincipalsRepository,
    TenantsRepository,
)
from service.ports.vault import KeyAdministration, KeyService, TransitKeys

__all__ = [
    "ApprovalsRepository",
    "AuditRepository",
    "Database",
    "IdpRepository",
    "KeyAdministration",
    "KeyService",
    "KeysRepository",
    "LedgerRepository",
    "NotesRepository",
    "PatientsRepository",
    "PrincipalsRepository",
    "TenantsRepository",
    "TransitKeys",
    "UnitOfWork",
]


class UnitOfWork(Protocol):
    """One transaction; every repository runs on it."""

    @property
    def tenants(self) -> TenantsRepository: ...

    @property
    def principals(self) -> PrincipalsRepository: ...

    @property
    def patients(self) -> PatientsRepository: ...

    @property
    def keys(self) -> KeysRepository: ...

    @property
    def ledger(self) -> LedgerRepository: ...

    @property
    def approvals(self) -> ApprovalsRepository: ...

    @property
    def notes(self) -> NotesRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def idp(self) -> IdpRepository: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def ping(self) -> None: ...


class Database(Protocol):
    """Opens units of work (service/adapters/postgres/store.py)."""

    def transaction(self) -> AbstractContextManager[UnitOfWork]: ...

    def autocommit(self) -> AbstractContextManager[UnitOfWork]: ...

    def close(self) -> None: ...
