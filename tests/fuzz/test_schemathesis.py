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

import re
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.generation.meta import CoveragePhaseData
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.config import Budgets
from service.models import Role
from tests.conftest import METRICS_TOKEN
from tests.fuzz import fhir_fuzz
from tests.helpers import Api, StackHelper

AppFactory = Callable[..., Flask]
Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"

# -- budget and seed ---------------------------------------------------------------------------

FUZZ_SEED = 20_240_612
"""Fixed seed; schemathesis derives each operation's hypothesis seed from it and the label."""
MAX_EXAMPLES = 100
"""Hypothesis fuzzing examples per operation (the coverage phase adds its own fixed cases)."""

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": FUZZ_SEED,
        # No example database: a run never replays examples saved by an earlier one.
        "generation": {"database": "none"},
    }
)


class CurrentApp:
    """A WSGI app that forwards to the Flask app of the running test.

    The schema (and its operations, built at collection time) is bound to this one object, so
    that every request schemathesis sends, including the replays of its ``ignored_auth`` check,
    reaches the app the test's fixtures created.
    """

    def __init__(self) -> None:
        self.app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None, "no app: requests are sent only inside a test"
        return self.app(environ, start_response)


CURRENT_APP = CurrentApp()
schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)
schema.app = CURRENT_APP

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]

# -- who calls what ----------------------------------------------------------------------------

OPERATION_ROLES: dict[str, Role | str | None] = {
    "healthz": None,
    "readyz": None,
    "metrics": "metrics-scraper",
    "openapi": None,
    "getMe": Role.CLINICIAN,
    "createPatient": Role.INTEGRATION,
    "findPatient": Role.INTEGRATION,
    "getPatient": Role.CLINICIAN,
    "putCareTeamMember": Role.INTEGRATION,
    "deleteCareTeamMember": Role.ADMIN,
    "breakGlass": Role.CLINICIAN,
    "createNote": Role.CLINICIAN,
    "listNotes": Role.CLINICIAN,
    "readNote": Role.CLINICIAN,
    "amendNote": Role.CLINICIAN,
    "markNoteEnteredInError": Role.CLINICIAN,
    "listNoteVersions": Role.CLINICIAN,
    "unlockPrincipal": Role.ADMIN,
    "setPrincipalBudget": Role.ADMIN,
    "setPatientDecoy": Role.ADMIN,
    "shredPatient": Role.ADMIN,
    "cancelShred": Role.ADMIN,
    "listApprovals": Role.ADMIN,
    # Requests are made by the admin; another admin decides them (the two-person rule).
    "approveRequest": "second-admin",
    "rejectRequest": "second-admin",
    "listAuditEvents": Role.AUDITOR,
    "verifyAuditLog": Role.AUDITOR,
    **fhir_fuzz.FHIR_OPERATION_ROLES,  # /fhir/R4 and /oauth2/token
}
"""operationId -> the role whose token the fuzzer sends (None: the operation needs no token)."""

# A generated UUID falls in one of SLOTS slots (crc32 of the parameter's name and value, so a value
# always lands in the same slot): the first GENERATED_SLOTS keep it (an unknown id, 404), the
# others pick a real id from the pool of that parameter.
SLOTS = 8
GENERATED_SLOTS = 2
MRN = "MRN-FUZZ-0001"
IF_MATCH_RE = re.compile(r'^"[0-9]{1,9}"$')
NOTE = {"kind": "progress", "title": "Visit", "body": "Doing well."}
REASON = "Unconscious in the emergency department, care team unreachable."


def operation_id(operation: Operation) -> str:
    return str(operation.definition.raw["operationId"])


def spec_operations() -> list[Operation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    return operations


def pick(name: str, value: object, choices: list[str]) -> str | None:
    """A real id for a generated UUID most of the time (deterministic in the value), else None."""
    if not isinstance(value, str):
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return None
    slot = zlib.crc32(f"{name}={value}".encode()) % SLOTS
    if slot < GENERATED_SLOTS:
        return None
    return choices[(slot - GENERATED_SLOTS) % len(choices)]


def is_negative_at(case: AnyCase, location: ParameterLocation) -> bool:
    """Whether the generator meant the values at `location` to be invalid.

    A coverage-phase case negates one parameter and says which; its other values are meant to be
    valid (even where the generator failed to make them so, like If-Match below).
    """
    meta = case.meta
    if meta is None:
        return False
    if isinstance(meta.phase.data, CoveragePhaseData):
        return meta.phase.data.parameter_location == location
    return meta.is_negative_at(location)


# -- the data the fuzzer works on --------------------------------------------------------------


@dataclass
class FuzzEnv:
    app: Flask
    api: Api
    tokens: dict[Role | str, str]
    # Six choices each, weighted towards the data that reaches the deepest code.
    patients: list[str]
    """The care-team patient with a note (x4), one outside the care team, a shredded one."""
    notes: list[str]
    """The care-team patient's note (x5), the shredded patient's note."""
    principals: list[str]
    """The clinician (x3), a second clinician, the admin, the auditor."""
    approvals: list[str] = field(default_factory=list)
    """Pending requests of the admin (budget raises), for the second admin to decide."""
    note_version: int = 1
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # EHR operations (fhir_fuzz.py)

    def headers_for(self, operation: Operation) -> dict[str, str]:
        role = OPERATION_ROLES[operation_id(operation)]
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}

    def aim(self, case: AnyCase) -> None:
        """Point generated ids (and a few other values) at the real data, deterministically."""
        pools = {
            "patient_id": self.patients,
            "note_id": self.notes,
            "principal_id": self.principals,
            "approval_id": self.approvals,
        }
        if case.path_parameters and not is_negative_at(case, ParameterLocation.PATH):
            for name, value in list(case.path_parameters.items()):
                real = pick(name, value, pools.get(name, []) or [str(value)])
                if real is not None:
                    case.path_parameters[name] = real
        op = operation_id(case.operation)
        if case.query and not is_negative_at(case, ParameterLocation.QUERY):
            for name in ("patient_id", "principal_id"):
                if name in case.query and op == "listAuditEvents":
                    real = pick(name, case.query[name], pools[name])
                    if real is not None:
                        case.query[name] = real
            if op == "findPatient" and isinstance(case.query.get("external_id"), str):
                if zlib.crc32(case.query["external_id"].encode()) % 2:
                    case.query["external_id"] = MRN
        if op == "amendNote" and not is_negative_at(case, ParameterLocation.HEADER):
            # The coverage phase keeps an If-Match that breaks the pattern (`0`) in its cases
            # aimed at the body, which would stop them all at 400; a random version is
            # stale; and a missing one only ever meets 428.
            if_match = str((case.headers or {}).get("If-Match", ""))
            if not IF_MATCH_RE.match(if_match) or zlib.crc32(if_match.encode()) % 2:
                case.headers = {**(case.headers or {}), "If-Match": f'"{self.note_version}"'}
        fhir_fuzz.aim(self, case, op)

    def observe(self, case: AnyCase, response: Response) -> None:
        op = operation_id(case.operation)
        counts = self.statuses.setdefault(op, {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        fhir_fuzz.observe(self, case, response, op)
        if op == "amendNote" and response.status_code == 200:
            self.note_version = int(response.headers["etag"][0].strip('"'))
        if op == "deleteCareTeamMember" and response.status_code == 204:
            # Put the clinician back, so that later examples can remove it again.
            patient_id = case.path_parameters["patient_id"]
            principal_id = case.path_parameters["principal_id"]
            r = self.api.put(
                f"/v1/patients/{patient_id}/care-team/{principal_id}",
                self.tokens[Role.INTEGRATION],
                {},
            )
            assert r.status_code == 201, r.get_json()


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


def valid_case(operation: Operation, env: FuzzEnv) -> AnyCase:
    """A request the operation's role would get a 2xx for, so only the token is wrong."""
    op = operation_id(operation)
    params = {
        # a shred is cancelled on a shredded patient; the glass broken off the care team
        "patient_id": {"cancelShred": env.patients[-1], "breakGlass": env.patients[4]}.get(
            op, env.patients[0]
        ),
        "note_id": env.notes[0],
        "principal_id": env.principals[0],
        "approval_id": env.approvals[0] if env.approvals else str(uuid.uuid4()),
    }
    path: dict[str, Any] = {
        name: params[name]
        for name in ("patient_id", "note_id", "principal_id", "approval_id")
        if name in operation.path
    }
    extra = fhir_fuzz.valid_kwargs(op, env)
    path.update(extra.pop("path_parameters_extra", {}))
    bodies: dict[str, Any] = {
        "createPatient": {"external_id": "MRN-AUTH-0001"},
        "putCareTeamMember": {},
        "breakGlass": {"reason": REASON},
        "createNote": NOTE,
        "amendNote": NOTE,
        "setPrincipalBudget": {"per_hour": 10},
        "setPatientDecoy": {"decoy": False},
        "shredPatient": {"reason": "Erasure request ER-2024-0002"},
    }
    kwargs: dict[str, Any] = {"path_parameters": path}
    if op in bodies:
        kwargs["body"] = bodies[op]
        kwargs["media_type"] = "application/json"
    if op == "findPatient":
        kwargs["query"] = {"external_id": MRN}
    if op == "amendNote":
        kwargs["headers"] = {"If-Match": f'"{env.note_version}"'}
    kwargs.update(extra)
    return operation.Case(**kwargs)


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
