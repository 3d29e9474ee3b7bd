"""Tenants and principals."""

from __future__ import annotations

import click

from service.access.caller import OPERATOR
from service.cli.base import (
    _emit,
    _errors,
    _services,
    main,
)
from service.models import Role

# -- tenants and principals -------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Manage tenants (organisations)."""


@tenants.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def tenants_create(name: str, as_json: bool) -> None:
    """Create a tenant and its Transit keys."""
    with _errors():
        tenant = _services().principals.create_tenant(name)
    _emit(as_json, {"id": tenant.id, "name": tenant.name}, f"tenant {tenant.name}: {tenant.id}")


@tenants.command("set-cap")
@click.argument("name")
@click.argument("release_per_hour", type=click.IntRange(1, 10_000_000))
@click.option("--json", "as_json", is_flag=True)
def tenants_set_cap(name: str, release_per_hour: int, as_json: bool) -> None:
    """Set a tenant's hourly release cap and Vault's unwrap quota with it
    (schema owner's database URL, ops Vault credentials)."""
    with _errors():
        svc = _services()
        tenant = svc.principals.set_tenant_cap(name, release_per_hour)
        rate = svc.principals.unwrap_quota_rate(tenant)
    _emit(
        as_json,
        {
            "id": tenant.id,
            "name": tenant.name,
            "release_per_hour": release_per_hour,
            "vault_unwraps_per_hour": rate,
        },
        f"tenant {tenant.name}: {release_per_hour} patients/hour; Vault allows {rate} unwraps/hour",
    )


@main.group()
def principals() -> None:
    """Manage principals (clinicians, integrations, auditors, admins) and their tokens."""


@principals.command("create")
@click.option("--tenant", "tenant_name", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option(
    "--ttl-days",
    type=click.IntRange(1, 3650),
    default=None,
    help="Token lifetime (default SEALEDNOTES_TOKEN_TTL_DAYS, 90).",
)
@click.option("--json", "as_json", is_flag=True)
def principals_create(
    tenant_name: str, name: str, role: str, ttl_days: int | None, as_json: bool
) -> None:
    """Create a principal and print its bearer token (shown once)."""
    with _errors():
        issued = _services().principals.create_principal(
            tenant_name, name, Role(role), ttl_days=ttl_days
        )
    _emit(
        as_json,
        {"id": issued.principal_id, "token": issued.token, "expires_at": issued.expires_at},
        f"principal {issued.principal_id}\ntoken (shown once): {issued.token}",
    )


@principals.command("token")
@click.argument("principal_id")
@click.option("--ttl-days", type=click.IntRange(1, 3650), default=None)
@click.option("--json", "as_json", is_flag=True)
def principals_token(principal_id: str, ttl_days: int | None, as_json: bool) -> None:
    """Issue a new token for a principal."""
    with _errors():
        issued = _services().principals.issue_token(principal_id, ttl_days=ttl_days)
    _emit(
        as_json,
        {"id": issued.principal_id, "token": issued.token, "expires_at": issued.expires_at},
        f"token (shown once): {issued.token}",
    )


@principals.command("revoke-tokens")
@click.argument("principal_id")
@click.option("--json", "as_json", is_flag=True)
def principals_revoke(principal_id: str, as_json: bool) -> None:
    """Revoke every token of a principal."""
    with _errors():
        n = _services().principals.revoke_tokens(principal_id)
    _emit(as_json, {"id": principal_id, "revoked": n}, f"revoked {n} token(s)")


@principals.command("unlock")
@click.argument("principal_id")
@click.option("--json", "as_json", is_flag=True)
def principals_unlock(principal_id: str, as_json: bool) -> None:
    """Lift a suspension (after investigating the alert)."""
    from service.models import Principal

    with _errors():
        p = _services().principals.unlock(principal_id, OPERATOR)
    assert isinstance(p, Principal)  # operators unlock directly
    _emit(as_json, {"id": p.id, "suspended": p.suspended}, f"principal {p.id} unlocked")


@principals.command("suspend")
@click.argument("principal_id")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
def principals_suspend(principal_id: str, reason: str, as_json: bool) -> None:
    """Suspend a principal at once (suspected hijack)."""
    with _errors():
        _services().principals.suspend(principal_id, reason)
    _emit(as_json, {"id": principal_id, "suspended": True}, f"principal {principal_id} suspended")
