"""The FHIR R4 facade: every interaction (capabilities, Patient search and read,
DocumentReference create, read, update, history, vread, search, entered-in-error, AuditEvent
search) answers a resource that validates against FHIR models of maintained libraries, and note
kinds map to LOINC document codes both ways."""

from __future__ import annotations

import base64
import json

from service.fhir.resources import KIND_CODES
from service.models import Role
from tests.helpers import Api, StackHelper
from tests.integration.fhir_facade import Fhir, doc


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
