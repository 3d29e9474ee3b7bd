"""What the API workers do with Transit: new data keys, one unwrap per request, the
blind index, audit-checkpoint signatures."""

from __future__ import annotations

import base64
import logging

import hvac
import hvac.exceptions

from crypto import DecryptionError, NewDataKey, WrappedKey
from service.adapters.vault.client import VaultClient
from service.adapters.vault.names import (
    AUDIT_SIGNING_KEY,
    _b64,
    dek_key_name,
    index_key_name,
    parse_key_version,
)

log = logging.getLogger(__name__)


class TransitOperations(VaultClient):
    def new_data_key(self, *, tenant_id: str, context: bytes) -> NewDataKey:
        def run(c: hvac.Client) -> NewDataKey:
            resp = c.secrets.transit.generate_data_key(
                name=dek_key_name(tenant_id),
                key_type="plaintext",
                context=_b64(context),
                bits=256,
                mount_point=self.mount,
            )
            data = resp["data"]
            ciphertext = data["ciphertext"]
            return NewDataKey(
                plaintext=base64.b64decode(data["plaintext"]),
                wrapped=WrappedKey(ciphertext, parse_key_version(ciphertext)),
            )

        return self._call(run)

    def unwrap(self, wrapped: WrappedKey, *, tenant_id: str, context: bytes) -> bytes:
        def run(c: hvac.Client) -> bytes:
            resp = c.secrets.transit.decrypt_data(
                name=dek_key_name(tenant_id),
                ciphertext=wrapped.ciphertext,
                context=_b64(context),
                mount_point=self.mount,
            )
            return base64.b64decode(resp["data"]["plaintext"])

        return self._call(run)

    def blind_index(self, *, tenant_id: str, value: str) -> str:
        def run(c: hvac.Client) -> str:
            resp = c.secrets.transit.generate_hmac(
                name=index_key_name(tenant_id),
                hash_input=_b64(value.encode("utf-8")),
                algorithm="sha2-256",
                key_version=1,
                mount_point=self.mount,
            )
            return str(resp["data"]["hmac"])

        return self._call(run)

    def sign(self, message: bytes) -> str:
        """Sign with the audit ed25519 key; returns the Transit signature string."""

        def run(c: hvac.Client) -> str:
            resp = c.secrets.transit.sign_data(
                name=AUDIT_SIGNING_KEY, hash_input=_b64(message), mount_point=self.mount
            )
            return str(resp["data"]["signature"])

        return self._call(run)

    def verify(self, message: bytes, signature: str) -> bool:
        def run(c: hvac.Client) -> bool:
            resp = c.secrets.transit.verify_signed_data(
                name=AUDIT_SIGNING_KEY,
                hash_input=_b64(message),
                signature=signature,
                mount_point=self.mount,
            )
            return bool(resp["data"]["valid"])

        try:
            return self._call(run)
        except DecryptionError:  # malformed signature string: not valid
            return False
