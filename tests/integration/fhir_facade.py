"""Helpers of the FHIR R4 facade tests (test_fhir_facade_*.py): DocumentReference bodies, and
`Fhir`, which calls /fhir/R4 and validates every answer against FHIR models of maintained
libraries (fhir.resources' R4B package, structurally R4 for these resources, and fhirclient's
strict R4 models)."""

from __future__ import annotations

import base64
import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from werkzeug.test import TestResponse

from service.fhir.resources import LOINC
from tests.helpers import Api

FHIR = "application/fhir+json"
STATUSES = {"current", "superseded", "entered-in-error"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def doc(
    patient_id: str, body: str, *, title: str | None = "Visit", code: str = "11506-3", **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "content": [
            {"attachment": {"contentType": "text/plain; charset=utf-8", "data": b64(body)}}
        ],
        **extra,
    }
    if title is not None:
        out["description"] = title
    return out


def validate(resource: dict[str, Any]) -> dict[str, Any]:
    """Against both libraries' models; plus the value sets those models do not enforce."""
    kind = resource["resourceType"]
    get_fhir_model_class(kind).model_validate(resource)
    FHIRElementFactory.instantiate(kind, resource)  # fhirclient: strict R4 (raises on errors)
    if kind == "Bundle":
        for entry in resource.get("entry", []):
            validate(entry["resource"])
            assert ("request" in entry) == (resource["type"] == "history"), entry.keys()
            assert ("response" in entry) == (resource["type"] == "history"), entry.keys()
    if kind == "DocumentReference":
        assert resource["status"] in STATUSES
        assert resource["docStatus"] in ("final", "amended")
    if kind == "OperationOutcome":
        assert resource["issue"] and all(
            i["severity"] in ("error", "fatal") for i in resource["issue"]
        )
    return resource


class Fhir:
    """Calls /fhir/R4 and checks that every answer is FHIR JSON and valid."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def __call__(
        self, method: str, path: str, token: str | None, expect: int, **kw: Any
    ) -> TestResponse:
        body = kw.pop("resource", None)
        if body is not None:
            kw["data"] = json.dumps(body)
            kw.setdefault("content_type", FHIR)
        r = self.api.call(method, "/fhir/R4/" + path, token, **kw)
        assert r.status_code == expect, (method, path, r.status_code, r.get_data(as_text=True))
        if r.status_code != 204 and not path.startswith(".well-known"):
            assert r.mimetype == FHIR, r.mimetype
            validate(r.get_json())
        return r
