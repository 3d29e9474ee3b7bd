"""P3: wrapped keys are useless without Vault; Transit keys are not exportable."""

from __future__ import annotations

import hvac
import hvac.exceptions
import pytest
from flask import Flask

from service.adapters.vault import dek_key_name, index_key_name
from service.devtools.stack import BaoServer, free_port
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper


def test_transit_keys_are_not_exportable(stack: StackHelper, bao: BaoServer) -> None:
    t = stack.tenant()
    client = hvac.Client(url=bao.addr, token=bao.root_token)
    for name in (dek_key_name(t.id), index_key_name(t.id)):
        info = client.secrets.transit.read_key(name=name)["data"]
        assert info["exportable"] is False
        assert info["allow_plaintext_backup"] is False
        with pytest.raises(hvac.exceptions.VaultError):
            client.secrets.transit.export_key(name=name, key_type="encryption-key")
    info = client.secrets.transit.read_key(name=dek_key_name(t.id))["data"]
    assert info["derived"] is True  # context-bound: tenant + patient


def test_without_vault_nothing_decrypts(
    api: Api, app: Flask, stack: StackHelper, make_app: AppFactory
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="needs vault to read")
    assert api.get(f"/v1/notes/{note['id']}", dr.token).status_code == 200

    # Same database, but the key service is gone: a fresh worker (empty cache)
    # must refuse, with no local fallback.
    dead = make_app(vault_addr=f"http://127.0.0.1:{free_port()}")
    r = dead.test_client().get(
        f"/v1/notes/{note['id']}", headers={"Authorization": f"Bearer {dr.token}"}
    )
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.get_json()["type"].endswith("/key-service-unavailable")
    assert "needs vault" not in r.get_data(as_text=True)
