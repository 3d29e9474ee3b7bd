"""A real OpenID issuer for the tests: the OpenBao dev server of the `bao` fixture.

OpenBao's identity secrets engine issues RS256 JWTs (`identity/oidc/token/<role>`) for an
entity signed in with userpass, and publishes its keys at
`<addr>/v1/identity/oidc/.well-known/keys`. Setup is idempotent: several test modules share
the session's server.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.devtools.stack import BaoServer

KEY = "sealednotes-test"
AUDIENCE = "sealednotes-ehr"
OTHER_AUDIENCE = "some-other-app"
ROLE = "ehr"  # tokens for AUDIENCE, with the entity's `role` metadata as `sn_role`
OTHER_ROLE = "other-app"  # tokens for OTHER_AUDIENCE
ROLE_CLAIM = "sn_role"
TEMPLATE = '{"sn_role": {{identity.entity.metadata.role}}, "username": {{identity.entity.name}}}'
POLICY = "sealednotes-test-oidc"


@dataclass
class Issuer:
    bao: BaoServer
    accessor: str = ""
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (password, sub)

    @property
    def issuer(self) -> str:
        return f"{self.bao.addr}/v1/identity/oidc"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/keys"

    def _call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        r = requests.request(
            method,
            f"{self.bao.addr}/v1/{path}",
            json=body,
            headers={"X-Vault-Token": token or self.bao.root_token},
            timeout=10,
        )
        assert r.status_code < 300, (path, r.status_code, r.text)
        return r.json() if r.text else None

    def setup(self) -> Issuer:
        auths = self._call("GET", "sys/auth")
        if "userpass/" not in auths:
            self._call("POST", "sys/auth/userpass", {"type": "userpass"})
            auths = self._call("GET", "sys/auth")
        self.accessor = auths["userpass/"]["accessor"]
        self._call("POST", "identity/oidc/config", {"issuer": self.bao.addr})
        self._call(
            "POST",
            f"identity/oidc/key/{KEY}",
            {
                "algorithm": "RS256",
                "allowed_client_ids": [AUDIENCE, OTHER_AUDIENCE],
                "verification_ttl": "2h",
                "rotation_period": "24h",
            },
        )
        for role, audience in ((ROLE, AUDIENCE), (OTHER_ROLE, OTHER_AUDIENCE)):
            self._call(
                "POST",
                f"identity/oidc/role/{role}",
                {"key": KEY, "client_id": audience, "ttl": "15m", "template": TEMPLATE},
            )
        self._call(
            "POST",
            f"sys/policies/acl/{POLICY}",
            {"policy": 'path "identity/oidc/token/*" { capabilities = ["read"] }'},
        )
        return self

    def user(self, name: str, role: str) -> str:
        """A userpass user with an entity whose metadata carries `role`; returns its `sub`."""
        if name in self.users:
            return self.users[name][1]
        password = secrets.token_urlsafe(12)
        self._call(
            "POST",
            f"auth/userpass/users/{name}",
            {"password": password, "token_policies": [POLICY]},
        )
        entity = self._call("POST", "identity/entity", {"name": name, "metadata": {"role": role}})
        entity_id = entity["data"]["id"]
        self._call(
            "POST",
            "identity/entity-alias",
            {"name": name, "canonical_id": entity_id, "mount_accessor": self.accessor},
        )
        self.users[name] = (password, entity_id)
        return str(entity_id)

    def login(self, name: str) -> str:
        """Sign the user in with userpass (a Vault token)."""
        password, _sub = self.users[name]
        r = requests.post(
            f"{self.bao.addr}/v1/auth/userpass/login/{name}",
            json={"password": password},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["auth"]["client_token"])

    def id_token(self, name: str, role: str = ROLE) -> str:
        """Sign in, then ask the issuer for a JWT (RS256) for the role's audience."""
        data = self._call("GET", f"identity/oidc/token/{role}", token=self.login(name))
        return str(data["data"]["token"])

    def rotate(self) -> None:
        self._call("POST", f"identity/oidc/key/{KEY}/rotate", {"verification_ttl": "2h"})

    def published_kids(self) -> list[str]:
        keys = requests.get(self.jwks_url, timeout=10).json()["keys"]
        return [k["kid"] for k in keys]


_ISSUERS: dict[str, Issuer] = {}
_LOCK = threading.Lock()


def issuer_for(bao: BaoServer) -> Issuer:
    with _LOCK:
        if bao.addr not in _ISSUERS:
            _ISSUERS[bao.addr] = Issuer(bao).setup()
        return _ISSUERS[bao.addr]


# -- hand-made tokens for the negative cases --------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(body))),
    )


def unsigned(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """alg=none."""
    head = {"alg": "none", "typ": "JWT", **(header or {})}
    return f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}."


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def signed(claims: dict[str, Any], key: Any, alg: str, kid: str) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def public_jwks(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algo.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": kid, "alg": alg, "use": "sig"}]}


def now() -> int:
    return int(time.time())
