"""In-memory implementations of service/ports/, for unit tests of the gate and the
use cases: the same rules as the PostgreSQL repositories (windows, distinct patients,
append-only ledgers, the database's own tenant cap), none of the I/O.

Only what the gate, notes, patients, principals, approvals and limits use is here;
the rest raises NotImplementedError, so a test never passes by accident on a stub.
"""

from tests.fakes.database import FakeDatabase, FakeUnitOfWork
from tests.fakes.keys import FakeKeys
from tests.fakes.world import GATE_BUDGETS, T0, World, _copy

__all__ = ["GATE_BUDGETS", "T0", "FakeDatabase", "FakeKeys", "FakeUnitOfWork", "World", "_copy"]
