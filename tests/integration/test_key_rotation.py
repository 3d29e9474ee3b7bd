"""P11: rotation rewraps every patient key online and resumably; old versions retire.
Crypto-shredding destroys a patient's key for good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hvac
import psycopg
import pytest
from click.testing import CliRunner
from flask import Flask

from service.adapters.vault import dek_key_name
from service.cli import main as cli
from service.devtools.stack import BaoServer
from service.models import Role
from tests.helpers import Api, StackHelper, seed_patients
from tests.integration.bulk import bulk_seed, decrypt_everything, key_versions


@pytest.fixture
def root_vault(bao: BaoServer) -> hvac.Client:
    return hvac.Client(url=bao.addr, token=bao.root_token)


def cli_env(app: Flask) -> dict[str, str]:
    s = app.extensions["sealednotes"].settings
    return {
        "SEALEDNOTES_DATABASE_URL": s.database_url,
        "VAULT_ADDR": s.vault_addr,
        "VAULT_TOKEN": s.vault_token or "",
    }


def test_rotate_and_retire_10k_patients_under_concurrent_writes(
    api: Api, stack: StackHelper, app: Flask, db_url: str, root_vault: hvac.Client
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    bulk_seed(db_url, root_vault, t.id, dr.id, 10_000)
    assert key_versions(db_url, t.id) == {1: 10_000}

    # A writer keeps creating notes (new patients and existing ones) during rotation.
    stop = threading.Event()
    written: list[int] = []
    errors: list[object] = []

    def writer() -> None:
        client = Api(app.test_client())
        pids: list[str] = []
        while not stop.is_set():
            # New patients, then existing ones again: within the clinician's hourly
            # limit of distinct patients written to (60), however fast this loop runs.
            if len(pids) < 40:
                pids.append(stack.patient_for(t, dr))
                pid = pids[-1]
            else:
                pid = pids[len(written) % len(pids)]
            for i in range(2):
                r = client.post(
                    f"/v1/patients/{pid}/notes",
                    dr.token,
                    {"kind": "progress", "body": f"written during rotation {i}"},
                )
                (written if r.status_code == 201 else errors).append(r.status_code)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.5)
        result = CliRunner().invoke(
            cli,
            ["keys", "rotate", "--tenant", t.name, "--retire-old", "--json"],
            env=cli_env(app),
        )
    finally:
        time.sleep(0.3)
        stop.set()
        thread.join()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["tenants"][0]
    assert not errors and len(written) > 10
    assert report["rotated"] and report["to_version"] == 2 and report["retired"]
    assert report["rewrapped"] >= 10_000 and report["failed"] == []
    print(
        f"\nrewrap: {report['rewrapped']} keys in {report['seconds']:.2f}s = "
        f"{report['keys_per_second']} keys/s"
    )

    versions = key_versions(db_url, t.id)
    assert set(versions) == {2}, versions  # every wrapped key, old and new, on v2
    info = root_vault.secrets.transit.read_key(name=dek_key_name(t.id))["data"]
    assert info["min_decryption_version"] == 2
    # Every note of every patient decrypts, including those written during rotation.
    assert decrypt_everything(db_url, root_vault, t.id) == 10_000 + len(written)
    # ...and the API reads them with a cold cache.
    app.extensions["sealednotes"].cache.clear()
    mine = seed_patients(stack, t, [dr], 1)[0]
    assert api.get(f"/v1/patients/{mine}/notes?include=content", dr.token).status_code == 200

    status = CliRunner().invoke(cli, ["keys", "status", "--json"], env=cli_env(app))
    tenant_status = next(x for x in json.loads(status.stdout)["tenants"] if x["tenant_id"] == t.id)
    assert tenant_status["latest_version"] == 2
    assert tenant_status["min_decryption_version"] == 2
    assert tenant_status["on_latest"] == tenant_status["wrapped_keys_total"]


def test_rotation_killed_halfway_resumes_without_loss(
    stack: StackHelper, app: Flask, db_url: str, root_vault: hvac.Client, workdir: Path
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    bulk_seed(db_url, root_vault, t.id, dr.id, 3_000)
    env = {**os.environ, **cli_env(app)}
    exe = str(Path(sys.executable).parent / "sealednotes")
    proc = subprocess.Popen(
        [exe, "keys", "rotate", "--tenant", t.name, "--batch", "50", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if key_versions(db_url, t.id).get(2, 0) >= 300:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    halfway = key_versions(db_url, t.id)
    assert halfway.get(1, 0) > 0 and halfway.get(2, 0) > 0, halfway  # really killed halfway

    refused = subprocess.run(
        [exe, "keys", "retire", "--tenant", t.name, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "old versions" in refused.stderr  # not while half done

    result = subprocess.run(
        [exe, "keys", "rotate", "--tenant", t.name, "--retire-old", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["tenants"][0]
    assert report["resumed"] and not report["rotated"]  # no second rotation
    assert report["to_version"] == 2 and report["retired"]
    assert key_versions(db_url, t.id) == {2: 3_000}
    assert decrypt_everything(db_url, root_vault, t.id) == 3_000


def approve_as_second_admin(api: Api, stack: StackHelper, t: Any, response: Any) -> Any:
    assert response.status_code == 202, response.get_json()
    admin2 = stack.principal(t, Role.ADMIN)
    approval = response.get_json()["approval"]["id"]
    r = api.post(f"/v1/admin/approvals/{approval}/approve", admin2.token)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["result"]


def maintenance_run(db_url: str) -> int:
    from click.testing import CliRunner

    from service.cli import main as cli
    from service.devtools.stack import url_with_user
    from tests.conftest import MAINTENANCE_ROLE

    out = CliRunner().invoke(
        cli,
        ["maintenance", "run", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": url_with_user(db_url, MAINTENANCE_ROLE)},
    )
    assert out.exit_code == 0, out.output
    return int(json.loads(out.stdout)["keys_destroyed"])


def test_shredded_patient_is_gone_for_good(
    api: Api, stack: StackHelper, app: Flask, db_url: str, root_vault: hvac.Client
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    keep, shred = seed_patients(stack, t, [dr], 2)
    note = api.get(f"/v1/patients/{shred}/notes", dr.token).get_json()["items"][0]["id"]
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200  # key now cached too
    with psycopg.connect(db_url) as conn:
        wrapped = conn.execute(
            "SELECT wrapped_key FROM patient_keys WHERE patient_id = %s", (shred,)
        ).fetchone()[0]

    r = api.post(f"/v1/admin/patients/{shred}/shred", dr.token, {"reason": "patient erasure"})
    assert r.status_code == 403
    r = api.post(
        f"/v1/admin/patients/{shred}/shred", t.admin.token, {"reason": "erasure request #4711"}
    )
    # One admin alone shreds nothing: the patient still reads.
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200
    result = approve_as_second_admin(api, stack, t, r)
    assert result["patient_id"] == shred and result["key_destroyed_after"]
    for path in (
        f"/v1/notes/{note}",
        f"/v1/notes/{note}/versions",
        f"/v1/patients/{shred}/notes?include=content",
    ):
        r = api.get(path, dr.token)
        assert r.status_code == 410, path
        assert r.content_type == "application/problem+json"
    assert api.get(f"/v1/patients/{keep}/notes?include=content", dr.token).status_code == 200

    # The key waits for the grace period; maintenance destroys it only once it is due.
    assert maintenance_run(db_url) == 0
    with psycopg.connect(db_url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM patient_keys WHERE patient_id = %s", (shred,)
            ).fetchone()[0]
            == 1
        )
        conn.execute(
            "UPDATE patients SET shred_due_at = now() - interval '1 second' WHERE id = %s",
            (shred,),
        )
    assert maintenance_run(db_url) == 1
    with psycopg.connect(db_url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM patient_keys WHERE patient_id = %s", (shred,)
            ).fetchone()[0]
            == 0
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM note_versions v JOIN notes n ON n.id = v.note_id"
                " WHERE n.patient_id = %s",
                (shred,),
            ).fetchone()[0]
            == 1
        )  # the ciphertext is still there, unreadable
        audit = conn.execute(
            "SELECT action, reason FROM audit_events WHERE patient_id = %s"
            " AND action IN ('patient.shred', 'patient.key-destroyed') ORDER BY id",
            (shred,),
        ).fetchall()
    assert [a for a, _ in audit] == ["patient.shred", "patient.key-destroyed"]
    assert audit[0][1].startswith("erasure request #4711 approval=")
    # Nothing left in the database can be unwrapped, even with Vault's root token: the
    # only wrapped key was destroyed, and other patients' keys are bound to their own
    # derivation context.
    with psycopg.connect(db_url) as conn:
        assert wrapped not in str(conn.execute("SELECT * FROM patient_keys").fetchall())
    r = api.post(f"/v1/admin/patients/{shred}/shred", t.admin.token, {"reason": "once more!"})
    assert r.status_code == 409
    # Too late to cancel: the key is gone.
    r = api.delete(f"/v1/admin/patients/{shred}/shred", t.admin.token)
    admin2 = stack.principal(t, Role.ADMIN)
    r = api.post(f"/v1/admin/approvals/{r.get_json()['approval']['id']}/approve", admin2.token)
    assert r.status_code == 409


def test_a_shred_is_cancelled_by_two_admins_within_the_grace_period(
    api: Api, stack: StackHelper
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1)
    r = api.post(f"/v1/admin/patients/{pid}/shred", t.admin.token, {"reason": "wrong patient!!"})
    approve_as_second_admin(api, stack, t, r)
    assert api.get(f"/v1/patients/{pid}/notes?include=content", dr.token).status_code == 410
    r = api.delete(f"/v1/admin/patients/{pid}/shred", t.admin.token)
    assert api.get(f"/v1/patients/{pid}/notes?include=content", dr.token).status_code == 410
    assert approve_as_second_admin(api, stack, t, r) == {"patient_id": pid, "shredded": False}
    r = api.get(f"/v1/patients/{pid}/notes?include=content", dr.token)
    assert r.status_code == 200 and r.get_json()["items"][0]["body"] == "body of patient 0"


def test_rekey_patient(api: Api, stack: StackHelper, app: Flask, db_url: str) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="before rekey")
    api.put(
        f"/v1/notes/{note['id']}",
        dr.token,
        {"kind": "progress", "body": "v2"},
        headers={"If-Match": '"1"'},
    )
    with psycopg.connect(db_url) as conn:
        before = conn.execute(
            "SELECT wrapped_key FROM patient_keys WHERE patient_id = %s", (pid,)
        ).fetchone()[0]
    r = CliRunner().invoke(
        cli, ["patients", "rekey", pid, "--reason", "token leaked", "--json"], env=cli_env(app)
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["versions_resealed"] == 2
    with psycopg.connect(db_url) as conn:
        after = conn.execute(
            "SELECT wrapped_key FROM patient_keys WHERE patient_id = %s", (pid,)
        ).fetchone()[0]
    assert after != before
    app.extensions["sealednotes"].cache.clear()
    r = api.get(f"/v1/notes/{note['id']}/versions", dr.token)
    assert [v["body"] for v in r.get_json()["items"]] == ["before rekey", "v2"]
