"""Vault / OpenBao Transit adapter: the only package that imports hvac.

Per tenant it uses two Transit keys:

* ``sealednotes-dek-<tenant>``: aes256-gcm96, ``derived=true``, not exportable.
  Wraps patient data keys; the derivation context is tenant + patient, so a
  wrapped key only unwraps for its own patient.
* ``sealednotes-index-<tenant>``: used only through Transit HMAC, for the blind
  index of patient external identifiers. It is never rotated, so lookups stay
  stable.

Every hvac/requests error is translated into the service's own errors.
"""

from service.adapters.vault.names import (
    AUDIT_CLEAR_KEYS,
    AUDIT_SIGNING_KEY,
    MAX_BATCH_ITEMS,
    SERVICE_ROLE,
    dek_key_name,
    index_key_name,
    parse_key_version,
    unwrap_quota_name,
)
from service.adapters.vault.setup import VaultSetup
from service.adapters.vault.transit import TransitOperations


class VaultKeyService(TransitOperations, VaultSetup):
    """Implements crypto.KeyWrapper (and the blind index) on Vault Transit, and the
    operators' set-up and rotation calls."""


__all__ = [
    "AUDIT_CLEAR_KEYS",
    "AUDIT_SIGNING_KEY",
    "MAX_BATCH_ITEMS",
    "SERVICE_ROLE",
    "VaultKeyService",
    "dek_key_name",
    "index_key_name",
    "parse_key_version",
    "unwrap_quota_name",
]
