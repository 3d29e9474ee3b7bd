"""PostgreSQL: the only package that speaks SQL (one repository per aggregate,
behind a unit of work; the schema and the database roles' grants)."""

from service.adapters.postgres.base import AUDIT_LOCK_CLASS, CLOCK_SKEW, DAY, HOUR
from service.adapters.postgres.store import Store
from service.adapters.postgres.uow import UnitOfWork
from service.models import OAuthClient, TenantIdp

__all__ = [
    "AUDIT_LOCK_CLASS",
    "CLOCK_SKEW",
    "DAY",
    "HOUR",
    "OAuthClient",
    "Store",
    "TenantIdp",
    "UnitOfWork",
]
