"""The `sealednotes` command line (a click group)."""

from __future__ import annotations

import contextlib
import dataclasses
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
from service.principals import WINDOWS_PER_HOUR


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
    import dataclasses

    from service.vault import VaultKeyService

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

    from service.vault import SERVICE_ROLE

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
        p = _services().principals.unlock(principal_id)
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
    """Crypto-shred a patient: 410 at once, its wrapped key destroyed by `maintenance run`
    once the grace period (SEALEDNOTES_SHRED_GRACE_DAYS) ends; then its notes are
    unreadable forever."""
    if not yes and not as_json:
        click.confirm(
            f"Shred patient {patient_id} (key destroyed after the grace period)?", abort=True
        )
    from service.models import Patient

    with _errors():
        p = _services().keyops.shred(patient_id, reason)
    assert isinstance(p, Patient)  # operators shred directly (with the grace period)
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


@audit.command("reconcile")
@click.option(
    "--vault-audit-log",
    "vault_log",
    required=True,
    type=click.File("r", encoding="utf-8", errors="replace"),
    help="Vault's file audit device output (JSON lines; - for standard input).",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    default=None,
    help="Only Vault unwraps at or after this time (UTC if no offset).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds between an unwrap in Vault's log and the service record of its cause.",
)
@click.option("--json", "as_json", is_flag=True)
def audit_reconcile(vault_log: Any, since: Any, tolerance: float, as_json: bool) -> None:
    """Match every data-key unwrap Vault logged to the service request that caused it.
    Exits 1 (and raises an alert) when Vault unwrapped keys the service did not."""
    from datetime import UTC, timedelta

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    svc = _services()
    with _errors():
        report = svc.audit_service.reconcile_vault(
            iter(vault_log),
            mount=svc.keys.mount,
            since=since,
            tolerance=timedelta(seconds=tolerance),
        )
    out = report.as_dict()
    if not report.ok:
        svc.alerts.emit(
            "vault-unwraps-unmatched",
            unmatched=report.unmatched,
            first=out["unmatched_first"],
            last=out["unmatched_last"],
            clients=out["unmatched_by_client"],
        )
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"{'OK' if report.ok else 'UNMATCHED UNWRAPS'}: {report.vault_unwraps} unwraps in "
            f"Vault's log, {report.matched} matched to the service's records, "
            f"{report.unmatched} unmatched"
        )
        if not report.ok:
            click.echo(
                f"  first {out['unmatched_first']}, last {out['unmatched_last']}, "
                f"by client address {out['unmatched_by_client']}"
            )
            click.echo(
                "  runbook: docs/operations.md, 'The service's credentials may be compromised'"
            )
    if not report.ok:
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


# -- maintenance ----------------------------------------------------------------------


@main.group()
def maintenance() -> None:
    """Housekeeping run by the maintenance database role (never the service's)."""


def _age(_ctx: Any, _param: Any, value: str) -> Any:
    import re
    from datetime import timedelta

    m = re.fullmatch(r"([0-9]{1,5})([dh])", value.strip())
    if not m:
        raise click.BadParameter("give a number of days or hours, e.g. 30d or 72h")
    n = int(m.group(1))
    return timedelta(days=n) if m.group(2) == "d" else timedelta(hours=n)


@maintenance.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    callback=_age,
    help="Drop ledger rows older than this (30d, 72h); never less than two days.",
)
@click.option("--json", "as_json", is_flag=True)
def maintenance_prune(older_than: Any, as_json: bool) -> None:
    """Prune old key-release, denial and break-glass ledger rows (audited). Run with
    SEALEDNOTES_DATABASE_URL naming the maintenance role (`migrate --maintenance-role`)."""
    from service.adapters.postgres import Store

    url = os.environ.get("SEALEDNOTES_DATABASE_URL")
    if not url:
        raise click.ClickException("SEALEDNOTES_DATABASE_URL is required")
    with _errors():
        store = Store(url, min_size=0, max_size=1, timeout=60)
        try:
            with store.transaction() as tx:
                deleted = tx.ledger.prune_ledgers(older_than)
        finally:
            store.close()
    _emit(
        as_json,
        {"deleted": deleted, "older_than_seconds": int(older_than.total_seconds())},
        ", ".join(f"{k}: {v} rows deleted" for k, v in deleted.items()),
    )


@maintenance.command("run")
@click.option("--json", "as_json", is_flag=True)
def maintenance_run(as_json: bool) -> None:
    """Destroy the wrapped keys of patients whose shred grace period has ended
    (audited, one record per patient). Run it daily, as the maintenance role."""
    from service.adapters.postgres import Store

    url = os.environ.get("SEALEDNOTES_DATABASE_URL")
    if not url:
        raise click.ClickException("SEALEDNOTES_DATABASE_URL is required")
    with _errors():
        store = Store(url, min_size=0, max_size=1, timeout=60)
        try:
            with store.transaction() as tx:
                destroyed = tx.patients.destroy_due_keys()
        finally:
            store.close()
    _emit(as_json, {"keys_destroyed": destroyed}, f"{destroyed} shredded patients' keys destroyed")


# -- two-person approvals ---------------------------------------------------------------


@main.group()
def approvals() -> None:
    """List and decide admins' requests for weakening actions, as an admin of the tenant
    (your own admin token in SEALEDNOTES_ADMIN_TOKEN)."""


def _admin_caller(svc: Any) -> Any:
    from service.audit import Caller
    from service.auth import authenticate

    token = os.environ.get("SEALEDNOTES_ADMIN_TOKEN")
    if not token:
        raise click.ClickException(
            "SEALEDNOTES_ADMIN_TOKEN is required: your own admin token (an approval is "
            "yours, and may not be for a request of your own)"
        )
    with _errors():
        return Caller(authenticate(svc.store, svc.clock, f"Bearer {token}"), "cli")


def _approval_dict(a: Any) -> dict[str, Any]:
    from service.api.admin import approval_json

    return approval_json(a)


@approvals.command("list")
@click.option("--status", type=click.Choice(["pending", "approved", "rejected"]), default="pending")
@click.option("--json", "as_json", is_flag=True)
def approvals_list(status: str, as_json: bool) -> None:
    """Requests of your tenant (pending by default)."""
    svc = _services()
    caller = _admin_caller(svc)
    with _errors():
        items = [_approval_dict(a) for a in svc.approvals.list(caller, status)]
    if as_json:
        click.echo(json.dumps({"items": items}))
        return
    for a in items:
        click.echo(
            f"{a['id']}  {a['kind']:<16} {a['status']:<8} requested by {a['requested_by']} "
            f"at {a['requested_at']}, expires {a['expires_at']}  "
            f"target {a['target_principal_id'] or a['target_patient_id']} {a['params'] or ''}"
        )


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
def approvals_approve(approval_id: str, as_json: bool) -> None:
    """Approve another admin's request: the action is carried out now, in your name."""
    svc = _services()
    caller = _admin_caller(svc)
    with _errors():
        approval, result = svc.approvals.approve(caller, approval_id)
    _emit(
        as_json,
        {"approval": _approval_dict(approval), "result": result},
        f"approved {approval.kind} {approval.id}: {json.dumps(result)}",
    )


@approvals.command("reject")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
def approvals_reject(approval_id: str, as_json: bool) -> None:
    """Reject another admin's request."""
    svc = _services()
    caller = _admin_caller(svc)
    with _errors():
        approval = svc.approvals.reject(caller, approval_id)
    _emit(
        as_json, {"approval": _approval_dict(approval)}, f"rejected {approval.kind} {approval.id}"
    )


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


def _settings_with(**env: str) -> Settings:
    try:
        return Settings.from_env({**os.environ, **env})
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


def _demo_data(svc: Any) -> dict[str, Any]:
    from service.audit import Caller
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
from service.cli_ehr import register as _register_ehr  # noqa: E402

_register_ehr(tenants, principals)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
