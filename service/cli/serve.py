"""Serving: `serve` (gunicorn) and `dev` (the whole stack locally)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from service.cli.base import (
    _default_tenant_cap,
    _resolve_wrapped_secret_id,
    _settings,
    _settings_with,
    main,
)
from service.cli.setup import vault_bootstrap
from service.config import Settings
from service.models import Role

# -- serving ----------------------------------------------------------------------------


def _prepare_serving() -> None:
    """Before anything imports prometheus_client: one metrics directory shared by
    the gunicorn workers, and redacted JSON logs."""
    import tempfile

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sealednotes-metrics-")
    from service.logs import configure_logging

    configure_logging()


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
    _prepare_serving()
    settings = _resolve_wrapped_secret_id(_settings())
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
    try:
        from service.devtools.stack import (
            BaoServer,
            EmbeddedPostgres,
            database_url,
            ensure_database,
            url_with_user,
        )
    except ImportError as e:  # a wheel install: the dev tools stay in the source tree
        raise click.ClickException(
            "`sealednotes dev` runs from a source checkout (make dev); this installation "
            "has no development tools"
        ) from e

    _prepare_serving()
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"state in {state_dir}")
    pg = EmbeddedPostgres(state_dir / "pgdata").start()
    bao = BaoServer(state_dir / "openbao", dev=False, audit_log=state_dir / "openbao" / "audit.log")
    try:
        bao.start()
        ensure_database(pg.admin_url, "sealednotes")
        owner_url = database_url(pg.admin_url, "sealednotes")
        from service.adapters.postgres import Store

        # Schema as the owner; the service itself runs as the least-privileged role.
        Store(owner_url).migrate(
            app_role="sealednotes_app",
            maintenance_role="sealednotes_maintenance",
            default_tenant_cap=_default_tenant_cap(),
        )
        app_url = url_with_user(owner_url, "sealednotes_app")
        # The root token sets Vault up and creates the demo data, exactly as ops would;
        # it never reaches the service, which logs in with its AppRole like production.
        for name in (
            "VAULT_TOKEN",
            "SEALEDNOTES_VAULT_TOKEN_FILE",
            "SEALEDNOTES_VAULT_ROLE_ID",
            "SEALEDNOTES_VAULT_SECRET_ID",
            "SEALEDNOTES_VAULT_WRAPPED_SECRET_ID",
        ):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "SEALEDNOTES_DATABASE_URL": app_url,
                "VAULT_ADDR": bao.addr,
                "SEALEDNOTES_BIND": f"{host}:{port}",
            }
        )
        from service.app import build_services, create_app

        ops = build_services(
            dataclasses.replace(
                _settings_with(VAULT_TOKEN=bao.root_token), vault_token=bao.root_token
            )
        )
        setup = vault_bootstrap(ops, issue_secret_id=True, bound_cidrs=["127.0.0.1/32"])
        demo = _demo_data(ops)
        ops_token = ops.keys.create_token(["sealednotes-ops"], ttl="24h")
        ops.store.close()
        approle = setup["approle"]
        os.environ["SEALEDNOTES_VAULT_ROLE_ID"] = approle["role_id"]
        os.environ["SEALEDNOTES_VAULT_SECRET_ID"] = approle["secret_id"]
        settings = _settings()
        assert settings.vault_token is None
        base = f"http://{host}:{port}"
        click.echo(
            _banner(
                base,
                demo,
                {
                    "SEALEDNOTES_DATABASE_URL": app_url,
                    "VAULT_ADDR": bao.addr,
                    "VAULT_TOKEN": ops_token,
                    "VAULT_AUDIT_LOG": str(bao.audit_log),
                },
            )
        )
        _run_gunicorn(settings, lambda: create_app(settings), workers=2)
    finally:
        bao.stop()
        pg.stop()


def _demo_data(svc: Any) -> dict[str, Any]:
    from service.access.caller import Caller
    from service.errors import Conflict

    try:
        tenant = svc.principals.create_tenant("demo")
    except Conflict:
        tenant = svc.principals.tenant("demo")
        svc.keys.ensure_tenant_keys(tenant.id)
        svc.principals.ensure_vault_quota(tenant)
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
            issued = svc.principals.issue_token(svc.principals.principal_by_name("demo", name).id)
        tokens[role.value] = issued.token
        ids[role.value] = issued.principal_id
    from service.access.authentication import authenticate

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

The API runs under its AppRole (policy sealednotes-service only). For other
sealednotes commands in another shell, an ops token (policy sealednotes-ops, 24 h):
  export SEALEDNOTES_DATABASE_URL='{env["SEALEDNOTES_DATABASE_URL"]}'
  export VAULT_ADDR='{env["VAULT_ADDR"]}' VAULT_TOKEN='{env["VAULT_TOKEN"]}'
Vault's own log of every request (for `sealednotes audit reconcile`):
  {env["VAULT_AUDIT_LOG"]}

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


# EHR integration: tenants idp set|show|remove, principals link-subject|smart-client.
