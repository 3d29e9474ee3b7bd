"""FHIR R4 facade under /fhir/R4: Patient, DocumentReference, AuditEvent, CapabilityStatement.

Every route calls the same use cases as the REST API (service/notes/, service/patients/,
service/audit/), so every content path goes through the same key-release gate, with the
same audit records, RateLimit-* headers and 429s. Mapping: service/fhir/resources.py.
Every error under /fhir is an OperationOutcome (application/fhir+json) carrying the status,
headers and facts of the service's problem answer (see `_as_operation_outcome`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from flask import Blueprint, Response, request

from service.errors import (
    BadRequest,
    NotFound,
    PreconditionRequired,
    ValidationFailed,
)
from service.fhir.capability import capability_statement, smart_configuration
from service.fhir.outcome import operation_outcome
from service.fhir.resources import (
    FHIR_JSON,
    bundle,
    document_reference,
    history_entry,
    parse_document_reference,
    patient_resource,
    search_entry,
    version_etag,
)
from service.http import (
    caller,
    decode_cursor,
    encode_cursor,
    int_arg,
    json_body,
    services,
)
from service.http.notes import rate_limit_headers, read_as_caller
from service.notes.sealing import NoteContent
from service.patients.service import normalize_external_id
from service.problems import PROBLEM_JSON
from service.schemas import MAX_EXTERNAL_ID_CHARS, has_control_characters

PREFIX = "/fhir/R4"
bp = Blueprint("fhir", __name__, url_prefix=PREFIX)

IF_MATCH_RE = re.compile(r'^(?:W/)?"([0-9]{1,9})"$')
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


# -- plumbing --------------------------------------------------------------------------------


def fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=FHIR_JSON)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def public_root() -> str:
    configured = services().settings.idp.public_url
    return configured if configured else request.url_root.rstrip("/")


def base_url() -> str:
    return public_root() + PREFIX


def token_url() -> str:
    return public_root() + "/oauth2/token"


def http_date(at: datetime) -> str:
    return format_datetime(at.astimezone(UTC), usegmt=True)


def only_params(*allowed: str) -> None:
    """FHIR servers may ignore unknown parameters; this one refuses them, so a client
    never mistakes an unfiltered answer for a filtered one."""
    unknown = set(request.args) - set(allowed) - {"_format"}
    if unknown:
        raise BadRequest("Unsupported search parameter; see the CapabilityStatement")
    fmt = request.args.get("_format")
    if fmt is not None and fmt not in JSON_FORMATS:
        raise BadRequest("Only JSON is served (_format=json)")
    for name in request.args:
        if len(request.args.getlist(name)) > 1 and name != "date":
            raise BadRequest("A search parameter may be given once")


def _reference_id(value: str | None, resource: str, name: str) -> str:
    """`<id>` or `<Type>/<id>` (for `patient`, the type must be Patient)."""
    raw = (value or "").strip()
    kind, sep, rest = raw.partition("/")
    if sep and (kind == resource or (resource == "*" and re.match(r"^[A-Z][A-Za-z]{1,40}$", kind))):
        raw = rest
    if not _UUID_RE.match(raw):
        raise BadRequest(f"{name} must be an id or a reference <Type>/<id>")
    return raw.lower()


def note_url(note_id: str) -> str:
    return f"{base_url()}/DocumentReference/{note_id}"


@bp.after_app_request
def _as_operation_outcome(response: Response) -> Response:
    """Under /fhir, a problem answer (whichever handler produced it: routing, validation, the
    gate, a dependency) becomes an OperationOutcome with the same status and headers."""
    if not request.path.startswith("/fhir/") or response.mimetype != PROBLEM_JSON:
        return response
    try:
        problem = json.loads(response.get_data(as_text=True))
    except ValueError:
        problem = {"status": response.status_code}
    response.set_data(json.dumps(operation_outcome(problem)))
    response.mimetype = FHIR_JSON
    return response


# -- conformance -----------------------------------------------------------------------------


@bp.get("/metadata")
def metadata() -> Response:
    only_params()
    svc = services()
    return fhir(capability_statement(base_url(), token_url(), svc.clock.now()))


@bp.get("/.well-known/smart-configuration")
def smart_config() -> Response:
    body = json.dumps(smart_configuration(token_url()))
    return Response(body, mimetype="application/json")


# -- Patient ---------------------------------------------------------------------------------


@bp.get("/Patient")
def search_patient() -> Response:
    c = caller()
    only_params("identifier")
    raw = request.args.get("identifier") or ""
    value = raw.split("|", 1)[1] if "|" in raw else raw
    if (
        not value
        or len(value) > MAX_EXTERNAL_ID_CHARS
        or not normalize_external_id(value)
        or has_control_characters(value)
    ):
        raise BadRequest(
            f"identifier is required: [system|]value, value 1 to {MAX_EXTERNAL_ID_CHARS}"
        )
    try:
        patients = [services().patients.find(c, value)]
    except NotFound:
        patients = []  # a search finds nothing rather than failing
    entries = [search_entry(f"{base_url()}/Patient/{p.id}", patient_resource(p)) for p in patients]
    # The self link leaves the identifier out: it is never echoed.
    self_url = f"{base_url()}/Patient"
    return fhir(bundle("searchset", entries, self_url=self_url, total=len(entries)))


@bp.get("/Patient/<uuid:patient_id>")
def read_patient(patient_id: UUID) -> Response:
    c = caller()
    only_params()
    patient = services().patients.get(c, str(patient_id))
    return fhir(patient_resource(patient))


# -- DocumentReference --------------------------------------------------------------------------


def _metadata_answer(note: Any, status: int, extra: dict[str, str] | None = None) -> Response:
    headers = {
        "ETag": version_etag(note.current_version),
        "Last-Modified": http_date(note.updated_at),
    }
    return fhir(document_reference(note), status, {**headers, **(extra or {})})


@bp.post("/DocumentReference")
def create_document() -> Response:
    c = caller()
    only_params()
    doc = parse_document_reference(json_body())
    if doc.status != "current":
        raise ValidationFailed({"status": ["A new DocumentReference must be current."]})
    note, _replayed = services().notes.create(
        c,
        doc.patient_id,
        kind=doc.kind,
        content=NoteContent(title=doc.title, body=doc.body),
        encounter_at=doc.encounter_at,
    )
    location = f"{note_url(note.id)}/_history/{note.current_version}"
    return _metadata_answer(note, 201, {"Location": location})


@bp.get("/DocumentReference")
def search_documents() -> Response:
    c = caller()
    only_params("patient", "subject", "_count", "_summary", "_cursor")
    if ("patient" in request.args) == ("subject" in request.args):
        raise BadRequest("Search by exactly one of patient or subject")
    name = "patient" if "patient" in request.args else "subject"
    patient_id = _reference_id(request.args.get(name), "Patient", name)
    summary = request.args.get("_summary", "false")
    if summary not in ("true", "false"):
        raise BadRequest("_summary must be true or false")
    limit = int_arg("_count", 50, minimum=1, maximum=100)
    after = decode_cursor(request.args.get("_cursor"))
    page = services().notes.list_for_patient(
        c, patient_id, include_content=summary == "false", limit=limit, after=after
    )
    entries = [
        search_entry(
            note_url(v.note.id),
            document_reference(
                v.note,
                title=v.content.title if v.content else None,
                body=v.content.body if v.content else None,
            ),
        )
        for v in page.notes
    ]
    query = {"patient": patient_id, "_count": str(limit)}
    if summary == "true":
        query["_summary"] = "true"
    self_url = f"{base_url()}/DocumentReference?{urlencode(query)}"
    next_url = None
    if page.next_after is not None:
        next_url = self_url + "&" + urlencode({"_cursor": encode_cursor(page.next_after)})
    return fhir(
        bundle("searchset", entries, self_url=self_url, next_url=next_url),
        headers=rate_limit_headers(page.budget),
    )


@bp.get("/DocumentReference/<uuid:note_id>")
def read_document(note_id: UUID) -> Response:
    view, budget = read_as_caller(str(note_id), only_params)
    assert view.content is not None
    headers = {
        "ETag": version_etag(view.note.current_version),
        "Last-Modified": http_date(view.note.updated_at),
        **rate_limit_headers(budget),
    }
    body = document_reference(view.note, title=view.content.title, body=view.content.body)
    return fhir(body, headers=headers)


@bp.put("/DocumentReference/<uuid:note_id>")
def update_document(note_id: UUID) -> Response:
    c = caller()
    only_params()
    if_match = request.headers.get("If-Match")
    if if_match is None:
        raise PreconditionRequired('If-Match is required: the ETag of the version read, e.g. W/"3"')
    m = IF_MATCH_RE.match(if_match.strip())
    if not m:
        raise BadRequest('If-Match must be the resource\'s ETag, e.g. W/"3"')
    doc = parse_document_reference(json_body())
    if doc.id is not None and doc.id.lower() != str(note_id):
        raise BadRequest("The resource id does not match the URL")
    notes = services().notes
    if doc.status == "entered-in-error":
        # Voiding changes no content and is idempotent: the version is not compared.
        note = notes.mark_entered_in_error(c, str(note_id))
        return _metadata_answer(note, 200)
    note = notes.amend(
        c,
        str(note_id),
        expected_version=int(m.group(1)),
        kind=doc.kind,
        content=NoteContent(title=doc.title, body=doc.body),
        encounter_at=doc.encounter_at,
        expected_patient_id=doc.patient_id,
    )
    return _metadata_answer(note, 200)


@bp.delete("/DocumentReference/<uuid:note_id>")
def delete_document(note_id: UUID) -> tuple[str, int]:
    c = caller()
    only_params()
    services().notes.mark_entered_in_error(c, str(note_id))
    return "", 204


def _versions(note_id: UUID) -> tuple[Any, list[dict[str, Any]], dict[str, str]]:
    c = caller()
    only_params()
    note, versions, budget = services().notes.versions(c, str(note_id))
    last = versions[-1].row.version if versions else 0
    resources = [
        document_reference(
            note,
            title=v.content.title,
            body=v.content.body,
            version=v.row,
            status=note.status if v.row.version == last else "current",
        )
        for v in versions
    ]
    return note, resources, rate_limit_headers(budget)


@bp.get("/DocumentReference/<uuid:note_id>/_history")
def document_history(note_id: UUID) -> Response:
    note, resources, headers = _versions(note_id)
    url = note_url(note.id)
    entries = [
        history_entry(f"{url}/_history/{r['meta']['versionId']}", r, r["meta"]["versionId"] == "1")
        for r in reversed(resources)  # newest first, as FHIR history is
    ]
    body = bundle("history", entries, self_url=f"{url}/_history", total=len(entries))
    return fhir(body, headers=headers)


@bp.get("/DocumentReference/<uuid:note_id>/_history/<int:vid>")
def document_version(note_id: UUID, vid: int) -> Response:
    _note, resources, headers = _versions(note_id)
    for r in resources:
        if r["meta"]["versionId"] == str(vid):
            return fhir(r, headers={"ETag": version_etag(vid), **headers})
    raise NotFound("No such version of this DocumentReference")


# -- AuditEvent ----------------------------------------------------------------------------------


# AuditEvent search lives in its own module, on this blueprint.
from service.http import fhir_audit  # noqa: E402, F401
