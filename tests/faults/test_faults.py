"""P9: Vault sealed, stopped or hung and PostgreSQL restarted: fast 503s with
Retry-After, never plaintext, and recovery without restarting the service.

These tests own their PostgreSQL and OpenBao (Raft storage, so keys survive a
restart) because they stop and start them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from flask import Flask

from service import deadline
from service.adapters.postgres import Store
from service.adapters.vault import VaultKeyService
from service.app import create_app
from service.config import Settings
from service.devtools.stack import (
    BaoServer,
    EmbeddedPostgres,
    database_url,
    ensure_database,
    free_port,
    url_with_user,
)
from service.errors import KeyServiceUnavailable
from tests.conftest import CANARY, LOG_LINES
from tests.helpers import Api, StackHelper

pytestmark = pytest.mark.slow
ROLE = "sealednotes_app_faults"


@dataclass
class FaultStack:
    pg: EmbeddedPostgres
    bao: BaoServer
    owner_url: str
    app_url: str
    app: Flask
    api: Api
    stack: StackHelper


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultStack]:
    with tempfile.TemporaryDirectory(prefix="sealednotes-faults-") as d:
        root = Path(d)
        pg = EmbeddedPostgres(root / "pgdata").start()
        bao = BaoServer(root / "bao", dev=False).start()
        try:
            ensure_database(pg.admin_url, "faults")
            owner = database_url(pg.admin_url, "faults")
            Store(owner).migrate(app_role=ROLE)
            keys = VaultKeyService(addr=bao.addr, token=bao.root_token)
            keys.ensure_transit_mount()
            keys.ensure_audit_signing_key()
            settings = Settings(
                database_url=url_with_user(owner, ROLE),
                vault_addr=bao.addr,
                vault_token=bao.root_token,
                key_cache_ttl=1.0,
                audit_checkpoint_seconds=0,
            )
            app = create_app(settings)
            api = Api(app.test_client())
            yield FaultStack(pg, bao, owner, settings.database_url, app, api, StackHelper(app, api))
            app.extensions["sealednotes"].store.close()
        finally:
            bao.stop()
            pg.stop()


@pytest.fixture
def note(faults: FaultStack) -> dict[str, Any]:
    s = faults.stack
    t = s.tenant()
    dr = s.clinician(t)
    pid = s.patient_for(t, dr)
    secret = f"{CANARY}{secrets.token_hex(6)}"
    n = s.note(dr, pid, body=secret, title=secret)
    assert faults.api.get(f"/v1/notes/{n['id']}", dr.token).status_code == 200
    return {"id": n["id"], "patient": pid, "dr": dr, "secret": secret}


def timed(api: Api, path: str, token: str, **kw: Any) -> tuple[Any, float]:
    started = time.monotonic()
    r = api.get(path, token, **kw)
    return r, time.monotonic() - started


def assert_fast_503(r: Any, elapsed: float, secret: str, slug: str) -> None:
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.get_json()["type"].endswith(f"/{slug}")
    assert int(r.headers["Retry-After"]) >= 1
    assert elapsed < 2.6, elapsed  # ~2 s: the Vault/DB timeout, not a hang
    assert secret not in r.get_data(as_text=True)


def wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("did not recover in time")


def test_vault_sealed(faults: FaultStack, note: dict[str, Any]) -> None:
    api, dr, path = faults.api, note["dr"], f"/v1/notes/{note['id']}"
    faults.bao.seal()
    try:
        time.sleep(1.1)  # the key cache TTL: after it, nothing decrypts
        r, elapsed = timed(api, path, dr.token)
        assert_fast_503(r, elapsed, note["secret"], "key-service-unavailable")
        r = api.post(
            f"/v1/patients/{note['patient']}/notes",
            dr.token,
            {"kind": "other", "body": note["secret"]},
        )
        assert r.status_code == 503
        ready = api.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["vault"]["sealed"] is True
        assert ready.get_json()["database"]["ok"] is True
    finally:
        faults.bao.unseal()
    wait_for(lambda: api.get(path, dr.token).status_code == 200)
    assert api.get("/readyz").status_code == 200


def test_vault_stopped_and_restarted(faults: FaultStack, note: dict[str, Any]) -> None:
    api, dr, path = faults.api, note["dr"], f"/v1/notes/{note['id']}"
    faults.bao.stop()
    try:
        time.sleep(1.1)
        r, elapsed = timed(api, path, dr.token)
        assert_fast_503(r, elapsed, note["secret"], "key-service-unavailable")
    finally:
        faults.bao.start()  # same Raft storage and port; unsealed by start()
    wait_for(lambda: api.get(path, dr.token).status_code == 200)


def test_postgres_restarted(faults: FaultStack, note: dict[str, Any]) -> None:
    api, dr, path = faults.api, note["dr"], f"/v1/notes/{note['id']}"
    faults.pg.stop()
    try:
        r, elapsed = timed(api, path, dr.token)
        assert_fast_503(r, elapsed, note["secret"], "database-unavailable")
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["database"]["ok"] is False
    finally:
        faults.pg.start()
    # The pool replaces its broken connections: no service restart.
    wait_for(lambda: api.get(path, dr.token).status_code == 200)
    r = api.post(
        f"/v1/patients/{note['patient']}/notes",
        dr.token,
        {"kind": "other", "body": "after the restart"},
    )
    assert r.status_code == 201


def worker_pids(master: int) -> set[int]:
    return {c.pid for c in psutil.Process(master).children()}


def test_vault_hung_under_gunicorn(faults: FaultStack, note: dict[str, Any]) -> None:
    """SIGSTOP: Vault accepts connections and never answers. Requests get 503 after the
    2 s Vault timeout; no gunicorn worker is killed; SIGCONT recovers."""
    port = free_port()
    env = {
        **os.environ,
        "SEALEDNOTES_DATABASE_URL": faults.app_url,
        "VAULT_ADDR": faults.bao.addr,
        "VAULT_TOKEN": faults.bao.root_token,
        "SEALEDNOTES_BIND": f"127.0.0.1:{port}",
        "SEALEDNOTES_KEY_CACHE_TTL": "1",
        "SEALEDNOTES_AUDIT_CHECKPOINT_SECONDS": "0",
    }
    log_path = Path(tempfile.mkstemp(prefix="gunicorn-faults-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "sealednotes"), "serve", "--workers", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1/notes/{note['id']}"
    headers = {"Authorization": f"Bearer {note['dr'].token}"}
    try:
        wait_for(lambda: _get(url, headers).status_code == 200)
        pids = worker_pids(proc.pid)
        assert len(pids) == 2
        faults.bao.pause()
        try:
            time.sleep(1.1)
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda _: _timed_get(url, headers), range(8)))
            for r, elapsed in results:
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"]
                assert elapsed < 5.0, elapsed  # bounded by the 2 s Vault timeout
                assert note["secret"] not in r.text
            assert min(e for _, e in results) < 2.6
        finally:
            faults.bao.resume()
        wait_for(lambda: _get(url, headers).status_code == 200)
        assert worker_pids(proc.pid) == pids  # nobody was killed by the worker timeout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        LOG_LINES.extend(log_path.read_text(errors="replace").splitlines())
        log_path.unlink()


def test_a_vault_call_near_the_deadline_waits_only_for_what_is_left(faults: FaultStack) -> None:
    """Hung Vault: a call made with 0.5 s of the request's deadline left gives up after
    about 0.5 s, not the 2 s Vault timeout, so the request's 503 comes within its deadline."""
    keys = VaultKeyService(addr=faults.bao.addr, token=faults.bao.root_token, timeout=2.0)
    keys.sign(b"logged in, connected")
    faults.bao.pause()
    try:
        token = deadline.start(0.5)
        started = time.monotonic()
        try:
            # The request's own time ran out: not reported as Vault failing (no
            # dependency alarm, no new login).
            with pytest.raises(deadline.DeadlineExceeded):
                keys.sign(b"near the deadline")
        finally:
            deadline.reset(token)
        near = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(KeyServiceUnavailable):
            keys.sign(b"outside any request")
        full = time.monotonic() - started
    finally:
        faults.bao.resume()
    assert near < 1.2, near
    assert full >= 1.9, full


def _get(url: str, headers: dict[str, str]) -> requests.Response:
    try:
        return requests.get(url, headers=headers, timeout=10)
    except requests.RequestException:
        r = requests.Response()
        r.status_code = 599
        return r


def _timed_get(url: str, headers: dict[str, str]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = requests.get(url, headers=headers, timeout=30)
    return r, time.monotonic() - started


def test_note_write_is_all_or_nothing(faults: FaultStack, note: dict[str, Any]) -> None:
    """A fault at the last step of a write (the version insert fails) leaves no note,
    no version and no audit record behind; nor does a Vault failure at the first step."""
    import psycopg

    api, dr, pid = faults.api, note["dr"], note["patient"]

    def counts() -> tuple[int, int, int]:
        with psycopg.connect(faults.owner_url) as conn:
            return (
                conn.execute("SELECT count(*) FROM notes").fetchone()[0],
                conn.execute("SELECT count(*) FROM note_versions").fetchone()[0],
                conn.execute(
                    "SELECT count(*) FROM audit_events WHERE action = 'note.create'"
                ).fetchone()[0],
            )

    before = counts()
    with psycopg.connect(faults.owner_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION fail_versions() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER fail_versions BEFORE INSERT ON note_versions"
            " FOR EACH ROW EXECUTE FUNCTION fail_versions()"
        )
    try:
        r = api.post(
            f"/v1/patients/{pid}/notes", dr.token, {"kind": "other", "body": note["secret"]}
        )
        assert r.status_code == 500 and note["secret"] not in r.get_data(as_text=True)
    finally:
        with psycopg.connect(faults.owner_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER fail_versions ON note_versions")
            conn.execute("DROP FUNCTION fail_versions()")
    assert counts() == before

    faults.bao.seal()
    try:
        r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "other", "body": "x"})
        # The patient's key is cached (1 s TTL) or Vault is asked: either way, atomic.
        assert r.status_code in (201, 503)
        time.sleep(1.1)
        r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "other", "body": "x"})
        assert r.status_code == 503
    finally:
        faults.bao.unseal()
    after = counts()
    created = after[0] - before[0]
    assert created in (0, 1) and after == (
        before[0] + created,
        before[1] + created,
        before[2] + created,
    )
