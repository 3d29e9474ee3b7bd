"""The `sealednotes` command line (a click group)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from service.config import ConfigError, Settings
from service.errors import ServiceError
from service.models import Role


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


def _services() -> Any:
    from service.app import build_services

    return build_services(_settings())


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


# -- schema and Vault -------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def migrate(as_json: bool) -> None:
    """Create or upgrade the database schema (idempotent)."""
    from service.store import Store

    with _errors():
        applied = Store(_settings().database_url).migrate()
    _emit(as_json, {"applied": applied}, f"applied migrations: {applied or 'none (up to date)'}")


@main.command("vault-setup")
@click.option("--json", "as_json", is_flag=True)
def vault_setup(as_json: bool) -> None:
    """Enable the Transit mount and create the audit signing key (idempotent)."""
    svc = _services()
    with _errors():
        svc.keys.ensure_transit_mount()
        svc.keys.ensure_audit_signing_key()
        with svc.store.transaction() as tx:
            tenants = tx.all_tenants()
        for t in tenants:
            svc.keys.ensure_tenant_keys(t.id)
    _emit(
        as_json,
        {"ok": True, "mount": svc.keys.mount, "tenants": len(tenants)},
        f"transit mount '{svc.keys.mount}' ready; keys ensured for {len(tenants)} tenant(s)",
    )


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
    with _errors():
        p = _services().principals.unlock(principal_id)
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


# -- serving ----------------------------------------------------------------------------


def _run_gunicorn(settings: Settings, app_factory: Any, workers: int | None = None) -> None:
    from gunicorn.app.base import BaseApplication

    from service.serving import gunicorn_options

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings, workers).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory()

    _App().run()


@main.command()
@click.option("--workers", type=click.IntRange(1, 64), default=None)
def serve(workers: int | None) -> None:
    """Serve the API with gunicorn; configuration from the environment."""
    settings = _settings()
    from service.app import create_app

    _run_gunicorn(settings, lambda: create_app(settings), workers)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--state-dir",
    default=".sealednotes-dev",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def dev(host: str, port: int, state_dir: Path) -> None:
    """Whole stack on this machine: embedded PostgreSQL, OpenBao and the API."""
    from service.devstack import BaoServer, EmbeddedPostgres, database_url, ensure_database

    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"state in {state_dir}")
    pg = EmbeddedPostgres(state_dir / "pgdata").start()
    bao = BaoServer(state_dir / "openbao", dev=False)
    try:
        bao.start()
        ensure_database(pg.admin_url, "sealednotes")
        env = {
            "SEALEDNOTES_DATABASE_URL": database_url(pg.admin_url, "sealednotes"),
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": bao.root_token,
            "SEALEDNOTES_BIND": f"{host}:{port}",
        }
        os.environ.update(env)
        settings = _settings()
        from service.app import build_services, create_app
        from service.store import Store

        Store(settings.database_url).migrate()
        svc = build_services(settings)
        svc.keys.ensure_transit_mount()
        svc.keys.ensure_audit_signing_key()
        demo = _demo_data(svc)
        svc.store.close()
        base = f"http://{host}:{port}"
        click.echo(_banner(base, demo, env))
        _run_gunicorn(settings, lambda: create_app(settings), workers=2)
    finally:
        bao.stop()
        pg.stop()


def _demo_data(svc: Any) -> dict[str, Any]:
    from service.audit import Caller
    from service.errors import Conflict

    try:
        tenant = svc.principals.create_tenant("demo")
    except Conflict:
        tenant = svc.principals.tenant("demo")
        svc.keys.ensure_tenant_keys(tenant.id)
    tokens: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name, role in [
        ("dr-demo", Role.CLINICIAN),
        ("ehr-demo", Role.INTEGRATION),
        ("admin-demo", Role.ADMIN),
        ("auditor-demo", Role.AUDITOR),
    ]:
        try:
            issued = svc.principals.create_principal("demo", name, role)
        except Conflict:
            with svc.store.transaction() as tx:
                row = tx.conn.execute(
                    "SELECT id FROM principals WHERE tenant_id = %s AND name = %s",
                    (tenant.id, name),
                ).fetchone()
            issued = svc.principals.issue_token(str(row["id"]))
        tokens[role.value] = issued.token
        ids[role.value] = issued.principal_id
    from service.auth import authenticate

    integration = Caller(authenticate(svc.store, svc.clock, "Bearer " + tokens["integration"]))
    try:
        patient = svc.patients.create(integration, "DEMO-0001")
    except Conflict:
        patient = svc.patients.find(integration, "DEMO-0001")
    svc.patients.set_care_team(integration, patient.id, ids["clinician"], None)
    return {"tokens": tokens, "ids": ids, "patient_id": patient.id}


def _banner(base: str, demo: dict[str, Any], env: dict[str, str]) -> str:
    t = demo["tokens"]
    pid = demo["patient_id"]
    return f"""
Sealed Notes is starting on {base}   (Ctrl-C stops everything)

Environment for other sealednotes commands in another shell:
  export SEALEDNOTES_DATABASE_URL='{env["SEALEDNOTES_DATABASE_URL"]}'
  export VAULT_ADDR='{env["VAULT_ADDR"]}' VAULT_TOKEN='{env["VAULT_TOKEN"]}'

Demo tokens (tenant "demo"):
  export CLINICIAN_TOKEN='{t["clinician"]}'
  export INTEGRATION_TOKEN='{t["integration"]}'
  export ADMIN_TOKEN='{t["admin"]}'
  export AUDITOR_TOKEN='{t["auditor"]}'
  export PATIENT_ID='{pid}'   # on dr-demo's care team

Create a note, then read it back:
  NOTE_ID=$(curl -s -X POST {base}/v1/patients/$PATIENT_ID/notes \\
      -H "Authorization: Bearer $CLINICIAN_TOKEN" -H 'Content-Type: application/json' \\
      -d '{{"kind":"progress","title":"First visit","body":"Patient seen, doing well."}}' \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -s {base}/v1/notes/$NOTE_ID -H "Authorization: Bearer $CLINICIAN_TOKEN"
"""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
