"""The FHIR R4 facade: every resource it returns validates against FHIR models of maintained
libraries (fhir.resources' R4B package, structurally R4 for these resources, and fhirclient's
strict R4 models), and a FHIR client library drives it end to end over real HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirclient.models.bundle import Bundle as ClientBundle
from fhirclient.models.documentreference import DocumentReference as ClientDocumentReference
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from fhirclient.server import FHIRServer
from werkzeug.test import TestResponse

from service.fhir.resources import KIND_CODES, LOINC
from service.models import Role
from tests.conftest import LiveServer
from tests.helpers import Api, StackHelper, Who

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


@pytest.fixture
def fhir(api: Api) -> Fhir:
    return Fhir(api)


def test_every_interaction_answers_valid_fhir(fhir: Fhir, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    pid = stack.patient_for(t, dr, "MRN-FHIR-1")

    cap = fhir("GET", "metadata", None, 200).get_json()
    assert cap["fhirVersion"] == "4.0.1"
    smart = fhir("GET", ".well-known/smart-configuration", None, 200).get_json()
    assert smart["token_endpoint"].endswith("/oauth2/token")

    # Patient: identifier search through the blind index, then read
    for who in (t.integration.token, dr.token):
        found = fhir("GET", "Patient?identifier=urn:oid:1.2.3|MRN-FHIR-1", who, 200).get_json()
        assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == pid
        assert "MRN-FHIR-1" not in json.dumps(found)
    assert (
        fhir("GET", "Patient?identifier=MRN-NOPE", t.integration.token, 200).get_json()["total"]
        == 0
    )
    assert fhir("GET", f"Patient/{pid}", dr.token, 200).get_json()["id"] == pid

    # create: metadata back, content never echoed
    r = fhir(
        "POST",
        "DocumentReference",
        dr.token,
        201,
        resource=doc(
            pid, "Seen today.", context={"period": {"start": "2026-11-20T09:30:00+01:00"}}
        ),
    )
    created = r.get_json()
    nid = created["id"]
    assert r.headers["ETag"] == 'W/"1"' and r.headers["Location"].endswith(
        f"/DocumentReference/{nid}/_history/1"
    )
    assert "description" not in created and "data" not in created["content"][0]["attachment"]
    assert created["meta"]["tag"][0]["code"] == "SUBSETTED"

    # read: content through the gate
    r = fhir("GET", f"DocumentReference/{nid}", dr.token, 200)
    read = r.get_json()
    assert read["description"] == "Visit"
    assert base64.b64decode(read["content"][0]["attachment"]["data"]).decode() == "Seen today."
    assert read["type"]["coding"][0]["code"] == "11506-3" and read["status"] == "current"
    assert read["context"]["period"]["start"].startswith("2026-11-20T08:30:00")
    assert r.headers["RateLimit-Remaining"] == "59" and r.headers["ETag"] == 'W/"1"'

    # update with a weak ETag, as FHIR clients send it
    amended = doc(pid, "Better.", title="Follow-up", id=nid)
    fhir("PUT", f"DocumentReference/{nid}", dr.token, 428, resource=amended)
    fhir(
        "PUT",
        f"DocumentReference/{nid}",
        dr.token,
        400,
        resource=amended,
        headers={"If-Match": "1"},
    )
    r = fhir(
        "PUT",
        f"DocumentReference/{nid}",
        dr.token,
        200,
        resource=amended,
        headers={"If-Match": 'W/"1"'},
    )
    assert r.headers["ETag"] == 'W/"2"' and r.get_json()["docStatus"] == "amended"
    out = fhir(
        "PUT",
        f"DocumentReference/{nid}",
        dr.token,
        412,
        resource=amended,
        headers={"If-Match": 'W/"1"'},
    ).get_json()
    assert out["issue"][0]["code"] == "conflict"
    other = stack.patient_for(t, dr)
    fhir(
        "PUT",
        f"DocumentReference/{nid}",
        dr.token,
        409,
        resource=doc(other, "x"),
        headers={"If-Match": '"2"'},
    )
    fhir(
        "PUT",
        f"DocumentReference/{nid}",
        dr.token,
        400,
        resource=doc(pid, "x", id="0c1d7c52-9d57-4a0e-9a55-1f1f0e0e0e0e"),
        headers={"If-Match": '"2"'},
    )

    # history and vread
    hist = fhir("GET", f"DocumentReference/{nid}/_history", dr.token, 200).get_json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    v1 = fhir("GET", f"DocumentReference/{nid}/_history/1", dr.token, 200).get_json()
    assert base64.b64decode(v1["content"][0]["attachment"]["data"]).decode() == "Seen today."
    fhir("GET", f"DocumentReference/{nid}/_history/3", dr.token, 404)

    # search by patient / subject, paged; _summary=true costs no budget
    fhir("POST", "DocumentReference", dr.token, 201, resource=doc(pid, "Second note."))
    page = fhir("GET", f"DocumentReference?patient={pid}&_count=1", dr.token, 200).get_json()
    assert len(page["entry"]) == 1 and page["link"][1]["relation"] == "next"
    nxt = page["link"][1]["url"].split("/fhir/R4/", 1)[1]
    assert len(fhir("GET", nxt, dr.token, 200).get_json()["entry"]) == 1
    both = fhir("GET", f"DocumentReference?subject=Patient/{pid}", dr.token, 200).get_json()
    assert {e["resource"]["id"] for e in both["entry"]} >= {nid}
    assert all("data" in e["resource"]["content"][0]["attachment"] for e in both["entry"])
    r = fhir("GET", f"DocumentReference?patient={pid}&_summary=true", dr.token, 200)
    assert "RateLimit-Remaining" not in r.headers
    assert all(
        "data" not in e["resource"]["content"][0]["attachment"] for e in r.get_json()["entry"]
    )

    # entered-in-error: DELETE (or an update to that status); the resource stays readable
    fhir("DELETE", f"DocumentReference/{nid}", dr.token, 204)
    assert (
        fhir("GET", f"DocumentReference/{nid}", dr.token, 200).get_json()["status"]
        == "entered-in-error"
    )
    fhir(
        "PUT",
        f"DocumentReference/{nid}",
        dr.token,
        409,
        resource=amended,
        headers={"If-Match": '"2"'},
    )
    second = fhir(
        "POST", "DocumentReference", dr.token, 201, resource=doc(pid, "Wrong patient.")
    ).get_json()
    voided = doc(pid, "Wrong patient.", status="entered-in-error")
    r = fhir(
        "PUT",
        f"DocumentReference/{second['id']}",
        dr.token,
        200,
        resource=voided,
        headers={"If-Match": '"1"'},
    )
    assert r.get_json()["status"] == "entered-in-error"

    # audit events for auditors, as FHIR AuditEvents
    events = fhir("GET", f"AuditEvent?patient={pid}&_count=5", auditor.token, 200).get_json()
    assert len(events["entry"]) == 5 and events["link"][1]["relation"] == "next"
    assert all(e["resource"]["resourceType"] == "AuditEvent" for e in events["entry"])
    fhir(
        "GET",
        "AuditEvent?date=ge2000-01-01T00:00:00Z&date=lt2999-01-01T00:00:00Z",
        auditor.token,
        200,
    )
    fhir("GET", "AuditEvent", dr.token, 403)


def test_kinds_map_to_loinc_document_codes(fhir: Fhir, api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    codes = {kind: code for kind, (code, _) in KIND_CODES.items()}
    for kind, code in [*codes.items(), ("admission", "47039-3"), ("result", "18748-4")]:
        nid = fhir(
            "POST", "DocumentReference", dr.token, 201, resource=doc(pid, kind, code=code)
        ).get_json()["id"]
        assert api.get(f"/v1/notes/{nid}", dr.token).get_json()["kind"] == kind
        back = fhir("GET", f"DocumentReference/{nid}", dr.token, 200).get_json()
        assert back["type"]["coding"][0]["code"] == codes[kind]
    # and a note written through REST reads back with its kind's code
    note = stack.note(dr, pid)
    assert (
        fhir("GET", f"DocumentReference/{note['id']}", dr.token, 200).get_json()["type"]["coding"][
            0
        ]["code"]
        == "11506-3"
    )


BadCase = tuple[str, Callable[[str], dict[str, Any]], int, str | None]
BAD_BODIES: list[BadCase] = [
    ("wrong-resource", lambda p: {**doc(p, "x"), "resourceType": "Patient"}, 422, "resourceType"),
    ("unknown-element", lambda p: {**doc(p, "x"), "text": {"div": "SENTINEL-PHI"}}, 422, "text"),
    (
        "no-subject",
        lambda p: {k: v for k, v in doc(p, "x").items() if k != "subject"},
        422,
        "subject",
    ),
    ("bad-loinc", lambda p: doc(p, "x", code="0000-0"), 422, "type"),
    (
        "not-base64",
        lambda p: {
            **doc(p, "x"),
            "content": [{"attachment": {"contentType": "text/plain", "data": "%%%"}}],
        },
        422,
        "content[0].attachment.data",
    ),
    (
        "not-utf8",
        lambda p: {
            **doc(p, "x"),
            "content": [{"attachment": {"contentType": "text/plain", "data": "/w=="}}],
        },
        422,
        "content[0].attachment.data",
    ),
    (
        "url-attachment",
        lambda p: {
            **doc(p, "x"),
            "content": [{"attachment": {"contentType": "text/plain", "url": "http://x"}}],
        },
        422,
        "content[0].attachment",
    ),
    (
        "pdf",
        lambda p: {
            **doc(p, "x"),
            "content": [{"attachment": {"contentType": "application/pdf", "data": b64("x")}}],
        },
        422,
        "content[0].attachment.contentType",
    ),
    ("control-chars", lambda p: doc(p, "a\x00b"), 422, "content[0].attachment.data"),
    ("title-too-long", lambda p: doc(p, "x", title="t" * 501), 422, "description"),
    (
        "naive-period",
        lambda p: doc(p, "x", context={"period": {"start": "2026-11-20"}}),
        422,
        "context.period.start",
    ),
    ("new-and-void", lambda p: doc(p, "x", status="entered-in-error"), 422, "status"),
    ("unknown-patient", lambda p: doc("0c1d7c52-9d57-4a0e-9a55-1f1f0e0e0e0e", "x"), 404, None),
]


def test_bad_input_gets_an_operation_outcome_never_echoing_it(
    fhir: Fhir, stack: StackHelper
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    for name, make, status, element in BAD_BODIES:
        out = fhir("POST", "DocumentReference", dr.token, status, resource=make(pid)).get_json()
        if element is not None:
            assert element in {e for i in out["issue"] for e in i.get("expression", [])}, (
                name,
                out,
            )
        assert "SENTINEL" not in json.dumps(out)
    fhir(
        "POST", "DocumentReference", dr.token, 400, data='{"resourceType": "Docu', content_type=FHIR
    )
    fhir("POST", "DocumentReference", dr.token, 415, data="x", content_type="text/plain")
    fhir(
        "POST",
        "DocumentReference",
        dr.token,
        201,
        resource=doc(pid, "json too"),
        content_type="application/json",
    )
    fhir("GET", "DocumentReference/not-a-uuid", dr.token, 404)
    fhir("GET", "DocumentReference/0c1d7c52-9d57-4a0e-9a55-1f1f0e0e0e0e", dr.token, 404)
    fhir("GET", "Nothing/here", dr.token, 404)
    r = fhir("PATCH", "DocumentReference", dr.token, 405)
    assert "POST" in r.headers["Allow"]
    fhir("GET", "DocumentReference", dr.token, 400)  # no patient: no unbounded search
    fhir("GET", f"DocumentReference?patient={pid}&status=current", dr.token, 400)
    fhir("GET", f"DocumentReference?patient={pid}&_count=0", dr.token, 422)
    fhir("GET", "Patient?identifier=", t.integration.token, 400)
    r = fhir("GET", "metadata", None, 200)
    fhir("GET", f"Patient/{pid}", None, 401)
    fhir("GET", f"DocumentReference?patient={pid}", t.integration.token, 403)
    fhir("GET", f"DocumentReference?patient={pid}", stack.clinician(t).token, 404)


def test_a_fhir_client_library_creates_reads_searches_and_versions_a_note(
    live_server: Callable[..., LiveServer], base_settings: Any
) -> None:
    server = live_server(workers=1)
    from flask import Flask

    from service.app import create_app

    app: Flask = create_app(base_settings)
    try:
        api = Api(app.test_client())
        stack = StackHelper(app, api)
        t = stack.tenant()
        dr: Who = stack.clinician(t)
        pid = stack.patient_for(t, dr, "MRN-CLIENT-1")
    finally:
        app.extensions["sealednotes"].store.close()

    fhir_server = FHIRServer(None, base_uri=server.url + "/fhir/R4/")
    fhir_server.session.headers["Authorization"] = f"Bearer {dr.token}"
    cap = fhir_server.capabilityStatement
    assert cap.fhirVersion == "4.0.1"

    from fhirclient.models.patient import Patient

    found = list(Patient.where({"identifier": "MRN-CLIENT-1"}).perform_resources_iter(fhir_server))
    assert [p.id for p in found] == [pid]

    note = ClientDocumentReference(doc(pid, "Written by a FHIR client."), strict=True)
    created = note.create(fhir_server)
    assert created is not None
    nid = created["id"]
    read = ClientDocumentReference.read(nid, fhir_server)
    assert read.description == "Visit" and read.meta.versionId == "1"
    assert base64.b64decode(read.content[0].attachment.data).decode() == "Written by a FHIR client."

    read.description = "Visit (amended)"
    read.content[0].attachment.data = b64("Amended by a FHIR client.")
    read.content[0].attachment.size = None
    fhir_server.session.headers["If-Match"] = f'W/"{read.meta.versionId}"'
    read.update(fhir_server)
    del fhir_server.session.headers["If-Match"]

    hits = list(ClientDocumentReference.where({"patient": pid}).perform_resources_iter(fhir_server))
    assert [(d.id, d.description) for d in hits] == [(nid, "Visit (amended)")]
    history = ClientBundle.read_from(f"DocumentReference/{nid}/_history", fhir_server)
    assert [e.resource.meta.versionId for e in history.entry] == ["2", "1"]
    first = ClientDocumentReference.read_from(f"DocumentReference/{nid}/_history/1", fhir_server)
    assert (
        base64.b64decode(first.content[0].attachment.data).decode() == "Written by a FHIR client."
    )
    ClientDocumentReference.read(nid, fhir_server).delete(fhir_server)
    assert ClientDocumentReference.read(nid, fhir_server).status == "entered-in-error"
