"""Test helpers: a thin API client and builders for tenants, principals, patients."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
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
    """n patients on the care team of every clinician given, each with one note
    (title "title {i}", body "body of patient {i}", by the first clinician).

    Seeded in bulk, as the service's own database role (COPY; the care-team audit
    triggers fire as for any insert), with real data keys wrapped by the app's Vault
    exactly as Transit `datakey` wraps them: setup takes a moment for a thousand
    patients, and no use case's limits or budgets are spent on it.
    """
    import base64
    import json as jsonlib
    import os
    import uuid
    from datetime import UTC, datetime

    from crypto import key_context, note_aad, seal
    from service.adapters.vault import dek_key_name, parse_key_version

    svc = stack.services
    now = datetime.now(UTC)
    patients = [str(uuid.uuid4()) for _ in range(n)]
    wrapped: list[str] = []
    keys = [os.urandom(32) for _ in range(n)] if with_notes else []
    vault = svc.keys.client()
    for i in range(0, len(keys), 240):
        resp = vault.secrets.transit.encrypt_data(
            name=dek_key_name(tenant.id),
            plaintext="",
            batch_input=[
                {
                    "plaintext": base64.b64encode(k).decode(),
                    "context": base64.b64encode(
                        key_context(tenant_id=tenant.id, patient_id=p)
                    ).decode(),
                }
                for p, k in zip(patients[i : i + 240], keys[i : i + 240], strict=True)
            ],
            mount_point=svc.keys.mount,
        )
        wrapped += [r["ciphertext"] for r in resp["data"]["batch_results"]]
    with svc.store.transaction() as tx, tx.conn.cursor() as cur:
        # Test setup, done as an operator would (the care-team audit records say so).
        tx.audit.set_actor(principal_id=None, role="operator", request_id="seed", client_addr=None)
        with cur.copy(
            "COPY patients (id, tenant_id, external_id_index, created_at) FROM STDIN"
        ) as copy:
            for p in patients:
                copy.write_row((p, tenant.id, "seed:" + secrets.token_hex(16), now))
        with cur.copy("COPY care_team (patient_id, principal_id, added_at) FROM STDIN") as copy:
            for p in patients:
                for c in clinicians:
                    copy.write_row((p, c.id, now))
        if with_notes:
            notes = [str(uuid.uuid4()) for _ in range(n)]
            with cur.copy(
                "COPY patient_keys (patient_id, tenant_id, wrapped_key, key_version, created_at,"
                " updated_at) FROM STDIN"
            ) as copy:
                for p, w in zip(patients, wrapped, strict=True):
                    copy.write_row((p, tenant.id, w, parse_key_version(w), now, now))
            with cur.copy(
                "COPY notes (id, tenant_id, patient_id, kind, current_version, created_by,"
                " created_at, updated_at) FROM STDIN"
            ) as copy:
                for note, p in zip(notes, patients, strict=True):
                    copy.write_row((note, tenant.id, p, "progress", 1, clinicians[0].id, now, now))
            with cur.copy(
                "COPY note_versions (note_id, version, sealed, author_id, created_at) FROM STDIN"
            ) as copy:
                for i, (note, p, k) in enumerate(zip(notes, patients, keys, strict=True)):
                    aad = note_aad(tenant_id=tenant.id, patient_id=p, note_id=note, version=1)
                    body = jsonlib.dumps(
                        {"t": f"title {i}", "b": f"body of patient {i}"}, ensure_ascii=False
                    ).encode()
                    copy.write_row((note, 1, seal(k, body, aad=aad), clinicians[0].id, now))
    return patients


def assert_refused_outside_read_committed(url: str, statement: str, params: Any) -> None:
    """The database refuses `statement` (SN409) at REPEATABLE READ and SERIALIZABLE:
    its count would use a snapshot older than the rows other sessions committed."""
    for level in ("REPEATABLE READ", "SERIALIZABLE"):
        with psycopg.connect(url) as conn:
            conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(statement, params)
            assert raised.value.sqlstate == "SN409"


def request_records(
    db_url: str, request_id: str, columns: str = "action, outcome, reason"
) -> list[tuple[Any, ...]]:
    """The audit records of one request (its X-Request-Id), in log order: `columns` of
    each (a fixed column list written by the test, never input)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT {columns} FROM audit_events WHERE request_id = %s ORDER BY at, seq",
            (request_id,),
        ).fetchall()
    return [tuple(r) for r in rows]
