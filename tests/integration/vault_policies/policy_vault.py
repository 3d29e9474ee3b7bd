"""An OpenBao for the policy tests: the policies of deploy/vault/, tokens that hold exactly one
of them, and a Transit key of another application."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac

from service.adapters.vault import VaultKeyService
from service.devtools.stack import BaoServer

POLICY_DIR = Path(__file__).resolve().parents[3] / "deploy" / "vault"
SERVICE_POLICY = "sealednotes-service"
OPS_POLICY = "sealednotes-ops"
FOREIGN_KEY = "other-app"  # a Transit key that is not Sealed Notes'


def policy_text(name: str) -> str:
    return (POLICY_DIR / f"{name}.hcl").read_text()


def token_with(root: hvac.Client, policy: str) -> str:
    # no_default_policy: the token holds exactly this policy, nothing more.
    resp = root.auth.token.create(policies=[policy], ttl="10m", no_default_policy=True)
    return str(resp["auth"]["client_token"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Vault:
    server: BaoServer
    service_token: str
    ops_token: str

    @property
    def addr(self) -> str:
        return self.server.addr

    def client(self, token: str) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token, timeout=5)

    @property
    def root(self) -> hvac.Client:
        return self.client(self.server.root_token)

    @property
    def service(self) -> hvac.Client:
        return self.client(self.service_token)

    @property
    def ops(self) -> hvac.Client:
        return self.client(self.ops_token)

    def keys(self, token: str) -> VaultKeyService:
        return VaultKeyService(addr=self.addr, token=token, timeout=5)


Op = Callable[[hvac.Client, str], Any]
