"""What each role may do: one table, read by every use case.

A role is granted a permission here or nowhere. Object access (care team,
break-glass, tenant) and the budgets are checked after this, by the gate; a
permission only says which kind of account may ask at all.
"""

from __future__ import annotations

from enum import StrEnum

from service.access.caller import Caller
from service.errors import Forbidden
from service.models import Role


class Permission(StrEnum):
    NOTE_CONTENT = "note-content"  # read, write, amend, void notes (through the gate)
    PATIENT_REGISTER = "patient-register"
    PATIENT_LOOKUP = "patient-lookup"  # by external id or by id
    CARE_TEAM_MANAGE = "care-team-manage"
    BREAK_GLASS = "break-glass"
    DECOY_MANAGE = "decoy-manage"
    PRINCIPAL_MANAGE = "principal-manage"  # unlock, budgets, suspend, revoke tokens
    PATIENT_SHRED = "patient-shred"  # shred and cancel a shred (two admins)
    APPROVAL_DECIDE = "approval-decide"
    AUDIT_READ = "audit-read"  # the access log, its verification, its FHIR export


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.CLINICIAN: frozenset(
        {Permission.NOTE_CONTENT, Permission.PATIENT_LOOKUP, Permission.BREAK_GLASS}
    ),
    Role.INTEGRATION: frozenset(
        {Permission.PATIENT_REGISTER, Permission.PATIENT_LOOKUP, Permission.CARE_TEAM_MANAGE}
    ),
    Role.ADMIN: frozenset(
        {
            Permission.CARE_TEAM_MANAGE,
            Permission.DECOY_MANAGE,
            Permission.PRINCIPAL_MANAGE,
            Permission.PATIENT_SHRED,
            Permission.APPROVAL_DECIDE,
        }
    ),
    # Auditors read the log and nothing else: no patient, no note, no key.
    Role.AUDITOR: frozenset({Permission.AUDIT_READ}),
}

_REFUSALS: dict[Permission, str] = {
    Permission.NOTE_CONTENT: "Only clinicians read or write note content",
    Permission.PATIENT_REGISTER: "Only the EHR integration registers patients",
    Permission.PATIENT_LOOKUP: "Only integrations and clinicians look up patients",
    Permission.CARE_TEAM_MANAGE: "Only integrations and admins manage care teams",
    Permission.BREAK_GLASS: "Only clinicians may break the glass",
    Permission.DECOY_MANAGE: "Only admins mark decoy patients",
    Permission.PRINCIPAL_MANAGE: "Only admins manage principals",
    Permission.PATIENT_SHRED: "Only admins shred patients or cancel a shred",
    Permission.APPROVAL_DECIDE: "Only admins decide on approval requests",
    Permission.AUDIT_READ: "Only auditors read the access log",
}


def may(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def require(caller: Caller, permission: Permission) -> None:
    """Refuse (403) a caller whose role lacks the permission."""
    if not may(caller.principal.role, permission):
        raise Forbidden(_REFUSALS[permission])
