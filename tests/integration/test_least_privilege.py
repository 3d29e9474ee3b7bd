"""P13: the service runs on its AppRole with the least-privilege policy, and keeps
working across token renewals and re-logins."""

from __future__ import annotations

import json
import logging
import time

import hvac
import hvac.exceptions
import pytest
from click.testing import CliRunner
from flask import Flask

from service.adapters.vault import VaultKeyService, dek_key_name
from service.cli import main as cli
from service.devtools.stack import BaoServer
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper


def vault_setup(app: Flask, *args: str) -> dict[str, object]:
    s = app.extensions["sealednotes"].settings
    env = {
        "SEALEDNOTES_DATABASE_URL": s.database_url,
        "VAULT_ADDR": s.vault_addr,
        "VAULT_TOKEN": s.vault_token or "",
    }
    r = CliRunner().invoke(cli, ["vault-setup", "--json", *args], env=env)
    assert r.exit_code == 0, r.output
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_service_on_its_approle_works_and_cannot_manage_keys(
    app: Flask, stack: StackHelper, make_app: AppFactory, bao: BaoServer
) -> None:
    t = stack.tenant()  # tenants (and their keys) are created with ops credentials
    dr = stack.clinician(t)
    setup = vault_setup(app, "--issue-secret-id")
    assert setup["policies"] == ["sealednotes-service", "sealednotes-ops"]
    approle = setup["approle"]
    assert isinstance(approle, dict) and approle["secret_id"]

    service_app = make_app(
        vault_token=None, vault_role_id=approle["role_id"], vault_secret_id=approle["secret_id"]
    )
    api = Api(service_app.test_client())
    pid = stack.patient_for(t, dr)
    r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "progress", "body": "hi"})
    assert r.status_code == 201
    assert api.get(f"/v1/notes/{r.get_json()['id']}", dr.token).get_json()["body"] == "hi"
    r = api.post("/v1/patients", t.integration.token, {"external_id": "MRN-approle"})
    assert r.status_code == 201  # blind index (HMAC) allowed
    service_app.extensions["sealednotes"].audit_service.checkpoint()  # signing allowed

    token = service_app.extensions["sealednotes"].keys.client().token
    assert token != bao.root_token
    client = hvac.Client(url=bao.addr, token=token)
    name = dek_key_name(t.id)
    refused = [
        lambda: client.secrets.transit.export_key(name=name, key_type="encryption-key"),
        lambda: client.secrets.transit.delete_key(name=name),
        lambda: client.secrets.transit.rotate_key(name=name),
        lambda: client.secrets.transit.update_key_configuration(
            name=name, min_decryption_version=1
        ),
        lambda: client.secrets.transit.create_key(name="sealednotes-dek-rogue"),
        lambda: client.sys.read_policy("sealednotes-service"),
    ]
    for attempt in refused:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()


def test_short_lived_tokens_are_renewed_and_replaced(
    app: Flask,
    stack: StackHelper,
    make_app: AppFactory,
    bao: BaoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """3-second tokens (6-second max): the service renews, then logs in again."""
    vault_setup(app)  # policies
    root = VaultKeyService(addr=bao.addr, token=bao.root_token)
    role_id = root.ensure_approle(
        "sealednotes-service-short",
        ["sealednotes-service"],
        token_ttl="3s",
        token_max_ttl="6s",
    )
    secret_id = root.new_secret_id("sealednotes-service-short")
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    caplog.set_level(logging.INFO, logger="service.adapters.vault")
    service_app = make_app(
        vault_token=None, vault_role_id=role_id, vault_secret_id=secret_id, key_cache_ttl=0.5
    )
    api = Api(service_app.test_client())
    keys = service_app.extensions["sealednotes"].keys
    tokens, statuses = set(), []
    deadline = time.monotonic() + 15  # fifteen seconds: renewals, then new logins
    while time.monotonic() < deadline:
        r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "other", "body": "tick"})
        statuses.append(r.status_code)
        r = api.get(f"/v1/notes/{r.get_json()['id']}", dr.token)  # unwraps: cache TTL 0.5 s
        statuses.append(r.status_code)
        tokens.add(keys.client().token)
        time.sleep(0.25)
    assert set(statuses) == {200, 201}, statuses
    assert len(tokens) >= 3  # the 6 s max TTL forced new logins, again and again
    messages = [
        r.getMessage() for r in caplog.records if r.name.startswith("service.adapters.vault")
    ]
    assert "vault token renewed" in messages  # renewed before expiry...
    assert any(m.startswith("vault token renewal failed") for m in messages)  # ...then re-login
