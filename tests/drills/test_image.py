"""The Docker image builds from the repository (podman, chroot isolation, a
debootstrapped Debian base) and its own programs run the service: migrate,
vault-setup, tenants/principals, serve; /readyz answers 200 and a note makes the
round trip. Also: the build context (.dockerignore) carries no local secrets."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from service.devtools.stack import (
    BaoServer,
    database_url,
    ensure_database,
    free_port,
    url_with_user,
)
from tests.drills import image
from tests.drills.common import record, require_root, run, stop_process, wait_for
from tests.drills.pg import PgNode

# A fresh machine debootstraps the base first (about a minute).
pytestmark = pytest.mark.timeout(1200)

TAG = "localhost/sealednotes:drill"
APP_ROLE = "sealednotes_app_drill"


@pytest.fixture(scope="module")
def base_image() -> str:
    require_root()
    started = time.monotonic()
    name = image.ensure_base_image()
    record("image_base_ready_seconds (debootstrap on a fresh machine, else cached)",
           round(time.monotonic() - started, 1))  # fmt: skip
    return name


@pytest.fixture(scope="module")
def rootfs(base_image: str) -> Iterator[tuple[Path, image.ImageConfig]]:
    seconds = image.build(TAG, image.REPO, base_image)
    record("image_build_seconds", round(seconds, 1))
    with tempfile.TemporaryDirectory(prefix="sealednotes-rootfs-") as d:
        root = image.export(TAG, Path(d) / "root")
        try:
            yield root, image.inspect(TAG)
        finally:
            image.remove_image(TAG)


def test_image_carries_the_package_data_and_no_secrets(
    rootfs: tuple[Path, image.ImageConfig],
) -> None:
    root, config = rootfs
    assert config.user == "10001:10001" and config.cmd == ["sealednotes", "serve"]
    packages = list(root.glob("opt/venv/lib/python3*/site-packages/service"))
    assert len(packages) == 1, packages
    pkg = packages[0]
    for name in ("sealednotes-service.hcl", "sealednotes-ops.hcl"):
        assert (pkg / "vault_policies" / name).is_file(), name
        assert (pkg / "vault_policies" / name).read_text() == (
            image.REPO / "service" / "vault_policies" / name
        ).read_text()
    assert (pkg / "openapi.yaml").is_file() and list((pkg / "migrations").glob("*.sql"))
    # A non-editable install: the venv does not point back at a source tree.
    assert not list(root.glob("opt/venv/lib/python3*/site-packages/__editable__*"))
    assert not (root / "src").exists() and not (root / "wheels").exists()
    leaked = [p for p in ("init.json", ".git", ".sealednotes-dev") if list(root.rglob(p))]
    assert not leaked, leaked


def test_build_context_leaves_out_secrets_and_junk(base_image: str, tmp_path: Path) -> None:
    """.dockerignore: a probe build copies its whole context; nothing but the
    files the Dockerfile needs may arrive, even with dev state and a .venv around."""
    context = tmp_path / "ctx"
    # The work tree as a clone has it (tracked and new files, not what .gitignore hides).
    git = ["git", "-C", str(image.REPO)]
    tracked = run([*git, "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    assert ".dockerignore" in tracked
    for rel in tracked:
        src = image.REPO / rel
        if src.is_file():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, context / rel, follow_symlinks=False)
    planted = {
        ".sealednotes-dev/openbao/init.json": '{"root_token": "s.PLANTED"}',
        ".venv/bin/python": "#!venv",
        ".git/config": "[core]",
        "service/__pycache__/x.cpython-311.pyc": "pyc",
        "service/secrets.json": "{}",
        "tests/x.py": "test",
        ".env": "VAULT_TOKEN=s.PLANTED",
    }
    for rel, text in planted.items():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_text(text)
    probe = tmp_path / "Probe.Dockerfile"
    probe.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /ctx\n")
    tag = f"localhost/sealednotes-context-probe:{secrets.token_hex(4)}"
    image.build(tag, context, base_image, dockerfile=probe, no_cache=True)
    try:
        root = image.export(tag, tmp_path / "probe-root")
    finally:
        image.remove_image(tag)
    arrived = {str(p.relative_to(root / "ctx")) for p in (root / "ctx").rglob("*") if p.is_file()}
    for rel in planted:
        assert rel not in arrived, f"{rel} reached the build context"
    top = {p.split("/", 1)[0] for p in arrived}
    allowed = {"Dockerfile", "pyproject.toml", "README.md", "openapi.yaml", "crypto", "service"}
    assert top <= allowed | {"requirements.lock"}  # the image installs the locked versions
    assert "service/vault_policies/sealednotes-service.hcl" in arrived
    assert "service/migrations" in {str(Path(p).parent) for p in arrived}


def test_image_runs_the_service(rootfs: tuple[Path, image.ImageConfig], tmp_path: Path) -> None:
    """Its own PostgreSQL (TCP, reachable from the chroot) and OpenBao (dev) on loopback."""
    root, config = rootfs
    pg = PgNode("image-pg", tmp_path / "pgdata", "127.0.0.1", free_port())
    bao: BaoServer | None = None
    serve: subprocess.Popen[bytes] | None = None
    try:
        pg.initdb().start()
        bao = BaoServer(tmp_path / "bao", dev=True).start()
        db = "sealednotes"
        ensure_database(pg.url, db)
        owner_url = database_url(pg.url, db)
        ops_env = {"SEALEDNOTES_DATABASE_URL": owner_url, "VAULT_ADDR": bao.addr}
        ops_env["VAULT_TOKEN"] = bao.root_token

        def cli(*argv: str, env: dict[str, str] | None = None) -> dict[str, object]:
            cmd = image.chroot_command(root, config, ["sealednotes", *argv], env or ops_env)
            out = run(cmd, timeout=120).stdout.strip().splitlines()
            return dict(json.loads(out[-1]))

        assert cli("migrate", "--app-role", APP_ROLE, "--json")["app_role"] == APP_ROLE
        setup = cli("vault-setup", "--issue-secret-id", "--json")
        assert setup["policies"] == ["sealednotes-service", "sealednotes-ops"]
        approle = dict(setup["approle"])  # type: ignore[call-overload]
        tenant = f"drill-{secrets.token_hex(3)}"
        cli("tenants", "create", tenant, "--json")
        doctor = cli("principals", "create", "--tenant", tenant, "--name", "dr", "--role",
                     "clinician", "--json")  # fmt: skip
        ehr = cli("principals", "create", "--tenant", tenant, "--name", "ehr", "--role",
                  "integration", "--json")  # fmt: skip

        port = free_port()
        serve_env = {
            "SEALEDNOTES_DATABASE_URL": url_with_user(owner_url, APP_ROLE),
            "VAULT_ADDR": bao.addr,
            "SEALEDNOTES_VAULT_ROLE_ID": str(approle["role_id"]),
            "SEALEDNOTES_VAULT_SECRET_ID": str(approle["secret_id"]),
            "SEALEDNOTES_BIND": f"127.0.0.1:{port}",
        }
        log = open(tmp_path / "serve.log", "wb")
        serve = subprocess.Popen(
            image.chroot_command(root, config, config.cmd, serve_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert serve is not None and serve.poll() is None, (tmp_path / "serve.log").read_text()
            return requests.get(base + "/readyz", timeout=3).status_code == 200

        record("image_serve_ready_seconds", round(wait_for("/readyz 200", ready, 60), 1))
        h_ehr = {"Authorization": f"Bearer {ehr['token']}"}
        h_dr = {"Authorization": f"Bearer {doctor['token']}"}
        r = requests.post(base + "/v1/patients", json={"external_id": "MRN-IMG-1"},
                          headers=h_ehr, timeout=10)  # fmt: skip
        assert r.status_code == 201, r.text
        patient = r.json()["id"]
        r = requests.put(f"{base}/v1/patients/{patient}/care-team/{doctor['id']}", json={},
                         headers=h_ehr, timeout=10)  # fmt: skip
        assert r.status_code in (200, 201, 204), r.text
        body = {"kind": "progress", "title": "From the image", "body": "Round trip from the image"}
        r = requests.post(f"{base}/v1/patients/{patient}/notes", json=body, headers=h_dr,
                          timeout=10)  # fmt: skip
        assert r.status_code == 201, r.text
        r = requests.get(f"{base}/v1/notes/{r.json()['id']}", headers=h_dr, timeout=10)
        assert r.status_code == 200, r.text
        assert (r.json()["title"], r.json()["body"]) == (body["title"], body["body"])
        # Served as the image's unprivileged user (10001), not root.
        uids = run(["ps", "-o", "uid=", "--ppid", str(_gunicorn_master(serve.pid))]).stdout
        assert {u.strip() for u in uids.split() if u.strip()} == {"10001"}, uids
        # The ciphertext at rest really is ciphertext.
        with psycopg.connect(owner_url) as conn:
            raw = conn.execute("SELECT string_agg(t::text, '') FROM note_versions t").fetchone()
        assert raw and "Round trip" not in str(raw[0])
    finally:
        if serve is not None:
            stop_process(serve)
        if bao is not None:
            bao.stop()
        pg.stop()


def _gunicorn_master(session_leader: int) -> int:
    """The gunicorn master inside unshare -> sh/chroot -> sealednotes."""
    out = run(["ps", "-o", "pid=,args=", "--sid", str(session_leader)]).stdout
    masters = [
        int(line.split()[0])
        for line in out.splitlines()
        if "sealednotes serve" in line and "unshare" not in line and " sh -c" not in line
    ]
    return min(masters)
