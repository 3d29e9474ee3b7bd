"""Fixtures for a running stack: real PostgreSQL and real OpenBao processes.

PostgreSQL: SEALEDNOTES_TEST_DATABASE_URL (an admin URL, e.g.
postgresql://postgres@127.0.0.1:5432/postgres) when set, else an embedded
server started here. Each test session gets its own fresh database; each test
starts from empty tables. OpenBao: a `bao server -dev` started here.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from service.adapters.postgres import Store
from service.adapters.vault import VaultKeyService
from service.app import create_app
from service.clock import Clock
from service.config import Budgets, Settings
from service.devtools.stack import (
    BaoServer,
    EmbeddedPostgres,
    database_url,
    ensure_database,
    free_port,
    url_with_user,
)
from service.logs import RedactingJsonFormatter
from tests.helpers import Api, StackHelper

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="sealednotes-xdg-"))

CANARY = "CANARY-"  # tests mark health data and identifiers with this prefix
METRICS_TOKEN = "metrics-scraper-test-token"  # SEALEDNOTES_METRICS_TOKEN of the test apps
LOG_LINES: list[str] = []  # every log line of the whole run, as the service formats it


class _CaptureLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(RedactingJsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        LOG_LINES.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_canary_in_any_log_line() -> Iterator[None]:
    """P1/P9: no note text or external id in any log line of the whole suite, in-process
    (every logger, exception traces included) or from the gunicorn servers started."""
    handler = _CaptureLogs()
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    leaked = [line for line in LOG_LINES if CANARY in line]
    assert not leaked, f"{len(leaked)} log lines carry canaries, e.g. {leaked[0][:300]}"


APP_ROLE = "sealednotes_app_test"
MAINTENANCE_ROLE = "sealednotes_maintenance_test"
APP_TABLES = (
    "audit_events, audit_checkpoints, release_denials, key_releases, break_glass, care_team, "
    "note_versions, notes, patient_keys, patients, tokens, principals, tenants"
)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sealednotes-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def pg_admin_url(workdir: Path) -> Iterator[str]:
    url = os.environ.get("SEALEDNOTES_TEST_DATABASE_URL")
    if url:
        yield url
        return
    pg = EmbeddedPostgres(workdir / "pgdata").start()
    try:
        yield pg.admin_url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def db_url(pg_admin_url: str) -> Iterator[str]:
    name = f"sealednotes_test_{secrets.token_hex(4)}"
    ensure_database(pg_admin_url, name, drop=True)
    url = database_url(pg_admin_url, name)
    Store(url).migrate(app_role=APP_ROLE, maintenance_role=MAINTENANCE_ROLE)
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def app_db_url(db_url: str) -> str:
    """The service connects as the least-privileged application role."""
    return url_with_user(db_url, APP_ROLE)


@pytest.fixture(scope="session")
def bao(workdir: Path) -> Iterator[BaoServer]:
    server = BaoServer(workdir / "bao", dev=True).start()
    keys = VaultKeyService(addr=server.addr, token=server.root_token)
    keys.ensure_transit_mount()
    keys.ensure_audit_signing_key()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def base_settings(app_db_url: str, bao: BaoServer) -> Settings:
    return Settings(
        database_url=app_db_url,
        vault_addr=bao.addr,
        vault_token=bao.root_token,
        pool_min=1,
        pool_max=8,
        audit_checkpoint_seconds=0,
        metrics_token=METRICS_TOKEN,
    )


@pytest.fixture
def clean_db(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The audit tables refuse TRUNCATE by trigger; a superuser may bypass it.
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"TRUNCATE {APP_TABLES} RESTART IDENTITY CASCADE")


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(base_settings: Settings, clean_db: None) -> Iterator[AppFactory]:
    apps: list[Flask] = []

    def factory(
        *, clock: Clock | None = None, budgets: Budgets | None = None, **overrides: Any
    ) -> Flask:
        fields = dict(overrides)
        if budgets is not None:
            fields["budgets"] = budgets
        settings = Settings(**{**base_settings.__dict__, **fields})
        app = create_app(settings, clock=clock)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["sealednotes"].store.close()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


@pytest.fixture
def stack(app: Flask, api: Api) -> StackHelper:
    return StackHelper(app, api)


class LiveServer:
    """`sealednotes serve` (gunicorn) as a subprocess against the test database and Vault."""

    def __init__(self, settings: Settings, workdir: Path, workers: int, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        full_env = {
            **os.environ,
            "SEALEDNOTES_DATABASE_URL": settings.database_url,
            "VAULT_ADDR": settings.vault_addr,
            "VAULT_TOKEN": settings.vault_token or "",
            "SEALEDNOTES_BIND": f"127.0.0.1:{self.port}",
            "SEALEDNOTES_METRICS_BIND": self.metrics_url.removeprefix("http://").removesuffix(
                "/metrics"
            ),
            **env,
        }
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "sealednotes"), "serve", "--workers", str(workers)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not start:\n" + self.log_path.read_text())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def collect_logs(self) -> None:
        LOG_LINES.extend(self.log_text().splitlines())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


@pytest.fixture
def live_server(
    base_settings: Settings, workdir: Path, clean_db: None
) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(workers: int = 4, **env: str) -> LiveServer:
        server = LiveServer(base_settings, workdir, workers, env)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
        s.collect_logs()
