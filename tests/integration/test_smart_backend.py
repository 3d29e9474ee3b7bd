"""SMART Backend Services: an integration's backend gets a short-lived token at
POST /oauth2/token with a JWT signed by its registered key, and uses it on the FHIR facade."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner
from flask import Flask
from jwt.algorithms import ECAlgorithm

from service.access.smart import ASSERTION_TYPE
from service.cli import main as cli
from service.clock import ManualClock
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper
from tests.integration.test_idp_tokens import cli_env
from tests.oidc import ec_key, public_jwks, rsa_key, signed

TOKEN_URL = "http://localhost/oauth2/token"  # the Flask test client's URL root


def assertion(client_id: str, key: Any, *, alg: str = "ES384", kid: str = "k1", **over: Any) -> str:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
        **over,
    }
    return signed(claims, key, alg, kid)


def token_request(api: Api, client_assertion: str, **over: str) -> Any:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        "scope": "system/Patient.read system/DocumentReference.read",
        **over,
    }
    return api.client.post("/oauth2/token", data=form)


def register(app: Flask, principal_id: str, jwks: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    r = CliRunner().invoke(
        cli,
        ["principals", "smart-client", principal_id, "--jwks-file", str(path), "--json"],
        env=cli_env(app.extensions["sealednotes"].settings),
    )
    assert r.exit_code == 0, r.output
    return str(json.loads(r.stdout)["client_id"])


def test_backend_service_gets_a_short_token_and_uses_the_facade(
    make_app: AppFactory, tmp_path: Path, db_url: str
) -> None:
    clock = ManualClock(datetime.now(UTC))
    app = make_app(clock=clock)
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    key = ec_key()
    client_id = register(app, t.integration.id, public_jwks(key, "k1", "ES384"), tmp_path)
    assert client_id == t.integration.id
    stack.patient(t, "MRN-SMART-1")

    signed_assertion = assertion(client_id, key)
    r = token_request(api, signed_assertion)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["access_token"].startswith("snt_")
    assert body["scope"] == "system/Patient.read system/DocumentReference.read"
    token = body["access_token"]
    r = api.get("/fhir/R4/Patient?identifier=urn:mrn|MRN-SMART-1", token)
    assert r.status_code == 200 and r.get_json()["total"] == 1

    # The same assertion again: a replay.
    r = token_request(api, signed_assertion)
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"
    # Wrong audience, too long-lived, unknown key, another algorithm family, no jti, alg=none
    other = rsa_key()
    refused = {
        "audience": assertion(client_id, key, aud="https://elsewhere/token"),
        "lifetime": assertion(client_id, key, exp=int(clock.now().timestamp()) + 3600),
        "unknown-key": assertion(client_id, other, alg="RS384", kid="k2"),
        "signature": assertion(client_id, ec_key()),
        "unknown-client": assertion("nobody", key),
        "missing-claim": assertion(client_id, key, jti=None),
    }
    for reason, a in refused.items():
        r = token_request(api, a)
        assert r.status_code == 401, (reason, r.get_json())
        assert r.get_json() == {
            "error": "invalid_client",
            "error_description": "The client assertion was not accepted",
        }
    assert token_request(api, signed_assertion, grant_type="password").get_json()["error"] == (
        "unsupported_grant_type"
    )
    assert token_request(api, assertion(client_id, key), scope="user/*.*").status_code == 400
    r = api.client.post("/oauth2/token", json={"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"

    # The token lives five minutes.
    clock.advance(timedelta(minutes=6))
    assert api.get("/fhir/R4/Patient?identifier=MRN-SMART-1", token).status_code == 401

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT action, outcome, reason FROM audit_events"
            " WHERE action IN ('token.issue', 'auth.client-assertion') ORDER BY id"
        ).fetchall()
        stored = conn.execute("SELECT count(*) FROM tokens WHERE principal_id = %s", (client_id,))
        assert stored.fetchone() == (2,)  # the CLI's token and the SMART one, hashed
    assert rows[0][:2] == ("token.issue", "granted")
    assert [r[2] for r in rows[1:] if r[0] == "auth.client-assertion"] == ["replayed", *refused]


def test_only_integrations_register_clients_and_private_keys_are_refused(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app()
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    key = ec_key()
    path = tmp_path / "jwks.json"
    env = cli_env(app.extensions["sealednotes"].settings)
    path.write_text(json.dumps(public_jwks(key, "k1", "ES384")))
    r = CliRunner().invoke(
        cli, ["principals", "smart-client", dr.id, "--jwks-file", str(path)], env=env
    )
    assert r.exit_code != 0 and "integration" in r.output
    private = json.loads(ECAlgorithm.to_jwk(key))
    path.write_text(json.dumps({"keys": [{**private, "kid": "k1"}]}))
    r = CliRunner().invoke(
        cli, ["principals", "smart-client", t.integration.id, "--jwks-file", str(path)], env=env
    )
    assert r.exit_code != 0 and "invalid" in r.output.lower()
