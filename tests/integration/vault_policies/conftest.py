"""Fixtures of the Vault policy tests: a dev OpenBao per module with both policies loaded,
and a fresh tenant whose keys are created the way the service creates them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import hvac
import pytest

from service.adapters.vault import VaultKeyService
from service.devtools.stack import BaoServer
from tests.integration.vault_policies.policy_vault import (
    FOREIGN_KEY,
    OPS_POLICY,
    SERVICE_POLICY,
    Vault,
    policy_text,
    token_with,
)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    server = BaoServer(tmp_path_factory.mktemp("vault-policies") / "bao", dev=True).start()
    try:
        setup = VaultKeyService(addr=server.addr, token=server.root_token, timeout=5)
        setup.ensure_transit_mount()
        setup.ensure_audit_signing_key()
        root = hvac.Client(url=server.addr, token=server.root_token, timeout=5)
        root.secrets.transit.create_key(name=FOREIGN_KEY, key_type="aes256-gcm96")
        for name in (SERVICE_POLICY, OPS_POLICY):
            root.sys.create_or_update_policy(name=name, policy=policy_text(name))
        yield Vault(
            server=server,
            service_token=token_with(root, SERVICE_POLICY),
            ops_token=token_with(root, OPS_POLICY),
        )
    finally:
        server.stop()


@pytest.fixture
def tenant(vault: Vault) -> str:
    """A fresh tenant whose keys are created the way the service creates them."""
    tenant_id = str(uuid.uuid4())
    vault.keys(vault.server.root_token).ensure_tenant_keys(tenant_id)
    return tenant_id
