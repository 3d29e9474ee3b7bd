"""Transit's calls on a request's path go over the lean transport, against a real
OpenBao: the same answers as through hvac, the same errors, and no use of requests
(a session that fails every send does not stop them)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import hvac
import pytest
import requests

from crypto import DecryptionError, WrappedKey, key_context
from service.adapters.vault import VaultKeyService, dek_key_name, index_key_name
from service.adapters.vault.transport import LeanTransport
from service.devtools.stack import BaoServer


@pytest.fixture
def keys(bao: BaoServer) -> Iterator[VaultKeyService]:
    svc = VaultKeyService(addr=bao.addr, token=bao.root_token, timeout=5)
    yield svc


@pytest.fixture
def tenant(keys: VaultKeyService) -> str:
    tenant_id = str(uuid.uuid4())
    keys.ensure_tenant_keys(tenant_id)
    keys.ensure_audit_signing_key()
    return tenant_id


@pytest.fixture
def no_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request-path Transit call went through requests")

    monkeypatch.setattr(requests.Session, "send", refuse)


def test_request_path_calls_never_touch_requests(
    keys: VaultKeyService, tenant: str, no_requests: None
) -> None:
    keys.client()  # hvac logs in (a token client: no call) before requests is refused
    context = key_context(tenant_id=tenant, patient_id=str(uuid.uuid4()))
    new = keys.new_data_key(tenant_id=tenant, context=context)
    assert len(new.plaintext) == 32
    assert keys.unwrap(new.wrapped, tenant_id=tenant, context=context) == new.plaintext
    signature = keys.sign(b"checkpoint")
    assert keys.verify(b"checkpoint", signature)
    assert not keys.verify(b"another checkpoint", signature)
    assert keys.blind_index(tenant_id=tenant, value="MRN-1") == keys.blind_index(
        tenant_id=tenant, value="MRN-1"
    )


def test_answers_match_hvacs(keys: VaultKeyService, tenant: str, bao: BaoServer) -> None:
    root = hvac.Client(url=bao.addr, token=bao.root_token)
    context = key_context(tenant_id=tenant, patient_id=str(uuid.uuid4()))
    b64_context = base64.b64encode(context).decode()
    wrapped = root.secrets.transit.generate_data_key(
        name=dek_key_name(tenant), key_type="plaintext", context=b64_context, bits=256
    )["data"]
    key = keys.unwrap(WrappedKey(wrapped["ciphertext"], 1), tenant_id=tenant, context=context)
    assert key == base64.b64decode(wrapped["plaintext"])
    value = base64.b64encode(b"MRN-2").decode()
    by_hvac = root.secrets.transit.generate_hmac(
        name=index_key_name(tenant), hash_input=value, algorithm="sha2-256", key_version=1
    )["data"]["hmac"]
    assert keys.blind_index(tenant_id=tenant, value="MRN-2") == by_hvac


def test_a_wrong_context_or_a_tampered_key_is_one_opaque_error(
    keys: VaultKeyService, tenant: str, no_requests: None
) -> None:
    keys.client()
    context = key_context(tenant_id=tenant, patient_id=str(uuid.uuid4()))
    new = keys.new_data_key(tenant_id=tenant, context=context)
    other = key_context(tenant_id=tenant, patient_id=str(uuid.uuid4()))
    with pytest.raises(DecryptionError):
        keys.unwrap(new.wrapped, tenant_id=tenant, context=other)
    body = new.wrapped.ciphertext
    tampered = body[:-4] + ("AAAA" if not body.endswith("AAAA") else "BBBB")
    with pytest.raises(DecryptionError):
        keys.unwrap(WrappedKey(tampered, 1), tenant_id=tenant, context=context)


def test_kept_alive_connections_are_reused(keys: VaultKeyService, tenant: str) -> None:
    context = key_context(tenant_id=tenant, patient_id=str(uuid.uuid4()))
    new = keys.new_data_key(tenant_id=tenant, context=context)
    transport = keys._lean
    assert isinstance(transport, LeanTransport)
    for _ in range(5):
        keys.unwrap(new.wrapped, tenant_id=tenant, context=context)
    assert len(transport._idle) == 1  # one connection carried all five, one at a time
    transport.close()
    assert keys.unwrap(new.wrapped, tenant_id=tenant, context=context) == new.plaintext
