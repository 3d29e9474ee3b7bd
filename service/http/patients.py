from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify, request

from service.access.approvals import Pending
from service.errors import ValidationFailed
from service.http import caller, iso, json_body, services
from service.http.admin import pending_response
from service.models import Patient
from service.patients.service import normalize_external_id
from service.schemas import (
    MAX_EXTERNAL_ID_CHARS,
    BreakGlassCreate,
    CareTeamPut,
    PatientCreate,
    has_control_characters,
    load,
)

bp = Blueprint("patients", __name__)


def patient_json(p: Patient) -> dict[str, object]:
    return {"id": p.id, "created_at": iso(p.created_at)}


@bp.post("/v1/patients")
def create_patient() -> tuple[Response, int, dict[str, str]]:
    c = caller()
    data = load(PatientCreate, json_body())
    patient = services().patients.create(c, data["external_id"])
    return jsonify(patient_json(patient)), 201, {"Location": f"/v1/patients/{patient.id}"}


@bp.get("/v1/patients/<uuid:patient_id>")
def get_patient(patient_id: UUID) -> Response:
    c = caller()
    return jsonify(patient_json(services().patients.get(c, str(patient_id))))


@bp.get("/v1/patients")
def find_patient() -> Response:
    c = caller()
    external_id = request.args.get("external_id")
    if (
        not external_id
        or len(external_id) > MAX_EXTERNAL_ID_CHARS
        or not normalize_external_id(external_id)
        or has_control_characters(external_id)
    ):
        raise ValidationFailed(
            {"external_id": [f"Required, 1 to {MAX_EXTERNAL_ID_CHARS} characters."]}
        )
    return jsonify(patient_json(services().patients.find(c, external_id)))


@bp.put("/v1/patients/<uuid:patient_id>/care-team/<uuid:principal_id>")
def put_care_team(
    patient_id: UUID, principal_id: UUID
) -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    c = caller()
    data = load(CareTeamPut, json_body()) if request.content_length else {"until": None}
    created = services().patients.set_care_team(
        c, str(patient_id), str(principal_id), data["until"]
    )
    if isinstance(created, Pending):  # an admin past its hourly grants: a second admin
        return pending_response(created)
    body = {
        "patient_id": str(patient_id),
        "principal_id": str(principal_id),
        "until": iso(data["until"]),
    }
    return jsonify(body), 201 if created else 200


@bp.delete("/v1/patients/<uuid:patient_id>/care-team/<uuid:principal_id>")
def delete_care_team(patient_id: UUID, principal_id: UUID) -> tuple[str, int]:
    c = caller()
    services().patients.remove_care_team(c, str(patient_id), str(principal_id))
    return "", 204


@bp.post("/v1/patients/<uuid:patient_id>/break-glass")
def break_glass(patient_id: UUID) -> tuple[Response, int]:
    c = caller()
    data = load(BreakGlassCreate, json_body())
    bg = services().patients.break_glass(c, str(patient_id), data["reason"])
    return jsonify(
        {
            "id": bg.id,
            "patient_id": bg.patient_id,
            "expires_at": iso(bg.expires_at),
            "remaining_today": bg.remaining_today,
        }
    ), 201
