"""FHIR R4 resources for the /fhir/R4 facade (pure mapping; no I/O, no Flask).

A note is a `DocumentReference`:

| note                     | DocumentReference                                             |
|--------------------------|---------------------------------------------------------------|
| id                       | id                                                            |
| current version          | meta.versionId (and the ETag `W/"<version>"`)                 |
| updated_at               | meta.lastUpdated                                              |
| status                   | status (`current` or `entered-in-error`)                      |
| version 1 / later        | docStatus `final` / `amended`                                 |
| kind                     | type: one LOINC document code (table below)                   |
| patient_id               | subject `Patient/<id>`                                        |
| created_at               | date                                                          |
| created_by (or author)   | author[0].identifier (system urn:sealednotes:principal)      |
| title                    | description                                                   |
| body                     | content[0].attachment.data: base64 of the UTF-8 text          |
|                          | (contentType `text/plain; charset=utf-8`)                     |
| encounter_at             | context.period.start                                          |

Title and body are the note's content: they appear only in answers that went through the
key-release gate (read, search, history). Create and update answer the metadata only.

Kinds and LOINC document codes (the first code of a kind is written; every code listed is
read):

| kind      | written                               | also read                                  |
|-----------|---------------------------------------|--------------------------------------------|
| progress  | 11506-3 Progress note                 |                                            |
| consult   | 11488-4 Consult note                  |                                            |
| admission | 34117-2 History and physical note     | 47039-3 Hospital Admission H&P note        |
| discharge | 18842-5 Discharge summary             |                                            |
| procedure | 28570-0 Procedure note                |                                            |
| result    | 11502-2 Laboratory report             | 18748-4 Diagnostic imaging study           |
| referral  | 57133-1 Referral note                 |                                            |
| other     | 34109-9 Note                          |                                            |
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.errors import ValidationFailed
from service.models import NoteRow, NoteVersionRow, Patient
from service.schemas import NoteWrite, load

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
LOINC = "http://loinc.org"
CATEGORY_SYSTEM = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
PRINCIPAL_SYSTEM = "urn:sealednotes:principal"
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
TEXT_PLAIN = "text/plain; charset=utf-8"
EXTENSION_BASE = "https://sealednotes.dev/fhir/StructureDefinition/"

KIND_CODES: dict[str, tuple[str, str]] = {
    "progress": ("11506-3", "Progress note"),
    "consult": ("11488-4", "Consult note"),
    "admission": ("34117-2", "History and physical note"),
    "discharge": ("18842-5", "Discharge summary"),
    "procedure": ("28570-0", "Procedure note"),
    "result": ("11502-2", "Laboratory report"),
    "referral": ("57133-1", "Referral note"),
    "other": ("34109-9", "Note"),
}
CODE_KINDS: dict[str, str] = {code: kind for kind, (code, _d) in KIND_CODES.items()} | {
    "47039-3": "admission",
    "18748-4": "result",
}

_REFERENCE_RE = re.compile(
    r"^(?:.*/)?Patient/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12})$"
)
_CONTENT_TYPE_RE = re.compile(r"^text/plain(?:\s*;\s*charset\s*=\s*\"?utf-8\"?)?$", re.I)
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/\r\n]*={0,2}$")
WRITE_ELEMENTS = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "status",
        "docStatus",
        "type",
        "category",
        "subject",
        "date",
        "author",
        "description",
        "content",
        "context",
    }
)
ATTACHMENT_ELEMENTS = frozenset({"contentType", "data", "language", "creation"})


def instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def date_time(at: datetime) -> str:
    return at.isoformat()


def version_etag(version: int) -> str:
    return f'W/"{version}"'


# -- output -------------------------------------------------------------------------------


def document_reference(
    note: NoteRow,
    *,
    title: str | None = None,
    body: str | None = None,
    version: NoteVersionRow | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """A note (or one of its versions) as a DocumentReference. Without `body`, the
    metadata only (tagged SUBSETTED)."""
    code, display = KIND_CODES.get(note.kind, KIND_CODES["other"])
    number = version.version if version else note.current_version
    meta: dict[str, Any] = {
        "versionId": str(number),
        "lastUpdated": instant(version.created_at if version else note.updated_at),
    }
    if body is None:
        meta["tag"] = [SUBSETTED]
    attachment: dict[str, Any] = {"contentType": TEXT_PLAIN}
    if body is not None:
        raw = body.encode("utf-8")
        attachment["data"] = base64.b64encode(raw).decode("ascii")
        attachment["size"] = len(raw)
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": note.id,
        "meta": meta,
        "status": status or note.status,
        "docStatus": "final" if number == 1 else "amended",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "category": [
            {
                "coding": [
                    {"system": CATEGORY_SYSTEM, "code": "clinical-note", "display": "Clinical Note"}
                ]
            }
        ],
        "subject": {"reference": f"Patient/{note.patient_id}"},
        "date": instant(note.created_at),
        "author": [
            {
                "identifier": {
                    "system": PRINCIPAL_SYSTEM,
                    "value": version.author_id if version else note.created_by,
                }
            }
        ],
    }
    if body is not None and title is not None:
        resource["description"] = title
    resource["content"] = [{"attachment": attachment}]
    if note.encounter_at is not None:
        resource["context"] = {"period": {"start": date_time(note.encounter_at)}}
    return resource


def patient_resource(patient: Patient) -> dict[str, Any]:
    """Identifiers stay out: the external id exists only as a blind index."""
    return {
        "resourceType": "Patient",
        "id": patient.id,
        "meta": {"lastUpdated": instant(patient.created_at)},
    }


def bundle(
    kind: str,
    entries: list[dict[str, Any]],
    *,
    self_url: str,
    next_url: str | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": kind,
        "timestamp": instant(datetime.now(UTC)),
    }
    if total is not None:
        out["total"] = total
    out["link"] = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        out["link"].append({"relation": "next", "url": next_url})
    out["entry"] = entries
    return out


def search_entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}}


def history_entry(full_url: str, resource: dict[str, Any], first: bool) -> dict[str, Any]:
    rid, version = resource["id"], resource["meta"]["versionId"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST" if first else "PUT",
            "url": "DocumentReference" if first else f"DocumentReference/{rid}",
        },
        "response": {
            "status": "201 Created" if first else "200 OK",
            "etag": version_etag(int(version)),
            "lastModified": resource["meta"]["lastUpdated"],
        },
    }


# -- input --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """A DocumentReference a client sent, reduced to what a note holds."""

    patient_id: str
    status: str
    kind: str
    title: str | None
    body: str
    encounter_at: datetime | None
    id: str | None

    def __repr__(self) -> str:  # health data never reaches a log line
        return f"DocumentWrite(patient_id={self.patient_id!r}, kind={self.kind!r}, <sealed>)"


# marshmallow field -> the FHIR element it came from (for error messages)
_ELEMENT_OF = {
    "kind": "type",
    "title": "description",
    "body": "content[0].attachment.data",
    "encounter_at": "context.period.start",
}


def parse_document_reference(data: Any) -> DocumentWrite:
    """Validate a DocumentReference body; raise ValidationFailed naming FHIR elements
    (never echoing their values)."""
    if not isinstance(data, dict):
        raise ValidationFailed({"_schema": ["The body must be a FHIR resource (a JSON object)."]})
    errors: dict[str, list[str]] = {}

    def bad(element: str, message: str) -> None:
        errors.setdefault(element, []).append(message)

    if data.get("resourceType") != "DocumentReference":
        bad("resourceType", "Must be DocumentReference.")
    unknown = sorted(str(k)[:64] for k in data if k not in WRITE_ELEMENTS)
    for element in unknown[:10]:
        bad(element, "Not supported by this server.")
    rid = data.get("id")
    if rid is not None and not (isinstance(rid, str) and re.match(r"^[A-Za-z0-9.-]{1,64}$", rid)):
        bad("id", "Not a valid id.")
    status = data.get("status")
    if status not in ("current", "entered-in-error"):
        bad("status", "Must be current or entered-in-error.")
    kind = "other"
    doc_type = data.get("type")
    if doc_type is not None:
        codings = doc_type.get("coding") if isinstance(doc_type, dict) else None
        found = [
            CODE_KINDS.get(str(c.get("code")))
            for c in (codings if isinstance(codings, list) else [])
            if isinstance(c, dict) and c.get("system") == LOINC
        ]
        kinds = [k for k in found if k]
        if not kinds:
            bad(
                "type", "Must carry a LOINC document code of this server (see CapabilityStatement)."
            )
        else:
            kind = kinds[0]
    subject = data.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    match = _REFERENCE_RE.match(ref) if isinstance(ref, str) else None
    if match is None:
        bad("subject", "Must reference Patient/<id>.")
    title = data.get("description")
    if title is not None and not isinstance(title, str):
        bad("description", "Must be a string.")
    body = _attachment_text(data.get("content"), bad)
    start = None
    context = data.get("context")
    if context is not None:
        if not isinstance(context, dict) or set(context) - {"period"}:
            bad("context", "Only context.period is supported.")
        else:
            period = context.get("period")
            if not isinstance(period, dict) or set(period) - {"start", "end"}:
                bad("context.period", "Must be a Period.")
            else:
                start = period.get("start")
    if errors:
        raise ValidationFailed(errors)
    try:
        loaded = load(
            NoteWrite,
            {"kind": kind, "title": title, "body": body, "encounter_at": start},
        )
    except ValidationFailed as e:
        raw = e.extra.get("errors", {})
        raise ValidationFailed({_ELEMENT_OF.get(k, k): v for k, v in raw.items()}) from None
    assert match is not None
    return DocumentWrite(
        patient_id=match.group(1).lower(),
        status=str(status),
        kind=loaded["kind"],
        title=loaded["title"],
        body=loaded["body"],
        encounter_at=loaded["encounter_at"],
        id=rid,
    )


def _attachment_text(content: Any, bad: Any) -> str | None:
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        bad("content", "Exactly one content item is supported.")
        return None
    item = content[0]
    if set(item) - {"attachment", "format"}:
        bad("content[0]", "Only attachment (and format) are supported.")
    attachment = item.get("attachment")
    if not isinstance(attachment, dict):
        bad("content[0].attachment", "Required.")
        return None
    if set(attachment) - ATTACHMENT_ELEMENTS:
        bad("content[0].attachment", "Inline data only (contentType, data, language, creation).")
    content_type = attachment.get("contentType")
    if not isinstance(content_type, str) or not _CONTENT_TYPE_RE.match(content_type.strip()):
        bad("content[0].attachment.contentType", "Must be text/plain (UTF-8).")
    data = attachment.get("data")
    if not isinstance(data, str) or not data or not _BASE64_RE.match(data):
        bad("content[0].attachment.data", "Required: base64 of the note's UTF-8 text.")
        return None
    try:
        return base64.b64decode(data, validate=False).decode("utf-8")
    except (binascii.Error, ValueError):
        bad("content[0].attachment.data", "Must be base64 of UTF-8 text.")
        return None
