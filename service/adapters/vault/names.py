"""Names and formats of what the service keeps in Vault (Transit keys, quotas)."""

from __future__ import annotations

import base64
import logging
import re
from typing import TypeVar

from crypto import DecryptionError

log = logging.getLogger(__name__)
T = TypeVar("T")

AUDIT_SIGNING_KEY = "sealednotes-audit"
SERVICE_ROLE = "sealednotes-service"
# Request parameters Vault's audit device logs in clear on the Transit mount:
# only the derivation context (tenant id + patient id, no health data), so that
# every unwrap in Vault's own log names its patient (`audit reconcile`).
AUDIT_CLEAR_KEYS = ["context"]
# OpenBao refuses JSON bodies with more than 1000 strings; a batch item carries 4.
MAX_BATCH_ITEMS = 240
_CIPHERTEXT_RE = re.compile(r"vault:v([1-9][0-9]{0,8}):(.+)", re.ASCII | re.DOTALL)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dek_key_name(tenant_id: str) -> str:
    return f"sealednotes-dek-{tenant_id}"


def index_key_name(tenant_id: str) -> str:
    return f"sealednotes-index-{tenant_id}"


def unwrap_quota_name(tenant_id: str) -> str:
    return f"sealednotes-unwrap-{tenant_id}"


def parse_key_version(ciphertext: str) -> int:
    # Transit ciphertexts look like "vault:v3:base64..."
    m = _CIPHERTEXT_RE.fullmatch(ciphertext)
    if m is None:
        raise DecryptionError()
    return int(m.group(1))
