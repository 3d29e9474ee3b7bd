from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify, request

from service.access.approvals import Pending
from service.errors import ValidationFailed
from service.http import caller, iso, json_body, services
from service.models import Approval, Principal
from service.schemas import BudgetPut, DecoyPut, ShredRequest, load

bp = Blueprint("admin", __name__)

APPROVAL_STATUSES = ("pending", "approved", "rejected")


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


def approval_json(a: Approval) -> dict[str, object]:
    return {
        "id": a.id,
        "kind": a.kind,
        "status": a.status,
        "target_principal_id": a.target_principal_id,
        "target_patient_id": a.target_patient_id,
        "params": a.params,
        "requested_by": a.requested_by,
        "requested_at": iso(a.requested_at),
        "expires_at": iso(a.expires_at),
        "decided_by": a.decided_by,
        "decided_at": iso(a.decided_at),
    }


def pending_response(p: Pending) -> tuple[Response, int, dict[str, str]]:
    """202: the action waits for a second admin (POST .../approvals/{id}/approve)."""
    return (
        jsonify({"approval": approval_json(p.approval)}),
        202,
        {"Location": f"/v1/admin/approvals/{p.approval.id}"},
    )


@bp.post("/v1/admin/principals/<uuid:principal_id>/unlock")
def unlock(principal_id: UUID) -> Response | tuple[Response, int, dict[str, str]]:
    c = caller()
    result = services().principals.unlock(str(principal_id), c)
    if isinstance(result, Pending):
        return pending_response(result)
    return jsonify(principal_json(result))


@bp.put("/v1/admin/principals/<uuid:principal_id>/budget")
def set_budget(principal_id: UUID) -> Response | tuple[Response, int, dict[str, str]]:
    c = caller()
    data = load(BudgetPut, json_body())
    result = services().principals.set_budget(
        c, str(principal_id), data["per_hour"], data["per_day"]
    )
    if isinstance(result, Pending):
        return pending_response(result)
    return jsonify(principal_json(result))


@bp.post("/v1/admin/patients/<uuid:patient_id>/shred")
def shred(patient_id: UUID) -> tuple[Response, int, dict[str, str]]:
    c = caller()
    data = load(ShredRequest, json_body())
    result = services().keyops.shred(str(patient_id), data["reason"], c)
    assert isinstance(result, Pending)  # an admin's shred always waits for a second admin
    return pending_response(result)


@bp.delete("/v1/admin/patients/<uuid:patient_id>/shred")
def cancel_shred(patient_id: UUID) -> tuple[Response, int, dict[str, str]]:
    c = caller()
    return pending_response(services().keyops.cancel_shred(c, str(patient_id)))


@bp.put("/v1/admin/patients/<uuid:patient_id>/decoy")
def set_decoy(patient_id: UUID) -> Response | tuple[Response, int, dict[str, str]]:
    c = caller()
    data = load(DecoyPut, json_body())
    result = services().patients.set_decoy(c, str(patient_id), data["decoy"])
    if isinstance(result, Pending):
        return pending_response(result)
    return jsonify({"patient_id": str(patient_id), "decoy": data["decoy"]})


@bp.get("/v1/admin/approvals")
def list_approvals() -> Response:
    c = caller()
    status = request.args.get("status")
    if status is not None and status not in APPROVAL_STATUSES:
        raise ValidationFailed({"status": [f"Must be one of: {', '.join(APPROVAL_STATUSES)}."]})
    items = services().approvals.list(c, status)
    return jsonify({"items": [approval_json(a) for a in items]})


@bp.post("/v1/admin/approvals/<uuid:approval_id>/approve")
def approve(approval_id: UUID) -> Response:
    c = caller()
    approval, result = services().approvals.approve(c, str(approval_id))
    return jsonify({"approval": approval_json(approval), "result": result})


@bp.post("/v1/admin/approvals/<uuid:approval_id>/reject")
def reject(approval_id: UUID) -> Response:
    c = caller()
    approval = services().approvals.reject(c, str(approval_id))
    return jsonify({"approval": approval_json(approval), "result": {}})
