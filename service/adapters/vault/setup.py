"""What ops do in Vault (`vault-setup`, tenants, rotation): the mount, keys, quotas,
policies, the AppRole, key versions and batch rewrap. Never key material."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hvac
import hvac.exceptions

from crypto import WrappedKey
from service.adapters.vault.client import VaultClient
from service.adapters.vault.names import (
    AUDIT_CLEAR_KEYS,
    AUDIT_SIGNING_KEY,
    MAX_BATCH_ITEMS,
    _b64,
    dek_key_name,
    index_key_name,
    parse_key_version,
    unwrap_quota_name,
)

log = logging.getLogger(__name__)


class VaultSetup(VaultClient):
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
