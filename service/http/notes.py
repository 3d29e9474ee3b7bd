from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from uuid import UUID

from flask import Blueprint, Response, jsonify, request

from service.access.budget import BudgetStatus
from service.access.roles import Permission
from service.errors import BadRequest, PreconditionRequired, ValidationFailed
from service.http import (
    as_caller,
    caller,
    decode_cursor,
    encode_cursor,
    int_arg,
    iso,
    json_body,
    services,
)
from service.models import NoteRow
from service.notes.sealing import NoteContent
from service.notes.views import NoteView
from service.schemas import NoteWrite, load

bp = Blueprint("notes", __name__)

ETAG_RE = re.compile(r'^"(\d{1,9})"$')
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


def etag(note: NoteRow) -> str:
    return f'"{note.current_version}"'


def note_json(view: NoteView) -> dict[str, Any]:
    n = view.note
    out: dict[str, Any] = {
        "id": n.id,
        "patient_id": n.patient_id,
        "kind": n.kind,
        "status": n.status,
        "version": n.current_version,
        "encounter_at": iso(n.encounter_at),
        "created_by": n.created_by,
        "created_at": iso(n.created_at),
        "updated_at": iso(n.updated_at),
    }
    if view.content is not None:
        out["title"] = view.content.title
        out["body"] = view.content.body
    return out


def rate_limit_headers(budget: BudgetStatus | None) -> dict[str, str]:
    if budget is None:
        return {}
    return {
        "RateLimit-Limit": str(budget.limit),
        "RateLimit-Remaining": str(budget.remaining),
        "RateLimit-Reset": str(budget.reset_seconds),
        "RateLimit-Policy": f"{budget.limit};w=3600, {budget.day_limit};w=86400",
    }


def _content(data: dict[str, Any]) -> NoteContent:
    return NoteContent(title=data["title"], body=data["body"])


@bp.post("/v1/patients/<uuid:patient_id>/notes")
def create_note(patient_id: UUID) -> tuple[Response, int, dict[str, str]]:
    checked: dict[str, Any] = {}

    def check_request() -> None:
        key = request.headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY_RE.match(key):
            raise BadRequest("Idempotency-Key must be 1 to 200 printable ASCII characters")
        checked.update(load(NoteWrite, json_body()), idempotency_key=key)

    note, replayed = as_caller(
        lambda c, confirm_token: services().notes.create(
            c,
            str(patient_id),
            kind=checked["kind"],
            content=_content(checked),
            encounter_at=checked["encounter_at"],
            idempotency_key=checked["idempotency_key"],
            confirm_token=confirm_token,
        ),
        permission=Permission.NOTE_CONTENT,
        check_request=check_request,
    )
    headers = {"Location": f"/v1/notes/{note.id}", "ETag": etag(note)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return jsonify(note_json(NoteView(note))), 201, headers


@bp.get("/v1/patients/<uuid:patient_id>/notes")
def list_notes(patient_id: UUID) -> tuple[Response, int, dict[str, str]]:
    c = caller()
    include = request.args.get("include")
    if include not in (None, "content"):
        raise ValidationFailed({"include": ["Must be 'content' or absent."]})
    limit = int_arg("limit", 50, minimum=1, maximum=100)
    after = decode_cursor(request.args.get("cursor"))
    page = services().notes.list_for_patient(
        c, str(patient_id), include_content=include == "content", limit=limit, after=after
    )
    body = {
        "items": [note_json(v) for v in page.notes],
        "next_cursor": encode_cursor(page.next_after) if page.next_after else None,
    }
    return jsonify(body), 200, rate_limit_headers(page.budget)


def read_as_caller(
    note_id: str, check_request: Callable[[], None] | None = None
) -> tuple[NoteView, BudgetStatus]:
    """A note read by this request's caller (a remembered one, confirmed, and a warm
    re-read recorded, by the read's own statement: `as_caller`)."""
    return as_caller(
        lambda c, confirm_token: services().notes.read(c, note_id, confirm_token=confirm_token),
        permission=Permission.NOTE_CONTENT,
        check_request=check_request,
    )


@bp.get("/v1/notes/<uuid:note_id>")
def read_note(note_id: UUID) -> tuple[Response, int, dict[str, str]]:
    view, budget = read_as_caller(str(note_id))
    return jsonify(note_json(view)), 200, {"ETag": etag(view.note), **rate_limit_headers(budget)}


@bp.put("/v1/notes/<uuid:note_id>")
def amend_note(note_id: UUID) -> tuple[Response, int, dict[str, str]]:
    c = caller()
    if_match = request.headers.get("If-Match")
    if if_match is None:
        raise PreconditionRequired()
    m = ETAG_RE.match(if_match.strip())
    if not m:
        raise BadRequest('If-Match must be the note\'s ETag, e.g. "3"')
    data = load(NoteWrite, json_body())
    note = services().notes.amend(
        c,
        str(note_id),
        expected_version=int(m.group(1)),
        kind=data["kind"],
        content=_content(data),
        encounter_at=data["encounter_at"],
    )
    return jsonify(note_json(NoteView(note))), 200, {"ETag": etag(note)}


@bp.get("/v1/notes/<uuid:note_id>/versions")
def note_versions(note_id: UUID) -> tuple[Response, int, dict[str, str]]:
    c = caller()
    note, versions, budget = services().notes.versions(c, str(note_id))
    body = {
        "note_id": note.id,
        "patient_id": note.patient_id,
        "status": note.status,
        "items": [
            {
                "version": v.row.version,
                "author_id": v.row.author_id,
                "created_at": iso(v.row.created_at),
                "title": v.content.title,
                "body": v.content.body,
            }
            for v in versions
        ],
    }
    return jsonify(body), 200, rate_limit_headers(budget)


@bp.delete("/v1/notes/<uuid:note_id>")
def delete_note(note_id: UUID) -> tuple[str, int]:
    c = caller()
    services().notes.mark_entered_in_error(c, str(note_id))
    return "", 204
