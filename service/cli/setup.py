"""Schema and Vault set-up: `migrate`, `vault-setup`."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from service.cli.base import (
    _default_tenant_cap,
    _emit,
    _errors,
    _services,
    main,
)
from service.principals.service import WINDOWS_PER_HOUR

# -- schema and Vault -------------------------------------------------------------------


@main.command()
@click.option(
    "--app-role",
    envvar="SEALEDNOTES_APP_ROLE",
    default=None,
    help="Database role the service runs as: granted read/write on operational tables "
    "but only INSERT/SELECT on the audit log (env SEALEDNOTES_APP_ROLE).",
)
@click.option(
    "--maintenance-role",
    envvar="SEALEDNOTES_MAINTENANCE_ROLE",
    default=None,
    help="Database role that may prune old ledger rows (`maintenance prune`) and "
    "nothing else (env SEALEDNOTES_MAINTENANCE_ROLE).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def migrate(app_role: str | None, maintenance_role: str | None, as_json: bool) -> None:
    """Create or upgrade the database schema (idempotent). Run as the schema owner."""
    from service.adapters.postgres import Store

    url = os.environ.get("SEALEDNOTES_DATABASE_URL")
    if not url:
        raise click.ClickException("SEALEDNOTES_DATABASE_URL is required")
    with _errors():
        default_cap = _default_tenant_cap()
        applied = Store(url).migrate(
            app_role=app_role, default_tenant_cap=default_cap, maintenance_role=maintenance_role
        )
    _emit(
        as_json,
        {"applied": applied, "app_role": app_role, "maintenance_role": maintenance_role},
        f"applied migrations: {applied or 'none (up to date)'}"
        + (f"; grants for role {app_role} set" if app_role else ""),
    )


@main.command("vault-setup")
@click.option(
    "--approle/--no-approle",
    default=True,
    show_default=True,
    help="Create the service's AppRole (role sealednotes-service).",
)
@click.option(
    "--issue-secret-id", is_flag=True, help="Also generate a new AppRole secret_id (printed once)."
)
@click.option(
    "--wrap-ttl",
    default=None,
    help="With --issue-secret-id: hand out a single-use response-wrapping token instead "
    "of the secret_id (SEALEDNOTES_VAULT_WRAPPED_SECRET_ID), valid this long (e.g. 10m).",
)
@click.option("--token-ttl", default="15m", show_default=True, help="Service token TTL.")
@click.option("--token-max-ttl", default="1h", show_default=True, help="Then a new login.")
@click.option(
    "--secret-id-ttl", default="168h", show_default=True, help="A secret_id expires after this."
)
@click.option(
    "--secret-id-num-uses",
    type=click.IntRange(0, 1_000_000),
    default=1000,
    show_default=True,
    help="Logins one secret_id allows (0: unlimited).",
)
@click.option(
    "--bound-cidr",
    "bound_cidrs",
    multiple=True,
    envvar="SEALEDNOTES_VAULT_BOUND_CIDRS",
    default=["127.0.0.1/32"],
    show_default=True,
    help="Addresses the service logs in and uses its tokens from (repeat; env "
    "SEALEDNOTES_VAULT_BOUND_CIDRS, space-separated). Set your service subnet in production.",
)
@click.option("--json", "as_json", is_flag=True)
def vault_setup(
    approle: bool,
    issue_secret_id: bool,
    wrap_ttl: str | None,
    token_ttl: str,
    token_max_ttl: str,
    secret_id_ttl: str,
    secret_id_num_uses: int,
    bound_cidrs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Transit mount, keys, unwrap quotas, policies and the service AppRole
    (idempotent; ops credentials)."""
    svc = _services()
    cidrs = [c for entry in bound_cidrs for c in entry.split() if c]
    with _errors():
        out = vault_bootstrap(
            svc,
            approle=approle,
            issue_secret_id=issue_secret_id,
            wrap_ttl=wrap_ttl,
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            secret_id_ttl=secret_id_ttl,
            secret_id_num_uses=secret_id_num_uses,
            bound_cidrs=cidrs,
        )
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(
        f"transit mount '{out['mount']}' ready; keys and unwrap quotas ensured for "
        f"{out['tenants']} tenant(s); policies written: {', '.join(out['policies'])}"
    )
    for q in out["quotas"]:
        click.echo(
            f"  tenant {q['tenant']}: Vault allows {q['rate']} unwraps per 3 minutes "
            f"({q['rate'] * WINDOWS_PER_HOUR}/hour) per client address"
        )
    if "approle" in out:
        a = out["approle"]
        click.echo(f"AppRole {a['role_name']}: SEALEDNOTES_VAULT_ROLE_ID={a['role_id']}")
        click.echo(f"  logins and tokens bound to {', '.join(cidrs) or 'any address'}")
        if "secret_id" in a:
            click.echo(f"SEALEDNOTES_VAULT_SECRET_ID={a['secret_id']}  (shown once)")
        if "wrapped_secret_id" in a:
            click.echo(
                f"SEALEDNOTES_VAULT_WRAPPED_SECRET_ID={a['wrapped_secret_id']}  "
                f"(single use, expires in {wrap_ttl})"
            )


def vault_bootstrap(
    svc: Any,
    *,
    approle: bool = True,
    issue_secret_id: bool = False,
    wrap_ttl: str | None = None,
    token_ttl: str = "15m",
    token_max_ttl: str = "1h",
    secret_id_ttl: str = "168h",
    secret_id_num_uses: int = 1000,
    bound_cidrs: list[str] | None = None,
) -> dict[str, Any]:
    """What `vault-setup` does, also used by `sealednotes dev`."""
    from importlib import resources

    from service.adapters.vault import SERVICE_ROLE

    out: dict[str, Any] = {"ok": True, "mount": svc.keys.mount}
    svc.keys.ensure_transit_mount()
    svc.keys.ensure_audit_signing_key()
    with svc.store.transaction() as tx:
        tenants = tx.tenants.all_tenants()
    quotas = []
    for t in tenants:
        svc.keys.ensure_tenant_keys(t.id)
        quotas.append({"tenant": t.name, "rate": svc.principals.ensure_vault_quota(t)})
    out["tenants"] = len(tenants)
    out["quotas"] = quotas
    policies = []
    for name in (SERVICE_ROLE, "sealednotes-ops"):
        hcl = resources.files("service.vault_policies").joinpath(f"{name}.hcl").read_text()
        svc.keys.write_policy(name, hcl)
        policies.append(name)
    out["policies"] = policies
    if approle:
        role_id = svc.keys.ensure_approle(
            SERVICE_ROLE,
            [SERVICE_ROLE],
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            secret_id_ttl=secret_id_ttl,
            secret_id_num_uses=secret_id_num_uses,
            bound_cidrs=bound_cidrs,
        )
        out["approle"] = {
            "role_name": SERVICE_ROLE,
            "role_id": role_id,
            "bound_cidrs": bound_cidrs or [],
        }
        if issue_secret_id:
            issued = svc.keys.new_secret_id(SERVICE_ROLE, wrap_ttl=wrap_ttl)
            out["approle"]["wrapped_secret_id" if wrap_ttl else "secret_id"] = issued
    return out
