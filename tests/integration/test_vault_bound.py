"""P15: Vault bounds what the service's own credentials can unwrap, and records it.

An OpenBao server of this module's own, with a file audit device, stands for
production Vault. The attacker holds what a compromised service holds: its
AppRole credentials, exactly as `vault-setup` issues them, and a database dump
of the wrapped keys. Vault refuses batch unwraps and stops single unwraps at the
tenant's quota; `audit reconcile` finds every one of them, and none of the
service's own.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import psycopg
import pytest
from click.testing import CliRunner
from flask import Flask

from crypto import key_context
from service.adapters.vault import SERVICE_ROLE, VaultKeyService, dek_key_name
from service.cli import main as cli
from service.cli import vault_bootstrap
from service.config import Budgets
from service.devtools.stack import BaoServer
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper, Tenant, Who, seed_patients


@pytest.fixture(scope="module")
def audited_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    workdir = tmp_path_factory.mktemp("vault-bound")
    server = BaoServer(workdir / "bao", dev=True, audit_log=workdir / "vault-audit.log").start()
    setup = VaultKeyService(addr=server.addr, token=server.root_token)
    setup.ensure_transit_mount()
    setup.ensure_audit_signing_key()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ops_app(make_app: AppFactory, audited_bao: BaoServer) -> Flask:
    """Services with ops (here root) Vault credentials: tenants, quotas, AppRole."""
    return make_app(vault_addr=audited_bao.addr, vault_token=audited_bao.root_token)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dumped_keys(db_url: str, tenant_id: str) -> list[tuple[str, str]]:
    """(patient id, wrapped key) of a tenant, as `pg_dump` would give them."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT patient_id, wrapped_key FROM patient_keys WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchall()
    return [(str(p), w) for p, w in rows]


def login_as_the_service(bao: BaoServer, approle: dict[str, Any]) -> hvac.Client:
    client = hvac.Client(url=bao.addr, timeout=5)
    client.auth.approle.login(role_id=approle["role_id"], secret_id=approle["secret_id"])
    return client


def reconcile(app: Flask, bao: BaoServer) -> dict[str, Any]:
    s = app.extensions["sealednotes"].settings
    assert bao.audit_log is not None
    env = {
        "SEALEDNOTES_DATABASE_URL": s.database_url,
        "VAULT_ADDR": s.vault_addr,
        "VAULT_TOKEN": s.vault_token or "",
    }
    r = CliRunner().invoke(
        cli, ["audit", "reconcile", "--vault-audit-log", str(bao.audit_log), "--json"], env=env
    )
    assert r.exit_code in (0, 1), r.output
    out: dict[str, Any] = __import__("json").loads(r.stdout)
    assert (r.exit_code == 0) == out["ok"]
    return out


def test_stolen_service_credentials_unwrap_at_most_the_quota_and_are_reconciled(
    make_app: AppFactory, audited_bao: BaoServer, db_url: str
) -> None:
    # A tenant of 100 patients an hour: Vault allows 100 x 10 (headroom) = 1,000 unwraps
    # an hour, in three-minute windows of 50.
    ops = make_app(
        vault_addr=audited_bao.addr,
        vault_token=audited_bao.root_token,
        budgets=Budgets(tenant_per_hour=100),
    )
    stack = StackHelper(ops, Api(ops.test_client()))
    t = stack.tenant()
    dr = stack.clinician(t)
    seed_patients(stack, t, [dr], 80)  # notes written: data keys made, none unwrapped
    svc = ops.extensions["sealednotes"]
    setup = vault_bootstrap(svc, issue_secret_id=True, bound_cidrs=["127.0.0.1/32"])
    assert {"tenant": t.name, "rate": 50} in setup["quotas"]
    quota = svc.keys.unwrap_quota(t.id)
    assert quota is not None and quota["rate"] == 50 and quota["interval"] == 180

    attacker = login_as_the_service(audited_bao, setup["approle"])
    assert attacker.auth.token.lookup_self()["data"]["policies"] == [SERVICE_ROLE]
    dump = dumped_keys(db_url, t.id)
    assert len(dump) == 80
    dek = dek_key_name(t.id)
    items = [
        {"ciphertext": w, "context": b64(key_context(tenant_id=t.id, patient_id=p))}
        for p, w in dump
    ]

    # 1. Batch unwrap: refused by the policy.
    with pytest.raises(hvac.exceptions.Forbidden):
        attacker.secrets.transit.decrypt_data(name=dek, ciphertext="", batch_input=items)

    # 2. A tight loop of single unwraps: the quota, then 429 for the rest.
    unwrapped, throttled = 0, 0
    deadline = time.monotonic() + 3
    i = 0
    while time.monotonic() < deadline:
        item = items[i % len(items)]
        i += 1
        try:
            attacker.secrets.transit.decrypt_data(
                name=dek, ciphertext=item["ciphertext"], context=item["context"]
            )
            unwrapped += 1
        except hvac.exceptions.RateLimitExceeded:
            throttled += 1
    # (the refused batch request above already took one token from the bucket)
    assert 0 < unwrapped <= 50, unwrapped
    assert throttled > 100  # the loop kept trying for three seconds

    # 3. Nor can the stolen token export, reconfigure or lift the quota.
    for attempt in (
        lambda: attacker.secrets.transit.export_key(name=dek, key_type="encryption-key"),
        lambda: attacker.secrets.transit.update_key_configuration(name=dek, exportable=True),
        lambda: attacker.write_data(
            f"sys/quotas/rate-limit/sealednotes-unwrap-{t.id}", data={"rate": 1e9}
        ),
        lambda: attacker.delete(f"sys/quotas/rate-limit/sealednotes-unwrap-{t.id}"),
        lambda: attacker.secrets.transit.rewrap_data(name=dek, ciphertext=dump[0][1]),
        lambda: attacker.secrets.transit.encrypt_data(name=dek, plaintext=b64(b"x")),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()

    # 4. Vault's log has every one of them, and none matches a service request.
    report = reconcile(ops, audited_bao)
    assert not report["ok"]
    assert report["unmatched_by_tenant"].get(t.id) == unwrapped
    assert report["unmatched_by_client"].get("127.0.0.1", 0) >= unwrapped

    # 5. The service itself, on the same exhausted quota: 503, audited, alerted.
    service = make_app(
        vault_addr=audited_bao.addr,
        vault_token=None,
        vault_role_id=setup["approle"]["role_id"],
        vault_secret_id=setup["approle"]["secret_id"],
    )
    api = Api(service.test_client())
    pid = dump[0][0]
    r = api.get(f"/v1/patients/{pid}/notes?include=content", dr.token)
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["type"].endswith("/key-service-throttled")
    assert int(r.headers["Retry-After"]) >= 60
    assert "body" not in r.get_data(as_text=True)
    with psycopg.connect(db_url) as conn:
        audited = conn.execute(
            "SELECT outcome, reason FROM audit_events WHERE patient_id = %s"
            " AND action = 'note.list-content'",
            (pid,),
        ).fetchall()
        released = conn.execute(
            "SELECT count(*) FROM key_releases WHERE patient_id = %s", (pid,)
        ).fetchone()
    assert audited == [("unavailable", "vault-unwrap-quota")]
    assert released == (0,)  # nothing charged for a release that did not happen
    services = service.extensions["sealednotes"]
    assert any(a["alert"] == "vault-unwrap-quota-exceeded" for a in services.alerts.sent)
    assert services.metrics.vault_throttled._value.get() == 1


def clinician_day(api: Api, dr: Who, patients: list[str], cache_ttl: float) -> list[int]:
    """Read every patient, write to it, and read it again once the key cache has
    expired: each step unwraps the patient's key again."""
    statuses = []
    for pid in patients:
        r = api.get(f"/v1/patients/{pid}/notes?include=content", dr.token)
        statuses.append(r.status_code)
    time.sleep(cache_ttl * 2)
    for pid in patients:
        r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "progress", "body": "seen"})
        statuses.append(r.status_code)
    time.sleep(cache_ttl * 2)
    for pid in patients:
        r = api.get(f"/v1/patients/{pid}/notes?include=content", dr.token)
        statuses.append(r.status_code)
    return statuses


def test_clinicians_at_full_budget_never_meet_the_vault_quota_and_reconcile_clean(
    make_app: AppFactory, audited_bao: BaoServer
) -> None:
    """Four clinicians whose budgets add up to the tenant's cap, each opening eight
    patients within one quota window (nearly three times the pace of a 60-an-hour
    budget), writing to each and reading each again after the key cache expired."""
    per_hour, clinicians, burst = 60, 4, 8
    budgets = Budgets(per_hour=per_hour, tenant_per_hour=per_hour * clinicians)
    ops = make_app(vault_addr=audited_bao.addr, vault_token=audited_bao.root_token, budgets=budgets)
    stack = StackHelper(ops, Api(ops.test_client()))
    t: Tenant = stack.tenant()
    staff = [stack.clinician(t) for _ in range(clinicians)]
    panels = {dr.id: seed_patients(stack, t, [dr], burst) for dr in staff}
    setup = vault_bootstrap(
        ops.extensions["sealednotes"], issue_secret_id=True, bound_cidrs=["127.0.0.1/32"]
    )
    # The default headroom (10) over a tenant cap of 240: 2,400 unwraps an hour, 120 per
    # three-minute window.
    assert {"tenant": t.name, "rate": 120} in setup["quotas"]

    cache_ttl = 0.3
    service = make_app(
        vault_addr=audited_bao.addr,
        vault_token=None,
        vault_role_id=setup["approle"]["role_id"],
        vault_secret_id=setup["approle"]["secret_id"],
        budgets=budgets,
        key_cache_ttl=cache_ttl,
    )
    api = Api(service.test_client())
    statuses = [s for dr in staff for s in clinician_day(api, dr, panels[dr.id], cache_ttl)]
    assert set(statuses) <= {200, 201}, sorted(set(statuses))  # 0 Vault 429s, 0 denials
    services = service.extensions["sealednotes"]
    assert services.metrics.vault_throttled._value.get() == 0
    misses = services.metrics.key_cache.labels(result="miss")._value.get()
    assert misses >= 3 * burst * clinicians  # every step went back to Vault

    report = reconcile(ops, audited_bao)
    assert report["unmatched_by_tenant"].get(t.id, 0) == 0
    assert report["matched"] >= misses


def test_vault_setup_cli_issues_bound_short_lived_credentials(
    ops_app: Flask, audited_bao: BaoServer
) -> None:
    s = ops_app.extensions["sealednotes"].settings
    env = {
        "SEALEDNOTES_DATABASE_URL": s.database_url,
        "VAULT_ADDR": audited_bao.addr,
        "VAULT_TOKEN": audited_bao.root_token,
    }
    r = CliRunner().invoke(
        cli,
        [
            "vault-setup",
            "--issue-secret-id",
            "--wrap-ttl",
            "5m",
            "--bound-cidr",
            "127.0.0.1/32",
            "--json",
        ],
        env=env,
    )
    assert r.exit_code == 0, r.output
    out = __import__("json").loads(r.stdout)
    wrapped = out["approle"]["wrapped_secret_id"]
    assert "secret_id" not in out["approle"]

    root = hvac.Client(url=audited_bao.addr, token=audited_bao.root_token)
    role = root.auth.approle.read_role(role_name=SERVICE_ROLE)["data"]
    assert role["token_policies"] == [SERVICE_ROLE]
    assert role["token_no_default_policy"] is True
    assert role["token_ttl"] == 15 * 60 and role["token_max_ttl"] == 3600
    assert role["secret_id_ttl"] == 168 * 3600 and role["secret_id_num_uses"] == 1000
    assert role["secret_id_bound_cidrs"] == ["127.0.0.1/32"]
    assert role["token_bound_cidrs"] in (["127.0.0.1/32"], ["127.0.0.1"])  # Vault may normalise

    # The wrapping token yields the secret id once; `serve` exchanges it before forking.
    keys = VaultKeyService(addr=audited_bao.addr)
    secret_id = keys.unwrap_secret_id(wrapped)
    with pytest.raises(Exception):  # noqa: B017 - single use: any second unwrap fails
        keys.unwrap_secret_id(wrapped)
    service = VaultKeyService(
        addr=audited_bao.addr, role_id=out["approle"]["role_id"], secret_id=secret_id
    )
    assert service.lookup_self()["policies"] == [SERVICE_ROLE]


def test_token_file_is_reread_when_vault_agent_replaces_the_token(
    audited_bao: BaoServer, tmp_path: Path
) -> None:
    root = VaultKeyService(addr=audited_bao.addr, token=audited_bao.root_token)
    vault_policy = (Path(__file__).resolve().parents[2] / "deploy" / "vault").joinpath(
        f"{SERVICE_ROLE}.hcl"
    )
    root.write_policy(SERVICE_ROLE, vault_policy.read_text())
    first = root.create_token([SERVICE_ROLE], ttl="10m")
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    svc = VaultKeyService(addr=audited_bao.addr, token_file=str(token_file))
    assert svc.sign(b"x")
    # Vault Agent renews the login: a new token in the file, the old one revoked.
    second = root.create_token([SERVICE_ROLE], ttl="10m")
    token_file.write_text(second)
    hvac.Client(url=audited_bao.addr, token=audited_bao.root_token).auth.token.revoke(first)
    assert svc.sign(b"y")
    assert svc.lookup_self()["id"] == second


def test_quota_works_in_three_minute_windows(ops_app: Flask) -> None:
    """OpenBao forgets a client's bucket once its interval started more than three
    minutes ago, so an hour-long interval would refill every few minutes: the quota
    is the hourly figure spread over twenty three-minute windows (documented)."""
    svc = ops_app.extensions["sealednotes"]
    t = svc.principals.create_tenant("quota-window")
    quota = svc.keys.unwrap_quota(t.id)
    assert quota is not None
    assert quota["interval"] == int(timedelta(minutes=3).total_seconds())
    assert quota["path"] == f"transit/decrypt/{dek_key_name(t.id)}"
    assert quota["rate"] * 20 == 1000 * 10  # default tenant cap x default headroom, per hour
