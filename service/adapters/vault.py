"""Vault / OpenBao Transit adapter: the only module that imports hvac.

Per tenant it uses two Transit keys:

* ``sealednotes-dek-<tenant>``: aes256-gcm96, ``derived=true``, not exportable.
  Wraps patient data keys; the derivation context is tenant + patient, so a
  wrapped key only unwraps for its own patient.
* ``sealednotes-index-<tenant>``: used only through Transit HMAC, for the blind
  index of patient external identifiers. It is never rotated, so lookups stay
  stable.

Every hvac/requests error is translated into the service's own errors.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from crypto import DecryptionError, NewDataKey, WrappedKey
from service import deadline
from service.errors import KeyServiceThrottled, KeyServiceUnavailable

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


class VaultKeyService:
    """Implements crypto.KeyWrapper (and the blind index) on Vault Transit."""

    def __init__(
        self,
        *,
        addr: str,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        token_file: str | None = None,
        mount: str = "transit",
        timeout: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._addr = addr
        self._token = token
        self._token_file = token_file
        self._role_id = role_id
        self._secret_id = secret_id
        self.mount = mount
        self._timeout = timeout
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._client: hvac.Client | None = None
        self._client_pid: int | None = None
        self._renew_at: float | None = None  # monotonic time to renew the token
        self._token_ttl: float | None = None

    def __repr__(self) -> str:
        return f"VaultKeyService(addr={self._addr!r}, mount={self.mount!r})"

    # -- connection -------------------------------------------------------------

    def _relogs_in(self) -> bool:
        """Whether a refused token can be replaced: a new AppRole login, or a fresh
        token from the file Vault Agent keeps up to date."""
        return bool((self._role_id and self._secret_id) or self._token_file)

    def _file_token(self) -> str:
        assert self._token_file is not None
        try:
            with open(self._token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            log.warning("vault token file unreadable: %s", type(e).__name__)
            raise KeyServiceUnavailable() from e

    def _new_client(self) -> hvac.Client:
        token = self._file_token() if self._token_file else self._token
        client = hvac.Client(url=self._addr, token=token, timeout=self._timeout)
        if self._role_id and self._secret_id:
            resp = client.auth.approle.login(role_id=self._role_id, secret_id=self._secret_id)
            ttl = resp["auth"].get("lease_duration")
            self._token_ttl = float(ttl) if ttl else None
            self._schedule_renewal(ttl)
        else:
            self._renew_at = None
        return client

    def _schedule_renewal(self, ttl: Any) -> None:
        # Renew when two thirds of the lease have passed.
        if ttl:
            self._renew_at = self._monotonic() + float(ttl) * 2 / 3
        else:
            self._renew_at = None

    def _renew(self, client: hvac.Client) -> hvac.Client:
        try:
            resp = client.auth.token.renew_self()
            ttl = resp["auth"].get("lease_duration")
            if not ttl or (self._token_ttl and float(ttl) < self._token_ttl / 3):
                # Renewal is capped by the token's max TTL: log in again instead.
                raise hvac.exceptions.Forbidden("token near its max TTL")
            self._schedule_renewal(ttl)
            log.info("vault token renewed")
            return client
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as e:
            # Past its max TTL, or revoked: log in again.
            log.info("vault token renewal failed (%s); logging in again", type(e).__name__)
            return self._new_client()

    def client(self) -> hvac.Client:
        # One client (one HTTP session) per process: never share sockets across fork.
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = self._new_client()
                self._client_pid = os.getpid()
            elif self._renew_at is not None and self._monotonic() >= self._renew_at:
                self._client = self._renew(self._client)
            return self._client

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except DecryptionError:
            raise
        except hvac.exceptions.InvalidRequest as e:
            # Transit answers 400 when a ciphertext fails authentication
            # (wrong derivation context, tampered or foreign ciphertext).
            raise DecryptionError() from e
        except hvac.exceptions.RateLimitExceeded as e:
            # A Vault rate-limit quota (the unwrap budget Vault keeps per tenant):
            # never a fallback, the caller answers 503 and raises an alert.
            log.warning("vault rate-limit quota exceeded")
            raise KeyServiceThrottled() from e
        except hvac.exceptions.Forbidden as e:
            log.warning("vault refused the operation (policy): %s", type(e).__name__)
            raise KeyServiceUnavailable(
                "Vault refused the operation: the credentials' policy does not allow it"
            ) from e
        except hvac.exceptions.VaultError as e:
            log.warning("vault error: %s", type(e).__name__)
            raise KeyServiceUnavailable() from e
        except requests.exceptions.RequestException as e:
            log.warning("vault unreachable: %s", type(e).__name__)
            raise KeyServiceUnavailable() from e

    def _call(self, fn: Callable[[hvac.Client], T]) -> T:
        deadline.check()
        with self._translated():
            try:
                return fn(self.client())
            except hvac.exceptions.Forbidden:
                if not self._relogs_in():
                    raise
                # An expired token: log in again (or re-read the token file) once.
                with self._lock:
                    self._client = None
                return fn(self.client())

    # -- setup (ops / CLI) -------------------------------------------------------

    def ensure_transit_mount(self) -> None:
        """Enable Transit at the mount, and make Vault's audit device log the
        derivation context of every request in clear (it names tenant and patient,
        nothing else), so each unwrap in Vault's log can be reconciled."""

        def run(c: hvac.Client) -> None:
            mounts = c.sys.list_mounted_secrets_engines()
            data = mounts.get("data", mounts)
            if f"{self.mount}/" not in data:
                c.sys.enable_secrets_engine("transit", path=self.mount)
            c.sys.tune_mount_configuration(
                path=self.mount, audit_non_hmac_request_keys=AUDIT_CLEAR_KEYS
            )

        self._call(run)

    def ensure_unwrap_quota(self, tenant_id: str, *, rate: int, interval: str) -> None:
        """The Vault-side unwrap budget of one tenant: a rate-limit quota on its
        data-key decrypt path. Vault keeps it, not the service, so it also binds
        whoever holds the service's credentials."""
        path = f"{self.mount}/decrypt/{dek_key_name(tenant_id)}"
        self._call(
            lambda c: c.write_data(
                f"sys/quotas/rate-limit/{unwrap_quota_name(tenant_id)}",
                data={"path": path, "rate": rate, "interval": interval},
            )
        )

    def unwrap_quota(self, tenant_id: str) -> dict[str, Any] | None:
        def run(c: hvac.Client) -> dict[str, Any] | None:
            try:
                resp = c.read(f"sys/quotas/rate-limit/{unwrap_quota_name(tenant_id)}")
            except hvac.exceptions.InvalidPath:
                return None
            return dict(resp["data"]) if resp else None

        return self._call(run)

    def ensure_tenant_keys(self, tenant_id: str) -> None:
        def run(c: hvac.Client) -> None:
            t = c.secrets.transit
            t.create_key(
                name=dek_key_name(tenant_id),
                key_type="aes256-gcm96",
                derived=True,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self.mount,
            )
            t.create_key(
                name=index_key_name(tenant_id),
                # Transit HMACs with a per-version HMAC key of any key type;
                # an aes key works on every Vault/OpenBao version.
                key_type="aes256-gcm96",
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self.mount,
            )

        self._call(run)

    def ensure_audit_signing_key(self) -> None:
        self._call(
            lambda c: c.secrets.transit.create_key(
                name=AUDIT_SIGNING_KEY,
                key_type="ed25519",
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self.mount,
            )
        )

    def read_key(self, name: str) -> dict[str, Any]:
        def run(c: hvac.Client) -> dict[str, Any]:
            resp: dict[str, Any] = c.secrets.transit.read_key(name=name, mount_point=self.mount)
            return dict(resp["data"])

        return self._call(run)

    # -- data keys (crypto.KeyWrapper) -------------------------------------------

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

    # -- blind index -------------------------------------------------------------

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

    # -- rotation (ops) -------------------------------------------------------------

    def dek_key_info(self, tenant_id: str) -> dict[str, Any]:
        data = self.read_key(dek_key_name(tenant_id))
        return {
            "latest_version": int(data["latest_version"]),
            "min_decryption_version": int(data["min_decryption_version"]),
            "versions": sorted(int(v) for v in data.get("keys", {})),
        }

    def rotate_dek(self, tenant_id: str) -> int:
        self._call(
            lambda c: c.secrets.transit.rotate_key(
                name=dek_key_name(tenant_id), mount_point=self.mount
            )
        )
        return int(self.dek_key_info(tenant_id)["latest_version"])

    def set_min_decryption_version(self, tenant_id: str, version: int) -> None:
        self._call(
            lambda c: c.secrets.transit.update_key_configuration(
                name=dek_key_name(tenant_id),
                min_decryption_version=version,
                mount_point=self.mount,
            )
        )

    def rewrap_batch(
        self, tenant_id: str, items: list[tuple[str, bytes]]
    ) -> list[WrappedKey | None]:
        """Rewrap (ciphertext, derivation context) pairs to the newest key version.

        Vault never returns plaintext here. An item that fails (tampered, or wrapped
        for another context) comes back as None; the others are still rewrapped.
        """
        if not items:
            return []
        if len(items) > MAX_BATCH_ITEMS:
            chunks = [items[i : i + MAX_BATCH_ITEMS] for i in range(0, len(items), MAX_BATCH_ITEMS)]
            with ThreadPoolExecutor(max_workers=min(4, len(chunks))) as pool:
                parts = list(pool.map(lambda ch: self.rewrap_batch(tenant_id, ch), chunks))
            return [w for part in parts for w in part]

        def run(c: hvac.Client) -> list[WrappedKey | None]:
            resp = c.secrets.transit.rewrap_data(
                name=dek_key_name(tenant_id),
                ciphertext="",
                batch_input=[{"ciphertext": ct, "context": _b64(ctx)} for ct, ctx in items],
                mount_point=self.mount,
            )
            out: list[WrappedKey | None] = []
            for result in resp["data"]["batch_results"]:
                ct = result.get("ciphertext")
                if result.get("error") or not ct:
                    out.append(None)
                else:
                    out.append(WrappedKey(ct, parse_key_version(ct)))
            return out

        return self._call(run)

    # -- policies and AppRole (ops: vault-setup) ---------------------------------------

    def write_policy(self, name: str, hcl: str) -> None:
        self._call(lambda c: c.sys.create_or_update_policy(name=name, policy=hcl))

    def ensure_approle(
        self,
        role_name: str,
        policies: list[str],
        *,
        token_ttl: str,
        token_max_ttl: str,
        secret_id_ttl: str = "168h",
        secret_id_num_uses: int = 1000,
        bound_cidrs: list[str] | None = None,
    ) -> str:
        """Enable AppRole if needed and (re)write the role; returns its role_id.

        Secret ids expire and wear out; with `bound_cidrs` both the secret id
        (login) and the tokens it yields only work from those addresses."""

        def run(c: hvac.Client) -> str:
            methods = c.sys.list_auth_methods()
            data = methods.get("data", methods)
            if "approle/" not in data:
                c.sys.enable_auth_method("approle")
            c.auth.approle.create_or_update_approle(
                role_name=role_name,
                token_policies=policies,
                token_ttl=token_ttl,
                token_max_ttl=token_max_ttl,
                token_no_default_policy=True,
                secret_id_ttl=secret_id_ttl,
                secret_id_num_uses=secret_id_num_uses,
                secret_id_bound_cidrs=bound_cidrs or [],
                token_bound_cidrs=bound_cidrs or [],
                token_type="service",
            )
            return str(c.auth.approle.read_role_id(role_name=role_name)["data"]["role_id"])

        return self._call(run)

    def new_secret_id(self, role_name: str, *, wrap_ttl: str | None = None) -> str:
        """A new secret id, or with `wrap_ttl` a single-use response-wrapping token
        that yields it (`unwrap_secret_id`), so the secret id itself never travels."""

        def run(c: hvac.Client) -> str:
            resp = c.auth.approle.generate_secret_id(role_name=role_name, wrap_ttl=wrap_ttl)
            if wrap_ttl:
                return str(resp["wrap_info"]["token"])
            return str(resp["data"]["secret_id"])

        return self._call(run)

    def unwrap_secret_id(self, wrapping_token: str) -> str:
        """Exchange a response-wrapping token for the secret id it wraps (once)."""
        with self._translated():
            # The wrapping token authenticates its own unwrap.
            client = hvac.Client(url=self._addr, token=wrapping_token, timeout=self._timeout)
            resp = client.sys.unwrap()
            return str(resp["data"]["secret_id"])

    def lookup_self(self) -> dict[str, Any]:
        return self._call(lambda c: dict(c.auth.token.lookup_self()["data"]))

    def create_token(self, policies: list[str], *, ttl: str) -> str:
        """A token holding exactly `policies` (ops tokens for `sealednotes dev`)."""
        return self._call(
            lambda c: str(
                c.auth.token.create(policies=policies, ttl=ttl, no_default_policy=True)["auth"][
                    "client_token"
                ]
            )
        )

    # -- audit checkpoints ----------------------------------------------------------

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

    # -- health ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Readiness: reachable, initialized, unsealed. Never raises."""
        try:
            with self._translated():
                status = self.client().sys.read_health_status(method="GET")
                if isinstance(status, requests.Response):
                    body = status.json()
                else:
                    body = dict(status)
                return {
                    "ok": bool(body.get("initialized")) and not body.get("sealed", True),
                    "sealed": bool(body.get("sealed", True)),
                }
        except Exception as e:
            log.warning("vault health check failed: %s", type(e).__name__)
            return {"ok": False, "sealed": None}
