"""Contract tests: the running service against openapi.yaml (OpenAPI 3.1).

Three layers:

* the document itself: valid OpenAPI 3.1, served at /openapi.yaml, every Flask route documented
  and every documented operation routed, uniform security and error responses, request schemas
  that accept and reject exactly what the marshmallow schemas do;
* every response of a realistic scenario (success paths, the main error paths, budgets, fail
  closed) checked against the operation it came from: status declared, media type declared,
  body valid against the declared schema (JSON Schema 2020-12), declared headers present;
* malformed requests of each kind: a 4xx application/problem+json that echoes no input.

Tests named ``test_bug_*`` pin service bugs found while writing the contract; they fail until
the service is fixed (see each assertion message for the place and a suggested fix).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from flask import Flask, Response
from jsonschema import Draft202012Validator
from marshmallow import Schema
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from service import schemas as ms
from service.app import MAX_REQUEST_BYTES
from service.config import Budgets
from service.models import Role
from tests.conftest import METRICS_TOKEN
from tests.helpers import Api, StackHelper, Tenant, Who

AppFactory = Callable[..., Flask]

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC_URI = "urn:sealednotes:openapi"
PROBLEM_JSON = "application/problem+json"
PROBLEM_FIELDS = ("type", "title", "status", "detail")
OPERATION_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})  # answered by Flask for every route
SENTINEL = "SENTINEL-c0ffee-PHI"  # put in bad input; must never come back in an error body
NOTE = {"kind": "progress", "title": "Visit", "body": "Doing well."}
REASON = "Unconscious in the emergency department, care team unreachable."
JSON = "application/json"
# spec path templates used by several tests
NOTES = "/v1/patients/{patient_id}/notes"
ONE_NOTE = "/v1/notes/{note_id}"
CARE_TEAM = "/v1/patients/{patient_id}/care-team/{principal_id}"
BREAK_GLASS = "/v1/patients/{patient_id}/break-glass"
BUDGET = "/v1/admin/principals/{principal_id}/budget"
DECOY = "/v1/admin/patients/{patient_id}/decoy"
AUDIT = "/v1/audit/events"
# EHR integration (/fhir/R4, /oauth2/token): its operations are exercised in test_contract_fhir.py.
EHR_PREFIXES = ("/fhir/", "/oauth2/")
EHR_PUBLIC = {"fhirCapabilities", "smartConfiguration", "oauth2Token"}
FHIR_VERSION_PARAM = ("int", "vid")  # /_history/{vid}: FHIR version ids are integers


# -- the document ----------------------------------------------------------------------------


@functools.cache
def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


@functools.cache
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(spec_text())
    return spec


def escape(part: str) -> str:
    """One JSON-pointer segment (RFC 6901)."""
    return part.replace("~", "~0").replace("/", "~1")


def pointer(*parts: str) -> str:
    return "".join("/" + escape(p) for p in parts)


RULE_PARAM_RE = re.compile(r"<(?:([^<>:]+):)?([^<>]+)>")


def openapi_path(rule: str) -> str:
    """Flask `/v1/notes/<uuid:note_id>` -> OpenAPI `/v1/notes/{note_id}`."""
    return RULE_PARAM_RE.sub(r"{\2}", rule)


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path: str  # OpenAPI template
    spec: Mapping[str, Any] = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return str(self.spec["operationId"])

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{([^}]+)}", self.path)

    @property
    def has_body(self) -> bool:
        return "requestBody" in self.spec


def operations(spec: Mapping[str, Any]) -> list[Operation]:
    return [
        Operation(method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in OPERATION_METHODS
    ]


def flask_operations(app: Flask) -> set[tuple[str, str]]:
    return {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - IMPLICIT_METHODS
    }


def media_type(response: TestResponse) -> str:
    return response.mimetype.lower()


def is_json_media(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Contract:
    """Checks responses against the operations of the spec (JSON Schema 2020-12)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        resource = Resource.from_contents(dict(spec), default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self.seen: set[tuple[str, str, int]] = set()

    # -- navigation ---------------------------------------------------------------------

    def at(self, ptr: str) -> Any:
        node: Any = self.spec
        for part in ptr.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def resolve(self, node: Mapping[str, Any], ptr: str) -> tuple[Mapping[str, Any], str]:
        """Follow OpenAPI `$ref`s (responses, headers, parameters) to the object and its pointer."""
        while "$ref" in node:
            ref = str(node["$ref"])
            assert ref.startswith("#/"), f"only local refs are used: {ref}"
            ptr = ref[1:]
            node = self.at(ptr)
        return node, ptr

    def operation(self, method: str, path: str) -> Mapping[str, Any]:
        item = self.spec["paths"].get(path)
        assert item is not None, f"{path} is not a path of the spec"
        op = item.get(method.lower())
        assert op is not None, f"{method} {path} is not an operation of the spec"
        return dict(op)

    def parameters(self, method: str, path: str) -> dict[tuple[str, str], Mapping[str, Any]]:
        """Path-level and operation-level parameters, by (in, name)."""
        item = self.spec["paths"][path]
        out: dict[tuple[str, str], Mapping[str, Any]] = {}
        for p in [*item.get("parameters", []), *self.operation(method, path).get("parameters", [])]:
            param, _ = self.resolve(p, "")
            out[(str(param["in"]), str(param["name"]))] = param
        return out

    # -- validation ---------------------------------------------------------------------

    def schema_errors(self, schema_pointer: str, instance: Any) -> list[str]:
        ref = {"$ref": f"{SPEC_URI}#{quote(schema_pointer, safe='/~')}"}
        validator = Draft202012Validator(
            ref, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        return [
            f"at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(instance)
        ]

    def check(self, method: str, path: str, response: TestResponse) -> Any:
        """Assert `response` is one the spec declares for `method path`; return its body."""
        op = self.operation(method, path)
        where = f"{method} {path} -> {response.status_code}"
        status = str(response.status_code)
        declared = op["responses"]
        assert status in declared, (
            f"{where}: status not declared (declared: {sorted(declared)}); "
            f"body: {response.get_data(as_text=True)[:500]}"
        )
        body = self.check_response(
            declared[status],
            pointer("paths", path, method.lower(), "responses", status),
            response,
            where,
        )
        self.seen.add((method, path, response.status_code))
        return body

    def check_component(self, name: str, response: TestResponse) -> Any:
        """For answers no operation can declare: unknown paths, undocumented methods."""
        ptr = pointer("components", "responses", name)
        return self.check_response(self.at(ptr), ptr, response, f"component {name}")

    def check_response(
        self, node: Mapping[str, Any], ptr: str, response: TestResponse, where: str
    ) -> Any:
        declared, ptr = self.resolve(node, ptr)
        assert response.headers.get("X-Request-Id"), f"{where}: no X-Request-Id"
        assert response.headers.get("Cache-Control") == "no-store", f"{where}: cacheable"
        self.check_headers(declared, ptr, response, where)
        content = declared.get("content")
        raw = response.get_data(as_text=True)
        if not content:
            assert raw == "", f"{where}: the spec declares no body, got {raw[:200]!r}"
            return None
        media = media_type(response)
        assert media in content, f"{where}: media type {media!r} not in {sorted(content)}"
        body: Any = json.loads(raw) if is_json_media(media) else raw
        # A YAML document is checked as the data it describes; the text is returned.
        checked = yaml.safe_load(raw) if media == "application/yaml" else body
        errors = self.schema_errors(f"{ptr}/content/{escape(media)}/schema", checked)
        assert not errors, f"{where}: body does not match the spec: {errors}; body: {raw[:500]}"
        if media == PROBLEM_JSON:
            assert_problem(response, body)
        return body

    def check_headers(
        self, declared: Mapping[str, Any], ptr: str, response: TestResponse, where: str
    ) -> None:
        for name, header in declared.get("headers", {}).items():
            header, hptr = self.resolve(header, f"{ptr}/headers/{escape(name)}")
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{where}: required header {name} missing"
                continue
            schema, sptr = self.resolve(header["schema"], f"{hptr}/schema")
            instance: Any = value
            if schema.get("type") == "integer":
                assert re.fullmatch(r"[0-9]+", value), f"{where}: {name}={value!r} not an integer"
                instance = int(value)
            errors = self.schema_errors(sptr, instance)
            assert not errors, f"{where}: header {name}={value!r}: {errors}"


def assert_problem(response: TestResponse, body: Any) -> dict[str, Any]:
    """RFC 9457 basics every error of this service must satisfy."""
    assert media_type(response) == PROBLEM_JSON, response.headers.get("Content-Type")
    assert isinstance(body, dict), body
    missing = [f for f in PROBLEM_FIELDS if f not in body]
    assert not missing, f"problem without {missing}: {body}"
    assert body["status"] == response.status_code, body
    assert str(body["type"]).startswith("https://sealednotes.dev/problems/"), body
    assert body.get("request_id") == response.headers.get("X-Request-Id"), body
    return body


def problem_type(body: Mapping[str, Any]) -> str:
    return str(body["type"]).rsplit("/", 1)[-1]


# -- a client that checks every response ---------------------------------------------------


class Checked:
    """Calls the API by spec path template and checks every response against the spec."""

    def __init__(self, api: Api, contract: Contract) -> None:
        self.api = api
        self.contract = contract

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        expect: int | None = None,
        params: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        json: Any = None,
        **kw: Any,
    ) -> tuple[TestResponse, Any]:
        url = path.format(**(params or {}))
        r = self.api.call(method, url, token, json=json, query_string=query, **kw)
        body = self.contract.check(method, path, r)
        if expect is not None:
            assert r.status_code == expect, f"{method} {url}: {r.status_code} {body}"
        return r, body

    def problem(
        self, method: str, path: str, token: str | None, expect: int, slug: str, **kw: Any
    ) -> dict[str, Any]:
        """A call that must fail with problem type `slug`."""
        _r, body = self.call(method, path, token, expect=expect, **kw)
        assert problem_type(body) == slug, body
        return dict(body)


# -- fixtures -------------------------------------------------------------------------------


@dataclass
class World:
    tenant: Tenant
    dr: Who  # clinician on the patient's care team
    other_dr: Who  # clinician of the same tenant, not on the care team
    auditor: Who
    patient_id: str
    external_id: str
    note_id: str

    def token(self, role: str | None) -> str | None:
        return {
            None: None,
            "dr": self.dr.token,
            "other_dr": self.other_dr.token,
            "auditor": self.auditor.token,
            "integration": self.tenant.integration.token,
            "admin": self.tenant.admin.token,
        }[role]

    @property
    def params(self) -> dict[str, str]:
        return {
            "patient_id": self.patient_id,
            "note_id": self.note_id,
            "principal_id": self.dr.id,
            "approval_id": str(uuid.uuid4()),
        }


def build_world(stack: StackHelper) -> World:
    t = stack.tenant()
    dr = stack.clinician(t)
    external_id = f"MRN-{secrets.token_hex(6)}"
    pid = stack.patient_for(t, dr, external_id)
    note = stack.note(dr, pid, body="baseline body")
    return World(
        tenant=t,
        dr=dr,
        other_dr=stack.clinician(t),
        auditor=stack.principal(t, Role.AUDITOR),
        patient_id=pid,
        external_id=external_id,
        note_id=str(note["id"]),
    )


@pytest.fixture
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture
def contract(spec: dict[str, Any]) -> Contract:
    return Contract(spec)


@pytest.fixture
def checked(api: Api, contract: Contract) -> Checked:
    return Checked(api, contract)


@pytest.fixture
def world(stack: StackHelper) -> World:
    return build_world(stack)


def stack_for(app: Flask) -> tuple[Api, StackHelper]:
    api = Api(app.test_client())
    return api, StackHelper(app, api)


# Valid inputs per operation, so that a sweep reaches the check it is aimed at.
VALID_BODIES: dict[str, Any] = {
    "createPatient": {"external_id": "MRN-sweep"},
    "putCareTeamMember": {},
    "breakGlass": {"reason": REASON},
    "createNote": NOTE,
    "amendNote": NOTE,
    "setPrincipalBudget": {"per_hour": 5},
    "setPatientDecoy": {"decoy": False},
    "shredPatient": {"reason": "erasure request 1"},
}
VALID_QUERIES: dict[str, dict[str, str]] = {"findPatient": {"external_id": "MRN-none"}}
VALID_HEADERS: dict[str, dict[str, str]] = {"amendNote": {"If-Match": '"1"'}}
# The role that passes the role check of each operation.
ROLE_FOR: dict[str, str] = {
    "getMe": "dr",
    "createPatient": "integration",
    "findPatient": "integration",
    "getPatient": "integration",
    "putCareTeamMember": "integration",
    "deleteCareTeamMember": "integration",
    "breakGlass": "dr",
    "createNote": "dr",
    "listNotes": "dr",
    "readNote": "dr",
    "amendNote": "dr",
    "markNoteEnteredInError": "dr",
    "listNoteVersions": "dr",
    "unlockPrincipal": "admin",
    "setPrincipalBudget": "admin",
    "setPatientDecoy": "admin",
    "shredPatient": "admin",
    "cancelShred": "admin",
    "listApprovals": "admin",
    "approveRequest": "admin",
    "rejectRequest": "admin",
    "listAuditEvents": "auditor",
    "verifyAuditLog": "auditor",
}
CONTENT_OPERATIONS = {"readNote", "listNotes", "listNoteVersions"}
# Every role has hourly limits (service/access/limits.py): these answer 429 past them.
LIMITED_OPERATIONS = {
    "breakGlass",
    "createPatient",
    "findPatient",
    "getPatient",
    "putCareTeamMember",
    "deleteCareTeamMember",
    "createNote",
    "amendNote",
    "markNoteEnteredInError",
    "unlockPrincipal",
    "setPrincipalBudget",
    "setPatientDecoy",
    "shredPatient",
    "cancelShred",
    "approveRequest",
    "rejectRequest",
}


def v1_operations(spec: Mapping[str, Any]) -> list[Operation]:
    return [o for o in operations(spec) if o.path.startswith("/v1/")]


def valid_request(op: Operation) -> dict[str, Any]:
    return {
        "json": VALID_BODIES.get(op.id),
        "query": VALID_QUERIES.get(op.id),
        "headers": VALID_HEADERS.get(op.id),
    }


def random_params(op: Operation) -> dict[str, str]:
    return {name: str(uuid.uuid4()) for name in op.path_params}


# == 1. the document ======================================================================


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate_openapi(spec)


def test_service_serves_this_document(checked: Checked) -> None:
    _r, body = checked.call("GET", "/openapi.yaml", expect=200)
    assert body == spec_text()
    assert yaml.safe_load(body) == load_spec()


def test_every_flask_route_is_documented(app: Flask, spec: dict[str, Any]) -> None:
    documented = {(o.method, o.path) for o in operations(spec)}
    missing = sorted(flask_operations(app) - documented)
    assert not missing, f"routes missing from openapi.yaml: {missing}"


def test_every_documented_operation_is_routed(app: Flask, spec: dict[str, Any]) -> None:
    documented = {(o.method, o.path) for o in operations(spec)}
    unrouted = sorted(documented - flask_operations(app))
    assert not unrouted, f"operations in openapi.yaml that the service does not route: {unrouted}"


def test_path_parameters_are_uuids(app: Flask, contract: Contract) -> None:
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for converter, name in RULE_PARAM_RE.findall(rule.rule):
            if (converter, name) == FHIR_VERSION_PARAM:
                continue
            assert converter == "uuid", f"{rule.rule}: <{name}> is not a <uuid:...>"
        path = openapi_path(rule.rule)
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            declared = contract.parameters(method, path)
            for name in re.findall(r"{([^}]+)}", path):
                param = declared.get(("path", name))
                assert param is not None and param["required"], f"{method} {path}: {name}"
                schema, _ = contract.resolve(param["schema"], "")
                if name == FHIR_VERSION_PARAM[1]:
                    assert schema == {"type": "integer", "minimum": 1}, (path, name, schema)
                    continue
                assert schema == {"type": "string", "format": "uuid"}, (path, name, schema)


def test_v1_needs_a_bearer_token_and_health_does_not(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for op in operations(spec):
        effective = op.spec.get("security", spec["security"])
        secured_ehr = op.path.startswith(EHR_PREFIXES) and op.id not in EHR_PUBLIC
        if op.path.startswith("/v1/") or secured_ehr:
            assert effective == [{"bearerAuth": []}], op
            assert "401" in op.spec["responses"], op
        elif op.path == "/metrics":  # spans every tenant: the scraper's own token
            assert effective == [{"metricsToken": []}], op
        else:
            assert effective == [], op


def test_error_responses_are_declared_uniformly(spec: dict[str, Any]) -> None:
    for op in v1_operations(spec):
        declared = set(op.spec["responses"])
        need = {"401", "403", "503"}
        if op.has_body:
            need |= {"400", "413", "415", "422"}
        if op.path_params:
            need |= {"404"}
        if op.id in CONTENT_OPERATIONS:
            need |= {"404", "410", "429"}
        assert need <= declared, f"{op.id} lacks {sorted(need - declared)}"
        for status, response in op.spec["responses"].items():
            if int(status) >= 400:
                assert response.get("$ref", "").startswith("#/components/responses/"), (
                    f"{op.id} {status}: errors reuse the shared problem responses"
                )
    limited = {o.id for o in v1_operations(spec) if "429" in o.spec["responses"]}
    assert limited == CONTENT_OPERATIONS | LIMITED_OPERATIONS
    for name, response in spec["components"]["responses"].items():
        if name.startswith("Fhir"):
            continue  # OperationOutcome, not problem+json (test_contract_fhir.py)
        schema = response["content"][PROBLEM_JSON]["schema"]
        assert schema["allOf"] == [{"$ref": "#/components/schemas/Problem"}], name
    problem = spec["components"]["schemas"]["Problem"]
    assert problem["required"] == list(PROBLEM_FIELDS)
    assert problem["additionalProperties"] is True
    assert {"request_id", "errors", "scope", "retry_after", "patient_id"} <= set(
        problem["properties"]
    )
    for name in ("TooManyRequests", "ServiceUnavailable"):
        assert "Retry-After" in spec["components"]["responses"][name]["headers"], name


def test_request_bodies_are_closed(spec: dict[str, Any], contract: Contract) -> None:
    for op in v1_operations(spec):
        if op.has_body:
            media = op.spec["requestBody"]["content"]
            assert list(media) == ["application/json"], op.id
            schema, _ = contract.resolve(media["application/json"]["schema"], "/x")
            assert schema["additionalProperties"] is False, op.id


def test_gate_budget_and_unlock_are_documented(spec: dict[str, Any]) -> None:
    text = spec["info"]["description"]
    for needle in (
        "key-release gate",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "RateLimit-Policy",
        "60 distinct patients per sliding hour",
        "200 per sliding day",
        "tenant-wide hourly cap",
        "Re-reading a patient already",
        "Five denials within an hour",
        "POST /v1/admin/principals/{principal_id}/unlock",
        "sealednotes principals unlock ID",
        "Retry-After",
    ):
        assert needle in text, needle
    assert "Retry-After" in spec["components"]["responses"]["TooManyRequests"]["description"]


# Request schemas against the marshmallow schemas: both accept or both reject.
SchemaCase = tuple[str, type[Schema], Any, bool]
SCHEMA_CASES: list[SchemaCase] = [
    ("PatientCreate", ms.PatientCreate, {"external_id": "MRN-1"}, True),
    ("PatientCreate", ms.PatientCreate, {"external_id": "x" * 128}, True),
    ("PatientCreate", ms.PatientCreate, {"external_id": "x" * 129}, False),
    ("PatientCreate", ms.PatientCreate, {"external_id": ""}, False),
    ("PatientCreate", ms.PatientCreate, {"external_id": 5}, False),
    ("PatientCreate", ms.PatientCreate, {}, False),
    ("PatientCreate", ms.PatientCreate, {"external_id": "x", "name": "y"}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "b"}, True),
    ("NoteWrite", ms.NoteWrite, {"kind": "other", "body": "b", "title": None}, True),
    (
        "NoteWrite",
        ms.NoteWrite,
        {
            "kind": "consult",
            "body": "b",
            "title": "t" * 500,
            "encounter_at": "2026-11-20T09:30:00+01:00",
        },
        True,
    ),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "b", "encounter_at": None}, True),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "x" * ms.MAX_BODY_CHARS}, True),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "x" * (ms.MAX_BODY_CHARS + 1)}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": ""}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": 1}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress"}, False),
    ("NoteWrite", ms.NoteWrite, {"body": "b"}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "gossip", "body": "b"}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "b", "title": "t" * 501}, False),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "b", "encounter_at": "today"}, False),
    (
        "NoteWrite",
        ms.NoteWrite,
        {"kind": "progress", "body": "b", "encounter_at": "2026-11-20T09:30:00"},
        False,
    ),
    ("NoteWrite", ms.NoteWrite, {"kind": "progress", "body": "b", "mrn": "x"}, False),
    ("CareTeamPut", ms.CareTeamPut, {}, True),
    ("CareTeamPut", ms.CareTeamPut, {"until": None}, True),
    ("CareTeamPut", ms.CareTeamPut, {"until": "2030-01-01T00:00:00Z"}, True),
    ("CareTeamPut", ms.CareTeamPut, {"until": "soon"}, False),
    ("CareTeamPut", ms.CareTeamPut, {"until": "2030-01-01T00:00:00"}, False),
    ("CareTeamPut", ms.CareTeamPut, {"role": "x"}, False),
    ("BreakGlassCreate", ms.BreakGlassCreate, {"reason": "r" * 20}, True),
    ("BreakGlassCreate", ms.BreakGlassCreate, {"reason": "r" * 2000}, True),
    ("BreakGlassCreate", ms.BreakGlassCreate, {"reason": "r" * 19}, False),
    ("BreakGlassCreate", ms.BreakGlassCreate, {"reason": "r" * 2001}, False),
    ("BreakGlassCreate", ms.BreakGlassCreate, {}, False),
    ("DecoyPut", ms.DecoyPut, {"decoy": True}, True),
    ("DecoyPut", ms.DecoyPut, {"decoy": None}, False),
    ("DecoyPut", ms.DecoyPut, {}, False),
    ("BudgetPut", ms.BudgetPut, {}, True),
    ("BudgetPut", ms.BudgetPut, {"per_hour": 1, "per_day": 1000000}, True),
    ("BudgetPut", ms.BudgetPut, {"per_hour": None, "per_day": None}, True),
    ("BudgetPut", ms.BudgetPut, {"per_hour": 0}, False),
    ("BudgetPut", ms.BudgetPut, {"per_hour": 100001}, False),
    ("BudgetPut", ms.BudgetPut, {"per_day": 1000001}, False),
    ("BudgetPut", ms.BudgetPut, {"per_hour": True}, False),
    ("BudgetPut", ms.BudgetPut, {"per_week": 3}, False),
]


@pytest.mark.parametrize(
    ("name", "schema", "body", "valid"),
    SCHEMA_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(SCHEMA_CASES)],
)
def test_request_schemas_agree_with_marshmallow(
    contract: Contract, name: str, schema: type[Schema], body: Any, valid: bool
) -> None:
    marshmallow_ok = not schema().validate(body)
    spec_errors = contract.schema_errors(pointer("components", "schemas", name), body)
    assert marshmallow_ok is valid, f"marshmallow: {schema().validate(body)}"
    assert (not spec_errors) is valid, f"openapi.yaml: {spec_errors}"


# == 2. responses of a realistic scenario =================================================


def test_every_operation_succeeds_as_documented(
    checked: Checked, world: World, stack: StackHelper
) -> None:
    w, c = world, checked
    p = w.params

    # health
    c.call("GET", "/healthz", expect=200)
    _r, ready = c.call("GET", "/readyz", expect=200)
    assert ready["status"] == "ready"
    _r, metrics = c.call("GET", "/metrics", METRICS_TOKEN, expect=200)
    assert "sealednotes_http_requests_total" in metrics
    c.call("GET", "/openapi.yaml", expect=200)

    # me
    _r, me = c.call("GET", "/v1/me", w.dr.token, expect=200)
    assert (me["id"], me["role"], me["suspended"]) == (w.dr.id, "clinician", False)
    _r, me = c.call("GET", "/v1/me", w.auditor.token, expect=200)
    assert me["role"] == "auditor"

    # patients
    r, patient = c.call(
        "POST",
        "/v1/patients",
        w.tenant.integration.token,
        json={"external_id": "MRN-new"},
        expect=201,
    )
    assert r.headers["Location"].endswith(patient["id"])
    c.call("POST", "/v1/patients", w.dr.token, json={"external_id": "MRN-by-dr"}, expect=403)
    _r, mine = c.call(
        "POST",
        "/v1/patients",
        w.tenant.integration.token,
        json={"external_id": "MRN-by-dr"},
        expect=201,
    )
    c.call(
        "PUT",
        "/v1/patients/{patient_id}/care-team/{principal_id}",
        w.tenant.integration.token,
        params={"patient_id": mine["id"], "principal_id": w.dr.id},
        json={},
        expect=201,
    )
    _r, found = c.call(
        "GET",
        "/v1/patients",
        w.tenant.integration.token,
        query={"external_id": w.external_id},
        expect=200,
    )
    assert found["id"] == w.patient_id
    _r, found = c.call(
        "GET", "/v1/patients", w.dr.token, query={"external_id": "MRN-by-dr"}, expect=200
    )
    assert found["id"] == mine["id"]  # the clinician is on the care team
    _r, got = c.call(
        "GET",
        "/v1/patients/{patient_id}",
        w.tenant.integration.token,
        params={"patient_id": patient["id"]},
        expect=200,
    )
    assert got == patient
    _r, got = c.call(
        "GET",
        "/v1/patients/{patient_id}",
        w.dr.token,
        params={"patient_id": mine["id"]},
        expect=200,
    )
    assert got["id"] == mine["id"]

    # care team: new (201), then changed (200)
    ct = "/v1/patients/{patient_id}/care-team/{principal_id}"
    team = {"patient_id": patient["id"], "principal_id": w.other_dr.id}
    c.call("PUT", ct, w.tenant.integration.token, params=team, json={}, expect=201)
    _r, member = c.call(
        "PUT",
        ct,
        w.tenant.admin.token,
        params=team,
        json={"until": "2030-01-01T00:00:00+00:00"},
        expect=200,
    )
    assert member["until"].startswith("2030-01-01")
    c.call("PUT", ct, w.tenant.integration.token, params=team, expect=200)  # no body at all

    # notes
    notes = "/v1/patients/{patient_id}/notes"
    r, created = c.call(
        "POST",
        notes,
        w.dr.token,
        params=p,
        json={**NOTE, "encounter_at": "2026-11-20T09:30:00+00:00"},
        expect=201,
    )
    assert r.headers["ETag"] == '"1"' and r.headers["Location"] == f"/v1/notes/{created['id']}"
    assert "body" not in created
    r, page = c.call("GET", notes, w.dr.token, params=p, query={"limit": "1"}, expect=200)
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert "RateLimit-Remaining" not in r.headers  # metadata only: no key release
    _r, page2 = c.call(
        "GET",
        notes,
        w.dr.token,
        params=p,
        query={"limit": "1", "cursor": page["next_cursor"]},
        expect=200,
    )
    assert page2["next_cursor"] is None
    assert {n["id"] for n in page["items"] + page2["items"]} == {w.note_id, created["id"]}
    r, full = c.call("GET", notes, w.dr.token, params=p, query={"include": "content"}, expect=200)
    assert all("body" in n for n in full["items"])
    assert r.headers["RateLimit-Policy"] == "60;w=3600, 200;w=86400"

    note = {"note_id": created["id"]}
    r, read = c.call("GET", "/v1/notes/{note_id}", w.dr.token, params=note, expect=200)
    assert (read["title"], read["body"], read["version"]) == (NOTE["title"], NOTE["body"], 1)
    assert r.headers["ETag"] == '"1"'
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(r.headers.keys())
    r, amended = c.call(
        "PUT",
        "/v1/notes/{note_id}",
        w.dr.token,
        params=note,
        json={**NOTE, "body": "Doing better.", "title": None},
        headers={"If-Match": '"1"'},
        expect=200,
    )
    assert r.headers["ETag"] == '"2"' and amended["version"] == 2
    r, versions = c.call("GET", "/v1/notes/{note_id}/versions", w.dr.token, params=note, expect=200)
    assert [v["body"] for v in versions["items"]] == [NOTE["body"], "Doing better."]
    assert "RateLimit-Remaining" in r.headers
    c.call("DELETE", "/v1/notes/{note_id}", w.dr.token, params=note, expect=204)
    c.call("DELETE", "/v1/notes/{note_id}", w.dr.token, params=note, expect=204)  # idempotent
    _r, read = c.call("GET", "/v1/notes/{note_id}", w.dr.token, params=note, expect=200)
    assert read["status"] == "entered-in-error"

    # break-glass: a clinician off the care team opens the patient, then reads
    _r, glass = c.call(
        "POST",
        "/v1/patients/{patient_id}/break-glass",
        w.other_dr.token,
        params=p,
        json={"reason": REASON},
        expect=201,
    )
    assert glass["patient_id"] == w.patient_id and glass["remaining_today"] == 2
    c.call("GET", "/v1/notes/{note_id}", w.other_dr.token, params=p, expect=200)

    # admin: lowering a budget is immediate; raising it waits for a second admin
    admin2 = stack.principal(w.tenant, Role.ADMIN)
    principal = {"principal_id": w.dr.id}
    _r, target = c.call(
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        w.tenant.admin.token,
        params=principal,
        json={"per_hour": 10, "per_day": None},
        expect=200,
    )
    assert (target["release_per_hour"], target["release_per_day"]) == (10, None)
    _r, me = c.call("GET", "/v1/me", w.dr.token, expect=200)
    assert me["budget"]["hour"]["limit"] == 10
    r, pending = c.call(
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        w.tenant.admin.token,
        params=principal,
        json={"per_hour": 90},
        expect=202,
    )
    approval = {"approval_id": pending["approval"]["id"]}
    assert r.headers["Location"].endswith(approval["approval_id"])
    _r, listed = c.call(
        "GET", "/v1/admin/approvals", admin2.token, query={"status": "pending"}, expect=200
    )
    assert [a["id"] for a in listed["items"]] == [approval["approval_id"]]
    c.call(  # not by the requester itself
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        w.tenant.admin.token,
        params=approval,
        expect=403,
    )
    _r, decided = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        admin2.token,
        params=approval,
        expect=200,
    )
    assert decided["approval"]["status"] == "approved"
    assert decided["result"]["release_per_hour"] == 90
    _r, me = c.call("GET", "/v1/me", w.dr.token, expect=200)
    assert me["budget"]["hour"]["limit"] == 90
    _r, pending = c.call(
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        w.tenant.admin.token,
        params=principal,
        json={"per_day": 900},
        expect=202,
    )
    _r, rejected = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/reject",
        admin2.token,
        params={"approval_id": pending["approval"]["id"]},
        expect=200,
    )
    assert rejected["approval"]["status"] == "rejected" and rejected["result"] == {}
    _r, unlocked = c.call(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        w.tenant.admin.token,
        params=principal,
        expect=200,
    )
    assert unlocked["suspended"] is False
    decoy = "/v1/admin/patients/{patient_id}/decoy"
    _r, flag = c.call(
        "PUT", decoy, w.tenant.admin.token, params=team, json={"decoy": True}, expect=200
    )
    assert flag == {"patient_id": patient["id"], "decoy": True}
    _r, pending = c.call(  # disarming waits for a second admin
        "PUT", decoy, w.tenant.admin.token, params=team, json={"decoy": False}, expect=202
    )
    assert pending["approval"]["kind"] == "decoy-clear"

    # care team removal last: the clinician loses access
    c.call("DELETE", ct, w.tenant.integration.token, params=team, expect=204)

    # audit: the log of all of the above, filtered and paged; it carries no health data
    events = "/v1/audit/events"
    _r, log = c.call("GET", events, w.auditor.token, expect=200)
    text = json.dumps(log)
    for secret in (w.external_id, "MRN-new", NOTE["body"], "Doing better.", "baseline body"):
        assert secret not in text
    _r, page = c.call(
        "GET",
        events,
        w.auditor.token,
        query={
            "patient_id": w.patient_id,
            "principal_id": w.dr.id,
            "action": "note.read",
            "outcome": "granted",
            "since": "2000-01-01T00:00:00+00:00",
            "until": "2999-01-01T00:00:00Z",
            "limit": "1",
        },
        expect=200,
    )
    assert [e["action"] for e in page["items"]] == ["note.read"] and page["next_cursor"]
    _r, page2 = c.call(
        "GET",
        events,
        w.auditor.token,
        query={"action": "note.read", "cursor": page["next_cursor"]},
        expect=200,
    )
    assert all(e["id"] > page["items"][0]["id"] for e in page2["items"])
    _r, report = c.call("GET", "/v1/audit/verify", w.auditor.token, expect=200)
    assert report["ok"] is True and report["checked"] >= len(log["items"])

    # crypto-shredding, last: two admins; cancellable (by two admins) until the key goes
    _r, pending = c.call(
        "POST",
        "/v1/admin/patients/{patient_id}/shred",
        w.tenant.admin.token,
        params=team,
        json={"reason": "erasure request 7"},
        expect=202,
    )
    _r, decided = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        admin2.token,
        params={"approval_id": pending["approval"]["id"]},
        expect=200,
    )
    assert decided["result"]["patient_id"] == patient["id"]
    _r, pending = c.call(
        "DELETE", "/v1/admin/patients/{patient_id}/shred", admin2.token, params=team, expect=202
    )
    assert pending["approval"]["kind"] == "shred-cancel"

    ok = {(m, path) for m, path, status in c.contract.seen if 200 <= status < 300}
    documented = {
        (o.method, o.path)
        for o in operations(c.contract.spec)
        if not o.path.startswith(EHR_PREFIXES)
    }
    missing = sorted(documented - ok)
    assert not missing, f"operations never exercised with success: {missing}"


def test_unauthenticated_calls_get_401_everywhere(checked: Checked, spec: dict[str, Any]) -> None:
    for op in v1_operations(spec):
        kw = valid_request(op)
        for header in (None, "Bearer snt_unknown", "Basic dXNlcjpwdw==", "Bearer", "snt_x"):
            headers = dict(kw["headers"] or {})
            if header:
                headers["Authorization"] = header
            r, body = checked.call(
                op.method,
                op.path,
                params=random_params(op),
                json=kw["json"],
                query=kw["query"],
                headers=headers,
                expect=401,
            )
            assert problem_type(body) == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_role_gets_403_everywhere(
    checked: Checked, world: World, spec: dict[str, Any]
) -> None:
    for op in v1_operations(spec):
        if op.id == "getMe":
            continue  # any role
        kw = valid_request(op)
        wrong = "dr" if ROLE_FOR[op.id] == "auditor" else "auditor"
        checked.problem(
            op.method,
            op.path,
            world.token(wrong),
            403,
            "forbidden",
            params=random_params(op),
            json=kw["json"],
            query=kw["query"],
            headers=kw["headers"],
        )
    # and the finer role rules
    p = world.params
    checked.problem(
        "POST",
        "/v1/patients/{patient_id}/notes",
        world.tenant.integration.token,
        403,
        "forbidden",
        params=p,
        json=NOTE,
    )
    checked.problem(
        "GET", "/v1/notes/{note_id}", world.tenant.admin.token, 403, "forbidden", params=p
    )
    checked.problem(
        "POST",
        "/v1/patients",
        world.tenant.admin.token,
        403,
        "forbidden",
        json={"external_id": "x"},
    )
    checked.problem(
        "PUT",
        "/v1/patients/{patient_id}/care-team/{principal_id}",
        world.dr.token,
        403,
        "forbidden",
        params=p,
        json={},
    )
    checked.problem(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        world.dr.token,
        403,
        "forbidden",
        params=p,
    )


def test_unknown_or_foreign_resources_get_404(
    checked: Checked, world: World, spec: dict[str, Any], stack: StackHelper
) -> None:
    for op in v1_operations(spec):
        if not op.path_params:
            continue
        kw = valid_request(op)
        common = {"json": kw["json"], "query": kw["query"], "headers": kw["headers"]}
        token = world.token(ROLE_FOR[op.id])
        checked.problem(
            op.method, op.path, token, 404, "not-found", params=random_params(op), **common
        )
        garbled = {name: "not-a-uuid" for name in op.path_params}
        checked.problem(op.method, op.path, token, 404, "not-found", params=garbled, **common)
    # a patient that exists but is not on the caller's care team looks exactly the same
    p = world.params
    for method, path in (
        ("GET", "/v1/patients/{patient_id}/notes"),
        ("GET", "/v1/notes/{note_id}"),
        ("GET", "/v1/notes/{note_id}/versions"),
        ("DELETE", "/v1/notes/{note_id}"),
    ):
        checked.problem(method, path, world.other_dr.token, 404, "not-found", params=p)
    checked.problem(
        "GET",
        "/v1/patients",
        world.other_dr.token,
        404,
        "not-found",
        query={"external_id": world.external_id},
    )
    # another tenant's objects are unknown
    other = stack.tenant()
    checked.problem(
        "GET",
        "/v1/patients",
        other.integration.token,
        404,
        "not-found",
        query={"external_id": world.external_id},
    )
    checked.problem(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        other.admin.token,
        404,
        "not-found",
        params=p,
    )
    checked.problem(
        "PUT",
        "/v1/admin/patients/{patient_id}/decoy",
        other.admin.token,
        404,
        "not-found",
        params=p,
        json={"decoy": True},
    )
    # unknown path: no operation to check against, only the shared component
    r = checked.api.get("/v1/nothing-here", world.dr.token)
    assert r.status_code == 404
    checked.contract.check_component("NotFound", r)


def test_undocumented_methods_get_405_with_allow(
    checked: Checked, world: World, spec: dict[str, Any]
) -> None:
    for path, item in spec["paths"].items():
        documented = {m.upper() for m in item if m in OPERATION_METHODS}
        url = path.format(**world.params, vid="1")
        r = checked.api.call("PATCH", url, world.dr.token, json={})
        assert r.status_code == 405, (path, r.status_code)
        if path.startswith("/fhir/"):
            body = checked.contract.check_component("FhirMethodNotAllowed", r)
            assert body["issue"][0]["code"] == "not-supported"
        else:
            body = checked.contract.check_component("MethodNotAllowed", r)
            assert problem_type(body) == "method-not-allowed"
        allowed = {m.strip() for m in r.headers["Allow"].split(",")}
        assert documented <= allowed <= documented | IMPLICIT_METHODS, (path, allowed)


def test_conflicts_get_409(checked: Checked, world: World) -> None:
    dup = {"external_id": world.external_id}
    body = checked.problem(
        "POST", "/v1/patients", world.tenant.integration.token, 409, "conflict", json=dup
    )
    assert body["patient_id"] == world.patient_id  # integrations learn the existing id
    # NFKC and trimming: the same identifier written differently is still a duplicate
    spaced = {"external_id": f"  {world.external_id}\t"}
    checked.problem(
        "POST", "/v1/patients", world.tenant.integration.token, 409, "conflict", json=spaced
    )
    # Registration belongs to the EHR: a clinician cannot register (nor probe) identifiers.
    checked.problem("POST", "/v1/patients", world.dr.token, 403, "forbidden", json=dup)
    not_clinician = {"patient_id": world.patient_id, "principal_id": world.auditor.id}
    checked.problem(
        "PUT",
        "/v1/patients/{patient_id}/care-team/{principal_id}",
        world.tenant.integration.token,
        409,
        "conflict",
        params=not_clinician,
        json={},
    )


def test_amend_preconditions_428_412_400(checked: Checked, world: World) -> None:
    c, p, tok = checked, world.params, world.dr.token
    path = "/v1/notes/{note_id}"
    c.problem("PUT", path, tok, 428, "precondition-required", params=p, json=NOTE)
    c.problem(
        "PUT",
        path,
        tok,
        412,
        "precondition-failed",
        params=p,
        json=NOTE,
        headers={"If-Match": '"7"'},
    )
    for bad in ('W/"1"', "*", "1", '"one"', '"1", "2"', '"1234567890"'):
        c.problem(
            "PUT", path, tok, 400, "bad-request", params=p, json=NOTE, headers={"If-Match": bad}
        )
    c.call("PUT", path, tok, params=p, json=NOTE, headers={"If-Match": ' "1" '}, expect=200)
    c.problem(
        "PUT",
        path,
        tok,
        412,
        "precondition-failed",
        params=p,
        json=NOTE,
        headers={"If-Match": '"1"'},
    )


def second_admin_approves(c: Checked, stack: StackHelper, tenant: Tenant, body: Any) -> Any:
    """A 202's request, approved by another admin of the tenant."""
    admin2 = stack.principal(tenant, Role.ADMIN)
    _r, decided = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        admin2.token,
        params={"approval_id": body["approval"]["id"]},
        expect=200,
    )
    assert decided["approval"]["status"] == "approved"
    return decided["result"]


def test_shredded_patient_gets_410(
    checked: Checked, world: World, stack: StackHelper, db_url: str
) -> None:
    c, p, tok = checked, world.params, world.dr.token
    _r, pending = c.call(
        "POST",
        "/v1/admin/patients/{patient_id}/shred",
        world.tenant.admin.token,
        params=p,
        json={"reason": "erasure request 42"},
        expect=202,
    )
    shredded = second_admin_approves(c, stack, world.tenant, pending)
    assert shredded["patient_id"] == world.patient_id
    c.problem(
        "POST",
        "/v1/admin/patients/{patient_id}/shred",
        world.tenant.admin.token,
        409,
        "conflict",
        params=p,
        json={"reason": "erasure request 42"},
    )
    c.problem("GET", "/v1/notes/{note_id}", tok, 410, "gone", params=p)
    c.problem("GET", "/v1/notes/{note_id}/versions", tok, 410, "gone", params=p)
    c.problem("GET", "/v1/patients/{patient_id}/notes", tok, 410, "gone", params=p)
    c.problem("POST", "/v1/patients/{patient_id}/notes", tok, 410, "gone", params=p, json=NOTE)
    c.problem(
        "PUT",
        "/v1/notes/{note_id}",
        tok,
        410,
        "gone",
        params=p,
        json=NOTE,
        headers={"If-Match": '"1"'},
    )
    c.problem("DELETE", "/v1/notes/{note_id}", tok, 410, "gone", params=p)


def test_decoy_suspends_then_two_admins_unlock(
    checked: Checked, world: World, stack: StackHelper
) -> None:
    c, p = checked, world.params
    c.call(
        "PUT",
        "/v1/admin/patients/{patient_id}/decoy",
        world.tenant.admin.token,
        params=p,
        json={"decoy": True},
        expect=200,
    )
    c.problem("GET", "/v1/notes/{note_id}", world.dr.token, 403, "account-suspended", params=p)
    c.problem("GET", "/v1/me", world.dr.token, 403, "account-suspended")
    c.problem("POST", "/v1/patients", world.dr.token, 403, "account-suspended", json={"x": 1})
    _r, pending = c.call(  # suspended by a decoy: one admin is not enough
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        world.tenant.admin.token,
        params=p,
        expect=202,
    )
    c.problem("GET", "/v1/me", world.dr.token, 403, "account-suspended")
    assert second_admin_approves(c, stack, world.tenant, pending)["suspended"] is False
    c.call("GET", "/v1/me", world.dr.token, expect=200)


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


# == 3. malformed requests ================================================================


SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    428: "precondition-required",
}


@dataclass(frozen=True)
class Bad:
    """A malformed request, the operation it targets and the status it must get."""

    name: str
    method: str
    path: str
    expect: int
    role: str | None = "dr"
    json: Any = None
    data: str | bytes | None = None
    content_type: str | None = None
    query: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None  # overrides of the world's path parameters

    @property
    def slug(self) -> str:
        return SLUGS[self.expect]


def bad_note(name: str, body: Any) -> Bad:
    return Bad(name, "POST", NOTES, 422, json=body)


def raw_note(name: str, data: str | bytes, expect: int, content_type: str | None = JSON) -> Bad:
    return Bad(name, "POST", NOTES, expect, data=data, content_type=content_type)


def bad_patient(name: str, body: Any) -> Bad:
    return Bad(name, "POST", "/v1/patients", 422, role="integration", json=body)


def bad_body(name: str, method: str, path: str, role: str, body: Any) -> Bad:
    return Bad(name, method, path, 422, role=role, json=body)


def bad_query(name: str, path: str, role: str, query: Mapping[str, str]) -> Bad:
    return Bad(name, "GET", path, 422, role=role, query=query)


def bad_path(name: str, method: str, path: str, role: str, params: Mapping[str, str]) -> Bad:
    return Bad(name, method, path, 404, role=role, params=params)


def bad_auth(name: str, authorization: str | None) -> Bad:
    headers = {"Authorization": authorization} if authorization is not None else None
    return Bad(name, "GET", "/v1/me", 401, role=None, headers=headers)


def bad_if_match(name: str, value: str | None, expect: int = 400) -> Bad:
    headers = {"If-Match": value} if value is not None else None
    return Bad(name, "PUT", ONE_NOTE, expect, json=NOTE, headers=headers)


TOO_LARGE = "x" * (MAX_REQUEST_BYTES + 1)
IF_1 = {"If-Match": '"1"'}
BAD_REQUESTS: list[Bad] = [
    # not JSON, not an object, not JSON at all
    raw_note("invalid-json", '{"kind": "progress", "body": "' + SENTINEL, 400),
    raw_note("invalid-utf8", b'{"kind": "progress", "body": "\xff\xfe"}', 400),
    raw_note("json-null", "null", 400),
    bad_note("json-array", [SENTINEL]),
    bad_patient("json-string", SENTINEL),
    raw_note("wrong-content-type", json.dumps(NOTE), 415, "text/plain"),
    raw_note("form-content-type", "kind=progress&body=" + SENTINEL, 415, "multipart/form-data"),
    raw_note("no-content-type", json.dumps(NOTE), 415, None),
    Bad("no-content-type-care-team", "PUT", CARE_TEAM, 415, role="integration", data="{}"),
    # sizes
    bad_note("body-over-1MiB-chars", {"kind": "progress", "body": "x" * (ms.MAX_BODY_CHARS + 1)}),
    raw_note("raw-over-8MiB", TOO_LARGE, 413),
    Bad(
        "raw-over-8MiB-amend", "PUT", ONE_NOTE, 413, data=TOO_LARGE, content_type=JSON, headers=IF_1
    ),
    bad_note("title-too-long", {**NOTE, "title": "t" * 501}),
    bad_patient("external-id-too-long", {"external_id": SENTINEL * 20}),
    # fields: unknown, missing, wrong type, bad value
    bad_note("unknown-field", {**NOTE, "mrn": SENTINEL}),
    bad_patient("unknown-field-patient", {"external_id": "x", "ssn": SENTINEL}),
    bad_body("unknown-field-budget", "PUT", BUDGET, "admin", {"per_week": 1}),
    bad_note("missing-body-field", {"kind": "progress"}),
    bad_patient("missing-external-id", {}),
    bad_body("missing-decoy", "PUT", DECOY, "admin", {}),
    bad_note("wrong-type-body", {"kind": "progress", "body": 12345}),
    bad_note("wrong-type-title", {**NOTE, "title": ["t"]}),
    bad_patient("wrong-type-external-id", {"external_id": [1]}),
    bad_body("null-decoy", "PUT", DECOY, "admin", {"decoy": None}),
    bad_note("bad-kind", {"kind": SENTINEL, "body": "b"}),
    bad_note("bad-encounter-at", {**NOTE, "encounter_at": SENTINEL}),
    bad_note("naive-encounter-at", {**NOTE, "encounter_at": "2026-11-20T09:30:00"}),
    bad_body("bad-until", "PUT", CARE_TEAM, "integration", {"until": SENTINEL}),
    bad_body("budget-zero", "PUT", BUDGET, "admin", {"per_hour": 0}),
    bad_body("budget-too-big", "PUT", BUDGET, "admin", {"per_day": 10**7}),
    bad_body("short-break-glass-reason", "POST", BREAK_GLASS, "other_dr", {"reason": "urgent"}),
    bad_body("missing-break-glass-reason", "POST", BREAK_GLASS, "other_dr", {}),
    # path parameters that are not UUIDs
    bad_path("bad-uuid-note", "GET", ONE_NOTE, "dr", {"note_id": SENTINEL}),
    bad_path("bad-uuid-patient", "GET", NOTES, "dr", {"patient_id": "1234"}),
    bad_path("bad-uuid-versions", "GET", ONE_NOTE + "/versions", "dr", {"note_id": "x" * 40}),
    bad_path(
        "bad-uuid-principal",
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        "admin",
        {"principal_id": "0000"},
    ),
    # query parameters
    bad_query("limit-zero", NOTES, "dr", {"limit": "0"}),
    bad_query("limit-too-big", NOTES, "dr", {"limit": "101"}),
    bad_query("limit-not-int", NOTES, "dr", {"limit": SENTINEL}),
    bad_query("limit-huge", NOTES, "dr", {"limit": "9" * 5000}),
    bad_query("bad-cursor", NOTES, "dr", {"cursor": SENTINEL}),
    bad_query("bad-cursor-b64", NOTES, "dr", {"cursor": "bm90LWEtY3Vyc29y"}),
    bad_query("bad-cursor-non-ascii", NOTES, "dr", {"cursor": "\u00e9t\u00e9"}),
    bad_query("bad-include", NOTES, "dr", {"include": SENTINEL}),
    bad_query("empty-include", NOTES, "dr", {"include": ""}),
    bad_query("missing-external-id-query", "/v1/patients", "integration", {}),
    bad_query("empty-external-id-query", "/v1/patients", "integration", {"external_id": ""}),
    bad_query(
        "long-external-id-query", "/v1/patients", "integration", {"external_id": SENTINEL * 20}
    ),
    bad_query("audit-bad-patient-id", AUDIT, "auditor", {"patient_id": SENTINEL}),
    bad_query("audit-bad-principal-id", AUDIT, "auditor", {"principal_id": "42"}),
    bad_query("audit-bad-action", AUDIT, "auditor", {"action": "DROP TABLE " + SENTINEL}),
    bad_query("audit-bad-outcome", AUDIT, "auditor", {"outcome": SENTINEL}),
    bad_query("audit-bad-since", AUDIT, "auditor", {"since": SENTINEL}),
    bad_query("audit-naive-until", AUDIT, "auditor", {"until": "2026-01-01T00:00:00"}),
    bad_query("audit-limit-too-big", AUDIT, "auditor", {"limit": "1001"}),
    bad_query("audit-bad-cursor", AUDIT, "auditor", {"cursor": SENTINEL}),
    bad_query("audit-huge-cursor", AUDIT, "auditor", {"cursor": "9" * 19}),
    # Authorization
    bad_auth("no-authorization", None),
    bad_auth("empty-authorization", ""),
    bad_auth("basic-authorization", "Basic " + SENTINEL),
    bad_auth("bearer-without-token", "Bearer "),
    bad_auth("bearer-too-long", "Bearer " + "x" * 201),
    bad_auth("bearer-unknown", "Bearer snt_" + SENTINEL),
    bad_auth("token-without-scheme", SENTINEL),
    # If-Match
    bad_if_match("if-match-missing", None, 428),
    bad_if_match("if-match-weak", 'W/"1"'),
    bad_if_match("if-match-star", "*"),
    bad_if_match("if-match-unquoted", "1"),
    bad_if_match("if-match-list", '"1", "2"'),
    bad_if_match("if-match-garbage", SENTINEL),
]


def send_bad(checked: Checked, world: World, bad: Bad) -> None:
    params = {**world.params, **(bad.params or {})}
    kw: dict[str, Any] = {"json": bad.json, "query": bad.query, "headers": dict(bad.headers or {})}
    if bad.data is not None:
        kw["data"] = bad.data
    if bad.content_type is not None:
        kw["content_type"] = bad.content_type
    r, body = checked.call(bad.method, bad.path, world.token(bad.role), params=params, **kw)
    assert r.status_code == bad.expect, body
    assert problem_type(body) == bad.slug, body
    assert SENTINEL not in r.get_data(as_text=True), f"the error echoes the input: {body}"
    if bad.expect == 422:
        assert body["errors"], body


def test_malformed_requests_get_a_problem(
    checked: Checked, world: World, subtests: pytest.Subtests
) -> None:
    """One world for all cases (they change nothing); each case reports on its own."""
    assert len({b.name for b in BAD_REQUESTS}) == len(BAD_REQUESTS)
    for bad in BAD_REQUESTS:
        with subtests.test(bad.name):
            send_bad(checked, world, bad)


def test_a_well_formed_request_id_is_echoed(checked: Checked) -> None:
    r, body = checked.call("GET", "/v1/me", headers={"X-Request-Id": "trace-42.a_b"}, expect=401)
    assert r.headers["X-Request-Id"] == body["request_id"] == "trace-42.a_b"
    r, body = checked.call(
        "GET", "/v1/me", headers={"X-Request-Id": "<" + SENTINEL + ">"}, expect=401
    )
    assert SENTINEL not in r.headers["X-Request-Id"] and uuid.UUID(body["request_id"])


def test_sweep_body_errors_on_every_body_operation(
    checked: Checked, world: World, spec: dict[str, Any]
) -> None:
    for op in v1_operations(spec):
        if not op.has_body:
            continue
        token = world.token(ROLE_FOR[op.id])
        headers = VALID_HEADERS.get(op.id)
        for data, content_type, expect, slug in (
            ("{", "application/json", 400, "bad-request"),
            ("[]", "application/json", 422, "validation-failed"),
            ('{"' + SENTINEL + '": 1}', "text/plain", 415, "unsupported-media-type"),
            ("x" * (MAX_REQUEST_BYTES + 1), "application/json", 413, "payload-too-large"),
        ):
            body = checked.problem(
                op.method,
                op.path,
                token,
                expect,
                slug,
                params=world.params,
                data=data,
                content_type=content_type,
                headers=headers,
            )
            assert SENTINEL not in json.dumps(body)


# == 4. service bugs found while writing the contract (fail until fixed) ====================
#
# Each test asserts the correct behaviour with a message naming the faulty code and a fix,
# then checks the response against the contract like every other test.


def unchecked(
    checked: Checked,
    method: str,
    path: str,
    token: str | None,
    *,
    params: Mapping[str, str] | None = None,
    **kw: Any,
) -> TestResponse:
    return checked.api.call(method, path.format(**(params or {})), token, **kw)


def assert_fixed(
    checked: Checked,
    method: str,
    path: str,
    r: TestResponse,
    expected: tuple[int, ...],
    bug: str,
) -> None:
    assert r.status_code in expected, (
        f"BUG: {method} {path} answers {r.status_code} "
        f"{r.get_data(as_text=True)[:300]!r}, expected one of {expected}. {bug}"
    )
    checked.contract.check(method, path, r)


def test_bug_lone_surrogate_in_note_is_not_a_500(checked: Checked, world: World) -> None:
    raw = '{"kind": "progress", "title": "t", "body": "x\\ud800"}'
    r = unchecked(
        checked,
        "POST",
        NOTES,
        world.dr.token,
        params=world.params,
        data=raw,
        content_type="application/json",
    )
    assert_fixed(
        checked,
        "POST",
        NOTES,
        r,
        (422,),
        (
            "A note body with a lone UTF-16 surrogate escape is valid JSON, but "
            "notes `_encode` calls .encode('utf-8'), which raises UnicodeEncodeError "
            "(unhandled: 500). Fix: reject strings that are not encodable as UTF-8 in "
            "service/schemas.py (a validator on every String field), so the client gets a 422."
        ),
    )


def test_bug_lone_surrogate_in_external_id_is_not_a_500(checked: Checked, world: World) -> None:
    raw = '{"external_id": "MRN\\udfff"}'
    r = unchecked(
        checked,
        "POST",
        "/v1/patients",
        world.tenant.integration.token,
        data=raw,
        content_type="application/json",
    )
    assert_fixed(
        checked,
        "POST",
        "/v1/patients",
        r,
        (422,),
        (
            "the Vault adapter's blind_index calls value.encode('utf-8') on an external_id with a "
            "lone surrogate: UnicodeEncodeError (unhandled: 500). Fix: the same UTF-8 validator on "
            "PatientCreate.external_id in service/schemas.py."
        ),
    )


def test_bug_nul_in_break_glass_reason_is_not_a_500(checked: Checked, world: World) -> None:
    path = "/v1/patients/{patient_id}/break-glass"
    body = {"reason": REASON + "\u0000"}
    r = unchecked(checked, "POST", path, world.other_dr.token, params=world.params, json=body)
    assert_fixed(
        checked,
        "POST",
        path,
        r,
        (422,),
        (
            "PostgreSQL text cannot hold U+0000: psycopg raises DataError in "
            "PatientsRepository.insert_break_glass (called from PatientsService.break_glass), "
            "which Store.transaction does not translate (unhandled: 500). Fix: reject control "
            "characters in BreakGlassCreate.reason (service/schemas.py:51), or translate "
            "psycopg.DataError into a 422."
        ),
    )


def test_bug_deeply_nested_json_is_not_a_500(checked: Checked, world: World) -> None:
    r = unchecked(
        checked,
        "POST",
        NOTES,
        world.dr.token,
        params=world.params,
        data="[" * 100_000,
        content_type="application/json",
    )
    assert_fixed(
        checked,
        "POST",
        NOTES,
        r,
        (400,),
        (
            "json.loads raises RecursionError on deep nesting, and request.get_json(silent=True) "
            "only swallows ValueError: service/api/__init__.py:56 json_body (unhandled: 500). Fix: "
            "catch RecursionError there and raise BadRequest('The body is not valid JSON')."
        ),
    )


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
def test_bug_encounter_at_outside_years_1_to_9999_utc_is_not_a_500(
    checked: Checked, world: World, when: str
) -> None:
    body = {**NOTE, "encounter_at": when}
    r = unchecked(checked, "POST", NOTES, world.dr.token, params=world.params, json=body)
    assert_fixed(
        checked,
        "POST",
        NOTES,
        r,
        (422,),
        (
            f"encounter_at={when} is valid RFC 3339 but outside years 1..9999 once in UTC: "
            "PostgreSQL stores it, then psycopg cannot load the RETURNING row of "
            "NotesRepository.insert_note "
            "(DataError 'timestamp too large/small', unhandled: 500). Fix: in "
            "service/schemas.py:43 check that value.astimezone(timezone.utc) succeeds (or "
            "bound the year) -> 422."
        ),
    )


def test_bug_break_glass_disabled_is_not_a_500(make_app: AppFactory, contract: Contract) -> None:
    app = make_app(budgets=Budgets(break_glass_per_day=0))  # SEALEDNOTES_BREAK_GLASS_PER_DAY=0
    api, stack = stack_for(app)
    c = Checked(api, contract)
    t = stack.tenant()
    dr = stack.clinician(t)
    params = {"patient_id": stack.patient(t)}
    path = "/v1/patients/{patient_id}/break-glass"
    r = unchecked(c, "POST", path, dr.token, params=params, json={"reason": REASON})
    assert_fixed(
        c,
        "POST",
        path,
        r,
        (403, 429),
        (
            "config.py accepts SEALEDNOTES_BREAK_GLASS_PER_DAY=0 (minimum=0), but then every "
            "break-glass computes Retry-After from `opened[0]` of an empty list in "
            "break_glass (IndexError, unhandled: 500). Fix: when nothing was opened, "
            "raise Forbidden('Break-glass is disabled') or use retry_after=86400."
        ),
    )


def test_bug_metrics_content_type_has_one_charset(checked: Checked) -> None:
    r, _ = checked.call("GET", "/metrics", METRICS_TOKEN, expect=200)
    content_type = r.headers["Content-Type"]
    assert content_type.count("charset=") == 1, (
        f"BUG: /metrics answers Content-Type {content_type!r}: the charset parameter twice, "
        "which RFC 6838 forbids. service/api/health.py:36 passes CONTENT_TYPE_LATEST as "
        "`mimetype=` and Flask appends its own charset. Fix: "
        "Response(..., content_type=CONTENT_TYPE_LATEST)."
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/admin/principals/{principal_id}/budget", {"per_hour": 1.5}),
        ("/v1/admin/principals/{principal_id}/budget", {"per_day": "7"}),
        ("/v1/admin/patients/{patient_id}/decoy", {"decoy": "yes"}),
        ("/v1/admin/patients/{patient_id}/decoy", {"decoy": 1}),
    ],
)
def test_bug_bodies_are_not_type_coerced(
    checked: Checked, world: World, path: str, body: dict[str, Any]
) -> None:
    r = unchecked(checked, "PUT", path, world.tenant.admin.token, params=world.params, json=body)
    assert_fixed(
        checked,
        "PUT",
        path,
        r,
        (422,),
        (
            f"{body} is not an integer/boolean, yet marshmallow coerces it (1.5 silently "
            "truncated to 1, '7' to 7, 'yes' and 1 to true): the service accepts bodies the "
            "contract rejects. "
            "service/schemas.py:55-64. Fix: fields.Integer(strict=True) and "
            "fields.Boolean(truthy={True}, falsy={False})."
        ),
    )


def test_bug_blank_external_id_is_rejected(checked: Checked, world: World) -> None:
    body = {"external_id": " \t "}
    r = unchecked(checked, "POST", "/v1/patients", world.tenant.integration.token, json=body)
    assert_fixed(
        checked,
        "POST",
        "/v1/patients",
        r,
        (422,),
        (
            "The length check (service/schemas.py:32) runs before normalize_external_id "
            "(patients) trims the value to '', so a patient is registered under the "
            "blind index of the empty string and every other blank identifier then collides with "
            "it (409). Fix: validate the normalized value (non-empty after NFKC + strip) in "
            "PatientCreate and in GET /v1/patients?external_id=."
        ),
    )


def test_bug_patient_location_header_resolves(checked: Checked, world: World) -> None:
    r, _ = checked.call(
        "POST",
        "/v1/patients",
        world.tenant.integration.token,
        json={"external_id": "MRN-loc"},
        expect=201,
    )
    follow = checked.api.get(r.headers["Location"], world.tenant.integration.token)
    assert follow.status_code != 404, (
        f"BUG: POST /v1/patients answers Location: {r.headers['Location']}, a URL the service "
        "does not route (404): service/api/patients.py:30. Fix: drop the Location header, or "
        "add GET /v1/patients/{patient_id} (and document it in openapi.yaml)."
    )


def fake_response(status: int, body: Any, mimetype: str, **headers: str) -> TestResponse:
    """A response from a throwaway app, to test the checker itself."""
    fake = Flask("fake")

    @fake.get("/")
    def _answer() -> Response:
        r = Response(json.dumps(body), status=status, mimetype=mimetype)
        r.headers.update({"X-Request-Id": "r1", "Cache-Control": "no-store", **headers})
        return r

    return fake.test_client().get("/")


def test_the_checker_catches_violations(contract: Contract) -> None:
    ok = {"status": "ok"}
    throttled = {
        "type": "https://sealednotes.dev/problems/key-release-budget-exceeded",
        "title": "Key release budget exhausted",
        "status": 429,
        "detail": "d",
        "request_id": "r1",
        "scope": "break-glass-day",
        "retry_after": 5,
    }
    cases: list[tuple[str, str, TestResponse, str]] = [
        ("GET", "/healthz", fake_response(418, ok, "application/json"), "not declared"),
        ("GET", "/healthz", fake_response(200, ok, "text/html"), "media type"),
        ("GET", "/healthz", fake_response(200, {**ok, "x": 1}, "application/json"), "not match"),
        ("GET", "/v1/me", fake_response(401, {"status": 401}, PROBLEM_JSON), "WWW-Authenticate"),
        (
            "GET",
            "/v1/me",
            fake_response(401, {"type": "x"}, PROBLEM_JSON, **{"WWW-Authenticate": "Bearer"}),
            "not match",
        ),
        (
            "POST",
            "/v1/patients/{patient_id}/break-glass",
            fake_response(429, throttled, PROBLEM_JSON, **{"Retry-After": "soon"}),
            "Retry-After='soon' not an integer",
        ),
        (
            "POST",
            "/v1/patients/{patient_id}/break-glass",
            fake_response(
                429, {**throttled, "scope": "forever"}, PROBLEM_JSON, **{"Retry-After": "5"}
            ),
            "not match",
        ),
    ]
    for method, path, response, message in cases:
        with pytest.raises(AssertionError, match=message):
            contract.check(method, path, response)
    contract.check("GET", "/healthz", fake_response(200, ok, "application/json"))
    contract.check(
        "POST",
        "/v1/patients/{patient_id}/break-glass",
        fake_response(429, throttled, PROBLEM_JSON, **{"Retry-After": "5"}),
    )
