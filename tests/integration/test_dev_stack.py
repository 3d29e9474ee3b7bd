"""`make dev` runs the API like production: under its AppRole, never with the root
or ops token, and with Vault's audit device recording every request."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import requests

from service.adapters.vault import SERVICE_ROLE, dek_key_name
from service.devtools.stack import free_port


class DevStack:
    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state / "dev.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "SEALEDNOTES_"))}
        # Even with a root-looking token in the developer's shell, the API must not get it.
        env["VAULT_TOKEN"] = "root-token-from-the-developers-shell"
        self._out = open(self.log, "wb")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "sealednotes"),
                "dev",
                "--port",
                str(self.port),
                "--state-dir",
                str(state / "dev"),
            ],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("sealednotes dev exited:\n" + self.text())
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError("sealednotes dev did not become ready:\n" + self.text())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def banner(self, name: str) -> str:
        m = re.search(rf"{name}='([^']+)'", self.text())
        assert m, f"{name} not in the banner"
        return m.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Ctrl-C
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._out.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(tmp_path_factory.mktemp("make-dev"))
    try:
        stack.wait()
        yield stack
    finally:
        stack.stop()


def test_the_api_runs_under_its_approle_and_cannot_export(dev: DevStack) -> None:
    vault_addr = dev.banner("VAULT_ADDR")
    init = json.loads((dev.log.parent / "dev" / "openbao" / "init.json").read_text())
    root_token = init["root_token"]

    # Vault's own record of every request the API made (its demo note included):
    # all under the AppRole's token with the service policy alone, never root or ops.
    requests.post(
        f"{dev.url}/v1/patients/{dev.banner('PATIENT_ID')}/notes",
        json={"kind": "other", "body": "x"},
        headers={"Authorization": f"Bearer {dev.banner('CLINICIAN_TOKEN')}"},
        timeout=10,
    ).raise_for_status()
    api_calls = [
        e
        for e in map(json.loads, (dev.log.parent / "dev" / "openbao" / "audit.log").open())
        if e["type"] == "request"
        and e["request"]["path"].startswith(("transit/datakey/", "transit/decrypt/"))
        and e["auth"]["display_name"] != "root"
    ]
    assert api_calls
    for e in api_calls:
        assert e["auth"]["policies"] == [SERVICE_ROLE], e["auth"]
        assert e["auth"]["display_name"] == "approle"

    # Logged in exactly as the service logs in (its role, a fresh secret id): the
    # service policy alone, a short TTL, and no export.
    root = hvac.Client(url=vault_addr, token=root_token, timeout=5)
    role_id = root.auth.approle.read_role_id(role_name=SERVICE_ROLE)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role_name=SERVICE_ROLE)["data"]["secret_id"]
    client = hvac.Client(url=vault_addr, timeout=5)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    me = client.auth.token.lookup_self()["data"]
    assert me["policies"] == [SERVICE_ROLE]
    assert int(me["ttl"]) <= 15 * 60

    demo = next(k for k in root.secrets.transit.list_keys()["data"]["keys"] if "dek-" in k)
    tenant_id = demo.removeprefix("sealednotes-dek-")
    assert dek_key_name(tenant_id) == demo
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.export_key(name=demo, key_type="encryption-key")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.update_key_configuration(name=demo, exportable=True)

    # The token printed for the developer's other shell is an ops token, not root.
    ops = root.auth.token.lookup(dev.banner("VAULT_TOKEN"))["data"]
    assert ops["policies"] == ["sealednotes-ops"]

    # The quota and Vault's audit device are in place.
    quota = root.read(f"sys/quotas/rate-limit/sealednotes-unwrap-{tenant_id}")["data"]
    assert quota["interval"] == 180 and quota["rate"] >= 30
    assert (dev.log.parent / "dev" / "openbao" / "audit.log").stat().st_size > 0


def test_the_readme_round_trip_works_and_reconciles(dev: DevStack) -> None:
    token = dev.banner("CLINICIAN_TOKEN")
    patient = dev.banner("PATIENT_ID")
    h = {"Authorization": f"Bearer {token}"}
    r = requests.post(
        f"{dev.url}/v1/patients/{patient}/notes",
        json={"kind": "progress", "title": "First visit", "body": "Patient seen, doing well."},
        headers=h,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    r = requests.get(f"{dev.url}/v1/notes/{r.json()['id']}", headers=h, timeout=10)
    assert r.json()["body"] == "Patient seen, doing well."

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "SEALEDNOTES_"))},
        "SEALEDNOTES_DATABASE_URL": dev.banner("SEALEDNOTES_DATABASE_URL"),
        "VAULT_ADDR": dev.banner("VAULT_ADDR"),
        "VAULT_TOKEN": dev.banner("VAULT_TOKEN"),
    }
    audit_log = dev.log.parent / "dev" / "openbao" / "audit.log"
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "sealednotes"),
            "audit",
            "reconcile",
            "--vault-audit-log",
            str(audit_log),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["unmatched"] == 0
    assert report["matched"] == report["vault_unwraps"]  # (0 if every read hit the key cache)
