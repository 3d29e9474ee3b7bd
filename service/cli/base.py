"""Shared by every command group: configuration, the services, output, errors, and
the `sealednotes` group itself."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import click

from service.config import ConfigError, Settings
from service.errors import ServiceError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


def _default_tenant_cap() -> int:
    raw = os.environ.get("SEALEDNOTES_TENANT_RELEASE_PER_HOUR") or "1000"
    if not raw.isascii() or not raw.isdecimal() or int(raw) < 1:
        raise click.ClickException("SEALEDNOTES_TENANT_RELEASE_PER_HOUR must be an integer >= 1")
    return int(raw)


def _resolve_wrapped_secret_id(settings: Settings) -> Settings:
    """Exchange a response-wrapped AppRole secret id once, in this process (before
    gunicorn forks its workers), so the workers log in with the secret id itself."""
    if not settings.vault_wrapped_secret_id:
        return settings

    from service.adapters.vault import VaultKeyService

    keys = VaultKeyService(addr=settings.vault_addr, timeout=settings.vault_timeout)
    with _errors():
        secret_id = keys.unwrap_secret_id(settings.vault_wrapped_secret_id)
    return dataclasses.replace(settings, vault_secret_id=secret_id, vault_wrapped_secret_id=None)


def _services() -> Any:
    from service.app import build_services

    return build_services(_resolve_wrapped_secret_id(_settings()))


def _emit(as_json: bool, obj: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(obj) if as_json else text)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ServiceError as e:
        raise click.ClickException(e.detail) from e


@click.group()
def main() -> None:
    """Sealed Notes: per-patient encrypted clinical notes with audited key release."""


def _settings_with(**env: str) -> Settings:
    try:
        return Settings.from_env({**os.environ, **env})
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
