"""The tenant incident: the tenant's hourly release cap refused a release. Someone
else's exhaustion of the cap is not the caller's fault (it never counts towards the
caller's suspension); it is an alert naming the accounts that spent the cap."""

from __future__ import annotations

from datetime import datetime, timedelta

from service.adapters.alerts import Alerter
from service.clock import HOUR
from service.ports import UnitOfWork

TENANT_INCIDENT_EVERY = timedelta(minutes=10)


class TenantIncidents:
    def __init__(self, alerts: Alerter) -> None:
        self._alerts = alerts
        self._last: dict[str, datetime] = {}

    def report(self, tx: UnitOfWork, tenant_id: str, now: datetime) -> None:
        """Alert (at most every ten minutes per tenant and worker) naming the accounts
        that spent the tenant's cap in the last hour."""
        last = self._last.get(tenant_id)
        if last is not None and now - last < TENANT_INCIDENT_EVERY:
            return
        self._last[tenant_id] = now
        spenders = tx.ledger.top_releasers(tenant_id, now - HOUR)
        self._alerts.emit(
            "tenant-cap-exhausted",
            tenant_id=tenant_id,
            top_accounts=[{"principal_id": pid, "releases": n} for pid, n in spenders],
        )
