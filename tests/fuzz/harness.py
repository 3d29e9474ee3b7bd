"""The fuzzing harness of test_schemathesis.py: the schema loaded from openapi.yaml with a
fixed seed and bound to the app of the running test, the checks every response must pass, the
role that calls each operation, the data the fuzzer works on (`FuzzEnv`) and a valid request per
operation."""

from __future__ import annotations

import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from flask import Flask
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.models import Role
from tests.fuzz import fhir_fuzz
from tests.fuzz.aiming import AnyCase, is_negative_at, pick
from tests.helpers import Api

AppFactory = Callable[..., Flask]
Operation = APIOperation[Any, Any, Any, Any]

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
