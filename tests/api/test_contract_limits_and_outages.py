"""Contract tests, budgets and fail closed: 429 with Retry-After past each key-release budget
(principal hour and day, tenant hour, break-glass day), suspension and unlock; 503 with
Retry-After when Vault or the database is down. Every response is checked against
openapi.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from werkzeug.test import TestResponse

from service.config import Budgets
from tests.api.contract import Checked, Contract, problem_type
from tests.api.contract_world import (
    NOTE,
    REASON,
    AppFactory,
    World,
    second_admin_approves,
    stack_for,
)
from tests.helpers import Api

# -- budgets: 429 -----------------------------------------------------------------------


def assert_throttled(body: Mapping[str, Any], r: TestResponse, scope: str) -> None:
    assert problem_type(body) == "key-release-budget-exceeded", body
    assert body["scope"] == scope, body
    assert int(r.headers["Retry-After"]) == body["retry_after"] >= 1, (r.headers, body)


def test_hourly_budget_429_suspension_and_unlock(make_app: AppFactory, contract: Contract) -> None:
    app = make_app(budgets=Budgets(per_hour=1, per_day=200, suspend_after_denials=5))
    api, stack = stack_for(app)
    c = Checked(api, contract)
    t = stack.tenant()
    dr = stack.clinician(t)
    a, b = stack.patient_for(t, dr), stack.patient_for(t, dr)
    note_a, note_b = stack.note(dr, a)["id"], stack.note(dr, b)["id"]

    r, _ = c.call("GET", "/v1/notes/{note_id}", dr.token, params={"note_id": note_a}, expect=200)
    assert (r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"]) == ("1", "0")
    assert int(r.headers["RateLimit-Reset"]) > 0
    assert r.headers["RateLimit-Policy"] == "1;w=3600, 200;w=86400"
    c.call("GET", "/v1/notes/{note_id}", dr.token, params={"note_id": note_a}, expect=200)  # free

    # Every content path for a second patient is refused; metadata and writes are not.
    denials = [
        ("GET", "/v1/notes/{note_id}", {"note_id": note_b}, None),
        ("GET", "/v1/notes/{note_id}/versions", {"note_id": note_b}, None),
        ("GET", "/v1/patients/{patient_id}/notes", {"patient_id": b}, {"include": "content"}),
        ("GET", "/v1/notes/{note_id}", {"note_id": note_b}, None),
    ]
    for method, path, params, query in denials:
        r, body = c.call(method, path, dr.token, params=params, query=query, expect=429)
        assert_throttled(body, r, "principal-hour")
    c.call("GET", "/v1/patients/{patient_id}/notes", dr.token, params={"patient_id": b}, expect=200)
    c.call(
        "POST",
        "/v1/patients/{patient_id}/notes",
        dr.token,
        params={"patient_id": b},
        json=NOTE,
        expect=201,
    )
    _r, me = c.call("GET", "/v1/me", dr.token, expect=200)
    assert me["budget"]["hour"]["remaining"] == 0 and me["budget"]["day"]["remaining"] == 199

    # The fifth denial within the hour suspends the account.
    r, body = c.call("GET", "/v1/notes/{note_id}", dr.token, params={"note_id": note_b}, expect=429)
    assert_throttled(body, r, "principal-hour")
    c.problem("GET", "/v1/me", dr.token, 403, "account-suspended")
    c.problem(
        "GET", "/v1/notes/{note_id}", dr.token, 403, "account-suspended", params={"note_id": note_a}
    )

    _r, p = c.call(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        t.admin.token,
        params={"principal_id": dr.id},
        expect=200,
    )
    assert p["suspended"] is False
    c.call("GET", "/v1/notes/{note_id}", dr.token, params={"note_id": note_a}, expect=200)
    _r, pending = c.call(  # above the default (1 here): a second admin
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        t.admin.token,
        params={"principal_id": dr.id},
        json={"per_hour": 2},
        expect=202,
    )
    second_admin_approves(c, stack, t, pending)
    r, _ = c.call("GET", "/v1/notes/{note_id}", dr.token, params={"note_id": note_b}, expect=200)
    assert r.headers["RateLimit-Limit"] == "2"


def test_daily_and_tenant_budgets_429(make_app: AppFactory, contract: Contract) -> None:
    app = make_app(budgets=Budgets(per_hour=10, per_day=1, tenant_per_hour=2))
    api, stack = stack_for(app)
    c = Checked(api, contract)
    t = stack.tenant()
    dr, dr2 = stack.clinician(t), stack.clinician(t)
    a, b = stack.patient_for(t, dr), stack.patient_for(t, dr)
    for pid in (a, b):
        stack.add_to_care_team(t, pid, dr2)
    notes = "/v1/patients/{patient_id}/notes"
    content = {"include": "content"}
    c.call("GET", notes, dr.token, params={"patient_id": a}, query=content, expect=200)
    r, body = c.call("GET", notes, dr.token, params={"patient_id": b}, query=content, expect=429)
    assert_throttled(body, r, "principal-day")
    c.call("GET", notes, dr2.token, params={"patient_id": b}, query=content, expect=200)
    # the tenant has now released two distinct (principal, patient) pairs this hour
    dr3 = stack.clinician(t)
    stack.add_to_care_team(t, a, dr3)
    r, body = c.call("GET", notes, dr3.token, params={"patient_id": a}, query=content, expect=429)
    assert_throttled(body, r, "tenant-hour")


def test_break_glass_budget_429(make_app: AppFactory, contract: Contract) -> None:
    app = make_app(budgets=Budgets(break_glass_per_day=1))
    api, stack = stack_for(app)
    c = Checked(api, contract)
    t = stack.tenant()
    dr = stack.clinician(t)
    a, b = stack.patient(t), stack.patient(t)
    path = "/v1/patients/{patient_id}/break-glass"
    _r, glass = c.call(
        "POST", path, dr.token, params={"patient_id": a}, json={"reason": REASON}, expect=201
    )
    assert glass["remaining_today"] == 0
    r, body = c.call(
        "POST", path, dr.token, params={"patient_id": b}, json={"reason": REASON}, expect=429
    )
    assert_throttled(body, r, "break-glass-day")


# -- fail closed: 503 -------------------------------------------------------------------


def test_vault_down_gives_503(make_app: AppFactory, checked: Checked, world: World) -> None:
    down = make_app(vault_addr="http://127.0.0.1:9", vault_timeout=0.5)
    c = Checked(Api(down.test_client()), checked.contract)
    r, body = c.call(
        "POST",
        "/v1/patients",
        world.tenant.integration.token,
        json={"external_id": "x"},
        expect=503,
    )
    assert problem_type(body) == "key-service-unavailable" and int(r.headers["Retry-After"]) >= 1
    r, body = c.call("GET", "/v1/notes/{note_id}", world.dr.token, params=world.params, expect=503)
    assert problem_type(body) == "key-service-unavailable"
    _r, ready = c.call("GET", "/readyz", expect=503)
    assert ready["status"] == "unavailable" and ready["vault"]["ok"] is False
    c.call("GET", "/healthz", expect=200)


def test_database_down_gives_503(make_app: AppFactory, contract: Contract) -> None:
    down = make_app(database_url="postgresql://nobody@127.0.0.1:9/none", db_timeout=0.5, pool_min=0)
    c = Checked(Api(down.test_client()), contract)
    r, body = c.call("GET", "/v1/me", "snt_any", expect=503)
    assert problem_type(body) == "database-unavailable" and int(r.headers["Retry-After"]) >= 1
    _r, ready = c.call("GET", "/readyz", expect=503)
    assert ready["database"]["ok"] is False
