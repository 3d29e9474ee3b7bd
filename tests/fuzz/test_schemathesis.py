"""Property-based fuzzing of the whole API from openapi.yaml (P12, docs/architecture.md).

Schemathesis generates requests for every operation of the contract (its coverage phase: boundary
and negative values of every parameter and body field, then a bounded hypothesis fuzzing phase,
positive and negative) and sends them to the in-process Flask app, backed by the real PostgreSQL
and OpenBao the fixtures start. Every response must:

* never be a 5xx (P12: bad input gets a clear 4xx problem+json, never a 500);
* conform to openapi.yaml: a documented status code, a documented media type, a body valid
  against the response schema, the documented response headers;
* not ignore authentication: on every 2xx, schemathesis's ``ignored_auth`` check replays the
  request without a token and with a bogus one and expects a refusal.

Each operation runs against a fresh database holding real data (a tenant, its integration, admin,
auditor and two clinicians, a patient on the clinician's care team with a note, a patient outside
it, a crypto-shredded patient) and is called with the bearer token of the role that may perform it,
so that authentication passes and validation and business logic (care-team checks, the key-release
gate, decryption, If-Match, audit filters) are exercised. Generated UUIDs in path and query
parameters are deterministically swapped, most of the time, for the ids of that data, so that not
everything is a 404.

``test_every_secured_operation_refuses_missing_or_bogus_token`` checks the other half of auth for
every operation that declares security, with explicit requests: no token, a bogus one, a malformed
header and another scheme all answer 401 with ``WWW-Authenticate: Bearer``.

Determinism and budget: a fixed schemathesis seed (mixed by schemathesis with each operation's
label), hypothesis's example database disabled, and at most ``MAX_EXAMPLES`` fuzzing examples per
operation on top of the coverage phase's fixed set of cases.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from service.config import Budgets
from service.models import Role
from tests.conftest import METRICS_TOKEN
from tests.fuzz import fhir_fuzz
from tests.fuzz.aiming import AnyCase
from tests.fuzz.harness import (
    CHECKS,
    CURRENT_APP,
    MAX_EXAMPLES,
    MRN,
    OPERATION_ROLES,
    AppFactory,
    FuzzEnv,
    Operation,
    operation_id,
    schema,
    spec_operations,
    valid_case,
)
from tests.helpers import Api, StackHelper


@pytest.fixture
def fuzz_env(make_app: AppFactory) -> Iterator[FuzzEnv]:
    # Budgets out of reach: fuzzing would otherwise exhaust the key-release budget, suspend the
    # clinician and test nothing but the 403 path from then on. Budgets, denials, suspension and
    # break-glass limits are covered by tests/security/test_key_release_budget.py.
    app = make_app(
        budgets=Budgets(
            per_hour=50_000,
            per_day=100_000,
            tenant_per_hour=100_000,
            suspend_after_denials=100_000,
            break_glass_per_day=100_000,
            writes_per_hour=100_000,
            admin_actions_per_hour=100_000,
            care_team_grants_per_hour=100_000,
            lookups_per_hour=100_000,
        )
    )
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    tenant = stack.tenant()
    clinician = stack.clinician(tenant)
    colleague = stack.clinician(tenant)
    auditor = stack.principal(tenant, Role.AUDITOR)
    patient = stack.patient_for(tenant, clinician, MRN)
    note = stack.note(clinician, patient)
    outsider = stack.patient(tenant)
    shredded = stack.patient_for(tenant, clinician)
    shredded_note = stack.note(clinician, shredded)
    second_admin = stack.principal(tenant, Role.ADMIN)
    r = api.post(
        f"/v1/admin/patients/{shredded}/shred",
        tenant.admin.token,
        {"reason": "Erasure request ER-2024-0001"},
    )
    assert r.status_code == 202, r.get_json()
    r = api.post(
        f"/v1/admin/approvals/{r.get_json()['approval']['id']}/approve", second_admin.token
    )
    assert r.status_code == 200, r.get_json()
    approvals = []
    for i in range(30):
        r = api.put(
            f"/v1/admin/principals/{colleague.id}/budget",
            tenant.admin.token,
            {"per_hour": 60_000 + i},  # above this env's default: needs a second admin
        )
        assert r.status_code == 202, r.get_json()
        approvals.append(r.get_json()["approval"]["id"])
    env = FuzzEnv(
        app=app,
        api=api,
        tokens={
            Role.CLINICIAN: clinician.token,
            Role.INTEGRATION: tenant.integration.token,
            Role.ADMIN: tenant.admin.token,
            Role.AUDITOR: auditor.token,
            "metrics-scraper": METRICS_TOKEN,
            "second-admin": second_admin.token,
        },
        patients=[patient, patient, patient, patient, outsider, shredded],
        notes=[note["id"]] * 5 + [shredded_note["id"]],
        principals=[clinician.id] * 3 + [colleague.id, tenant.admin.id, auditor.id],
        approvals=approvals,
    )
    fhir_fuzz.prepare(env, tenant.integration.id)
    env.extra["fresh_note"] = lambda: stack.note(clinician, patient)["id"]  # to be voided
    CURRENT_APP.app = app
    try:
        yield env
    finally:
        CURRENT_APP.app = None


@pytest.fixture
def fuzzed_env(fuzz_env: FuzzEnv) -> Iterator[FuzzEnv]:
    """`fuzz_env`, then a check that the fuzzing got past auth and validation at least once."""
    yield fuzz_env
    assert fuzz_env.statuses, "no request was sent"
    for op, counts in fuzz_env.statuses.items():
        assert any(200 <= status < 300 for status in counts), (
            f"{op}: no 2xx among {counts}; the fuzzer no longer reaches the operation's logic"
        )


def test_roles_cover_every_operation() -> None:
    assert {operation_id(op) for op in spec_operations()} == set(OPERATION_ROLES)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one app and database per operation, on purpose
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_api_conforms_under_fuzzing(case: AnyCase, fuzzed_env: FuzzEnv) -> None:
    fuzzed_env.aim(case)
    headers = fuzzed_env.headers_for(case.operation)
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    fuzzed_env.observe(case, response)


# -- authentication is never ignored -----------------------------------------------------------

BAD_AUTHORIZATION = [
    None,
    "Bearer snt_" + "0" * 43,
    "Bearer not-a-token",
    "Bearer ",
    "Bearer",
    "Basic dXNlcjpwYXNz",
    "snt_" + "0" * 43,
]
SECURED = [op for op in spec_operations() if OPERATION_ROLES[operation_id(op)] is not None]


@pytest.mark.parametrize("operation", SECURED, ids=operation_id)
def test_every_secured_operation_refuses_missing_or_bogus_token(
    operation: Operation, fuzz_env: FuzzEnv
) -> None:
    case = valid_case(operation, fuzz_env)
    for authorization in BAD_AUTHORIZATION:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = case.call(headers=headers)
        assert response.status_code == 401, (operation.label, authorization, response.text)
        assert response.headers.get("www-authenticate", [""])[0].startswith("Bearer"), (
            operation.label,
            response.headers,
        )
        case.validate_response(response, checks=CHECKS[:-1], headers=headers)
    # With the right token the same request succeeds, and ignored_auth replays it without
    # a token and with a bogus one.
    headers = fuzz_env.headers_for(operation)
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    assert 200 <= response.status_code < 300, (operation.label, response.status_code, response.text)
