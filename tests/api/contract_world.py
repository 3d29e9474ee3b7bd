"""What the contract tests call the API with: a `World` (a tenant, clinicians on and off a
patient's care team, an auditor, the patient and a note), the spec path templates, and for
every /v1 operation a valid request and the role that passes its role check."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

from service.models import Role
from tests.api.contract import Checked, Operation, operations
from tests.helpers import Api, StackHelper, Tenant, Who

AppFactory = Callable[..., Flask]


SENTINEL = "SENTINEL-c0ffee-PHI"  # put in bad input; must never come back in an error body
NOTE = {"kind": "progress", "title": "Visit", "body": "Doing well."}
REASON = "Unconscious in the emergency department, care team unreachable."
JSON = "application/json"
# spec path templates used by several tests
NOTES = "/v1/patients/{patient_id}/notes"
ONE_NOTE = "/v1/notes/{note_id}"
CARE_TEAM = "/v1/patients/{patient_id}/care-team/{principal_id}"
BREAK_GLASS = "/v1/patients/{patient_id}/break-glass"
BUDGET = "/v1/admin/principals/{principal_id}/budget"
DECOY = "/v1/admin/patients/{patient_id}/decoy"
AUDIT = "/v1/audit/events"


@dataclass
class World:
    tenant: Tenant
    dr: Who  # clinician on the patient's care team
    other_dr: Who  # clinician of the same tenant, not on the care team
    auditor: Who
    patient_id: str
    external_id: str
    note_id: str

    def token(self, role: str | None) -> str | None:
        return {
            None: None,
            "dr": self.dr.token,
            "other_dr": self.other_dr.token,
            "auditor": self.auditor.token,
            "integration": self.tenant.integration.token,
            "admin": self.tenant.admin.token,
        }[role]

    @property
    def params(self) -> dict[str, str]:
        return {
            "patient_id": self.patient_id,
            "note_id": self.note_id,
            "principal_id": self.dr.id,
            "approval_id": str(uuid.uuid4()),
        }


def build_world(stack: StackHelper) -> World:
    t = stack.tenant()
    dr = stack.clinician(t)
    external_id = f"MRN-{secrets.token_hex(6)}"
    pid = stack.patient_for(t, dr, external_id)
    note = stack.note(dr, pid, body="baseline body")
    return World(
        tenant=t,
        dr=dr,
        other_dr=stack.clinician(t),
        auditor=stack.principal(t, Role.AUDITOR),
        patient_id=pid,
        external_id=external_id,
        note_id=str(note["id"]),
    )


def stack_for(app: Flask) -> tuple[Api, StackHelper]:
    api = Api(app.test_client())
    return api, StackHelper(app, api)


# Valid inputs per operation, so that a sweep reaches the check it is aimed at.
VALID_BODIES: dict[str, Any] = {
    "createPatient": {"external_id": "MRN-sweep"},
    "putCareTeamMember": {},
    "breakGlass": {"reason": REASON},
    "createNote": NOTE,
    "amendNote": NOTE,
    "setPrincipalBudget": {"per_hour": 5},
    "setPatientDecoy": {"decoy": False},
    "shredPatient": {"reason": "erasure request 1"},
}
VALID_QUERIES: dict[str, dict[str, str]] = {"findPatient": {"external_id": "MRN-none"}}
VALID_HEADERS: dict[str, dict[str, str]] = {"amendNote": {"If-Match": '"1"'}}
# The role that passes the role check of each operation.
ROLE_FOR: dict[str, str] = {
    "getMe": "dr",
    "createPatient": "integration",
    "findPatient": "integration",
    "getPatient": "integration",
    "putCareTeamMember": "integration",
    "deleteCareTeamMember": "integration",
    "breakGlass": "dr",
    "createNote": "dr",
    "listNotes": "dr",
    "readNote": "dr",
    "amendNote": "dr",
    "markNoteEnteredInError": "dr",
    "listNoteVersions": "dr",
    "unlockPrincipal": "admin",
    "setPrincipalBudget": "admin",
    "setPatientDecoy": "admin",
    "shredPatient": "admin",
    "cancelShred": "admin",
    "listApprovals": "admin",
    "approveRequest": "admin",
    "rejectRequest": "admin",
    "listAuditEvents": "auditor",
    "verifyAuditLog": "auditor",
}
CONTENT_OPERATIONS = {"readNote", "listNotes", "listNoteVersions"}
# Every role has hourly limits (service/access/limits.py): these answer 429 past them.
LIMITED_OPERATIONS = {
    "breakGlass",
    "createPatient",
    "findPatient",
    "getPatient",
    "putCareTeamMember",
    "deleteCareTeamMember",
    "createNote",
    "amendNote",
    "markNoteEnteredInError",
    "unlockPrincipal",
    "setPrincipalBudget",
    "setPatientDecoy",
    "shredPatient",
    "cancelShred",
    "approveRequest",
    "rejectRequest",
}


def v1_operations(spec: Mapping[str, Any]) -> list[Operation]:
    return [o for o in operations(spec) if o.path.startswith("/v1/")]


def valid_request(op: Operation) -> dict[str, Any]:
    return {
        "json": VALID_BODIES.get(op.id),
        "query": VALID_QUERIES.get(op.id),
        "headers": VALID_HEADERS.get(op.id),
    }


def random_params(op: Operation) -> dict[str, str]:
    return {name: str(uuid.uuid4()) for name in op.path_params}


def second_admin_approves(c: Checked, stack: StackHelper, tenant: Tenant, body: Any) -> Any:
    """A 202's request, approved by another admin of the tenant."""
    admin2 = stack.principal(tenant, Role.ADMIN)
    _r, decided = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        admin2.token,
        params={"approval_id": body["approval"]["id"]},
        expect=200,
    )
    assert decided["approval"]["status"] == "approved"
    return decided["result"]
