"""Helpers of the P16 tests (test_database_books*.py): a connection with exactly the
service's credentials, whether PostgreSQL refuses a statement, the auditor API's view of the
log, and a check that `audit verify` accepts it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from flask import Flask

from tests.helpers import Api, Who


@contextmanager
def as_service_role(app_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(app_db_url, autocommit=True) as conn:
        yield conn


def refused(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> bool:
    try:
        conn.execute(statement, params)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation):
        return True
    return False


def events(api: Api, auditor: Who, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    r = api.get(f"/v1/audit/events?limit=1000&{qs}", auditor.token)
    assert r.status_code == 200, r.get_json()
    return list(r.get_json()["items"])


def verify_ok(app: Flask) -> dict[str, Any]:
    report = app.extensions["sealednotes"].audit_service.verify().as_dict()
    assert report["ok"], report["problems"]
    return report
