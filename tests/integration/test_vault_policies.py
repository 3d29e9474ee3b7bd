"""P13 (with P3, P11): the Vault policies in deploy/vault/ against a real OpenBao.

The service policy lets the service use its Transit keys (data keys, blind
index, audit signatures) and nothing else; the ops policy lets operators set
up, rotate and retire keys but never read key material; and no policy, not
even root, can delete a key, because keys are created with deletion_allowed
false.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

POLICY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "vault"
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


# -- the service policy: what it allows ---------------------------------------------------


def test_service_wraps_and_unwraps_data_keys(vault: Vault, tenant: str) -> None:
    svc = vault.keys(vault.service_token)
    ctx = key_context(tenant_id=tenant, patient_id="patient-1")

    new = svc.new_data_key(tenant_id=tenant, context=ctx)
    assert len(new.plaintext) == 32
    assert new.wrapped.key_version == 1
    assert svc.unwrap(new.wrapped, tenant_id=tenant, context=ctx) == new.plaintext

    # The wrapped key is bound to its patient (derivation context).
    other = key_context(tenant_id=tenant, patient_id="patient-2")
    with pytest.raises(DecryptionError):
        svc.unwrap(new.wrapped, tenant_id=tenant, context=other)


def test_service_unwraps_one_key_per_request_only(vault: Vault, tenant: str) -> None:
    """P15: batch unwraps are refused (the workers never send them)."""
    svc = vault.keys(vault.service_token)
    ctx = key_context(tenant_id=tenant, patient_id="patient-1")
    new = svc.new_data_key(tenant_id=tenant, context=ctx)
    item = {"ciphertext": new.wrapped.ciphertext, "context": b64(ctx)}
    t = vault.service.secrets.transit
    with pytest.raises(hvac.exceptions.Forbidden):
        t.decrypt_data(name=dek_key_name(tenant), ciphertext="", batch_input=[item, item])
    with pytest.raises(hvac.exceptions.Forbidden):  # a batch of one is still a batch
        t.decrypt_data(name=dek_key_name(tenant), ciphertext="", batch_input=[item])
    plain = t.decrypt_data(
        name=dek_key_name(tenant), ciphertext=item["ciphertext"], context=item["context"]
    )
    assert base64.b64decode(plain["data"]["plaintext"]) == new.plaintext


def test_service_computes_the_blind_index(vault: Vault, tenant: str) -> None:
    svc = vault.keys(vault.service_token)
    mrn = svc.blind_index(tenant_id=tenant, value="MRN-0042")
    assert mrn == svc.blind_index(tenant_id=tenant, value="MRN-0042")
    assert mrn == vault.keys(vault.server.root_token).blind_index(
        tenant_id=tenant, value="MRN-0042"
    )
    assert mrn != svc.blind_index(tenant_id=tenant, value="MRN-0043")
    assert "MRN-0042" not in mrn
    # The URL form transit/hmac/<key>/<algorithm> is granted too and agrees.
    url_form = vault.service.write(
        f"transit/hmac/{index_key_name(tenant)}/sha2-256", input=b64(b"MRN-0042"), key_version=1
    )
    assert url_form["data"]["hmac"] == mrn


def test_service_signs_and_verifies_audit_checkpoints(vault: Vault) -> None:
    svc = vault.keys(vault.service_token)
    signature = svc.sign(b"checkpoint 17: chain head abc")
    assert svc.verify(b"checkpoint 17: chain head abc", signature)
    assert not svc.verify(b"checkpoint 17: chain head abd", signature)


def test_service_token_can_renew_itself_and_see_vault_health(vault: Vault) -> None:
    client = vault.service
    assert client.auth.token.lookup_self()["data"]["policies"] == [SERVICE_POLICY]
    client.auth.token.renew_self()
    assert vault.keys(vault.service_token).health()["ok"] is True


# -- the service policy: what it refuses ---------------------------------------------------

Op = Callable[[hvac.Client, str], Any]

SERVICE_REFUSED: dict[str, Op] = {
    "export the data-key key": lambda c, t: c.secrets.transit.export_key(
        name=dek_key_name(t), key_type="encryption-key"
    ),
    "export the audit signing key": lambda c, t: c.secrets.transit.export_key(
        name=AUDIT_SIGNING_KEY, key_type="signing-key"
    ),
    "delete a key": lambda c, t: c.secrets.transit.delete_key(name=dek_key_name(t)),
    "rotate a key": lambda c, t: c.secrets.transit.rotate_key(name=dek_key_name(t)),
    "configure a key": lambda c, t: c.secrets.transit.update_key_configuration(
        name=dek_key_name(t), min_decryption_version=1
    ),
    "allow deleting a key": lambda c, t: c.secrets.transit.update_key_configuration(
        name=dek_key_name(t), deletion_allowed=True
    ),
    "create a new key": lambda c, t: c.secrets.transit.create_key(
        name=f"sealednotes-dek-{uuid.uuid4()}", key_type="aes256-gcm96"
    ),
    "trim old key versions": lambda c, t: c.secrets.transit.trim_key(
        name=dek_key_name(t), min_version=1
    ),
    "back up a key": lambda c, t: c.read(f"transit/backup/{dek_key_name(t)}"),
    "read a policy": lambda c, t: c.sys.read_acl_policy(name=SERVICE_POLICY),
    "write a policy": lambda c, t: c.sys.create_or_update_acl_policy(
        name=SERVICE_POLICY, policy='path "transit/*" { capabilities = ["sudo"] }'
    ),
    "list keys": lambda c, t: c.secrets.transit.list_keys(),
    "mount an engine": lambda c, t: c.sys.enable_secrets_engine("transit", path="transit-2"),
    "hmac with the data-key key": lambda c, t: c.secrets.transit.generate_hmac(
        name=dek_key_name(t), hash_input=b64(b"x")
    ),
    "wrap with the index key": lambda c, t: c.secrets.transit.encrypt_data(
        name=index_key_name(t), plaintext=b64(b"x")
    ),
    "use another application's key": lambda c, t: c.secrets.transit.encrypt_data(
        name=FOREIGN_KEY, plaintext=b64(b"x")
    ),
    # P15: nothing the API workers never call.
    "wrap with the data-key key": lambda c, t: c.secrets.transit.encrypt_data(
        name=dek_key_name(t), plaintext=b64(bytes(32)), context=b64(b"x")
    ),
    "rewrap a data key": lambda c, t: c.secrets.transit.rewrap_data(
        name=dek_key_name(t), ciphertext="vault:v1:AAAA", context=b64(b"x")
    ),
    "read key metadata": lambda c, t: c.secrets.transit.read_key(name=dek_key_name(t)),
    "unwrap with an unexpected parameter": lambda c, t: c.write_data(
        f"transit/decrypt/{dek_key_name(t)}",
        data={"ciphertext": "vault:v1:AAAA", "context": b64(b"x"), "x" * 5000: "y"},
    ),
    "hash identifiers in batch": lambda c, t: c.write_data(
        f"transit/hmac/{index_key_name(t)}", data={"batch_input": [{"input": b64(b"MRN-1")}]}
    ),
    "sign in batch": lambda c, t: c.write_data(
        f"transit/sign/{AUDIT_SIGNING_KEY}", data={"batch_input": [{"input": b64(b"x")}]}
    ),
    "read the unwrap quota": lambda c, t: c.read(f"sys/quotas/rate-limit/sealednotes-unwrap-{t}"),
    "lift the unwrap quota": lambda c, t: c.write_data(
        f"sys/quotas/rate-limit/sealednotes-unwrap-{t}", data={"rate": 1e9}
    ),
    "log unwrapped keys in clear": lambda c, t: c.sys.tune_mount_configuration(
        path="transit", audit_non_hmac_response_keys=["plaintext"]
    ),
}


@pytest.mark.parametrize("op", SERVICE_REFUSED.values(), ids=SERVICE_REFUSED.keys())
def test_service_is_refused(vault: Vault, tenant: str, op: Op) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        op(vault.service, tenant)


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
