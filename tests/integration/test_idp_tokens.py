"""Tokens from a tenant's identity provider: a clinician signs in at a real OpenID issuer
(OpenBao's identity tokens, RS256, keys published at .well-known/keys) and uses its JWT on
the REST API and the FHIR facade. Same principal, same budget, same audit as an opaque token;
every refused token is a 401 and an audit record without the token."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from flask import Flask

from service.cli import main as cli
from service.clock import ManualClock
from service.config import IdpSettings, Settings
from service.devtools.stack import BaoServer
from service.models import Role
from tests.conftest import LOG_LINES, AppFactory
from tests.helpers import Api, StackHelper, Tenant, Who, seed_patients
from tests.oidc import (
    AUDIENCE,
    OTHER_ROLE,
    ROLE_CLAIM,
    Issuer,
    b64url,
    issuer_for,
    rsa_key,
    segments,
    signed,
    unsigned,
)

FHIR = "application/fhir+json"


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SEALEDNOTES_DATABASE_URL": settings.database_url,
        "VAULT_ADDR": settings.vault_addr,
        "VAULT_TOKEN": settings.vault_token or "",
    }


def run_cli(app: Flask, *args: str) -> dict[str, Any]:
    r = CliRunner().invoke(
        cli, [*args, "--json"], env=cli_env(app.extensions["sealednotes"].settings)
    )
    assert r.exit_code == 0, r.output
    return dict(json.loads(r.stdout))


@pytest.fixture
def issuer(bao: BaoServer) -> Issuer:
    return issuer_for(bao)


def trust(app: Flask, tenant: Tenant, issuer: Issuer, *extra: str) -> dict[str, Any]:
    return run_cli(
        app,
        "tenants",
        "idp",
        "set",
        tenant.name,
        "--issuer",
        issuer.issuer,
        "--jwks-url",
        issuer.jwks_url,
        "--audience",
        AUDIENCE,
        "--role-claim",
        ROLE_CLAIM,
        "--role-map",
        "clinician=doctor,nurse",
        "--role-map",
        "auditor=compliance",
        *extra,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def env(make_app: AppFactory, clock: ManualClock) -> Iterator[tuple[Flask, Api, StackHelper]]:
    app = make_app(clock=clock, idp=IdpSettings(jwks_min_refresh_seconds=0.5))
    api = Api(app.test_client())
    yield app, api, StackHelper(app, api)


def audit_rows(db_url: str, action: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT tenant_id::text, principal_id::text, outcome, reason, request_id"
            " FROM audit_events WHERE action = %s ORDER BY id",
            (action,),
        ).fetchall()


def test_clinician_signed_in_at_the_issuer_uses_rest_and_fhir_on_one_budget(
    env: tuple[Flask, Api, StackHelper], issuer: Issuer, db_url: str
) -> None:
    app, api, stack = env
    t = stack.tenant()
    shown = trust(app, t, issuer, "--allow-create")
    assert shown["issuer"] == issuer.issuer and shown["allow_create"] is True
    assert run_cli(app, "tenants", "idp", "show", t.name)["idp"]["audience"] == AUDIENCE

    sub = issuer.user(f"dr-{t.id[:8]}", "doctor")
    token = issuer.id_token(f"dr-{t.id[:8]}")
    assert segments(token)[0]["alg"] == "RS256" and segments(token)[1]["sub"] == sub

    # First use creates the principal (role from the claim), then it is the same one.
    me = api.get("/v1/me", token)
    assert me.status_code == 200, me.get_json()
    dr = me.get_json()
    assert dr["role"] == "clinician" and dr["tenant_id"] == t.id and dr["name"] == f"idp:{sub}"
    assert api.get("/v1/me", issuer.id_token(f"dr-{t.id[:8]}")).get_json()["id"] == dr["id"]
    created = [r for r in audit_rows(db_url, "principal.create") if r[1] == dr["id"]]
    assert created and created[0][2:4] == ("granted", f"target={dr['id']} role=clinician via=idp")

    # The same principal also holds an opaque token (integration accounts, scripts).
    opaque = run_cli(app, "principals", "token", dr["id"])["token"]
    assert api.get("/v1/me", opaque).get_json()["id"] == dr["id"]

    who = Who(dr["id"], opaque, t.name)
    a, b, c, d = seed_patients(stack, t, [who], 4, with_notes=False)
    # REST with the JWT
    r = api.post(f"/v1/patients/{a}/notes", token, {"kind": "progress", "title": "T", "body": "B"})
    assert r.status_code == 201, r.get_json()
    note_a = r.get_json()["id"]
    assert api.get(f"/v1/notes/{note_a}", token).get_json()["body"] == "B"
    # FHIR with the JWT
    r = api.get(f"/fhir/R4/DocumentReference/{note_a}", token)
    assert r.status_code == 200 and r.mimetype == FHIR
    assert r.get_json()["subject"] == {"reference": f"Patient/{a}"}
    for pid in (b, c, d):
        stack.note(Who(dr["id"], opaque, t.name), pid, body=f"body {pid}")

    # An admin lowers this clinician's budget to 3 distinct patients per hour.
    r = api.put(f"/v1/admin/principals/{dr['id']}/budget", t.admin.token, {"per_hour": 3})
    assert r.status_code == 200
    # a is spent (JWT); b through the opaque token, c through FHIR with the JWT:
    r = api.get(f"/v1/patients/{b}/notes?include=content", opaque)
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "1"
    r = api.get(f"/fhir/R4/DocumentReference?patient={c}", token)
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "0"
    # the 4th distinct patient is refused whichever token asks, REST or FHIR
    r = api.get(f"/fhir/R4/DocumentReference?patient={d}", token)
    assert r.status_code == 429 and r.mimetype == FHIR and int(r.headers["Retry-After"]) > 0
    assert r.get_json()["resourceType"] == "OperationOutcome"
    assert r.get_json()["issue"][0]["code"] == "throttled"
    r = api.get(f"/v1/patients/{d}/notes?include=content", opaque)
    assert r.status_code == 429 and r.get_json()["scope"] == "principal-hour"
    r = api.get(f"/v1/patients/{d}/notes?include=content", token)
    assert r.status_code == 429
    # ...while re-reading released patients stays free with either token
    assert api.get(f"/v1/notes/{note_a}", opaque).status_code == 200
    assert api.get(f"/fhir/R4/DocumentReference?patient={b}", token).status_code == 200
    assert api.get("/v1/me", opaque).get_json()["budget"]["hour"]["remaining"] == 0

    # Denials counted across both tokens suspend the one account: 3 so far, 2 more.
    assert api.get(f"/fhir/R4/DocumentReference?patient={d}", opaque).status_code == 429
    assert api.get(f"/v1/patients/{d}/notes?include=content", token).status_code == 429
    for t_ in (token, opaque):
        r = api.get("/fhir/R4/DocumentReference?patient=" + a, t_)
        assert r.status_code == 403 and r.get_json()["resourceType"] == "OperationOutcome"
        assert api.get("/v1/me", t_).get_json()["type"].endswith("/account-suspended")

    with psycopg.connect(db_url) as conn:
        by = conn.execute(
            "SELECT DISTINCT principal_id::text FROM audit_events WHERE action LIKE 'note.%%'"
            " AND tenant_id = %s",
            (t.id,),
        ).fetchall()
    assert by == [(dr["id"],)]  # one principal in the log, whichever token was used


def test_refused_tokens_answer_401_and_are_audited_without_the_token(
    env: tuple[Flask, Api, StackHelper], issuer: Issuer, clock: ManualClock, db_url: str
) -> None:
    app, api, stack = env
    t = stack.tenant()
    trust(app, t, issuer, "--allow-create")
    name = f"nurse-{t.id[:8]}"
    issuer.user(name, "nurse")
    good = issuer.id_token(name)
    head, claims = segments(good)
    assert api.get("/v1/me", good).status_code == 200

    forger = rsa_key()
    published = requests.get(issuer.jwks_url, timeout=5).json()["keys"]
    pem = jwt.PyJWK(next(k for k in published if k["kid"] == head["kid"])).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # HMAC-SHA256 keyed with the issuer's public key (the classic algorithm confusion).
    signing_input = f"{b64url(json.dumps({'alg': 'HS256', 'kid': head['kid']}).encode())}." + (
        b64url(json.dumps(claims).encode())
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    hmac_with_public_key = f"{signing_input}.{b64url(mac)}"
    cases = {
        "signature": signed(claims, forger, "RS256", head["kid"]),  # forged: another key
        "unknown-key": signed(claims, forger, "RS256", "not-a-published-kid"),
        "audience": issuer.id_token(name, OTHER_ROLE),  # a real token for another app
        "algorithm": unsigned(claims),  # alg=none
        "unknown-issuer": signed({**claims, "iss": "https://evil.example"}, forger, "RS256", "k"),
    }
    cases_hmac = {"algorithm": hmac_with_public_key}
    sent: list[tuple[str, str, str]] = []
    for reason, token in [*cases.items(), *cases_hmac.items()]:
        for path in ("/v1/me", "/fhir/R4/Patient?identifier=x"):
            rid = f"refused-{len(sent)}"
            r = api.get(path, token, headers={"X-Request-Id": rid})
            assert r.status_code == 401, (reason, path, r.get_json())
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            if path.startswith("/fhir"):
                assert r.mimetype == FHIR and r.get_json()["issue"][0]["code"] == "login"
            sent.append((reason, rid, token))
    # expired: the issuer's own token, one hour later (15 min TTL, 30 s leeway)
    clock.advance(timedelta(hours=1))
    r = api.get("/fhir/R4/Patient?identifier=x", good, headers={"X-Request-Id": "refused-exp"})
    assert r.status_code == 401
    sent.append(("expired", "refused-exp", good))

    rows = {r[4]: r for r in audit_rows(db_url, "auth.token")}
    for reason, rid, _token in sent:
        tenant_id, _principal, outcome, recorded, _ = rows[rid]
        assert (outcome, recorded) == ("denied", f"jwt:{reason}"), rid
        assert tenant_id == (None if reason == "unknown-issuer" else t.id), rid
    # the expired token was genuine: the record names whose token it was
    assert rows["refused-exp"][1] is not None
    with psycopg.connect(db_url) as conn:
        table = str(conn.execute("SELECT * FROM audit_events").fetchall())
    for _reason, _rid, token in sent:
        signature = token.rsplit(".", 1)[-1] or token.split(".")[1]
        assert signature not in table
        assert not any(signature in line for line in LOG_LINES)


def test_subjects_link_to_existing_principals_and_roles_come_from_the_issuer(
    env: tuple[Flask, Api, StackHelper], issuer: Issuer, db_url: str
) -> None:
    app, api, stack = env
    t = stack.tenant()
    trust(app, t, issuer)  # no --allow-create
    dr = stack.clinician(t)
    sub = issuer.user(f"linked-{t.id[:8]}", "doctor")
    token = issuer.id_token(f"linked-{t.id[:8]}")
    assert api.get("/v1/me", token).status_code == 401  # unknown, and no creation
    run_cli(app, "principals", "link-subject", dr.id, "--subject", sub)
    me = api.get("/v1/me", token).get_json()
    assert me["id"] == dr.id and me["role"] == "clinician"

    # The issuer says this person is compliance staff, not a clinician: refused.
    sub2 = issuer.user(f"auditor-{t.id[:8]}", "compliance")
    run_cli(app, "principals", "link-subject", stack.clinician(t).id, "--subject", sub2)
    assert api.get("/v1/me", issuer.id_token(f"auditor-{t.id[:8]}")).status_code == 401
    # Creation on first use never makes an admin unless the map says so.
    trust(app, t, issuer, "--allow-create")
    issuer.user(f"boss-{t.id[:8]}", "admin")
    assert api.get("/v1/me", issuer.id_token(f"boss-{t.id[:8]}")).status_code == 401
    reasons = [r[3] for r in audit_rows(db_url, "auth.token") if r[0] == t.id]
    assert reasons == ["jwt:unknown-principal", "jwt:role-mismatch", "jwt:unmapped-role"]
    # A second tenant cannot claim the same issuer.
    other = stack.tenant()
    r = CliRunner().invoke(
        cli,
        [
            "tenants",
            "idp",
            "set",
            other.name,
            "--issuer",
            issuer.issuer,
            "--jwks-url",
            issuer.jwks_url,
            "--audience",
            AUDIENCE,
        ],
        env=cli_env(app.extensions["sealednotes"].settings),
    )
    assert r.exit_code != 0 and "already trusts" in r.output
    # Removing the issuer stops its tokens at once.
    assert run_cli(app, "tenants", "idp", "remove", t.name)["removed"] is True
    assert api.get("/v1/me", token).status_code == 401


def test_issuer_key_rotation_is_followed_and_unknown_kids_are_rate_limited(
    env: tuple[Flask, Api, StackHelper], issuer: Issuer
) -> None:
    app, api, stack = env
    t = stack.tenant()
    trust(app, t, issuer, "--allow-create")
    name = f"rot-{t.id[:8]}"
    issuer.user(name, "doctor")
    jwks = app.extensions["sealednotes"].idp.jwks
    assert api.get("/v1/me", issuer.id_token(name)).status_code == 200
    fetches = jwks.fetches
    assert api.get("/v1/me", issuer.id_token(name)).status_code == 200
    assert jwks.fetches == fetches  # cached

    # OpenBao publishes its next key ahead of a rotation: two rotations bring a key that
    # was not published when this worker cached the keys.
    issuer.rotate()
    issuer.rotate()
    rotated = issuer.id_token(name)
    assert segments(rotated)[0]["kid"] in issuer.published_kids()
    time.sleep(0.6)  # past the minimum refresh interval of this app (0.5 s)
    assert api.get("/v1/me", rotated).status_code == 200  # new kid: keys refetched
    assert jwks.fetches == fetches + 1

    # A flood of unknown kids costs at most one fetch per interval.
    _, claims = segments(rotated)
    forger = rsa_key()
    for i in range(20):
        token = signed(claims, forger, "RS256", f"bogus-{i}")
        assert api.get("/v1/me", token).status_code == 401
    assert jwks.fetches <= fetches + 2


def test_created_principals_take_the_mapped_role(
    env: tuple[Flask, Api, StackHelper], issuer: Issuer
) -> None:
    app, api, stack = env
    t = stack.tenant()
    trust(app, t, issuer, "--allow-create")
    issuer.user(f"aud-{t.id[:8]}", "compliance")
    token = issuer.id_token(f"aud-{t.id[:8]}")
    assert api.get("/v1/me", token).get_json()["role"] == Role.AUDITOR.value
    assert api.get("/fhir/R4/AuditEvent?_count=5", token).status_code == 200
