"""Test helpers: a thin API client and builders for tenants, principals, patients."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service.models import Role


class Api:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> TestResponse:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return self.client.open(path, method=method, json=json, headers=h, **kw)

    def get(self, path: str, token: str | None = None, **kw: Any) -> TestResponse:
        return self.call("GET", path, token, **kw)

    def post(
        self, path: str, token: str | None = None, json: Any = None, **kw: Any
    ) -> TestResponse:
        return self.call("POST", path, token, json=json, **kw)

    def put(self, path: str, token: str | None = None, json: Any = None, **kw: Any) -> TestResponse:
        return self.call("PUT", path, token, json=json, **kw)

    def delete(self, path: str, token: str | None = None, **kw: Any) -> TestResponse:
        return self.call("DELETE", path, token, **kw)


@dataclass
class Who:
    id: str
    token: str
    tenant: str


@dataclass
class Tenant:
    name: str
    id: str
    integration: Who
    admin: Who


class StackHelper:
    """Builds a tenant with an integration and an admin, then clinicians and patients."""

    def __init__(self, app: Flask, api: Api) -> None:
        self.app = app
        self.api = api
        self.services = app.extensions["sealednotes"]

    def tenant(self, name: str | None = None) -> Tenant:
        name = name or f"tenant-{secrets.token_hex(4)}"
        t = self.services.principals.create_tenant(name)
        integration = self.principal(name, Role.INTEGRATION)
        admin = self.principal(name, Role.ADMIN)
        return Tenant(name, t.id, integration, admin)

    def principal(self, tenant: str | Tenant, role: Role, name: str | None = None) -> Who:
        tname = tenant if isinstance(tenant, str) else tenant.name
        issued = self.services.principals.create_principal(
            tname, name or f"{role.value}-{secrets.token_hex(4)}", role
        )
        return Who(issued.principal_id, issued.token, tname)

    def clinician(self, tenant: Tenant, name: str | None = None) -> Who:
        return self.principal(tenant, Role.CLINICIAN, name)

    def patient(self, tenant: Tenant, external_id: str | None = None) -> str:
        r = self.api.post(
            "/v1/patients",
            tenant.integration.token,
            {"external_id": external_id or f"MRN-{secrets.token_hex(6)}"},
        )
        assert r.status_code == 201, r.get_json()
        return str(r.get_json()["id"])

    def add_to_care_team(self, tenant: Tenant, patient_id: str, clinician: Who) -> None:
        r = self.api.put(
            f"/v1/patients/{patient_id}/care-team/{clinician.id}", tenant.integration.token, {}
        )
        assert r.status_code in (200, 201), r.get_json()

    def patient_for(self, tenant: Tenant, clinician: Who, external_id: str | None = None) -> str:
        pid = self.patient(tenant, external_id)
        self.add_to_care_team(tenant, pid, clinician)
        return pid

    def note(
        self, clinician: Who, patient_id: str, body: str = "note body", title: str | None = "t"
    ) -> dict[str, Any]:
        r = self.api.post(
            f"/v1/patients/{patient_id}/notes",
            clinician.token,
            {"kind": "progress", "title": title, "body": body},
        )
        assert r.status_code == 201, r.get_json()
        return dict(r.get_json())


def seed_patients(
    stack: StackHelper, tenant: Tenant, clinicians: list[Who], n: int, *, with_notes: bool = True
) -> list[str]:
    """n patients on the care team of every clinician given, each with one note.

    Goes through the services (not HTTP) to keep setup fast; the keys still come
    from the real Vault.
    """
    from service.audit import Caller
    from service.auth import authenticate
    from service.notes import NoteContent

    svc = stack.services
    integration = Caller(authenticate(svc.store, svc.clock, "Bearer " + tenant.integration.token))
    author = Caller(authenticate(svc.store, svc.clock, "Bearer " + clinicians[0].token))
    ids = []
    for i in range(n):
        p = svc.patients.create(integration, f"SEED-{secrets.token_hex(6)}-{i}")
        for c in clinicians:
            svc.patients.set_care_team(integration, p.id, c.id, None)
        if with_notes:
            svc.notes.create(
                author,
                p.id,
                kind="progress",
                content=NoteContent(title=f"title {i}", body=f"body of patient {i}"),
                encounter_at=None,
            )
        ids.append(p.id)
    return ids
