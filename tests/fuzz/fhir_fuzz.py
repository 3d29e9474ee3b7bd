"""Fuzzing the EHR integration operations (/fhir/R4, /oauth2/token): who calls what, and how
generated requests are aimed at real data (harness.py calls these hooks).

A generated DocumentReference rarely carries base64 of valid UTF-8 text for a real patient,
and a generated client assertion is never signed: most of the time (deterministically, by a
crc32 of the generated value) the hooks swap in real ones, so the fuzzer gets past
validation and authentication into the use cases, the gate and the token endpoint.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

from schemathesis.core.parameters import ParameterLocation

from service.access.smart import ASSERTION_TYPE
from service.models import Role
from tests.fuzz.aiming import is_negative_at, pick
from tests.oidc import ec_key, public_jwks, signed

FHIR_OPERATION_ROLES: dict[str, Role | None] = {
    "oauth2Token": None,
    "fhirCapabilities": None,
    "smartConfiguration": None,
    "fhirSearchPatient": Role.INTEGRATION,
    "fhirReadPatient": Role.CLINICIAN,
    "fhirCreateDocumentReference": Role.CLINICIAN,
    "fhirSearchDocumentReference": Role.CLINICIAN,
    "fhirReadDocumentReference": Role.CLINICIAN,
    "fhirUpdateDocumentReference": Role.CLINICIAN,
    "fhirDeleteDocumentReference": Role.CLINICIAN,
    "fhirDocumentReferenceHistory": Role.CLINICIAN,
    "fhirDocumentReferenceVersion": Role.CLINICIAN,
    "fhirSearchAuditEvent": Role.AUDITOR,
}
TOKEN_URLS = ["http://127.0.0.1:8080/oauth2/token", "http://localhost/oauth2/token"]


def _odd(value: object) -> bool:
    return zlib.crc32(repr(value).encode()) % 2 == 1


def prepare(env: Any, integration_id: str) -> None:
    """A registered SMART client for the integration, its key kept for signing."""
    key = ec_key()
    env.extra["smart_key"] = key
    env.extra["client_id"] = env.app.extensions["sealednotes"].smart.register_client(
        integration_id, jwks=public_jwks(key, "k1", "ES384")
    )
    env.extra["fhir_version"] = 1


def assertion(env: Any) -> str:
    now = int(datetime.now(UTC).timestamp())
    client_id = env.extra["client_id"]
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URLS,
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
    }
    return signed(claims, env.extra["smart_key"], "ES384", "k1")


def document(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "description": "Visit",
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"ok").decode()}}
        ],
    }


def _seed(value: object) -> str:
    """A UUID derived from a generated value, for `pick`: the same case is aimed the same
    way on every run (seeded generation, seeded aim), whatever the value's type."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, repr(value)))


def _void_a_fresh_note(env: Any, case: Any) -> None:
    """Voiding is final: aimed at the shared note, it would turn every later update into 409
    and leave the operation without a 2xx in the runs whose voiding comes early."""
    if (case.path_parameters or {}).get("note_id") == env.notes[0]:
        case.path_parameters["note_id"] = env.extra["fresh_note"]()


def aim(env: Any, case: Any, op: str) -> None:
    body_positive = not is_negative_at(case, ParameterLocation.BODY)
    query_positive = not is_negative_at(case, ParameterLocation.QUERY)
    if op == "oauth2Token" and body_positive and isinstance(case.body, dict):
        if _odd(case.body):
            case.body = {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion(env),
            }
    # The coin is tossed on the generated body, before aiming replaces it: tossed on the
    # aimed body, which names this run's random patient id, it came up differently from run
    # to run, and in some runs no update carried a current If-Match (no 2xx at all).
    body_aimed = body_positive and isinstance(case.body, dict) and _odd(case.body)
    if op in ("fhirCreateDocumentReference", "fhirUpdateDocumentReference") and body_aimed:
        # the care-team patient: the note of env.notes[0] is about it
        status = case.body.get("status")
        case.body = document(env.patients[0])
        if status == "entered-in-error" and op == "fhirUpdateDocumentReference":
            case.body["status"] = status
            _void_a_fresh_note(env, case)
    if op == "fhirUpdateDocumentReference" and not is_negative_at(case, ParameterLocation.HEADER):
        # The current version, on the same half of the cases whose body was aimed above
        # (and on half of the rest), so some updates get past the precondition; the
        # generator often leaves If-Match out, which only ever meets 428.
        if body_aimed or (
            case.headers is not None and "If-Match" in case.headers and _odd(case.headers)
        ):
            case.headers = {**(case.headers or {}), "If-Match": f'W/"{env.extra["fhir_version"]}"'}
    if case.query and query_positive:
        if op == "fhirSearchPatient" and _odd(case.query.get("identifier")):
            case.query["identifier"] = "urn:mrn|MRN-FUZZ-0001"
        if op == "fhirSearchDocumentReference" and _odd(sorted(case.query)):
            real = pick("patient", _seed(sorted(map(str, case.query.items()))), env.patients)
            real = real or env.patients[0]
            case.query.pop("subject", None)
            # A generated cursor is never one the server issued: it only ever meets 400.
            case.query.pop("_cursor", None)
            case.query["patient"] = real
        if op == "fhirSearchAuditEvent":
            for name, pool in (("patient", env.patients), ("agent", env.principals)):
                if name in case.query:
                    real = pick(name, _seed(case.query[name]), pool)
                    if real is not None:
                        case.query[name] = real
    elif op == "fhirSearchDocumentReference" and query_positive and case.query is None:
        case.query = {"patient": env.patients[0]}
    if op == "fhirDocumentReferenceVersion" and case.path_parameters:
        vid = case.path_parameters.get("vid")
        if isinstance(vid, int) and _odd(vid):
            case.path_parameters["vid"] = 1


def observe(env: Any, case: Any, response: Any, op: str) -> None:
    if op == "fhirUpdateDocumentReference" and response.status_code == 200:
        etag = response.headers["etag"][0]
        env.extra["fhir_version"] = int(etag.removeprefix("W/").strip('"'))


def valid_kwargs(op: str, env: Any) -> dict[str, Any]:
    """A request the operation's role gets a 2xx for (test_every_secured_operation_...)."""
    fhir = "application/fhir+json"
    if op in ("fhirCreateDocumentReference", "fhirUpdateDocumentReference"):
        out: dict[str, Any] = {"body": document(env.patients[0]), "media_type": fhir}
        if op == "fhirUpdateDocumentReference":
            out["headers"] = {"If-Match": f'W/"{env.extra["fhir_version"]}"'}
        return out
    if op == "fhirSearchDocumentReference":
        return {"query": {"patient": env.patients[0]}}
    if op == "fhirSearchPatient":
        return {"query": {"identifier": "MRN-FUZZ-0001"}}
    if op == "fhirDocumentReferenceVersion":
        return {"path_parameters_extra": {"vid": 1}}
    return {}
