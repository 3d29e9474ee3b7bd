from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify

from service.api import caller, iso, json_body, services
from service.models import Principal
from service.schemas import BudgetPut, DecoyPut, ShredRequest, load

bp = Blueprint("admin", __name__)


def principal_json(p: Principal) -> dict[str, object]:
    return {
        "id": p.id,
        "tenant_id": p.tenant_id,
        "name": p.name,
        "role": p.role.value,
        "suspended": p.suspended,
        "release_per_hour": p.release_per_hour,
        "release_per_day": p.release_per_day,
    }


@bp.post("/v1/admin/principals/<uuid:principal_id>/unlock")
def unlock(principal_id: UUID) -> Response:
    c = caller()
    return jsonify(principal_json(services().principals.unlock(str(principal_id), c)))


@bp.put("/v1/admin/principals/<uuid:principal_id>/budget")
def set_budget(principal_id: UUID) -> Response:
    c = caller()
    data = load(BudgetPut(), json_body())
    p = services().principals.set_budget(c, str(principal_id), data["per_hour"], data["per_day"])
    return jsonify(principal_json(p))


@bp.post("/v1/admin/patients/<uuid:patient_id>/shred")
def shred(patient_id: UUID) -> Response:
    c = caller()
    data = load(ShredRequest(), json_body())
    p = services().keyops.shred(str(patient_id), data["reason"], c)
    return jsonify({"patient_id": p.id, "shredded_at": iso(p.shredded_at)})


@bp.put("/v1/admin/patients/<uuid:patient_id>/decoy")
def set_decoy(patient_id: UUID) -> Response:
    c = caller()
    data = load(DecoyPut(), json_body())
    services().patients.set_decoy(c, str(patient_id), data["decoy"])
    return jsonify({"patient_id": str(patient_id), "decoy": data["decoy"]})
