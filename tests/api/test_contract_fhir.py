"""Contract tests of the EHR integration operations (/fhir/R4, /oauth2/token) against
openapi.yaml, with the checker of contract.py: every response's status, media type,
body schema and declared headers; every operation succeeds at least once; every secured one
refuses a missing or bogus token with a 401 OperationOutcome."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.access.smart import ASSERTION_TYPE
from service.cli import main as cli
from service.fhir.resources import LOINC
from service.models import Role
from tests.api.contract import (
    EHR_PREFIXES,
    EHR_PUBLIC,
    Checked,
    Contract,
    load_spec,
    operations,
)
from tests.helpers import Api, StackHelper
from tests.integration.test_idp_tokens import cli_env
from tests.oidc import ec_key, public_jwks, signed

FHIR = "application/fhir+json"
DR = "/fhir/R4/DocumentReference"
ONE = DR + "/{note_id}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def doc(patient_id: str, body: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11488-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "description": "Consult",
        "content": [{"attachment": {"contentType": "text/plain", "data": b64(body)}}],
        **extra,
    }


def ehr_operations() -> list[Any]:
    return [o for o in operations(load_spec()) if o.path.startswith(EHR_PREFIXES)]


@pytest.fixture
def checked(api: Api) -> Checked:
    return Checked(api, Contract(load_spec()))


def test_every_ehr_operation_succeeds_as_documented(
    checked: Checked, stack: StackHelper, tmp_path: Path
) -> None:
    c = checked
    t = stack.tenant()
    dr = stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    pid = stack.patient_for(t, dr, "MRN-CONTRACT-1")

    c.call("GET", "/fhir/R4/metadata", expect=200)
    c.call("GET", "/fhir/R4/metadata", query={"_format": "json"}, expect=200)
    c.call("GET", "/fhir/R4/.well-known/smart-configuration", expect=200)
    _r, found = c.call(
        "GET",
        "/fhir/R4/Patient",
        t.integration.token,
        query={"identifier": "MRN-CONTRACT-1"},
        expect=200,
    )
    assert found["entry"][0]["resource"]["id"] == pid
    c.call("GET", "/fhir/R4/Patient/{patient_id}", dr.token, params={"patient_id": pid}, expect=200)

    r, created = c.call(
        "POST", DR, dr.token, data=json.dumps(doc(pid, "Hello")), content_type=FHIR, expect=201
    )
    p = {"note_id": created["id"]}
    c.call("GET", DR, dr.token, query={"patient": pid}, expect=200)
    c.call("GET", DR, dr.token, query={"subject": f"Patient/{pid}", "_summary": "true"}, expect=200)
    c.call("GET", ONE, dr.token, params=p, expect=200)
    c.call(
        "PUT",
        ONE,
        dr.token,
        params=p,
        json=doc(pid, "Hello again", id=created["id"]),
        headers={"If-Match": r.headers["ETag"]},
        expect=200,
    )
    c.call("GET", ONE + "/_history", dr.token, params=p, expect=200)
    c.call("GET", ONE + "/_history/{vid}", dr.token, params={**p, "vid": "2"}, expect=200)
    c.call("DELETE", ONE, dr.token, params=p, expect=204)
    c.call("GET", "/fhir/R4/AuditEvent", auditor.token, query={"patient": pid}, expect=200)

    # SMART Backend Services
    key = ec_key()
    (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(key, "k1", "ES384")))
    out = CliRunner().invoke(
        cli,
        [
            "principals",
            "smart-client",
            t.integration.id,
            "--jwks-file",
            str(tmp_path / "jwks.json"),
        ],
        env=cli_env(stack.services.settings),
    )
    assert out.exit_code == 0, out.output
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": t.integration.id,
        "sub": t.integration.id,
        "aud": "http://localhost/oauth2/token",
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
    }
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed(claims, key, "ES384", "k1"),
    }
    _r, token = c.call("POST", "/oauth2/token", data=form, expect=200)
    c.call("POST", "/oauth2/token", data=form, expect=401)  # replayed
    c.call("POST", "/oauth2/token", data={**form, "grant_type": "password"}, expect=400)
    c.call("POST", "/oauth2/token", json=form, expect=400)
    c.call("GET", "/fhir/R4/Patient", token["access_token"], query={"identifier": "x"}, expect=200)

    ok = {(m, path) for m, path, status in c.contract.seen if 200 <= status < 300}
    missing = sorted({(o.method, o.path) for o in ehr_operations()} - ok)
    assert not missing, f"EHR operations never exercised with success: {missing}"


def test_errors_are_documented_operation_outcomes(checked: Checked, stack: StackHelper) -> None:
    c = checked
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid)
    p = {"note_id": note["id"]}
    unknown = {"note_id": str(uuid.uuid4()), "patient_id": str(uuid.uuid4()), "vid": "1"}

    for op in ehr_operations():
        if op.id in EHR_PUBLIC:
            continue
        for header in (None, "Bearer snt_unknown", "Bearer a.b.c", "Basic eDp5"):
            headers = {"Authorization": header} if header else {}
            r, body = c.call(op.method, op.path, params=unknown, headers=headers, expect=401)
            assert body["issue"][0]["code"] == "login"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    c.call("GET", ONE, t.integration.token, params=p, expect=403)
    c.call("GET", ONE, dr.token, params=unknown, expect=404)
    c.call("GET", ONE + "/_history/{vid}", dr.token, params={**p, "vid": "9"}, expect=404)
    c.call("GET", "/fhir/R4/Patient/{patient_id}", dr.token, params=unknown, expect=404)
    c.call("GET", DR, dr.token, query={"patient": pid, "_format": "xml"}, expect=400)
    c.call("GET", DR, dr.token, query={"patient": pid, "_count": "0"}, expect=422)
    c.call("POST", DR, dr.token, json=doc(pid, "x", status="entered-in-error"), expect=422)
    c.call("POST", DR, dr.token, data="x", content_type="text/plain", expect=415)
    c.call("POST", DR, dr.token, data="{", content_type=FHIR, expect=400)
    c.call("POST", DR, dr.token, data="x" * (9 * 1024 * 1024), content_type=FHIR, expect=413)
    c.call("PUT", ONE, dr.token, params=p, json=doc(pid, "x"), expect=428)
    c.call(
        "PUT", ONE, dr.token, params=p, json=doc(pid, "x"), headers={"If-Match": '"7"'}, expect=412
    )
    c.call("GET", "/fhir/R4/AuditEvent", dr.token, expect=403)
    c.call(
        "GET",
        "/fhir/R4/AuditEvent",
        stack.principal(t, Role.AUDITOR).token,
        query={"date": "ge2026-99-99T00:00:00Z"},
        expect=400,
    )
    r = c.api.get("/fhir/R4/Nothing", dr.token)
    assert r.status_code == 404
    c.contract.check_component("FhirError", r)
