"""Maintenance (its own database role) and two-person approvals."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from service.cli.base import (
    _emit,
    _errors,
    _services,
    main,
)

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
    from service.access.authentication import authenticate
    from service.access.caller import Caller

    token = os.environ.get("SEALEDNOTES_ADMIN_TOKEN")
    if not token:
        raise click.ClickException(
            "SEALEDNOTES_ADMIN_TOKEN is required: your own admin token (an approval is "
            "yours, and may not be for a request of your own)"
        )
    with _errors():
        return Caller(authenticate(svc.store, svc.clock, f"Bearer {token}"), "cli")


def _approval_dict(a: Any) -> dict[str, Any]:
    from service.http.admin import approval_json

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
