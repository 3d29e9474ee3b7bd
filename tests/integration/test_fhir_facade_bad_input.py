"""The FHIR R4 facade: bad input (bodies, media types, ids, searches, tokens) gets an
OperationOutcome naming the element, never echoing the input."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.helpers import StackHelper
from tests.integration.fhir_facade import FHIR, Fhir, b64, doc

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
