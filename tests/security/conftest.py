"""Fixtures shared by the modules of a security property: `world` for the P16 tests
(test_database_books*.py), `busy_log` for the P8 tests (test_audit_log_*.py)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from service.models import Role
from tests.helpers import Api, StackHelper, seed_patients
from tests.security.audit_log import verify


@pytest.fixture
def world(stack: StackHelper, api: Api) -> dict[str, Any]:
    t = stack.tenant()
    dr = stack.clinician(t)
    other = stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid)
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200  # a release
    outsider = stack.patient(t)
    assert api.get(f"/v1/patients/{outsider}", dr.token).status_code == 404
    r = api.post(
        f"/v1/patients/{outsider}/break-glass",
        dr.token,
        {"reason": "Unconscious patient in the emergency department"},
    )
    assert r.status_code == 201
    return {"t": t, "dr": dr, "other": other, "auditor": auditor, "pid": pid}


@pytest.fixture
def busy_log(api: Api, stack: StackHelper, app: Flask) -> dict[str, Any]:
    """Some real traffic from two clinicians, then a signed checkpoint."""
    t = stack.tenant()
    drs = [stack.clinician(t), stack.clinician(t)]
    patients = seed_patients(stack, t, drs, 6)
    for dr in drs:
        for p in patients:
            api.get(f"/v1/patients/{p}/notes?include=content", dr.token)
    api.get(f"/v1/patients/{patients[0]}/notes", t.integration.token)  # a denial
    svc = app.extensions["sealednotes"].audit_service
    svc.checkpoint()
    report = verify(app)
    assert report["ok"], report["problems"]
    assert report["checked"] > 30 and report["checkpoints"] == 1
    return {"tenant": t, "drs": drs, "patients": patients}
