"""Configuration, read in one place from the environment.

Secrets (the Vault token, AppRole secret) have no default: the service refuses
to start without them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(Exception):
    """The environment does not describe a runnable service."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be an integer") from e
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be a number") from e
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0")
    return value


def _bind(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if raw in ("", "off"):
        return ""
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdecimal():
        raise ConfigError(f"{name} must be host:port (or 'off')")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"{name} has an invalid port")
    return raw


@dataclass(frozen=True)
class Budgets:
    per_hour: int = 60
    per_day: int = 200
    tenant_per_hour: int = 1000
    suspend_after_denials: int = 5
    break_glass_per_day: int = 3
    break_glass_hours: float = 4.0
    # Limits on every role (per principal per hour); past them: 429, a denial, an alert.
    writes_per_hour: int = 60  # distinct patients a clinician writes to
    admin_actions_per_hour: int = 60
    care_team_grants_per_hour: int = 2000  # by an integration
    lookups_per_hour: int = 2000  # patient lookups, reads and registrations
    # Two admins: past this many care-team grants in an hour an admin's grant waits
    # for another admin's approval; requests wait this long.
    admin_care_team_grants_per_hour: int = 10
    approval_hours: float = 24.0
    shred_grace_days: float = 7.0


@dataclass(frozen=True)
class IdpSettings:
    """Tokens from the tenants' identity providers and SMART Backend Services."""

    jwks_cache_seconds: float = 300.0  # how long an issuer's published keys are trusted
    jwks_min_refresh_seconds: float = 30.0  # an unknown `kid` refetches at most this often
    jwks_timeout: float = 2.0
    jwt_leeway_seconds: int = 30  # clock skew allowed on exp / nbf
    smart_token_ttl_seconds: int = 300  # access tokens of POST /oauth2/token
    public_url: str | None = None  # e.g. https://notes.example.org (token audience, fullUrl)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IdpSettings:
        leeway = _int(env, "SEALEDNOTES_JWT_LEEWAY_SECONDS", 30, minimum=0)
        if leeway > 300:
            raise ConfigError("SEALEDNOTES_JWT_LEEWAY_SECONDS must be <= 300")
        ttl = _int(env, "SEALEDNOTES_SMART_TOKEN_TTL_SECONDS", 300, minimum=30)
        if ttl > 3600:
            raise ConfigError("SEALEDNOTES_SMART_TOKEN_TTL_SECONDS must be <= 3600")
        public_url = (env.get("SEALEDNOTES_PUBLIC_URL") or "").rstrip("/") or None
        if public_url is not None and not public_url.startswith(("https://", "http://")):
            raise ConfigError("SEALEDNOTES_PUBLIC_URL must be an http(s) URL")
        return cls(
            jwks_cache_seconds=_float(env, "SEALEDNOTES_JWKS_CACHE_SECONDS", 300.0),
            jwks_min_refresh_seconds=_float(env, "SEALEDNOTES_JWKS_MIN_REFRESH_SECONDS", 30.0),
            jwks_timeout=_float(env, "SEALEDNOTES_JWKS_TIMEOUT", 2.0),
            jwt_leeway_seconds=leeway,
            smart_token_ttl_seconds=ttl,
            public_url=public_url,
        )


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)
    vault_addr: str
    vault_token: str | None = field(default=None, repr=False)
    vault_role_id: str | None = None
    vault_secret_id: str | None = field(default=None, repr=False)
    # A file holding the token, kept fresh by Vault Agent (re-read on every login).
    vault_token_file: str | None = None
    # A response-wrapping token that yields the AppRole secret id (unwrapped once,
    # by `sealednotes serve`, before the workers start).
    vault_wrapped_secret_id: str | None = field(default=None, repr=False)
    vault_mount: str = "transit"
    # Vault's unwrap quota per tenant = the tenant's hourly release cap x this, per
    # hour, enforced in three-minute windows (service/principals/service.py).
    vault_unwrap_headroom: float = 10.0
    vault_timeout: float = 2.0
    db_timeout: float = 2.0
    request_timeout: float = 5.0
    bind: str = "127.0.0.1:8080"
    # /metrics has its own listener (in the gunicorn master), never the API port;
    # "" turns it off. The API port answers /metrics only with this bearer token.
    metrics_bind: str = "127.0.0.1:9108"
    metrics_token: str | None = field(default=None, repr=False)
    workers: int = 2
    pool_min: int = 1
    pool_max: int = 8
    threads: int = 16
    max_in_flight: int = 8
    budgets: Budgets = field(default_factory=Budgets)
    key_cache_ttl: float = 60.0
    key_cache_size: int = 4096
    token_ttl_days: int = 90
    alert_webhook_url: str | None = None
    audit_checkpoint_seconds: float = 300.0
    # GET /v1/audit/verify reads at most this many records (since the last verified
    # checkpoint); past it, 503 and retry once the background verification caught up.
    audit_verify_request_limit: int = 500_000
    max_body_chars: int = 1024 * 1024
    idp: IdpSettings = field(default_factory=IdpSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("SEALEDNOTES_DATABASE_URL")
        if not database_url:
            raise ConfigError("SEALEDNOTES_DATABASE_URL is required")
        vault_addr = env.get("VAULT_ADDR")
        if not vault_addr:
            raise ConfigError("VAULT_ADDR is required")
        token = env.get("VAULT_TOKEN") or None
        token_file = env.get("SEALEDNOTES_VAULT_TOKEN_FILE") or None
        role_id = env.get("SEALEDNOTES_VAULT_ROLE_ID") or None
        secret_id = env.get("SEALEDNOTES_VAULT_SECRET_ID") or None
        wrapped = env.get("SEALEDNOTES_VAULT_WRAPPED_SECRET_ID") or None
        if secret_id and wrapped:
            raise ConfigError(
                "Set SEALEDNOTES_VAULT_SECRET_ID or SEALEDNOTES_VAULT_WRAPPED_SECRET_ID, not both"
            )
        if not token and not token_file and not (role_id and (secret_id or wrapped)):
            raise ConfigError(
                "Vault credentials are required: SEALEDNOTES_VAULT_ROLE_ID with "
                "SEALEDNOTES_VAULT_SECRET_ID (or SEALEDNOTES_VAULT_WRAPPED_SECRET_ID), "
                "SEALEDNOTES_VAULT_TOKEN_FILE, or VAULT_TOKEN"
            )
        headroom = _float(env, "SEALEDNOTES_VAULT_UNWRAP_HEADROOM", 10.0)
        if headroom < 1:
            raise ConfigError("SEALEDNOTES_VAULT_UNWRAP_HEADROOM must be >= 1")
        key_cache_ttl = _float(env, "SEALEDNOTES_KEY_CACHE_TTL", 60.0)
        if key_cache_ttl > 60:
            raise ConfigError("SEALEDNOTES_KEY_CACHE_TTL must be <= 60 seconds")
        vault_timeout = _float(env, "SEALEDNOTES_VAULT_TIMEOUT", 2.0)
        db_timeout = _float(env, "SEALEDNOTES_DB_TIMEOUT", 2.0)
        request_timeout = _float(env, "SEALEDNOTES_REQUEST_TIMEOUT", 5.0)
        if request_timeout <= max(vault_timeout, db_timeout):
            raise ConfigError(
                "SEALEDNOTES_REQUEST_TIMEOUT must exceed the Vault and database timeouts"
            )
        return cls(
            database_url=database_url,
            vault_addr=vault_addr,
            vault_token=token,
            vault_role_id=role_id,
            vault_secret_id=secret_id,
            vault_token_file=token_file,
            vault_wrapped_secret_id=wrapped,
            vault_mount=env.get("SEALEDNOTES_VAULT_MOUNT", "transit"),
            vault_unwrap_headroom=headroom,
            vault_timeout=vault_timeout,
            db_timeout=db_timeout,
            request_timeout=request_timeout,
            bind=env.get("SEALEDNOTES_BIND", "127.0.0.1:8080"),
            metrics_bind=_bind(env, "SEALEDNOTES_METRICS_BIND", "127.0.0.1:9108"),
            metrics_token=env.get("SEALEDNOTES_METRICS_TOKEN") or None,
            workers=_int(env, "SEALEDNOTES_WORKERS", 2, minimum=1),
            pool_min=_int(env, "SEALEDNOTES_POOL_MIN", 1, minimum=0),
            pool_max=_int(env, "SEALEDNOTES_POOL_MAX", 8, minimum=1),
            threads=_int(env, "SEALEDNOTES_THREADS", 16, minimum=1),
            max_in_flight=_int(env, "SEALEDNOTES_MAX_IN_FLIGHT", 8, minimum=1),
            budgets=Budgets(
                per_hour=_int(env, "SEALEDNOTES_RELEASE_PER_HOUR", 60, minimum=1),
                per_day=_int(env, "SEALEDNOTES_RELEASE_PER_DAY", 200, minimum=1),
                tenant_per_hour=_int(env, "SEALEDNOTES_TENANT_RELEASE_PER_HOUR", 1000, minimum=1),
                suspend_after_denials=_int(env, "SEALEDNOTES_SUSPEND_AFTER_DENIALS", 5, minimum=1),
                break_glass_per_day=_int(env, "SEALEDNOTES_BREAK_GLASS_PER_DAY", 3, minimum=0),
                break_glass_hours=_float(env, "SEALEDNOTES_BREAK_GLASS_HOURS", 4.0),
                writes_per_hour=_int(env, "SEALEDNOTES_WRITES_PER_HOUR", 60, minimum=1),
                admin_actions_per_hour=_int(
                    env, "SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR", 60, minimum=1
                ),
                care_team_grants_per_hour=_int(
                    env, "SEALEDNOTES_CARE_TEAM_GRANTS_PER_HOUR", 2000, minimum=1
                ),
                lookups_per_hour=_int(env, "SEALEDNOTES_LOOKUPS_PER_HOUR", 2000, minimum=1),
                admin_care_team_grants_per_hour=_int(
                    env, "SEALEDNOTES_ADMIN_CARE_TEAM_GRANTS_PER_HOUR", 10, minimum=0
                ),
                approval_hours=_float(env, "SEALEDNOTES_APPROVAL_HOURS", 24.0),
                shred_grace_days=_float(env, "SEALEDNOTES_SHRED_GRACE_DAYS", 7.0),
            ),
            key_cache_ttl=key_cache_ttl,
            key_cache_size=_int(env, "SEALEDNOTES_KEY_CACHE_SIZE", 4096, minimum=0),
            token_ttl_days=_int(env, "SEALEDNOTES_TOKEN_TTL_DAYS", 90, minimum=1),
            alert_webhook_url=env.get("SEALEDNOTES_ALERT_WEBHOOK_URL") or None,
            audit_checkpoint_seconds=float(
                _int(env, "SEALEDNOTES_AUDIT_CHECKPOINT_SECONDS", 300, minimum=0)
            ),
            audit_verify_request_limit=_int(
                env, "SEALEDNOTES_AUDIT_VERIFY_REQUEST_LIMIT", 500_000, minimum=1
            ),
            idp=IdpSettings.from_env(env),
        )
