"""P13 (with P3, P15): the service policy of deploy/vault/ against a real OpenBao.

It lets the service use its Transit keys (data keys, one unwrap per request, blind index, audit
signatures) and nothing else: no export, deletion, rotation, configuration, batch or key
metadata, no other application's key, no policy, quota or mount change."""

from __future__ import annotations

import base64
import uuid

import hvac
import hvac.exceptions
import pytest

from crypto import DecryptionError, key_context
from service.adapters.vault import AUDIT_SIGNING_KEY, dek_key_name, index_key_name
from tests.integration.vault_policies.policy_vault import (
    FOREIGN_KEY,
    SERVICE_POLICY,
    Op,
    Vault,
    b64,
)

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
