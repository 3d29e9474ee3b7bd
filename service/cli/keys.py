"""Keys and patients (ops): rotation, retirement, status, shred, re-key."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from service.access.caller import OPERATOR
from service.cli.base import (
    _emit,
    _errors,
    _services,
    main,
)

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
        p = _services().keyops.shred(patient_id, reason, OPERATOR)
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
