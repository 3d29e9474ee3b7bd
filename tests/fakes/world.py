"""A small world for the gate and the use cases."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from service.access.caller import Caller
from service.access.gate import KeyReleaseGate
from service.access.keycache import KeyCache
from service.adapters.alerts import Alerter
from service.audit.service import AuditLog
from service.clock import ManualClock
from service.config import Budgets
from service.metrics import Metrics
from service.models import (
    Patient,
    Principal,
    Role,
    Tenant,
)
from tests.fakes.database import FakeDatabase
from tests.fakes.keys import FakeKeys
from tests.fakes.repositories import State

# -- a small world for the gate and the use cases ----------------------------------

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
GATE_BUDGETS = Budgets(per_hour=3, per_day=5, tenant_per_hour=1000, suspend_after_denials=3)


class World:
    """One tenant (t1), two clinicians (doc, doc2), the gate on fakes and a manual clock."""

    def __init__(self, budgets: Budgets = GATE_BUDGETS, cache_ttl: float = 0.0) -> None:
        self.db = FakeDatabase()
        self.keys = FakeKeys()
        self.clock = ManualClock(T0)
        metrics = Metrics()
        self.alerts = Alerter(metrics)
        self.gate = KeyReleaseGate(
            keys=self.keys,
            cache=KeyCache(ttl_seconds=cache_ttl),
            audit=AuditLog(),
            alerts=self.alerts,
            metrics=metrics,
            budgets=budgets,
            clock=self.clock,
        )
        s = self.db.state
        s.tenants["t1"] = Tenant("t1", "clinic", 1000)
        s.principals["doc"] = Principal("doc", "t1", "doc", Role.CLINICIAN)
        s.principals["doc2"] = Principal("doc2", "t1", "doc2", Role.CLINICIAN)
        self.db.committed = _copy(s)

    def patient(self, pid: str, *, care: tuple[str, ...] = ("doc",), decoy: bool = False) -> str:
        s = self.db.state
        s.patients[pid] = Patient(pid, "t1", decoy, None, T0)
        for who in care:
            s.care_team[(pid, who)] = None
        self.db.committed = _copy(s)
        return pid

    def caller(self, who: str = "doc") -> Caller:
        return Caller(self.db.state.principals[who], request_id=f"req-{who}")

    def read(self, pid: str, who: str = "doc") -> bytes | None:
        """One read request: its own transaction, committed on success."""
        with self.db.transaction() as tx:
            return self.gate.release(tx, self.caller(who), pid, action="note.read").key

    def write(self, pid: str, who: str = "doc") -> bytes:
        with self.db.transaction() as tx:
            _patient, key, _via = self.gate.key_for_write(
                tx, self.caller(who), pid, action="note.create"
            )
            return key

    def audit(self, **match: object) -> list[object]:
        return [
            e for e in self.db.committed.audit if all(getattr(e, k) == v for k, v in match.items())
        ]


def _copy(state: State) -> State:
    return copy.deepcopy(state)
