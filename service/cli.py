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
@click.option(
    "--app-role",
    envvar="SEALEDNOTES_APP_ROLE",
    default=None,
    help="Database role the service runs as: granted read/write on operational tables "
    "but only INSERT/SELECT on the audit log (env SEALEDNOTES_APP_ROLE).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def migrate(app_role: str | None, as_json: bool) -> None:
    """Create or upgrade the database schema (idempotent). Run as the schema owner."""
    from service.store import Store

    url = os.environ.get("SEALEDNOTES_DATABASE_URL")
    if not url:
        raise click.ClickException("SEALEDNOTES_DATABASE_URL is required")
    with _errors():
        applied = Store(url).migrate(app_role=app_role)
    _emit(
        as_json,
        {"applied": applied, "app_role": app_role},
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
@click.option("--token-ttl", default="1h", show_default=True)
@click.option("--token-max-ttl", default="24h", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def vault_setup(
    approle: bool, issue_secret_id: bool, token_ttl: str, token_max_ttl: str, as_json: bool
) -> None:
    """Transit mount, keys, policies and the service AppRole (idempotent; ops credentials)."""
    from importlib import resources

    svc = _services()
    out: dict[str, Any] = {"ok": True, "mount": svc.keys.mount}
    with _errors():
        svc.keys.ensure_transit_mount()
        svc.keys.ensure_audit_signing_key()
        with svc.store.transaction() as tx:
            tenants = tx.all_tenants()
        for t in tenants:
            svc.keys.ensure_tenant_keys(t.id)
        out["tenants"] = len(tenants)
        policies = []
        for name in ("sealednotes-service", "sealednotes-ops"):
            hcl = resources.files("service.vault_policies").joinpath(f"{name}.hcl").read_text()
            svc.keys.write_policy(name, hcl)
            policies.append(name)
        out["policies"] = policies
        if approle:
            role_id = svc.keys.ensure_approle(
                "sealednotes-service",
                ["sealednotes-service"],
                token_ttl=token_ttl,
                token_max_ttl=token_max_ttl,
            )
            out["approle"] = {"role_name": "sealednotes-service", "role_id": role_id}
            if issue_secret_id:
                out["approle"]["secret_id"] = svc.keys.new_secret_id("sealednotes-service")
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(
        f"transit mount '{out['mount']}' ready; keys ensured for {out['tenants']} "
        f"tenant(s); policies written: {', '.join(out['policies'])}"
    )
    if "approle" in out:
        click.echo(
            f"AppRole sealednotes-service: SEALEDNOTES_VAULT_ROLE_ID={out['approle']['role_id']}"
        )
        if "secret_id" in out["approle"]:
            click.echo(f"SEALEDNOTES_VAULT_SECRET_ID={out['approle']['secret_id']}  (shown once)")


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


# -- keys and patients (ops) -------------------------------------------------------------


@main.group()
def keys() -> None:
    """Rotate and inspect the tenants' Transit keys."""


@keys.command("rotate")
@click.option("--tenant", "tenant_name", default=None, help="Only this tenant (default: all).")
@click.option(
    "--retire-old",
    is_flag=True,
    help="After every wrapped key is on the newest version, raise "
    "min_decryption_version so older versions no longer decrypt.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 20000),
    default=2000,
    show_default=True,
    help="Wrapped keys rewrapped and committed per round.",
)
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(tenant_name: str | None, retire_old: bool, batch: int, as_json: bool) -> None:
    """Rotate Transit keys and rewrap every patient key (online, resumable)."""
    svc = _services()
    show_bar = not as_json and sys.stderr.isatty()
    state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if not show_bar:
            return
        bar = state.get("bar")
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label="rewrapping", file=sys.stderr)
            bar.__enter__()
            state["bar"], state["done"] = bar, 0
        bar.update(done - state["done"])
        state["done"] = done

    try:
        with _errors():
            reports = svc.keyops.rotate(
                tenant_name, retire_old=retire_old, batch=batch, progress=progress
            )
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)
    summary = {"ok": all(not r.failed for r in reports), "tenants": [r.as_dict() for r in reports]}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for r in reports:
            click.echo(
                f"{r.tenant}: v{r.from_version} -> v{r.to_version}"
                f"{' (resumed)' if r.resumed else ''}: rewrapped {r.rewrapped} keys in "
                f"{r.seconds:.1f}s, {len(r.failed)} failed"
                + (f"; retired versions < v{r.min_decryption_version}" if r.retired else "")
            )
    if not summary["ok"]:
        sys.exit(1)


@keys.command("retire")
@click.option("--tenant", "tenant_name", default=None, help="Only this tenant (default: all).")
@click.option("--json", "as_json", is_flag=True)
def keys_retire(tenant_name: str | None, as_json: bool) -> None:
    """Retire old Transit key versions (no rotation); refuses while keys are still old."""
    with _errors():
        retired = _services().keyops.retire(tenant_name)
    if as_json:
        click.echo(json.dumps({"tenants": retired}))
    else:
        for r in retired:
            click.echo(f"{r['tenant']}: versions below v{r['min_decryption_version']} retired")


@keys.command("status")
@click.option("--json", "as_json", is_flag=True)
def keys_status(as_json: bool) -> None:
    """Per tenant: Transit key versions and wrapped keys on each version."""
    with _errors():
        status = _services().keyops.status()
    if as_json:
        click.echo(json.dumps({"tenants": status}))
        return
    for t in status:
        click.echo(
            f"{t['tenant']}: latest v{t['latest_version']}, min_decryption "
            f"v{t['min_decryption_version']}, wrapped keys by version "
            f"{t['wrapped_keys_by_version'] or '{}'}"
        )


@main.group()
def patients() -> None:
    """Crypto-shred or re-key a patient (ops, audited)."""


def _reason(_ctx: Any, _param: Any, value: str) -> str:
    if not 10 <= len(value.strip()) <= 2000:
        raise click.BadParameter("give 10 to 2000 characters (it is kept in the audit log)")
    return value.strip()


@patients.command("shred")
@click.argument("patient_id")
@click.option("--reason", required=True, callback=_reason)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
def patients_shred(patient_id: str, reason: str, yes: bool, as_json: bool) -> None:
    """Destroy a patient's wrapped key: its notes become unreadable forever."""
    if not yes and not as_json:
        click.confirm(f"Destroy the key of patient {patient_id} for ever?", abort=True)
    with _errors():
        p = _services().keyops.shred(patient_id, reason)
    _emit(
        as_json,
        {"patient_id": p.id, "shredded_at": p.shredded_at.isoformat() if p.shredded_at else None},
        f"patient {p.id} shredded",
    )


@patients.command("rekey")
@click.argument("patient_id")
@click.option("--reason", required=True, callback=_reason)
@click.option("--json", "as_json", is_flag=True)
def patients_rekey(patient_id: str, reason: str, as_json: bool) -> None:
    """New data key for one patient; every note version re-encrypted."""
    with _errors():
        result = _services().keyops.rekey(patient_id, reason)
    _emit(
        as_json,
        result,
        f"patient {patient_id}: {result['versions_resealed']} versions "
        "re-encrypted under a new key",
    )


# -- audit ----------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Verify, checkpoint and export the tamper-evident access log."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(as_json: bool) -> None:
    """Recompute every hash chain and check every signed checkpoint."""
    with _errors():
        report = _services().audit_service.verify().as_dict()
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        click.echo(
            f"{'OK' if report['ok'] else 'TAMPERED'}: {report['checked']} records, "
            f"{report['checkpoints']} checkpoints ({report['records_per_second']} records/s)"
        )
        for p in report["problems"]:
            click.echo(
                f"  {p['kind']}: record {p['record_id']} (shard {p['shard']}, "
                f"seq {p['seq']}): {p['detail']}"
            )
    if not report["ok"]:
        sys.exit(1)


@audit.command("checkpoint")
@click.option("--json", "as_json", is_flag=True)
def audit_checkpoint(as_json: bool) -> None:
    """Sign the current heads of the log with the Vault Transit audit key."""
    with _errors():
        cp = _services().audit_service.checkpoint()
    _emit(as_json, cp, f"checkpoint {cp['id']}: {cp['total']} records signed")


@audit.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "fhir"]), default="jsonl", show_default=True
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    default=None,
    help="Only records at or after this time (UTC if no offset).",
)
@click.option("--tenant", "tenant_name", default=None, help="Only this tenant's records.")
@click.option("--output", "-o", type=click.File("w"), default="-", show_default=True)
def audit_export(fmt: str, since: Any, tenant_name: str | None, output: Any) -> None:
    """Write the access log as JSON lines or FHIR R4 AuditEvent resources (one per line)."""
    from datetime import UTC

    from service.fhir import audit_event

    svc = _services()
    tenant_id = None
    with _errors():
        if tenant_name:
            tenant_id = svc.principals.tenant(tenant_name).id
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        n = 0
        for row in svc.audit_service.export(since=since, tenant_id=tenant_id):
            if fmt == "fhir":
                obj = audit_event(row)
            else:
                obj = {
                    k: (
                        v.isoformat()
                        if hasattr(v, "isoformat")
                        else (str(v) if v is not None and k.endswith("_id") else v)
                    )
                    for k, v in row.items()
                }
            output.write(json.dumps(obj, default=str) + "\n")
            n += 1
    click.echo(f"exported {n} records", err=True)


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
    from service.devstack import (
        BaoServer,
        EmbeddedPostgres,
        database_url,
        ensure_database,
        url_with_user,
    )

    _prepare_serving()
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"state in {state_dir}")
    pg = EmbeddedPostgres(state_dir / "pgdata").start()
    bao = BaoServer(state_dir / "openbao", dev=False)
    try:
        bao.start()
        ensure_database(pg.admin_url, "sealednotes")
        owner_url = database_url(pg.admin_url, "sealednotes")
        from service.store import Store

        # Schema as the owner; the service itself runs as the least-privileged role.
        Store(owner_url).migrate(app_role="sealednotes_app")
        env = {
            "SEALEDNOTES_DATABASE_URL": url_with_user(owner_url, "sealednotes_app"),
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": bao.root_token,
            "SEALEDNOTES_BIND": f"{host}:{port}",
        }
        os.environ.update(env)
        settings = _settings()
        from service.app import build_services, create_app

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


# EHR integration: tenants idp set|show|remove, principals link-subject|smart-client.
from service.cli_ehr import register as _register_ehr  # noqa: E402

_register_ehr(tenants, principals)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
