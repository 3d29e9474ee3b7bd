"""The access log: verify, reconcile, checkpoint, export."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from service.cli.base import (
    _emit,
    _errors,
    _services,
    main,
)

# -- audit ----------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Verify, checkpoint and export the tamper-evident access log."""


@audit.command("verify")
@click.option(
    "--incremental",
    is_flag=True,
    help="Only the records since the last checkpoint a verification found intact "
    "(its head records re-checked). Default: every record.",
)
@click.option("--json", "as_json", is_flag=True)
def audit_verify(incremental: bool, as_json: bool) -> None:
    """Recompute the hash chains and check the signed checkpoints: every record, or
    (--incremental) those since the last checkpoint a verification found intact."""
    with _errors():
        report = _services().audit_service.verify(full=not incremental).as_dict()
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        since = (
            f" since verified checkpoint {report['from_checkpoint']}"
            if report["from_checkpoint"]
            else ""
        )
        click.echo(
            f"{'OK' if report['ok'] else 'TAMPERED'}: {report['checked']} records{since}, "
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

    from service.audit.fhir import audit_event

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
