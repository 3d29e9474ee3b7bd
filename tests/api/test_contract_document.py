"""Contract tests, the document itself: openapi.yaml is valid OpenAPI 3.1, served at
/openapi.yaml; every Flask route is documented and every documented operation routed; security
and error responses are declared uniformly; the request schemas accept and reject exactly what
the marshmallow schemas do."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from flask import Flask
from marshmallow import Schema
from openapi_spec_validator import validate as validate_openapi

from service import schemas as ms
from tests.api.contract import (
    EHR_PREFIXES,
    EHR_PUBLIC,
    FHIR_VERSION_PARAM,
    IMPLICIT_METHODS,
    PROBLEM_FIELDS,
    PROBLEM_JSON,
    RULE_PARAM_RE,
    Checked,
    Contract,
    flask_operations,
    load_spec,
    openapi_path,
    operations,
    pointer,
    spec_text,
)
from tests.api.contract_world import CONTENT_OPERATIONS, LIMITED_OPERATIONS, v1_operations


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
