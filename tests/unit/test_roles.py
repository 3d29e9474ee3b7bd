"""The role -> permission table (service/access/roles.py): separation of duties."""

from __future__ import annotations

import pytest

from service.access.caller import Caller
from service.access.roles import ROLE_PERMISSIONS, Permission, may, require
from service.errors import Forbidden
from service.models import Principal, Role


def test_only_clinicians_touch_note_content():
    assert [r for r in Role if may(r, Permission.NOTE_CONTENT)] == [Role.CLINICIAN]


def test_who_manages_rights_never_reads_content_and_who_reads_content_never_manages_rights():
    rights = {
        Permission.CARE_TEAM_MANAGE,
        Permission.PRINCIPAL_MANAGE,
        Permission.DECOY_MANAGE,
        Permission.APPROVAL_DECIDE,
    }
    for role, granted in ROLE_PERMISSIONS.items():
        assert not (Permission.NOTE_CONTENT in granted and granted & rights), role


def test_auditors_read_the_log_and_nothing_else():
    assert ROLE_PERMISSIONS[Role.AUDITOR] == {Permission.AUDIT_READ}
    assert [r for r in Role if may(r, Permission.AUDIT_READ)] == [Role.AUDITOR]


def test_every_role_has_an_entry_and_every_permission_a_holder():
    assert set(ROLE_PERMISSIONS) == set(Role)
    held = set().union(*ROLE_PERMISSIONS.values())
    assert held == set(Permission)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_require_refuses_exactly_what_the_table_does_not_grant(role, permission):
    caller = Caller(Principal("p", "t", "p", role))
    if may(role, permission):
        require(caller, permission)
    else:
        with pytest.raises(Forbidden):
            require(caller, permission)
