"""P13 (with P3, P11): the ops policy of deploy/vault/ against a real OpenBao.

It lets operators set up, rotate, rewrap and retire keys, size the unwrap quota and bootstrap a
fresh Vault for an AppRole service, but never read key material; and no policy, not even root,
can delete a key, because keys are created with deletion_allowed false."""

from __future__ import annotations

import uuid
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from crypto import DecryptionError, WrappedKey, key_context
from service.adapters.vault import (
    AUDIT_SIGNING_KEY,
    VaultKeyService,
    dek_key_name,
    index_key_name,
    parse_key_version,
)
from service.devtools.stack import BaoServer
from tests.integration.vault_policies.policy_vault import (
    FOREIGN_KEY,
    OPS_POLICY,
    SERVICE_POLICY,
    Op,
    Vault,
    b64,
    policy_text,
    token_with,
)

# -- the ops policy ------------------------------------------------------------------------


def test_ops_rotates_rewraps_and_retires_old_versions(vault: Vault, tenant: str) -> None:
    svc = vault.keys(vault.service_token)
    ops = vault.ops.secrets.transit
    dek = dek_key_name(tenant)
    ctx = key_context(tenant_id=tenant, patient_id="patient-1")
    new = svc.new_data_key(tenant_id=tenant, context=ctx)

    ops.rotate_key(name=dek)
    assert vault.keys(vault.ops_token).read_key(dek)["latest_version"] == 2
    rewrapped = ops.rewrap_data(name=dek, ciphertext=new.wrapped.ciphertext, context=b64(ctx))
    wrapped_v2 = WrappedKey(rewrapped["data"]["ciphertext"], 2)
    assert parse_key_version(wrapped_v2.ciphertext) == 2

    ops.update_key_configuration(name=dek, min_decryption_version=2)
    info = vault.keys(vault.ops_token).read_key(dek)
    assert info["min_decryption_version"] == 2
    assert svc.unwrap(wrapped_v2, tenant_id=tenant, context=ctx) == new.plaintext
    with pytest.raises(DecryptionError):  # version 1 is retired
        svc.unwrap(new.wrapped, tenant_id=tenant, context=ctx)


def test_ops_sizes_the_unwrap_quota_and_tunes_the_audit_context(vault: Vault, tenant: str) -> None:
    ops = vault.keys(vault.ops_token)
    ops.ensure_unwrap_quota(tenant, rate=123, interval="3m")
    quota = ops.unwrap_quota(tenant)
    assert quota is not None
    assert (quota["rate"], quota["interval"]) == (123, 180)
    assert quota["path"] == f"transit/decrypt/{dek_key_name(tenant)}"
    ops.ensure_transit_mount()  # tunes audit_non_hmac_request_keys = [context]
    tune = vault.root.sys.read_mount_configuration(path="transit")["data"]
    assert tune["audit_non_hmac_request_keys"] == ["context"]


def test_ops_creates_keys_the_way_the_service_does(vault: Vault) -> None:
    ops = vault.keys(vault.ops_token)
    tenant_id = str(uuid.uuid4())
    ops.ensure_transit_mount()  # already mounted: a read of sys/mounts
    ops.ensure_tenant_keys(tenant_id)
    ops.ensure_audit_signing_key()  # idempotent
    for name in (dek_key_name(tenant_id), index_key_name(tenant_id), AUDIT_SIGNING_KEY):
        info = ops.read_key(name)
        assert info["exportable"] is False
        assert info["allow_plaintext_backup"] is False
        assert info["deletion_allowed"] is False
    assert dek_key_name(tenant_id) in vault.ops.secrets.transit.list_keys()["data"]["keys"]


OPS_REFUSED: dict[str, Op] = {
    "export a key": lambda c, t: c.secrets.transit.export_key(
        name=dek_key_name(t), key_type="encryption-key"
    ),
    "export the audit signing key": lambda c, t: c.secrets.transit.export_key(
        name=AUDIT_SIGNING_KEY, key_type="signing-key"
    ),
    "delete a key": lambda c, t: c.secrets.transit.delete_key(name=dek_key_name(t)),
    "delete another application's key": lambda c, t: c.secrets.transit.delete_key(name=FOREIGN_KEY),
    "rotate another application's key": lambda c, t: c.secrets.transit.rotate_key(name=FOREIGN_KEY),
    "back up a key": lambda c, t: c.secrets.transit.backup_key(name=dek_key_name(t)),
    "restore a key": lambda c, t: c.secrets.transit.restore_key(
        backup="eyJ9", name=dek_key_name(t), force=True
    ),
    "allow deleting a key": lambda c, t: c.secrets.transit.update_key_configuration(
        name=dek_key_name(t), deletion_allowed=True
    ),
    "make a key exportable": lambda c, t: c.secrets.transit.update_key_configuration(
        name=dek_key_name(t), exportable=True
    ),
    "allow plaintext backup": lambda c, t: c.secrets.transit.update_key_configuration(
        name=dek_key_name(t), allow_plaintext_backup=True
    ),
    "create an exportable key": lambda c, t: c.secrets.transit.create_key(
        name=f"sealednotes-dek-{uuid.uuid4()}", key_type="aes256-gcm96", exportable=True
    ),
    "trim old key versions": lambda c, t: c.secrets.transit.trim_key(
        name=dek_key_name(t), min_version=1
    ),
    "import key material": lambda c, t: c.write(
        f"transit/keys/{dek_key_name(t)}/import_version", ciphertext="AAAA"
    ),
    "unwrap a patient key": lambda c, t: c.secrets.transit.decrypt_data(
        name=dek_key_name(t), ciphertext="vault:v1:AAAA", context=b64(b"x")
    ),
    "generate a data key": lambda c, t: c.secrets.transit.generate_data_key(
        name=dek_key_name(t), key_type="plaintext", context=b64(b"x")
    ),
    "sign as the audit log": lambda c, t: c.secrets.transit.sign_data(
        name=AUDIT_SIGNING_KEY, hash_input=b64(b"forged checkpoint")
    ),
    "write another policy": lambda c, t: c.sys.create_or_update_acl_policy(
        name="admin", policy='path "*" { capabilities = ["sudo"] }'
    ),
    "enable another auth method": lambda c, t: c.sys.enable_auth_method("userpass"),
    "log unwrapped keys in clear": lambda c, t: c.sys.tune_mount_configuration(
        path="transit", audit_non_hmac_response_keys=["plaintext"]
    ),
    "log identifiers in clear": lambda c, t: c.sys.tune_mount_configuration(
        path="transit", audit_non_hmac_request_keys=["context", "input"]
    ),
    "set a quota on something else": lambda c, t: c.write_data(
        "sys/quotas/rate-limit/global", data={"rate": 1, "path": ""}
    ),
    "mount another engine": lambda c, t: c.sys.enable_secrets_engine("kv", path="kv"),
}


@pytest.mark.parametrize("op", OPS_REFUSED.values(), ids=OPS_REFUSED.keys())
def test_ops_is_refused(vault: Vault, tenant: str, op: Op) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        op(vault.ops, tenant)


# -- nobody deletes a key --------------------------------------------------------------------


def test_not_even_root_can_delete_a_key(vault: Vault, tenant: str) -> None:
    root = vault.root.secrets.transit
    for name in (dek_key_name(tenant), index_key_name(tenant), AUDIT_SIGNING_KEY):
        assert root.read_key(name=name)["data"]["deletion_allowed"] is False
        with pytest.raises(hvac.exceptions.InvalidRequest, match="deletion is not allowed"):
            root.delete_key(name=name)
        assert root.read_key(name=name)["data"]["name"] == name


# -- ops bootstrap a fresh Vault; the service logs in with AppRole ------------------------


def test_ops_bootstrap_a_fresh_vault_for_an_approle_service(tmp_path: Path) -> None:
    server = BaoServer(tmp_path / "bao", dev=True).start()
    try:
        root = hvac.Client(url=server.addr, token=server.root_token, timeout=5)
        root.sys.create_or_update_policy(name=OPS_POLICY, policy=policy_text(OPS_POLICY))
        ops_token = token_with(root, OPS_POLICY)
        ops = hvac.Client(url=server.addr, token=ops_token, timeout=5)

        # `sealednotes vault-setup` with ops credentials: mount, keys.
        setup = VaultKeyService(addr=server.addr, token=ops_token, timeout=5)
        setup.ensure_transit_mount()
        setup.ensure_audit_signing_key()
        tenant_id = str(uuid.uuid4())
        setup.ensure_tenant_keys(tenant_id)

        # The service policy and its AppRole.
        ops.sys.create_or_update_acl_policy(name=SERVICE_POLICY, policy=policy_text(SERVICE_POLICY))
        ops.sys.enable_auth_method("approle")
        ops.auth.approle.create_or_update_approle(
            role_name=SERVICE_POLICY,
            token_policies=[SERVICE_POLICY],
            token_no_default_policy=True,
            token_ttl="10m",
        )
        role_id = ops.auth.approle.read_role_id(role_name=SERVICE_POLICY)["data"]["role_id"]
        secret_id = ops.auth.approle.generate_secret_id(role_name=SERVICE_POLICY)["data"][
            "secret_id"
        ]
        with pytest.raises(hvac.exceptions.Forbidden):
            ops.auth.approle.create_or_update_approle(role_name="admin", token_policies=["root"])

        # The service, logged in through AppRole, works and is still refused export.
        svc = VaultKeyService(addr=server.addr, role_id=role_id, secret_id=secret_id, timeout=5)
        ctx = key_context(tenant_id=tenant_id, patient_id="patient-1")
        new = svc.new_data_key(tenant_id=tenant_id, context=ctx)
        assert svc.unwrap(new.wrapped, tenant_id=tenant_id, context=ctx) == new.plaintext
        assert svc.verify(b"checkpoint", svc.sign(b"checkpoint"))

        approle = hvac.Client(url=server.addr, timeout=5)
        approle.auth.approle.login(role_id=role_id, secret_id=secret_id)
        assert approle.auth.token.lookup_self()["data"]["policies"] == [SERVICE_POLICY]
        with pytest.raises(hvac.exceptions.Forbidden):
            approle.secrets.transit.export_key(
                name=dek_key_name(tenant_id), key_type="encryption-key"
            )
    finally:
        server.stop()
